"""rlds_lm: language-model trajectory data as RLDS episodes.

Record rollouts (:class:`Recorder`), publish them as TFDS datasets (:func:`rlds_lm.publish.publish`,
:func:`publish_log`), replay them into trainers (:mod:`rlds_lm.read`). Importing this
package does not import TensorFlow. It hides the dependency stack's known start-up
noise (see :func:`rlds_lm._compat.quiet`; ``RLDS_LM_VERBOSE=1`` keeps it).

The public names below are loaded on first use (PEP 562), so that importing one module
of the package (``rlds_lm.schema``, say) loads that module and nothing else of ours: the
layering rules of docs/overview.md are about what a module needs, not about what the
package's front door happens to re-export.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlds_lm import _compat

_compat.quiet()  # before any of TensorFlow, envlogger or Beam loads

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "EpisodeBuilder": "rlds_lm.recorder",
    "Recorder": "rlds_lm.recorder",
    "publish_log": "rlds_lm.recorder",
    "SchemaConfig": "rlds_lm.schema",
    "Turn": "rlds_lm.schema",
    "observation": "rlds_lm.schema",
    "preference_episode": "rlds_lm.schema",
    "rollout_episode": "rlds_lm.schema",
    "ByteTokenizer": "rlds_lm.tokenizers",
    "SentencePieceTokenizer": "rlds_lm.tokenizers",
    "EpisodeValidationError": "rlds_lm.validate",
    "validate_episode": "rlds_lm.validate",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
  if name not in _PUBLIC:
    raise AttributeError(f"module 'rlds_lm' has no attribute {name!r}")
  value = getattr(importlib.import_module(_PUBLIC[name]), name)
  globals()[name] = value  # later look-ups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_PUBLIC))
