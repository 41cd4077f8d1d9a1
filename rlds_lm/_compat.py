"""The one place where rlds_lm patches its dependency stack.

Two upstream problems are handled here, and nowhere else:

1. ``import rlds`` (0.1.8, the last release) imports ``reverb`` at module top in
   ``rlds/transformations/pattern.py``. dm-reverb 0.14 is built against TensorFlow 2.15
   and fails to load beside TensorFlow 2.21 (and has no wheel for Python >= 3.12). Only
   ``rlds.transformations.pattern_map`` uses reverb. We install a stand-in ``reverb``
   module whose attributes are placeholders (so annotations such as
   ``reverb.structured_writer.Config`` evaluate) and whose use fails with a clear error.
   A real, importable reverb is always preferred.

2. envlogger 1.2's codec uses ``np.unicode_``, removed in NumPy 2. We alias it to
   ``np.str_`` (the same type under its NumPy 2 name) before envlogger encodes anything.

3. (Only with the optional ``gemma`` extra.) gemma 3.3.0 subclasses
   ``kauldron.checkpoints.AbstractPartialLoader``, which kauldron 1.4 renamed
   ``InitTransform`` (the same abstract class); kauldron < 1.4 does not import beside
   JAX 0.10. :func:`patch_kauldron_for_gemma` aliases the old name to the new one.

All are idempotent. Call :func:`import_rlds` / :func:`import_envlogger` instead of
importing those packages directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_REVERB_MESSAGE = (
    "dm-reverb is not usable beside TensorFlow >= 2.16, so rlds_lm installed a stand-in "
    "'reverb' module. rlds.transformations.pattern_map (the only rlds feature that needs "
    "reverb) is unavailable; every other rlds transformation works."
)


class ReverbUnavailableError(ImportError):
  """Raised when code tries to use the reverb stand-in for real."""


class _Placeholder:
  """An attribute chain that can be named in annotations but never used."""

  def __init__(self, path: str):
    self._path = path

  def __getattr__(self, name: str) -> "_Placeholder":
    if name.startswith("__") and name.endswith("__"):
      raise AttributeError(name)
    return _Placeholder(f"{self._path}.{name}")

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    raise ReverbUnavailableError(f"{self._path}(...) called. {_REVERB_MESSAGE}")

  def __getitem__(self, item: Any) -> "_Placeholder":
    return self  # e.g. typing subscripts in annotations

  def __repr__(self) -> str:
    return f"<reverb stand-in {self._path}>"


class _ReverbStandIn(types.ModuleType):
  __rlds_lm_stand_in__ = True

  def __getattr__(self, name: str) -> _Placeholder:
    if name.startswith("__") and name.endswith("__"):
      raise AttributeError(name)
    return _Placeholder(f"reverb.{name}")


def _real_reverb_loads() -> bool:
  if importlib.util.find_spec("reverb") is None:
    return False
  try:
    importlib.import_module("reverb")
    return True
  except Exception:  # noqa: BLE001 - any load failure means "use the stand-in"
    sys.modules.pop("reverb", None)
    return False


def install_reverb_stand_in() -> bool:
  """Makes ``import reverb`` succeed. Returns True if the stand-in was installed."""
  existing = sys.modules.get("reverb")
  if existing is not None:
    return bool(getattr(existing, "__rlds_lm_stand_in__", False))
  if _real_reverb_loads():
    return False
  sys.modules["reverb"] = _ReverbStandIn("reverb", _REVERB_MESSAGE)
  return True


def patch_numpy_for_envlogger() -> None:
  """Restores ``np.unicode_`` (an alias of ``np.str_``) for envlogger 1.2's codec."""
  import numpy as np

  if not hasattr(np, "unicode_"):
    np.unicode_ = np.str_  # type: ignore[attr-defined]


def import_rlds() -> types.ModuleType:
  """Imports and returns the ``rlds`` package with the reverb stand-in in place."""
  install_reverb_stand_in()
  import rlds  # pylint: disable=g-import-not-at-top

  return rlds


def import_envlogger() -> types.ModuleType:
  """Imports and returns ``envlogger`` with the NumPy 2 alias in place."""
  patch_numpy_for_envlogger()
  import envlogger  # pylint: disable=g-import-not-at-top

  return envlogger


def patch_kauldron_for_gemma() -> None:
  """Lets gemma 3.3.0's ``gm.ckpts`` import beside kauldron >= 1.4 (see the docstring)."""
  import kauldron.checkpoints as kd_ckpts  # pylint: disable=g-import-not-at-top

  if (not hasattr(kd_ckpts, "AbstractPartialLoader")
      and hasattr(kd_ckpts, "InitTransform")):
    kd_ckpts.AbstractPartialLoader = kd_ckpts.InitTransform
