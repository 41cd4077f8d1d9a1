"""Parsing of XSum JSON-lines files into grounded_summarization-style examples.

Pure Python (no TensorFlow): the builder and tests share it.

Each line is a JSON object ``{"document": ..., "summary": ..., "id": ...}`` (any field
order), as written by ``datasets.load_dataset("EdinburghNLP/xsum")[split].to_json(path)``.
An example has the fields of ``builders/grounded_summarization``: ``prompt_id``,
``document``, ``facts`` (always empty: XSum has no gold fact triples) and
``reference_summaries`` (the one summary), plus ``source_id``, the XSum id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from absl import logging

from builders import jsonl
from rlds_lm.schema import content_id

NAME = "xsum"


def prompt_id(document: str) -> str:
  """The content id of a document, as ``builders/grounded_summarization`` computes it."""
  return content_id(NAME, document)


def parse_line(line: str | bytes) -> dict | None:
  """The record of one JSON line, or None for a blank line.

  Returns ``{"source_id", "document", "summary"}``: text fields with surrounding
  whitespace removed (an integer id is accepted and written as text). The document or
  summary may be empty; :func:`read_examples` skips those.

  Raises:
    ValueError: for invalid UTF-8 or JSON, or a value that is not an object with text
      ``document`` and ``summary`` and a text or integer ``id``. The message does not
      say where: see :func:`read_examples`.
  """
  record = jsonl.json_object(line, ("document", "summary"))
  if record is None:
    return None
  source_id = record.get("id")
  if isinstance(source_id, bool) or not isinstance(source_id, (str, int)):
    raise ValueError("field 'id' is missing or neither a string nor an integer")
  source_id = str(source_id).strip()
  if not source_id:
    raise ValueError("the id is empty")
  return {"source_id": source_id, "document": record["document"].strip(),
          "summary": record["summary"].strip()}


def read_examples(lines: Iterable[str | bytes], source: str) -> Iterator[dict]:
  """The examples of one split file, in file order.

  Skipped, with counts logged: records whose document or summary is empty, and records
  whose document appeared earlier in the file (the first occurrence wins), so keys
  (``prompt_id``) are unique. Blank lines are ignored.

  Args:
    lines: the file's lines (text or UTF-8 bytes).
    source: the file's name, for error and log messages.

  Raises:
    ValueError: for a malformed line, naming ``source`` and the 1-based line number.
  """
  seen = set()
  skipped = {"empty document": 0, "empty summary": 0, "repeated document": 0}
  for number, line in enumerate(lines, start=1):
    try:
      record = parse_line(line)
    except ValueError as e:  # includes UnicodeDecodeError and json.JSONDecodeError
      raise ValueError(f"{NAME}: malformed line {number} of {source}: {e}") from e
    if record is None:
      continue
    if not record["document"]:
      skipped["empty document"] += 1
      continue
    if not record["summary"]:
      skipped["empty summary"] += 1
      continue
    key = prompt_id(record["document"])
    if key in seen:
      skipped["repeated document"] += 1
      continue
    seen.add(key)
    yield {"prompt_id": key, "document": record["document"], "facts": [],
           "reference_summaries": [record["summary"]], "source_id": record["source_id"]}
  if any(skipped.values()):
    logging.info("%s: kept %d record(s) of %s; skipped %s.", NAME, len(seen), source,
                 ", ".join(f"{count} with {reason}" for reason, count in skipped.items()
                           if count))
