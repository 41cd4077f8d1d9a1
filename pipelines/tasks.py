"""Tasks: how a prompt-source record becomes the text a policy sees, and what scorers need.

A prompt source is a TFDS dataset directory (for example ``tfds build builders/arithmetic``
output) or a JSON-lines file. Two tasks are known:

* ``arithmetic`` (records with ``question`` and, for scoring, ``answer``): the
  ``arithmetic`` and ``gsm8k`` builders;
* ``summarization`` (records with ``document``; ``facts`` and ``reference_summaries``
  when known): the ``grounded_summarization`` and ``xsum`` builders.

The task is detected from the record's fields unless named. The prompt text is
deterministic, so ``prompt_id`` (the record's own, or a content id of task and text) ties
a rollout to its source record in every later stage.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pipelines import errors
from rlds_lm import schema as S

ARITHMETIC = "arithmetic"
SUMMARIZATION = "summarization"
TASKS = (ARITHMETIC, SUMMARIZATION)
_REQUIRED = {ARITHMETIC: "question", SUMMARIZATION: "document"}
SOURCE_LINE = "_source_line"  # added to JSON-lines records: their line number


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt with the reference data its scorers need.

  Attributes:
    prompt_id: stable id (the source record's ``prompt_id`` or a content id).
    task: ``arithmetic`` or ``summarization``.
    text: the prompt the policy sees.
    reference: ``answer`` (arithmetic); ``document``, ``facts``,
      ``reference_summaries`` (summarization).
  """

  prompt_id: str
  task: str
  text: str
  reference: Mapping[str, Any]


def detect_task(record: Mapping[str, Any]) -> str:
  for task, field in _REQUIRED.items():
    if field in record:
      return task
  raise errors.RecordError("unknown_task", f"a prompt record needs one of the fields "
                                         f"{sorted(_REQUIRED.values())}; found "
                                         f"{sorted(k for k in record if k != SOURCE_LINE)}")


def prompt_text(task: str, record: Mapping[str, Any]) -> str:
  if task == ARITHMETIC:
    return f"{record['question']}\nAnswer:"
  return f"Document: {record['document']}\nSummary:"


def to_prompt(record: Mapping[str, Any], task: str | None = None) -> Prompt:
  """A :class:`Prompt` from a source record; :class:`errors.RecordError` if unusable."""
  task = task or detect_task(record)
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; known: {TASKS}")
  field = _REQUIRED[task]
  value = record.get(field)
  if not isinstance(value, str) or not value.strip():
    raise errors.RecordError("empty_prompt", f"field {field!r} is missing or empty")
  text = prompt_text(task, record)
  if task == ARITHMETIC:
    reference = {"answer": str(record.get("answer", ""))}
  else:
    reference = {"document": record["document"],
                 "facts": list(record.get("facts", []) or []),
                 "reference_summaries": list(record.get("reference_summaries", []) or [])}
  prompt_id = str(record.get("prompt_id") or S.content_id(task, text, prefix="p-"))
  return Prompt(prompt_id=prompt_id, task=task, text=text, reference=reference)


def parse_jsonl_line(line: tuple[int, str]) -> dict[str, Any]:
  """A JSON-lines prompt record; :class:`errors.RecordError` names the line if malformed."""
  number, text = line
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise errors.RecordError("bad_json", f"line {number}: {e}") from e
  if not isinstance(record, dict):
    raise errors.RecordError("bad_json", f"line {number}: expected a JSON object, found "
                                       f"{type(record).__name__}")
  return {**record, SOURCE_LINE: number}


def record_key(record: Mapping[str, Any]) -> str:
  """How a dead letter names a prompt record: its prompt_id, else its line number."""
  if record.get("prompt_id"):
    return str(record["prompt_id"])
  if SOURCE_LINE in record:
    return f"line {record[SOURCE_LINE]}"
  return "?"
