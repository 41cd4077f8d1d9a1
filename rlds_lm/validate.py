"""Checks an episode against its :class:`~rlds_lm.schema.SchemaConfig`.

:func:`validate_episode` returns a *normalised* copy (canonical numpy dtypes, strings as
``str``) or raises :class:`EpisodeValidationError` naming the episode, the field, what
was expected and what was found. It never modifies its input.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from rlds_lm import schema as S

_LOGPROB_SLACK = 1e-4  # log-probs may exceed 0 by float rounding, not more
_MASS_SLACK = 1e-3  # top-k probabilities may sum above 1 by rounding, not more
_MASS_MARGIN = 1e-4  # a float32 row mass this close to the limit is summed in float64

# Size limits: what can be stored. An episode is one protocol buffer in every format
# (a tf.train.Example in TFDS, Riegeli records per step), and protocol buffers stop at
# 2 GiB; the estimate below is an upper bound (integers at 10 bytes, the longest varint),
# so 1 GiB leaves room for the per-field overhead. Read at every check, so a test (or a
# user) may lower them.
MAX_EPISODE_BYTES = 2**30  # estimated serialized size of one episode, all fields
MAX_IMAGE_SIDE = 1_000_000  # pixels per image side: libpng's limit (TFDS stores PNG)
_INT_BYTES = 10  # the longest varint: the serialized size of one integer, at most

# Scalar fields given as Python values: checked without numpy (_Checker._py_scalar).
_PY_SCALARS = frozenset((bool, int, float))
_DTYPES: dict[str, np.dtype] = {}  # schema dtype name -> np.dtype, built once each
_INT_BOUNDS = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}
_F32 = struct.Struct("f")
_FLOAT_ROUND = {"float32": lambda v: _F32.unpack(_F32.pack(v))[0], "float64": float}
_FLOAT_BYTES = {"float32": 4, "float64": 8}


class EpisodeValidationError(ValueError):
  """An episode does not match the schema.

  Attributes:
    episode_id: the offending episode's id ("" if it has none).
    field: path of the offending field, e.g. ``steps[0]/action_logprobs``.
    expected: what the schema requires.
    found: what the episode holds.
  """

  def __init__(self, episode_id: str, field: str, expected: str, found: str):
    self.episode_id = episode_id
    self.field = field
    self.expected = expected
    self.found = found
    super().__init__(
        f"episode {episode_id or '<no id>'!r}, field {field!r}: expected {expected}; "
        f"found {found}")


def _describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f"array dtype={value.dtype} shape={value.shape}"
  text = repr(value)
  return f"{type(value).__name__} {text[:60]}"


class _Checker:
  """Validates one episode; carries the id for error messages."""

  def __init__(self, config: S.SchemaConfig, episode_id: str):
    self.config = config
    self.episode_id = episode_id
    self.size = 0  # estimated serialized bytes so far
    self.largest = ("", 0)  # (path, bytes) of the largest field so far

  def fail(self, field: str, expected: str, found: str):
    raise EpisodeValidationError(self.episode_id, field, expected, found)

  # -- leaves ----------------------------------------------------------------------

  def leaf(self, path: str, spec: S.FieldSpec, value: Any, lengths: dict[str, int]) -> Any:
    if spec.is_string:
      return self._string(path, spec, value)
    if not spec.shape and type(value) in _PY_SCALARS:
      checked = self._py_scalar(path, spec, value)
      if checked is not None:
        return checked
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype == object:
      self.fail(path, f"{spec.dtype} values", _describe(value))
    array = self._dtype(path, spec, array)
    self._shape(path, spec, array, lengths)
    if _is_image(spec):
      self._image(path, array)
      self.count_bytes(path, array.size)  # PNG: about the raw size, at worst
    else:
      self.count_bytes(path, array.size * (_INT_BYTES if array.dtype.kind in "iub"
                                           else array.itemsize))
    self._values(path, spec, array)
    if not spec.shape:
      return array.item() if spec.dtype != "bool" else bool(array)
    return array

  def _py_scalar(self, path: str, spec: S.FieldSpec, value: Any) -> Any:
    """A valid Python bool, int or float for a scalar field, normalised as :meth:`leaf`
    does, without numpy (a scalar through numpy costs ~10 us, most of recording a
    short episode); None for anything else, which :meth:`leaf` then checks (and
    explains)."""
    if spec.dtype == "bool" or type(value) is bool:
      if spec.dtype != "bool" or type(value) is not bool:
        return None
      self.count_bytes(path, _INT_BYTES)
      return value
    bounds = _INT_BOUNDS.get(spec.dtype)
    if bounds is not None:
      if type(value) is not int or not bounds[0] <= value <= bounds[1]:
        return None
      size = _INT_BYTES
    elif spec.dtype in _FLOAT_ROUND:
      try:
        value = _FLOAT_ROUND[spec.dtype](value)
      except OverflowError:
        return None
      if not math.isfinite(value):
        return None
      size = _FLOAT_BYTES[spec.dtype]
    else:
      return None
    kind = spec.kind
    if not (kind in ("", "finite", "choice") or
            (kind == "unit" and 0 <= value <= 1) or
            (kind in ("nonneg", "length") and value >= 0) or
            (kind == "logprob" and value <= _LOGPROB_SLACK)):
      return None
    self.count_bytes(path, size)
    return value

  def _string(self, path: str, spec: S.FieldSpec, value: Any) -> Any:
    if spec.shape:  # string vector
      if isinstance(value, (str, bytes)):
        self.fail(path, "a list of strings", _describe(value))
      items = list(value.tolist() if isinstance(value, np.ndarray) else value)
      return np.asarray([self._text(f"{path}[{i}]", item) for i, item in enumerate(items)],
                        dtype=object)
    if isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    return self._text(path, value)

  def _text(self, path: str, value: Any) -> str:
    """One string: valid UTF-8 both ways (no lone surrogates), counted in the size."""
    if isinstance(value, bytes):
      try:
        value = value.decode("utf-8")
      except UnicodeDecodeError as err:
        self.fail(path, "UTF-8 text", f"undecodable bytes at byte {err.start}")
    if not isinstance(value, str):
      self.fail(path, "a string", _describe(value))
    if value.isascii():  # O(1) in CPython: no copy of a long text
      size = len(value)
    else:
      try:
        size = len(value.encode("utf-8"))
      except UnicodeEncodeError as err:  # lone surrogates: Python str, not Unicode text
        self.fail(path, "text encodable as UTF-8 (no lone surrogates)",
                  f"{value[err.start]!r} at character {err.start}")
    self.count_bytes(path, size)
    return value

  def count_bytes(self, path: str, size: int) -> None:
    """Adds a field's (estimated) serialized size; fails past MAX_EPISODE_BYTES.

    The error names the largest field so far (what to shrink), not the one that
    happened to cross the limit.
    """
    self.size += size
    if size >= self.largest[1]:
      self.largest = (path, size)
    if self.size > MAX_EPISODE_BYTES:
      field, field_size = self.largest
      self.fail(field, f"an episode of at most {MAX_EPISODE_BYTES} bytes serialized "
                "(validate.MAX_EPISODE_BYTES: a protocol buffer stops at 2 GiB)",
                f"{self.size} bytes (estimated) by {path}, this field holding "
                f"{field_size}")

  def _dtype(self, path: str, spec: S.FieldSpec, array: np.ndarray) -> np.ndarray:
    want = _DTYPES.get(spec.dtype)
    if want is None:
      want = _DTYPES[spec.dtype] = np.dtype(spec.dtype)
    kind = array.dtype.kind
    if want.kind == "b":
      if kind != "b":
        self.fail(path, "bool", _describe(array))
      return array.astype(bool, copy=False)
    if array.dtype == want:  # nothing to convert, every value fits
      return array
    if want.kind == "i":
      if kind not in "iu":
        if array.size == 0 and kind == "f":  # np.asarray([]) is float64
          return array.astype(want)
        self.fail(path, f"integer values ({spec.dtype})", _describe(array))
      info = np.iinfo(want)
      if array.size and (array.min() < info.min or array.max() > info.max):
        self.fail(path, f"values that fit {spec.dtype}",
                  f"range [{array.min()}, {array.max()}]")
      return array.astype(want, copy=False)
    if want.kind == "u":
      if kind not in "u":
        self.fail(path, f"{spec.dtype} values", _describe(array))
      if array.size and array.max() > np.iinfo(want).max:
        self.fail(path, f"values that fit {spec.dtype}", f"max {array.max()}")
      return array.astype(want, copy=False)
    # float
    if kind not in "fiu" or kind == "b":
      self.fail(path, f"floating-point values ({spec.dtype})", _describe(array))
    return array.astype(want, copy=False)

  def _shape(self, path: str, spec: S.FieldSpec, array: np.ndarray,
             lengths: dict[str, int]) -> None:
    if array.ndim != len(spec.shape):
      self.fail(path, f"rank {len(spec.shape)} (shape {_shape_text(spec.shape)})",
                f"shape {array.shape}")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
      if isinstance(want, int):
        if got != want:
          self.fail(path, f"shape {_shape_text(spec.shape)} with dim {axis} == {want}",
                    f"shape {array.shape}")
      elif isinstance(want, str):
        if want in lengths and got != lengths[want]:
          self.fail(path, f"{want} = {lengths[want]} entries along dim {axis} "
                          f"(the length of {_LENGTH_SOURCE.get(want, want)})",
                    f"shape {array.shape}")
        lengths.setdefault(want, got)

  def _image(self, path: str, array: np.ndarray) -> None:
    height, width = array.shape[:2]
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
      self.fail(path, f"an image of 1 to {MAX_IMAGE_SIDE} pixels per side "
                "(validate.MAX_IMAGE_SIDE; PNG)", f"shape {array.shape}")

  def _values(self, path: str, spec: S.FieldSpec, array: np.ndarray) -> None:
    if array.size == 0:
      return
    if spec.dtype.startswith("float"):
      # min and max are finite exactly when every value is (NaN propagates): two
      # reductions that the value checks below reuse, instead of a mask and a third.
      lo, hi = array.min(), array.max()
      if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int(np.flatnonzero(~np.isfinite(array.reshape(-1)))[0])
        self.fail(path, "finite values", f"{array.reshape(-1)[bad]} at flat index {bad}")
      if spec.kind in ("logprob", "topk"):
        if hi > _LOGPROB_SLACK:
          self.fail(path, "log-probabilities <= 0", f"max {hi}")
        # float32 exp (vectorised, ~3x faster; relative error < 1e-6, far inside the
        # margin) settles every row well below the limit; the rest as before, in float64.
        if spec.kind == "topk" and (array.dtype != np.float32 or np.exp(array).sum(
            axis=-1, dtype=np.float64).max() > 1.0 + _MASS_SLACK - _MASS_MARGIN):
          mass = np.exp(array.astype(np.float64)).sum(axis=-1)
          if mass.max() > 1.0 + _MASS_SLACK:
            self.fail(path, "top-k probabilities summing to <= 1 over the full "
                      "vocabulary", f"a row summing to {mass.max():.4f}")
        return
      if spec.kind == "unit":
        if lo < 0 or hi > 1:
          flat = array.reshape(-1)
          self.fail(path, "a value in [0, 1]", f"{flat[(flat < 0) | (flat > 1)][0]}")
        return
      if spec.kind == "nonneg":
        if lo < 0:
          self.fail(path, "a value >= 0", f"{lo}")
        return
    if spec.kind == "token":
      lo, hi = int(array.min()), int(array.max())
      if lo < 0 or hi >= self.config.vocab_size:
        bad = lo if lo < 0 else hi
        self.fail(path, f"token ids in [0, {self.config.vocab_size})", f"token id {bad}")
    elif spec.kind == "logprob" or spec.kind == "topk":
      if array.max() > _LOGPROB_SLACK:
        self.fail(path, "log-probabilities <= 0", f"max {array.max()}")
      if spec.kind == "topk":
        mass = np.exp(array.astype(np.float64)).sum(axis=-1)
        if mass.max() > 1.0 + _MASS_SLACK:
          self.fail(path, "top-k probabilities summing to <= 1 over the full vocabulary",
                    f"a row summing to {mass.max():.4f}")
    elif spec.kind == "unit":
      if array.min() < 0 or array.max() > 1:
        flat = array.reshape(-1)
        self.fail(path, "a value in [0, 1]", f"{flat[(flat < 0) | (flat > 1)][0]}")
    elif spec.kind == "nonneg":
      if array.min() < 0:
        self.fail(path, "a value >= 0", f"{array.min()}")
    elif spec.kind == "counts":
      if array.min() < 0:
        self.fail(path, "counts >= 0", f"{array.min()}")
      sums = array.sum(axis=-1)
      if np.any(sums != self.config.teacher_sampled_k):
        self.fail(path, f"each token's counts summing to S = {self.config.teacher_sampled_k}",
                  f"a row summing to {int(sums[sums != self.config.teacher_sampled_k][0])}")
    elif spec.kind == "length":
      if array.min() < 0:
        self.fail(path, "lengths >= 0", f"{array.min()}")

  # -- structure -------------------------------------------------------------------

  def tree(self, path: str, specs: Mapping[str, Any], value: Any,
           lengths: dict[str, int]) -> dict[str, Any]:
    if type(value) is not dict and not isinstance(value, Mapping):
      self.fail(path or "<episode>", "a dict", _describe(value))
    if value.keys() != specs.keys():  # one set comparison in C for the usual case
      missing = [k for k in specs if k not in value]
      if missing:
        self.fail(_join(path, missing[0]), "a required field", "nothing (missing)")
      unknown = sorted(k for k in value if k not in specs)
      if unknown:
        self.fail(_join(path, unknown[0]), f"one of the schema fields {sorted(specs)}",
                  "an unknown field")
    out = {}
    prefix = path + "/" if path else ""
    for key, spec in specs.items():
      if isinstance(spec, S.FieldSpec):
        out[key] = self.leaf(prefix + key, spec, value[key], lengths)
      else:
        out[key] = self.tree(prefix + key, spec, value[key], lengths)
    return out


_LENGTH_SOURCE = {"T": "action/tokens", "T_obs": "observation/tokens",
                  "C": "observation/candidate_lengths"}


def _is_image(spec: S.FieldSpec) -> bool:
  return spec.dtype == "uint8" and len(spec.shape) == 3  # [H, W, C], stored as PNG


def _join(path: str, key: str) -> str:
  return f"{path}/{key}" if path else key


def _shape_text(shape: tuple[Any, ...]) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


@functools.lru_cache(maxsize=64)
def _specs(config: S.SchemaConfig) -> tuple[dict[str, Any], dict[str, Any]]:
  """(episode metadata specs, step specs) of ``config``, built once (~45 us a time);
  read only."""
  return S.episode_metadata_specs(config), S.step_specs(config)


def validate_episode(episode: Mapping[str, Any], config: S.SchemaConfig) -> dict[str, Any]:
  """Validates ``episode`` against ``config`` and returns a normalised copy.

  Raises:
    EpisodeValidationError: with the episode id, the field path, the expectation and
      the finding.
  """
  episode_id = episode.get(S.EPISODE_ID, "") if isinstance(episode, Mapping) else ""
  if isinstance(episode_id, bytes):
    episode_id = episode_id.decode("utf-8", "replace")
  checker = _Checker(config, str(episode_id))
  if not isinstance(episode, Mapping):
    checker.fail("<episode>", "a dict", _describe(episode))
  if S.STEPS not in episode:
    checker.fail(S.STEPS, "a required field", "nothing (missing)")
  meta_specs, specs = _specs(config)
  metadata = {k: v for k, v in episode.items() if k != S.STEPS}
  out = checker.tree("", meta_specs, metadata, {})
  if not out[S.EPISODE_ID]:
    checker.fail(S.EPISODE_ID, "a non-empty id", "an empty string")
  steps = episode[S.STEPS]
  if isinstance(steps, (str, bytes, Mapping)) or not hasattr(steps, "__len__"):
    checker.fail(S.STEPS, "a list of steps", _describe(steps))
  if len(steps) < 2:
    checker.fail(S.STEPS, "at least 2 steps (turns + the final observation)",
                 f"{len(steps)} step(s)")
  n = len(steps)
  normalised = []
  for i, step in enumerate(steps):
    path = f"steps[{i}]"
    lengths: dict[str, int] = {}
    if config.kind == S.ROLLOUT and isinstance(step, Mapping):
      action = step.get(S.ACTION)
      if isinstance(action, Mapping) and S.ACT_TOKENS in action:
        tokens = np.asarray(action[S.ACT_TOKENS])
        lengths["T"] = tokens.shape[0] if tokens.ndim == 1 else -1
    if config.kind == S.PREFERENCE and isinstance(step, Mapping):
      obs = step.get(S.OBSERVATION)
      if isinstance(obs, Mapping) and S.OBS_CANDIDATE_LENGTHS in obs:
        lengths["C"] = len(np.asarray(obs[S.OBS_CANDIDATE_LENGTHS]).reshape(-1))
    out_step = checker.tree(path, specs, step, lengths)
    _check_flags(checker, path, out_step, i, n)
    _check_step_semantics(checker, config, path, out_step, i, n)
    normalised.append(out_step)
  last, before_last = normalised[-1], normalised[-2]
  if last[S.REWARD] != 0.0:
    checker.fail(f"steps[{n - 1}]/{S.REWARD}",
                 "0.0 on the last step (RLDS: it carries no action, hence no reward)",
                 str(last[S.REWARD]))
  if last[S.DISCOUNT] != 1.0:
    checker.fail(f"steps[{n - 1}]/{S.DISCOUNT}", "1.0 on the last step (a placeholder: "
                 "the discount that ended the episode sits on the step before)",
                 str(last[S.DISCOUNT]))
  if last[S.IS_TERMINAL] != (before_last[S.DISCOUNT] == 0.0):
    checker.fail(f"steps[{n - 2}]/{S.DISCOUNT}",
                 "0.0 exactly when the episode terminates (last step is_terminal="
                 f"{last[S.IS_TERMINAL]})", str(before_last[S.DISCOUNT]))
  if config.kind == S.PREFERENCE:
    if out[S.JUDGE][S.JUDGE_KIND] not in S.JUDGE_KINDS:
      checker.fail(f"{S.JUDGE}/{S.JUDGE_KIND}", f"one of {S.JUDGE_KINDS}",
                   repr(out[S.JUDGE][S.JUDGE_KIND]))
    c = len(normalised[0][S.OBSERVATION][S.OBS_CANDIDATE_LENGTHS])
    if len(out[S.CANDIDATE_IDS]) != c:
      checker.fail(S.CANDIDATE_IDS, f"one id per candidate ({c})",
                   f"{len(out[S.CANDIDATE_IDS])} ids")
  out[S.STEPS] = normalised
  return out


def _check_flags(checker: _Checker, path: str, step: Mapping[str, Any], i: int,
                 n: int) -> None:
  if step[S.IS_FIRST] != (i == 0):
    checker.fail(f"{path}/{S.IS_FIRST}", f"{i == 0} (only the first step is first)",
                 str(step[S.IS_FIRST]))
  if step[S.IS_LAST] != (i == n - 1):
    checker.fail(f"{path}/{S.IS_LAST}", f"{i == n - 1} (only the final step is last)",
                 str(step[S.IS_LAST]))
  if step[S.IS_TERMINAL] and i != n - 1:
    checker.fail(f"{path}/{S.IS_TERMINAL}", "False before the last step", "True")
  if i < n - 2 and step[S.DISCOUNT] == 0.0:
    checker.fail(f"{path}/{S.DISCOUNT}", "> 0 before the step whose action ended the "
                 "episode (a 0 discount ends it)", "0.0")


def _check_step_semantics(checker: _Checker, config: S.SchemaConfig, path: str,
                          step: Mapping[str, Any], i: int, n: int) -> None:
  obs = step[S.OBSERVATION]
  if obs[S.OBS_ROLE] not in S.ROLES:
    checker.fail(f"{path}/{S.OBSERVATION}/{S.OBS_ROLE}", f"one of {S.ROLES}",
                 repr(obs[S.OBS_ROLE]))
  last = i == n - 1
  if config.kind == S.ROLLOUT and S.TEACHER in step:
    _check_teacher_rows(checker, f"{path}/{S.TEACHER}", step[S.TEACHER])
  if config.kind == S.ROLLOUT:
    length = step[S.ACTION][S.ACT_TOKENS].shape[0]
    if last and length:
      checker.fail(f"{path}/{S.ACTION}/{S.ACT_TOKENS}",
                   "no action on the last step (RLDS: final observation only)",
                   f"{length} tokens")
    if not last and length == 0:
      checker.fail(f"{path}/{S.ACTION}/{S.ACT_TOKENS}", "a non-empty action",
                   "an empty action (0 tokens)")
  else:
    c = len(obs[S.OBS_CANDIDATE_LENGTHS])
    lengths = obs[S.OBS_CANDIDATE_LENGTHS]
    total = int(lengths.sum()) if lengths.size else 0
    if total != obs[S.OBS_CANDIDATE_TOKENS].shape[0]:
      checker.fail(f"{path}/{S.OBSERVATION}/{S.OBS_CANDIDATE_LENGTHS}",
                   f"lengths summing to the {obs[S.OBS_CANDIDATE_TOKENS].shape[0]} "
                   "candidate tokens", f"a sum of {total}")
    action = step[S.ACTION]
    if last:
      return
    if c < 2:
      checker.fail(f"{path}/{S.OBSERVATION}/{S.OBS_CANDIDATE_LENGTHS}",
                   "at least 2 candidates", f"{c}")
    if not -1 <= action[S.ACT_CHOICE] < c:
      checker.fail(f"{path}/{S.ACTION}/{S.ACT_CHOICE}", f"-1 (tie) or an index in [0, {c})",
                   str(action[S.ACT_CHOICE]))
    if sorted(action[S.ACT_RANKING].tolist()) != list(range(c)):
      checker.fail(f"{path}/{S.ACTION}/{S.ACT_RANKING}", f"a permutation of 0..{c - 1}",
                   str(action[S.ACT_RANKING].tolist()))


def _first_duplicate_row(ids: np.ndarray) -> int:
  """Index of the first row of ``ids`` [T, K] holding an id twice, or -1."""
  ordered = np.sort(ids, axis=-1)
  dup = (ordered[:, 1:] == ordered[:, :-1]).any(axis=-1)
  return int(np.flatnonzero(dup)[0]) if dup.any() else -1


def _check_teacher_rows(checker: _Checker, path: str, teacher: Mapping[str, Any]) -> None:
  """Top-k rows hold distinct ids, most likely first; sampled rows hold distinct ids."""
  ids = teacher.get(S.TEACHER_TOPK_IDS)
  if ids is not None and ids.size:
    row = _first_duplicate_row(ids)
    if row >= 0:
      checker.fail(f"{path}/{S.TEACHER_TOPK_IDS}", "distinct ids in each token's top-k",
                   f"a repeated id at token {row}")
    logprobs = teacher[S.TEACHER_TOPK_LOGPROBS]
    steps_up = logprobs[..., 1:] - logprobs[..., :-1] > _LOGPROB_SLACK  # np.diff
    if steps_up.any():
      row = int(np.flatnonzero(steps_up.any(axis=-1))[0])
      checker.fail(f"{path}/{S.TEACHER_TOPK_LOGPROBS}", "log-probs sorted most likely "
                   "first (non-increasing)", f"an increase at token {row}")
  sampled = teacher.get(S.TEACHER_SAMPLED_IDS)
  if sampled is not None and sampled.size:
    counts = teacher[S.TEACHER_SAMPLED_COUNTS]
    # Unused slots (count 0) may repeat id 0: give each a distinct negative stand-in.
    stand_in = -1 - np.arange(sampled.shape[-1])
    row = _first_duplicate_row(np.where(counts > 0, sampled, stand_in))
    if row >= 0:
      checker.fail(f"{path}/{S.TEACHER_SAMPLED_IDS}", "distinct drawn ids per token",
                   f"a repeated id at token {row}")
