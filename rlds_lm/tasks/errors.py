"""The error a task raises for a record or a completion it cannot use.

It imports nothing, so every layer above (trainers, the Beam stages, the builders) can
catch it; the pipelines re-export it as ``pipelines.core.RecordError`` and turn it into
a dead letter named by its ``reason``.
"""

from __future__ import annotations


class RecordError(ValueError):
  """A record is bad for a known reason; ``reason`` names it (``no_reference``, ...)."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason
