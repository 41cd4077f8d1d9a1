"""Prompt records: how a prompt-source record becomes the text a policy sees.

A prompt source is a TFDS dataset directory (for example ``tfds build builders/arithmetic``
output) or a JSON-lines file. Each registered task (:data:`registry.TASKS`) names the
field that holds its content; the built-in ones are

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

from rlds_lm import schema as S
from rlds_lm.tasks import registry
from rlds_lm.tasks.errors import RecordError

SOURCE_LINE = "_source_line"  # added to JSON-lines records: their line number


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt with the reference data its scorers need.

  Attributes:
    prompt_id: stable id (the source record's ``prompt_id`` or a content id).
    task: a registered task (``arithmetic``, ``summarization``).
    text: the prompt the policy sees.
    reference: what the task's rewards read: ``answer`` (arithmetic); ``document``,
      ``facts``, ``reference_summaries`` (summarization).
  """

  prompt_id: str
  task: str
  text: str
  reference: Mapping[str, Any]

  def record(self) -> dict[str, Any]:
    """The prompt as the record a reward scores: its reference and its ``prompt_id``."""
    return {**self.reference, "prompt_id": self.prompt_id}


def detect_task(record: Mapping[str, Any]) -> str:
  """The first registered task whose field the record has; RecordError if none."""
  for name, task in registry.TASKS.items():
    if task.field in record:
      return name
  fields = sorted(t.field for t in registry.TASKS.values())
  raise RecordError("unknown_task", f"a prompt record needs one of the fields {fields}; "
                                    f"found {sorted(k for k in record if k != SOURCE_LINE)}")


def prompt_text(task: str, record: Mapping[str, Any]) -> str:
  """The text the policy sees for ``record`` of ``task``."""
  return registry.TASKS[task].prompt(record)


def to_prompt(record: Mapping[str, Any], task: str | None = None) -> Prompt:
  """A :class:`Prompt` from a source record; :class:`RecordError` if unusable."""
  task = task or detect_task(record)
  if task not in registry.TASKS:
    raise ValueError(f"unknown task {task!r}; known: {tuple(registry.TASKS)}")
  field = registry.TASKS[task].field
  value = record.get(field)
  if not isinstance(value, str) or not value.strip():
    raise RecordError("empty_prompt", f"field {field!r} is missing or empty")
  text = prompt_text(task, record)
  reference = registry.TASKS[task].reference(record)
  prompt_id = str(record.get("prompt_id") or S.content_id(task, text, prefix="p-"))
  return Prompt(prompt_id=prompt_id, task=task, text=text, reference=reference)


def parse_jsonl_line(line: tuple[int, str]) -> dict[str, Any]:
  """A JSON-lines prompt record; :class:`RecordError` names the line if malformed."""
  number, text = line
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise RecordError("bad_json", f"line {number}: {e}") from e
  if not isinstance(record, dict):
    raise RecordError("bad_json", f"line {number}: expected a JSON object, found "
                                  f"{type(record).__name__}")
  return {**record, SOURCE_LINE: number}


def record_key(record: Mapping[str, Any]) -> str:
  """How a dead letter names a prompt record: its prompt_id, else its line number."""
  if record.get("prompt_id"):
    return str(record["prompt_id"])
  if SOURCE_LINE in record:
    return f"line {record[SOURCE_LINE]}"
  return "?"
