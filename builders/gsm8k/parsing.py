"""Parsing of the official GSM8K JSON-lines files into arithmetic-builder examples.

Pure Python (no TensorFlow): the builder and tests share it.

Each line of ``train.jsonl`` / ``test.jsonl`` is a JSON object ``{"question": ...,
"answer": ...}`` whose answer is a worked solution, one step per line, with calculator
annotations such as ``<<48/2=24>>``, then a last line ``#### 72`` giving the final
answer. An example has exactly the fields of ``builders/arithmetic``: ``prompt_id``,
``question``, ``answer`` (the final answer, thousands commas removed), ``steps`` (the
non-empty solution lines without annotations, joined by newlines) and ``num_steps``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from absl import logging

from builders import jsonl
from rlds_lm.schema import content_id

NAME = "gsm8k"
MARKER = "####"

_ANNOTATION = re.compile(r"<<.*?>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def prompt_id(question: str) -> str:
  """The content id of a question, as ``builders/arithmetic`` computes its own."""
  return content_id(NAME, question)


def parse_answer(answer: str) -> tuple[str, str, int]:
  """Splits a GSM8K answer into ``(final_answer, steps, num_steps)``.

  Raises:
    ValueError: if the answer has no single ``####`` marker or its final answer is not
      a decimal number (after removing thousands commas).
  """
  parts = answer.split(MARKER)
  if len(parts) != 2:
    found = "none" if len(parts) == 1 else f"{len(parts) - 1}"
    raise ValueError(f"expected exactly one {MARKER!r} in the answer, found {found}")
  solution, final = parts
  final = final.strip().replace(",", "")
  if not _NUMBER.fullmatch(final):
    raise ValueError(f"the final answer after {MARKER!r} is not a number: {final!r}")
  lines = [line.strip() for line in _ANNOTATION.sub("", solution).split("\n")]
  lines = [line for line in lines if line]
  return final, "\n".join(lines), len(lines)


def parse_line(line: str | bytes) -> dict | None:
  """The example of one JSON line, or None for a blank line.

  Raises:
    ValueError: for invalid UTF-8 or JSON, a value that is not an object with text
      ``question`` (non-empty) and ``answer`` fields, or an answer that
      :func:`parse_answer` rejects. The message does not say where: see
      :func:`read_examples`.
  """
  record = jsonl.json_object(line, ("question", "answer"))
  if record is None:
    return None
  question = record["question"].strip()
  if not question:
    raise ValueError("the question is empty")
  answer, steps, num_steps = parse_answer(record["answer"])
  return {"prompt_id": prompt_id(question), "question": question, "answer": answer,
          "steps": steps, "num_steps": num_steps}


def read_examples(lines: Iterable[str | bytes], source: str) -> Iterator[dict]:
  """The examples of one split file, in file order, without repeated questions.

  A question seen before in the same file is skipped (the first occurrence wins), so
  keys (``prompt_id``) are unique. Blank lines are ignored.

  Args:
    lines: the file's lines (text or UTF-8 bytes).
    source: the file's name, for error and log messages.

  Raises:
    ValueError: for a malformed line, naming ``source`` and the 1-based line number.
  """
  seen = set()
  duplicates = 0
  for number, line in enumerate(lines, start=1):
    try:
      example = parse_line(line)
    except ValueError as e:  # includes UnicodeDecodeError and json.JSONDecodeError
      raise ValueError(f"{NAME}: malformed line {number} of {source}: {e}") from e
    if example is None:
      continue
    if example["prompt_id"] in seen:
      duplicates += 1
      continue
    seen.add(example["prompt_id"])
    yield example
  if duplicates:
    logging.info("%s: skipped %d repeated question(s) in %s; kept %d.", NAME, duplicates,
                 source, len(seen))
