"""The pipelines' errors, in a module that imports nothing heavy (no Beam, no TensorFlow).

:class:`RecordError` is the tasks' own (:class:`rlds_lm.tasks.errors.RecordError`), so a
record a task refuses becomes a dead letter named by its ``reason``.
"""

from rlds_lm.tasks.errors import RecordError  # noqa: F401  (re-exported)


class PipelineError(RuntimeError):
  """A stage cannot run or its result must not be used (says why)."""
