"""The one place where rlds_lm patches its dependency stack.

Four upstream problems are handled here, and nowhere else:

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

4. **Start-up noise.** TensorFlow prints oneDNN / CUDA / CPU-feature lines on import
   (through absl's C++ logging *before* it is initialised, so ``TF_CPP_MIN_LOG_LEVEL``
   cannot hide them), TFDS logs "``FeatureConnector.dtype`` is deprecated" for its own
   calls, Beam logs "apitools not found", envlogger's glog prints "Logging before
   InitGoogleLogging" and INFO lines. :func:`quiet` (called when ``rlds_lm`` is
   imported) hides exactly these lines and nothing else: every other line, warnings and
   errors included, still reaches stderr. ``RLDS_LM_VERBOSE=1`` in the environment, or
   :func:`set_verbose` (the command line's ``--verbose``), turns it off.

All are idempotent. Call :func:`import_rlds` / :func:`import_envlogger` instead of
importing those packages directly.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import types
from collections.abc import Iterator
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


# ---------------------------------------------------------------------------------------
# 4. Quiet by default.

VERBOSE_ENV = "RLDS_LM_VERBOSE"

# Environment defaults read by C++ libraries when they load (set only where unset):
# TensorFlow's logging after its start-up, and glog in envlogger's Riegeli backend
# (INFO lines such as "Empty steps, nothing to do", with the "Logging before
# InitGoogleLogging" banner they bring); warnings and errors still show.
_ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "1"}
_ENV_VERBOSE = {"TF_CPP_MIN_LOG_LEVEL": "0", "GLOG_minloglevel": "0"}

# Python log records that say nothing to our users, by logger name.
_LOG_NOISE = {
    "absl": re.compile(r"`\w+\.dtype` is deprecated|Variant folder .* has no "
                       r"dataset_info\.json"),
    "root": re.compile(r"apitools not found"),
}

# What TensorFlow writes to the C-level stderr while it is imported: absl's pre-init
# banner and INFO / WARNING lines (oneDNN, CUDA stubs, CPU features), the CPU-feature
# line's continuation, and the failed cuInit of a GPU build on a host without a GPU.
_TF_IMPORT_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \S+\s+\d+ \S+\.cc:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|E\d{4} \S+\s+\d+ cuda_(platform|executor|diagnostics)\.cc:\d+\]"
    r"|\s*$")  # and blank lines

_state: dict[str, Any] = {"quiet": False, "env": {}}


class _DropNoise(logging.Filter):
  """Drops the records whose message ``pattern`` finds; keeps every other."""

  def __init__(self, pattern: re.Pattern[str]):
    super().__init__()
    self.pattern = pattern

  def filter(self, record: logging.LogRecord) -> bool:
    try:
      return not self.pattern.search(record.getMessage())
    except Exception:  # noqa: BLE001 - a malformed record is not ours to drop
      return True


_FILTERS = {name: _DropNoise(pattern) for name, pattern in _LOG_NOISE.items()}


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str] = _TF_IMPORT_NOISE) -> Iterator[None]:
  """Captures the process's stderr (file descriptor 2) and writes back, at the end,
  every line that does not start with a match of ``noise``."""
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # no stderr to capture
    yield
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      with contextlib.suppress(Exception):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
      kept = "".join(line for line in lines if not noise.match(line))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
  """Runs another loader's ``exec_module`` with TensorFlow's start-up lines filtered."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module: types.ModuleType) -> None:
    with filtered_stderr():
      self._loader.exec_module(module)
      with contextlib.suppress(Exception):  # a GPU build probes CUDA here, not later
        module.config.list_physical_devices("GPU")

  def __getattr__(self, name: str) -> Any:
    return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` as the other finders do, with a :class:`_QuietLoader`."""

  _searching = False

  def find_spec(self, fullname, path=None, target=None):
    if fullname != "tensorflow" or self._searching or not _state["quiet"]:
      return None
    self._searching = True
    try:
      spec = importlib.util.find_spec(fullname)
    finally:
      self._searching = False
    if spec is None or spec.loader is None:
      return None
    spec.loader = _QuietLoader(spec.loader)
    return spec


_FINDER = _QuietTensorFlowFinder()


def quiet() -> None:
  """Hides the known start-up noise of the stack (see the module docstring).

  Does nothing when ``RLDS_LM_VERBOSE`` is set (to anything but ``0``) or after
  ``set_verbose(True)``. Environment variables the user set are left alone.
  """
  if os.environ.get(VERBOSE_ENV, "0") not in ("", "0") or _state["quiet"]:
    return
  _state["quiet"] = True
  for key, value in _ENV_DEFAULTS.items():
    if key not in os.environ:
      os.environ[key] = value
      _state["env"][key] = value
  with contextlib.suppress(ImportError):  # absl's logger must be of absl's own class
    import absl.logging  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  for name, log_filter in _FILTERS.items():
    logging.getLogger(None if name == "root" else name).addFilter(log_filter)
  if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
    sys.meta_path.insert(0, _FINDER)


def set_verbose(verbose: bool = True) -> None:
  """``True``: undoes :func:`quiet` (and sets the C++ libraries' levels to show INFO
  where they have not loaded yet); ``False``: :func:`quiet`."""
  if not verbose:
    os.environ.pop(VERBOSE_ENV, None)
    quiet()
    return
  os.environ[VERBOSE_ENV] = "1"
  _state["quiet"] = False
  for key, value in _ENV_VERBOSE.items():
    if key not in os.environ or _state["env"].get(key) == os.environ[key]:
      os.environ[key] = value
  _state["env"] = {}
  for name, log_filter in _FILTERS.items():
    logging.getLogger(None if name == "root" else name).removeFilter(log_filter)
  if _FINDER in sys.meta_path:
    sys.meta_path.remove(_FINDER)
