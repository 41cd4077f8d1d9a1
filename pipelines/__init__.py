"""Apache Beam pipelines: generate -> teacher -> score -> judge -> publish.

Each stage is a module with PTransforms and a ``python -m pipelines.<stage>`` entry point;
see docs/pipelines.md.
"""

# Before TensorFlow or Beam loads: hides their start-up noise (RLDS_LM_VERBOSE=1 keeps it).
from rlds_lm import _compat

_compat.quiet()
