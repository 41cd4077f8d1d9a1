"""The wire format every teacher codec shares: input checks and byte-level helpers.

A blob starts with a one-byte codec tag and a format version, then the varint sizes
``T``, ``K``, ``S`` and a flags byte (:func:`_header`, :func:`_read_header`). The input
checks turn a turn's teacher arrays into a :class:`_Teacher` (or raise a ``ValueError``
that names the field, what was expected and what was found); the byte-level helpers
(varints, a bounds-checked reader, bit packing) write and read the bodies.

Private to :mod:`rlds_lm.teacher`: the codecs are the public surface.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from rlds_lm import schema as S

_FORMAT_VERSION = 1
_FLAG_TOKEN_LOGPROB = 1
_LOGPROB_SLACK = 1e-4  # stored log-probs may exceed 0 by rounding, as in validate
_FP16_MIN = float(np.finfo(np.float16).min)  # float16 log-probs clip here

_TOPK = (S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS)
_SAMPLED = (S.TEACHER_SAMPLED_IDS, S.TEACHER_SAMPLED_COUNTS)
_FIELDS = _TOPK + _SAMPLED + (S.TEACHER_TOKEN_LOGPROB,)


# --------------------------------------------------------------------------------------
# Input checks.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Teacher:
  """Checked arrays of one turn; ``None`` for fields that are absent."""

  num_tokens: int
  topk_ids: np.ndarray | None = None  # int64 [T, K]
  topk_logprobs: np.ndarray | None = None  # float64 [T, K]
  token_logprob: np.ndarray | None = None  # float32 [T]
  sampled_ids: np.ndarray | None = None  # int64 [T, S]
  sampled_counts: np.ndarray | None = None  # int64 [T, S]

  @property
  def k(self) -> int:
    return 0 if self.topk_ids is None else self.topk_ids.shape[1]

  @property
  def s(self) -> int:
    return 0 if self.sampled_ids is None else self.sampled_ids.shape[1]


def _ids(name: str, value: Any, vocab_size: int) -> np.ndarray:
  array = np.asarray(value)
  if array.ndim != 2:
    raise ValueError(f"{name}: expected shape [T, K], found shape {array.shape}")
  if array.size == 0 and array.dtype.kind == "f":
    array = array.astype(np.int64)
  if array.dtype.kind not in "iu":
    raise ValueError(f"{name}: expected integer ids, found dtype {array.dtype}")
  if array.size and (array.min() < 0 or array.max() >= vocab_size):
    bad = array.min() if array.min() < 0 else array.max()
    raise ValueError(f"{name}: expected ids in [0, {vocab_size}), found id {bad}")
  return array.astype(np.int64)


def _logprobs(name: str, value: Any, ndim: int) -> np.ndarray:
  array = np.asarray(value)
  if array.ndim != ndim:
    raise ValueError(f"{name}: expected rank {ndim}, found shape {array.shape}")
  if array.dtype.kind not in "fiu":
    raise ValueError(f"{name}: expected floating-point log-probs, found dtype {array.dtype}")
  array = array.astype(np.float64)
  if array.size:
    if not np.all(np.isfinite(array)):
      raise ValueError(f"{name}: expected finite log-probs, found "
                       f"{array[~np.isfinite(array)][0]}")
    if array.max() > _LOGPROB_SLACK:
      raise ValueError(f"{name}: expected log-probs <= 0, found max {array.max()}")
  return np.minimum(array, 0.0)


def _check(arrays: Mapping[str, Any], vocab_size: int) -> _Teacher:
  if not isinstance(arrays, Mapping):
    raise ValueError(f"arrays: expected a dict of teacher fields, found "
                     f"{type(arrays).__name__}")
  unknown = sorted(set(arrays) - set(_FIELDS))
  if unknown:
    raise ValueError(f"arrays: expected fields among {_FIELDS}, found unknown {unknown}")
  for pair in (_TOPK, _SAMPLED):
    present = [name for name in pair if name in arrays]
    if len(present) == 1:
      raise ValueError(f"arrays: expected {pair[0]} and {pair[1]} together, found only "
                       f"{present[0]}")
  if not any(name in arrays for name in _FIELDS):
    raise ValueError(f"arrays: expected at least one of {_FIELDS}, found none")
  out = _Teacher(num_tokens=-1)
  lengths: dict[str, int] = {}
  if S.TEACHER_TOPK_IDS in arrays:
    out.topk_ids = _ids(S.TEACHER_TOPK_IDS, arrays[S.TEACHER_TOPK_IDS], vocab_size)
    out.topk_logprobs = _logprobs(S.TEACHER_TOPK_LOGPROBS,
                                  arrays[S.TEACHER_TOPK_LOGPROBS], 2)
    if out.topk_logprobs.shape != out.topk_ids.shape:
      raise ValueError(f"{S.TEACHER_TOPK_LOGPROBS}: expected the shape of "
                       f"{S.TEACHER_TOPK_IDS} {out.topk_ids.shape}, found "
                       f"{out.topk_logprobs.shape}")
    if out.k > vocab_size:
      raise ValueError(f"{S.TEACHER_TOPK_IDS}: expected K <= vocab_size ({vocab_size}), "
                       f"found K = {out.k}")
    lengths[S.TEACHER_TOPK_IDS] = out.topk_ids.shape[0]
  if S.TEACHER_SAMPLED_IDS in arrays:
    out.sampled_ids = _ids(S.TEACHER_SAMPLED_IDS, arrays[S.TEACHER_SAMPLED_IDS], vocab_size)
    counts = np.asarray(arrays[S.TEACHER_SAMPLED_COUNTS])
    if counts.shape != out.sampled_ids.shape:
      raise ValueError(f"{S.TEACHER_SAMPLED_COUNTS}: expected the shape of "
                       f"{S.TEACHER_SAMPLED_IDS} {out.sampled_ids.shape}, found "
                       f"{counts.shape}")
    if counts.size and counts.dtype.kind not in "iu":
      raise ValueError(f"{S.TEACHER_SAMPLED_COUNTS}: expected integer counts, found dtype "
                       f"{counts.dtype}")
    counts = counts.astype(np.int64)
    if counts.size and counts.min() < 0:
      raise ValueError(f"{S.TEACHER_SAMPLED_COUNTS}: expected counts >= 0, found "
                       f"{counts.min()}")
    sums = counts.sum(axis=-1)
    if np.any(sums != out.s):
      raise ValueError(f"{S.TEACHER_SAMPLED_COUNTS}: expected each row to sum to S = "
                       f"{out.s}, found a row summing to {sums[sums != out.s][0]}")
    out.sampled_counts = counts
    lengths[S.TEACHER_SAMPLED_IDS] = counts.shape[0]
  if S.TEACHER_TOKEN_LOGPROB in arrays:
    out.token_logprob = _logprobs(S.TEACHER_TOKEN_LOGPROB,
                                  arrays[S.TEACHER_TOKEN_LOGPROB], 1).astype(np.float32)
    lengths[S.TEACHER_TOKEN_LOGPROB] = out.token_logprob.shape[0]
  if len(set(lengths.values())) > 1:
    raise ValueError(f"arrays: expected one token count T across fields, found {lengths}")
  out.num_tokens = next(iter(lengths.values()))
  return out


# --------------------------------------------------------------------------------------
# Byte-level helpers.
# --------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


class _Reader:
  """Sequential reads from a blob, with errors that say what ran out."""

  def __init__(self, data: bytes, codec: str):
    self.data = memoryview(bytes(data))
    self.pos = 0
    self.codec = codec

  def _need(self, n: int, what: str) -> None:
    if self.pos + n > len(self.data):
      raise ValueError(f"{self.codec} data: expected {n} more byte(s) for {what} at offset "
                       f"{self.pos}, found {len(self.data) - self.pos} (truncated?)")

  def byte(self, what: str) -> int:
    self._need(1, what)
    self.pos += 1
    return self.data[self.pos - 1]

  def varint(self, what: str) -> int:
    value = shift = 0
    while True:
      byte = self.byte(what)
      value |= (byte & 0x7F) << shift
      shift += 7
      if not byte & 0x80:
        return value
      if shift > 63:
        raise ValueError(f"{self.codec} data: expected a varint for {what}, found more "
                         f"than 9 continuation bytes")

  def take(self, n: int, what: str) -> bytes:
    self._need(n, what)
    self.pos += n
    return bytes(self.data[self.pos - n:self.pos])

  def array(self, dtype: Any, count: int, what: str) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(self.take(count * dtype.itemsize, what), dtype).astype(
        dtype.newbyteorder("="))

  def done(self) -> None:
    if self.pos != len(self.data):
      raise ValueError(f"{self.codec} data: expected the end after {self.pos} bytes, found "
                       f"{len(self.data) - self.pos} trailing byte(s)")


def _le(array: np.ndarray, dtype: Any) -> bytes:
  return np.ascontiguousarray(array, np.dtype(dtype).newbyteorder("<")).tobytes()


def pack_bits(values: np.ndarray, nbits: np.ndarray | int) -> bytes:
  """Concatenates the low ``nbits[i]`` bits of each value, most significant first.

  Args:
    values: non-negative int [N], each ``< 2**nbits[i]``.
    nbits: int [N] or one width for all, each in ``[0, 63]``.

  Returns:
    ``ceil(sum(nbits) / 8)`` bytes, zero-padded at the end.
  """
  values = np.asarray(values, np.uint64).reshape(-1)
  nbits = np.broadcast_to(np.asarray(nbits, np.int64), values.shape)
  width = int(nbits.max()) if nbits.size else 0
  if width == 0:
    return b""
  shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
  bits = ((values[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)
  return np.packbits(bits[shifts[None, :] < nbits[:, None].astype(np.uint64)]).tobytes()


def unpack_bits(data: bytes, nbits: np.ndarray | int, count: int | None = None) -> np.ndarray:
  """Inverse of :func:`pack_bits`: int64 [N] values of widths ``nbits``."""
  nbits = np.asarray(nbits, np.int64)
  if nbits.ndim == 0:
    nbits = np.full(count or 0, int(nbits), np.int64)
  width = int(nbits.max()) if nbits.size else 0
  total = int(nbits.sum())
  if total > 8 * len(data):
    raise ValueError(f"bit stream: expected {total} bits, found {8 * len(data)}")
  if width == 0:
    return np.zeros(nbits.shape, np.int64)
  bits = np.unpackbits(np.frombuffer(data, np.uint8), count=total)
  shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
  matrix = np.zeros((nbits.shape[0], width), np.int64)
  matrix[shifts[None, :] < nbits[:, None]] = bits
  return matrix @ (np.int64(1) << shifts)


def _bit_length(values: np.ndarray) -> np.ndarray:
  """Exact bit length of non-negative ints < 2**53 (0 -> 0)."""
  return np.frexp(values.astype(np.float64))[1].astype(np.int64)


def _id_bits(vocab_size: int) -> int:
  return max(1, int(vocab_size - 1).bit_length())


def _check_vocab(codec: Any) -> None:
  vocab = codec.vocab_size
  if not isinstance(vocab, (int, np.integer)) or not 1 <= vocab <= 2**31:
    raise ValueError(f"{type(codec).__name__}.vocab_size: expected an int in [1, 2**31] "
                     f"(ids are int32), found {vocab!r}")


def _check_decoded_ids(codec: Any, out: Mapping[str, np.ndarray]) -> None:
  for name in (S.TEACHER_TOPK_IDS, S.TEACHER_SAMPLED_IDS):
    ids = out.get(name)
    if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= codec.vocab_size):
      bad = ids.min() if ids.min() < 0 else ids.max()
      raise ValueError(f"{codec.name} data: expected {name} in [0, {codec.vocab_size}), "
                       f"found {bad} (corrupt, or written for another vocabulary?)")


def _header(tag: int, teacher: _Teacher, version: int = _FORMAT_VERSION) -> bytes:
  flags = _FLAG_TOKEN_LOGPROB if teacher.token_logprob is not None else 0
  return (bytes([tag, version]) + _varint(teacher.num_tokens) + _varint(teacher.k)
          + _varint(teacher.s) + bytes([flags]))


def _read_header(reader: _Reader, tag: int, num_tokens: int,
                 vocab_size: int) -> tuple[int, int, bool]:
  """Checks the header of a blob in format version 1; returns ``(K, S, has_tlp)``."""
  _, k, s, has_tlp = _read_versioned_header(reader, tag, num_tokens, vocab_size,
                                            (_FORMAT_VERSION,))
  return k, s, has_tlp


def _read_versioned_header(reader: _Reader, tag: int, num_tokens: int, vocab_size: int,
                           versions: tuple[int, ...]) -> tuple[int, int, int, bool]:
  """Checks a header whose format version is one of ``versions``; returns
  ``(version, K, S, has_tlp)``."""
  found = reader.byte("the codec tag")
  if found != tag:
    from rlds_lm.teacher._codecs import _TAG_NAMES  # pylint: disable=g-import-not-at-top
    raise ValueError(f"{reader.codec} data: expected codec tag {tag} "
                     f"({_TAG_NAMES.get(tag)!r}), found tag {found} "
                     f"({_TAG_NAMES.get(found, 'unknown')!r})")
  version = reader.byte("the format version")
  if version not in versions:
    expected = " or ".join(str(v) for v in versions)
    raise ValueError(f"{reader.codec} data: expected format version {expected}, found "
                     f"{version} (written by a newer rlds_lm?)")
  t = reader.varint("T")
  if t != num_tokens:
    raise ValueError(f"{reader.codec} data: expected num_tokens = {num_tokens}, found "
                     f"T = {t} in the data")
  k = reader.varint("K")
  if k > vocab_size:
    raise ValueError(f"{reader.codec} data: expected K <= vocab_size ({vocab_size}), found "
                     f"K = {k} (data written for another vocabulary?)")
  s = reader.varint("S")
  if s >= 2**31:
    raise ValueError(f"{reader.codec} data: expected S < 2**31, found S = {s}")
  flags = reader.byte("the flags")
  return version, k, s, bool(flags & _FLAG_TOKEN_LOGPROB)


def _sampled_layout(rows: np.ndarray, ids: np.ndarray, counts: np.ndarray, t: int,
                    s: int) -> dict[str, np.ndarray]:
  """Canonical sampled-k arrays: per row, ids ascending with counts, then (0, 0) slots."""
  out_ids = np.zeros((t, s), np.int32)
  out_counts = np.zeros((t, s), np.int32)
  if rows.size:
    starts = np.searchsorted(rows, np.arange(t))
    slot = np.arange(rows.size) - starts[rows]
    out_ids[rows, slot] = ids
    out_counts[rows, slot] = counts
  return {S.TEACHER_SAMPLED_IDS: out_ids, S.TEACHER_SAMPLED_COUNTS: out_counts}


def _sampled_entries(teacher: _Teacher) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(row, id, count) of the slots with count > 0, ids ascending within each row."""
  counts = teacher.sampled_counts
  ids = teacher.sampled_ids
  rows = np.broadcast_to(np.arange(counts.shape[0])[:, None], counts.shape)
  held = counts > 0
  rows, ids, counts = rows[held], ids[held], counts[held]
  order = np.lexsort((ids, rows))
  rows, ids, counts = rows[order], ids[order], counts[order]
  same = (rows[1:] == rows[:-1]) & (ids[1:] == ids[:-1])
  if np.any(same):
    i = int(np.flatnonzero(same)[0])
    raise ValueError(f"{S.TEACHER_SAMPLED_IDS}: expected distinct ids among the slots with "
                     f"count > 0, found id {ids[i]} twice in row {rows[i]}")
  return rows, ids, counts
