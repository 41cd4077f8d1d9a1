"""The pipelines' errors, in a module that imports nothing heavy (no Beam, no TensorFlow),
so that Beam-free code (trainers) can use :mod:`pipelines.tasks`."""


class PipelineError(RuntimeError):
  """A stage cannot run or its result must not be used (says why)."""


class RecordError(ValueError):
  """A record is bad for a known reason; ``reason`` names it in the dead-letter output."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason
