"""JSON-lines parsing shared by the builders that read local files (gsm8k, xsum)."""

from __future__ import annotations

import json
from collections.abc import Sequence


def json_object(line: str | bytes, text_fields: Sequence[str]) -> dict | None:
  """The JSON object on one line, or None for a blank line.

  Raises:
    ValueError: invalid JSON, not an object, or one of ``text_fields`` missing or not a
      string. The message does not say where; the caller adds file and line.
  """
  if isinstance(line, bytes):
    line = line.decode("utf-8")
  if not line.strip():
    return None
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"invalid JSON ({e})") from None
  if not isinstance(record, dict):
    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
  for field in text_fields:
    if not isinstance(record.get(field), str):
      raise ValueError(f"field {field!r} is missing or not a string")
  return record
