"""The packed teacher codec: entropy-coded ids, quantised probabilities.

See :class:`PackedCodec` for the layout; the header and the byte-level helpers are
shared with the simple codecs (:mod:`rlds_lm.teacher._bytes`).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from rlds_lm import schema as S
from rlds_lm.teacher._bytes import _FP16_MIN
from rlds_lm.teacher._bytes import _Reader
from rlds_lm.teacher._bytes import _Teacher
from rlds_lm.teacher._bytes import _bit_length
from rlds_lm.teacher._bytes import _check
from rlds_lm.teacher._bytes import _check_vocab
from rlds_lm.teacher._bytes import _header
from rlds_lm.teacher._bytes import _le
from rlds_lm.teacher._bytes import _read_versioned_header
from rlds_lm.teacher._bytes import _sampled_entries
from rlds_lm.teacher._bytes import _sampled_layout
from rlds_lm.teacher._bytes import _varint
from rlds_lm.teacher._bytes import pack_bits
from rlds_lm.teacher._bytes import unpack_bits


# --------------------------------------------------------------------------------------
# Packed: entropy-coded ids, quantised probabilities.
# --------------------------------------------------------------------------------------

_COMPRESSORS = {"none": 0, "zlib": 1, "zstd": 2}
_COMPRESSOR_NAMES = {v: k for k, v in _COMPRESSORS.items()}
# The tail mass tau is stored as 16 bits, round(1024 * logit(tau)) + 32768: steps of
# 1/1024 in log(tau / (1 - tau)), precise at both ends (relative error < 5e-4 in both
# tau and 1 - tau); tails below sigmoid(-32) = 1.3e-14 are stored as that.
_TAU_SCALE = 1024
_TAU_OFFSET = 32768
_TAU_DTYPE = np.dtype("<u2")
_TAU_BUCKET = 1.5  # probability contexts: -ln(tau) in 1.5-nat buckets ...
_TAU_CONTEXTS = 8  # ... the last one open-ended
# Format versions: 1 (id gaps coded by bit length; tau and token_logprob as 16-bit words)
# is read; 2 is written: each gap's bit length and the 0, 2 or 3 bits below its leading 1
# form one entropy-coded symbol, that width and the number of id contexts are chosen per
# turn by trial, and the high and low bytes of tau and token_logprob are two streams each.
_VERSION = 2
_VERSIONS = (1, 2)
_SYMBOL_BITS_FIRST = 2  # the contexts are chosen with this width, ...
_SYMBOL_BITS_OTHERS = (0, 3)  # ... then these widths are tried with those contexts
_MAX_SYMBOL_BITS = 3
_ID_CONTEXT_CHOICES = (1, 2, 4, 8, 16)
_MIN_SYMBOLS_PER_CONTEXT = 256
_TRIAL_LEVEL = 3  # the level of the trials, ...
_TRIAL_FULL_LEVEL_UP_TO = 8192  # ... except for this many gaps or fewer (cheap anyway)


class _Streams:
  """Compresses byte streams one by one; each is stored as varint(length<<1 | raw)."""

  def __init__(self, compressor: str, level: int):
    self.compressor = compressor
    self.level = level
    self._zstd = None
    if compressor == "zstd":
      zstd = _import_zstd()
      self._zstd = zstd.ZstdCompressor(compression_params=zstd.ZstdCompressionParameters
                                       .from_level(level,
                                                   format=zstd.FORMAT_ZSTD1_MAGICLESS,
                                                   write_content_size=0, write_checksum=0,
                                                   write_dict_id=0))

  def pack(self, data: bytes, compress: bool = True) -> bytes:
    if compress and data and self.compressor != "none":
      if self._zstd is not None:
        packed = self._zstd.compress(data)
      else:
        obj = zlib.compressobj(min(self.level, 9), zlib.DEFLATED, -15)
        packed = obj.compress(data) + obj.flush()
      if len(packed) < len(data):
        return _varint(len(packed) << 1) + packed
    return _varint((len(data) << 1) | 1) + data


def _import_zstd():
  try:
    import zstandard  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("PackedCodec(compressor='zstd') needs the zstandard package "
                      "(pip install zstandard); or use compressor='zlib'") from e
  return zstandard


def _decompress(compressor: str, data: bytes, limit: int, what: str) -> bytes:
  """Decompresses at most ``limit`` bytes; corrupt data raises ValueError."""
  try:
    if compressor == "zstd":
      zstd = _import_zstd()
      return zstd.ZstdDecompressor(format=zstd.FORMAT_ZSTD1_MAGICLESS).decompress(
          data, max_output_size=max(limit, 1))
    if compressor == "zlib":
      obj = zlib.decompressobj(-15)
      out = obj.decompress(data, limit + 1)
      if len(out) > limit or not obj.eof:
        raise ValueError(f"more than {limit} bytes, or an unfinished stream")
      return out
  except (ValueError, zlib.error) as e:
    raise ValueError(f"packed data: expected a {compressor} stream for {what}, found "
                     f"corrupt data ({e})") from e
  except (MemoryError, Exception) as e:  # pylint: disable=broad-except
    # zstandard.ZstdError is not a ValueError; a corrupt frame header can also ask
    # for an impossible buffer.
    if not isinstance(e, MemoryError) and type(e).__name__ != "ZstdError":
      raise
    raise ValueError(f"packed data: expected a {compressor} stream for {what}, found "
                     f"corrupt data ({e})") from e
  raise ValueError(f"packed data: expected a raw {what} with compressor 'none', found a "
                   f"compressed one")


def _unpack_stream(reader: _Reader, compressor: str, size: int, what: str) -> bytes:
  """Reads one stream; ``size`` is its decompressed length in bytes."""
  header = reader.varint(f"the length of {what}")
  data = reader.take(header >> 1, what)
  if not header & 1:
    data = _decompress(compressor, data, size, what)
  if len(data) != size:
    raise ValueError(f"packed data: expected {size} bytes of {what}, found {len(data)}")
  return data


def _count_dtype(s: int) -> np.dtype:
  """Smallest unsigned dtype holding count - 1 <= S - 1."""
  for dtype in ("u1", "<u2", "<u4"):
    if s <= np.iinfo(np.dtype(dtype)).max + 1:
      return np.dtype(dtype)
  raise ValueError(f"sampled_counts: expected S <= 2**32, found {s}")


def _context_symbols(symbols: np.ndarray, contexts: np.ndarray, n: int) -> list[bytes]:
  """Splits uint8 symbols into one stream per context, each in row-major order."""
  return [symbols[contexts == c].astype(np.uint8).tobytes() for c in range(n)]


def _position_contexts(t: int, k: int, n: int) -> np.ndarray:
  return np.broadcast_to((np.arange(k) * n) // max(k, 1), (t, k))


def _gaps(sorted_ids: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Elias-gamma split of ascending ids: (class = bit length of gap + 1, mantissa).

  ``starts`` marks the first id of each row, whose "gap" is the id itself.
  """
  previous = np.concatenate([[-1], sorted_ids[:-1]])
  previous = np.where(starts, -1, previous)
  value = sorted_ids - previous  # gap + 1 >= 1
  classes = _bit_length(value)
  mantissa = value - (np.int64(1) << (classes - 1))
  return classes, mantissa


def _ungaps(classes: np.ndarray, mantissa: np.ndarray, starts: np.ndarray) -> np.ndarray:
  value = (np.int64(1) << (classes - 1)) + mantissa
  total = np.cumsum(value)
  row_base = np.maximum.accumulate(np.where(starts, total - value, 0))
  return total - row_base - 1


def _gap_symbols(classes: np.ndarray, mantissa: np.ndarray, width: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Format 2: (symbol, low bits, their widths) of Elias-gamma gaps.

  The symbol ``class << width | top`` holds the bit length and the (up to) ``width`` bits
  below the leading 1, left-aligned, so they are entropy-coded: within one bit length
  gaps are far from uniform (small gaps are more likely), which raw bits cannot use.
  The other bits below the leading 1 are stored raw.
  """
  extra = np.minimum(classes - 1, width)
  low_bits = classes - 1 - extra
  top = mantissa >> low_bits
  low = mantissa & ((np.int64(1) << low_bits) - 1)
  symbols = (classes << width) | (top << (width - extra))
  return symbols, low, low_bits


def _symbol_classes(symbols: np.ndarray, width: int, what: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Inverse of :func:`_gap_symbols` up to the low bits: (class, top bits, low widths)."""
  if width > _MAX_SYMBOL_BITS:
    raise ValueError(f"packed data: expected {what} of at most {_MAX_SYMBOL_BITS} extra "
                     f"bits, found {width}")
  classes = symbols >> width
  if symbols.size and (classes.min() < 1 or classes.max() > 32):
    raise ValueError(f"packed data: expected {what} with bit lengths in 1..32, found "
                     f"{classes.min()}..{classes.max()}")
  extra = np.minimum(classes - 1, width)
  pad = width - extra
  field = symbols & ((1 << width) - 1)
  if np.any(field & ((np.int64(1) << pad) - 1)):
    raise ValueError(f"packed data: expected {what} whose unused bits are 0, found "
                     f"others (corrupt data)")
  return classes, field >> pad, classes - 1 - extra


def _fits(classes: np.ndarray, width: int) -> bool:
  """Whether every symbol of ``width`` extra bits fits in a byte."""
  return not classes.size or int(classes.max()) << width | ((1 << width) - 1) <= 255


@dataclasses.dataclass(frozen=True)
class PackedCodec:
  """Compact top-k / sampled-k storage: entropy-coded ids, quantised probabilities.

  Per turn of ``T`` tokens (all rows coded together, so the cost per token falls as
  ``T`` grows; the fixed overhead is ~25 bytes):

  * **Ids**, exact: each row sorted ascending and stored as gaps, Elias-gamma style:
    the gap's bit length ("class") and the ``w`` bits below its leading 1 form a one-byte
    symbol that is entropy-coded; the remaining bits are stored raw. Within one bit
    length, gaps are far from uniform on a frequency-ordered vocabulary (small ones are
    likelier), which raw bits cannot exploit: on the trained text teacher (V = 8,192,
    k = 128) this takes the ids from 93 to 83 bytes/token. Symbols are split into 1, 2,
    4, 8 or 16 streams by position in the sorted row (a position predicts the id's
    magnitude, hence the gap's), each compressed on its own (zstd by default), so each
    gets its own statistics. More streams and wider symbols cost larger code tables, so
    the encoder tries the splits and ``w`` in {0, 2, 3} per turn and keeps the smallest
    (both are stored).
  * **Tail mass** ``tau = 1 - sum(p)`` per row, as ``round(1024 logit(tau))`` in 16 bits,
    its high and low bytes as two entropy-coded streams.
  * **Probabilities**, lossy: ``round(sqrt(p) * levels)``, one byte, in id order, split
    into streams by the row's tail mass (flat rows have many mid-size probabilities,
    peaked rows almost none). Quantising ``sqrt(p)`` uniformly makes every entry
    contribute about the same KL, ``step**2 / 6`` nats, whatever its probability -- the
    allocation that minimises KL for a given number of levels (uniform steps in
    ``log p`` would spend most levels on entries too small to matter). Bin ``i`` decodes
    to ``(i / levels)**2`` (bin 0 to ``(0.25 / levels)**2``), then each row is scaled so
    that the top-k sums to ``1 - tau``: quantisation never moves mass into or out of the
    tail, and the KL it adds is second order in the step.
  * **token_logprob**: float16, its high and low bytes as two entropy-coded streams
    (exact: the same values as raw float16).
  * **Sampled-k**: ids as above (one context), ``count - 1`` entropy-coded; the number
    of distinct ids per row follows from the counts summing to ``S``.

  The blob's format version is 2; blobs of version 1 (class-only id symbols, contexts
  fixed by the turn's size, tail mass and ``token_logprob`` as 16-bit words) still
  decode, to the same arrays.

  Decoded top-k rows are re-sorted most likely first by the *decoded* log-prob, ties
  broken by ascending id (entries that quantise to the same bin may swap). Sampled-k
  rows decode in canonical order: distinct ids ascending, then (id 0, count 0) slots.

  Attributes:
    vocab_size: V, at most 2**31 (ids are int32).
    levels: quantisation levels of ``sqrt(p)`` in ``[0, 1]``, 1..255. The KL added over
      the quantisation-free top-k is at most about ``K / (6 * levels**2)`` nats per token
      (1.3e-3 at K = 128 and the default 128 levels). Each doubling costs about one bit
      per top-k entry.
    compressor: ``"zstd"`` (needs the ``zstandard`` package), ``"zlib"`` or ``"none"``.
    level: compression level.
  """

  vocab_size: int
  levels: int = 128
  compressor: str = "zstd"
  level: int = 16  # zstd's first "optimal parsing" level: 19 is 4x slower, no smaller
  name: ClassVar[str] = "packed"
  lossless: ClassVar[bool] = False
  tag: ClassVar[int] = 3

  def __post_init__(self):
    _check_vocab(self)
    if not 1 <= self.levels <= 255:
      raise ValueError(f"PackedCodec.levels: expected 1..255, found {self.levels}")
    if self.compressor not in _COMPRESSORS:
      raise ValueError(f"PackedCodec.compressor: expected one of {tuple(_COMPRESSORS)}, "
                       f"found {self.compressor!r}")

  # -- encode ----------------------------------------------------------------------

  def encode(self, arrays: Mapping[str, Any]) -> bytes:
    return b"".join(b"".join(parts) for parts in self._sections(arrays).values())

  def size_breakdown(self, arrays: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of each section of ``encode(arrays)``; they add up to its length.

    Sections: ``header``, ``tail_mass``, ``topk_id_classes`` (entropy-coded gap
    symbols: bit length and up to 3 bits below the leading 1), ``topk_id_bits`` (the
    other gap bits, raw), ``topk_probs``, ``token_logprob``,
    ``sampled``. Absent fields give 0.
    """
    return {name: sum(len(p) for p in parts)
            for name, parts in self._sections(arrays).items()}

  def _sections(self, arrays: Mapping[str, Any]) -> dict[str, list[bytes]]:
    teacher = _check(arrays, self.vocab_size)
    streams = _Streams(self.compressor, self.level)
    sections: dict[str, list[bytes]] = {
        "header": [_header(self.tag, teacher, _VERSION),
                   bytes([_COMPRESSORS[self.compressor], self.levels])],
        "tail_mass": [], "topk_id_classes": [], "topk_id_bits": [], "topk_probs": [],
        "token_logprob": [], "sampled": []}
    if teacher.k:
      self._encode_topk(teacher, streams, sections)
    if teacher.token_logprob is not None:
      bits = np.frombuffer(_le(np.maximum(teacher.token_logprob, _FP16_MIN), np.float16),
                           "<u2")
      sections["token_logprob"] += [streams.pack((bits >> 8).astype(np.uint8).tobytes()),
                                    streams.pack((bits & 255).astype(np.uint8).tobytes())]
    if teacher.s:
      rows, ids, counts = _sampled_entries(teacher)
      starts = np.ones(rows.size, bool)
      starts[1:] = rows[1:] != rows[:-1]
      classes, mantissa = _gaps(ids, starts)
      count_dtype = _count_dtype(teacher.s)
      sections["sampled"].append(streams.pack((counts - 1).astype(count_dtype).tobytes()))
      sections["sampled"] += self._pack_gaps(classes[None], mantissa[None], streams,
                                             (1,))[1]
    return sections

  def _encode_topk(self, teacher: _Teacher, streams: _Streams,
                   sections: dict[str, list[bytes]]) -> None:
    t, k = teacher.topk_ids.shape
    order = np.argsort(teacher.topk_ids, axis=1, kind="stable")
    ids = np.take_along_axis(teacher.topk_ids, order, axis=1)
    logprobs = np.take_along_axis(teacher.topk_logprobs, order, axis=1)
    repeated = ids[:, 1:] == ids[:, :-1]
    if np.any(repeated):
      row, col = np.argwhere(repeated)[0]
      raise ValueError(f"{S.TEACHER_TOPK_IDS}: expected distinct ids in each row, found id "
                       f"{ids[row, col]} twice in row {row}")
    tau_code = self._tau_code(logprobs)
    sections["tail_mass"] += [streams.pack((tau_code >> 8).astype(np.uint8).tobytes()),
                              streams.pack((tau_code & 255).astype(np.uint8).tobytes())]

    starts = np.zeros((t, k), bool)
    starts[:, 0] = True
    classes, mantissa = _gaps(ids.reshape(-1), starts.reshape(-1))
    # Contexts: position in the sorted row, in n_ctx equal parts (a position predicts
    # the id's magnitude, hence its gap's).
    choices = tuple(n for n in _ID_CONTEXT_CHOICES
                    if n == 1 or (t * k >= n * _MIN_SYMBOLS_PER_CONTEXT
                                  and self.compressor != "none"))
    n_ctx, packed = self._pack_gaps(classes.reshape(t, k), mantissa.reshape(t, k),
                                    streams, choices)
    sections["topk_id_classes"] += [bytes([n_ctx])] + packed[:-1]
    sections["topk_id_bits"].append(packed[-1])

    bins = np.rint(np.exp(logprobs / 2) * self.levels)  # sqrt(p) * levels
    bins = np.clip(bins, 0, self.levels).astype(np.int64)
    p_ctx = self._prob_contexts(tau_code, t, k)
    sections["topk_probs"] += [
        streams.pack(b) for b in _context_symbols(bins, p_ctx, _TAU_CONTEXTS)]

  def _pack_gaps(self, classes: np.ndarray, mantissa: np.ndarray, streams: _Streams,
                 choices: tuple[int, ...]) -> tuple[int, list[bytes]]:
    """Format 2's gap coding: ``(n_ctx, [width byte, one symbol stream per context, the
    raw low bits])``.

    ``classes`` and ``mantissa`` are [rows, K]; context ``c`` of ``n_ctx`` holds the
    positions ``j`` with ``j * n_ctx // K == c``, row-major (as
    :func:`_position_contexts`), for ``n_ctx`` in ``choices``. Which number of contexts
    and which symbol width pay for their larger code tables depends on the vocabulary's
    layout and the turn's size: the contexts are tried with width
    ``_SYMBOL_BITS_FIRST``, then the other widths with the best contexts, each at a fast
    compression level (it ranks them as the slow one does, to a fraction of a byte per
    token; small turns are tried at the codec's level), and the smallest kept.
    """
    trial = streams
    if classes.size > _TRIAL_FULL_LEVEL_UP_TO:
      trial = _Streams(self.compressor, min(self.level, _TRIAL_LEVEL))
    coded = {}
    for w in (_SYMBOL_BITS_FIRST,) + _SYMBOL_BITS_OTHERS:
      if _fits(classes, w):
        symbols, low, low_bits = _gap_symbols(classes, mantissa, w)
        coded[w] = (symbols.astype(np.uint8), low, low_bits, -(-int(low_bits.sum()) // 8))
    k = classes.shape[1]

    def split(width: int, n_ctx: int) -> list[bytes]:
      bounds = np.searchsorted((np.arange(k) * n_ctx) // max(k, 1), np.arange(n_ctx + 1))
      symbols = coded[width][0]
      return [symbols[:, lo:hi].tobytes() for lo, hi in zip(bounds[:-1], bounds[1:])]

    def size(width: int, n_ctx: int) -> int:
      return coded[width][3] + sum(len(trial.pack(b)) for b in split(width, n_ctx))

    width = next(iter(coded))
    n_ctx = min(choices, key=lambda n: size(width, n)) if len(choices) > 1 else choices[0]
    if len(coded) > 1:
      width = min(coded, key=lambda w: size(w, n_ctx))
    _, low, low_bits, _ = coded[width]
    return n_ctx, ([bytes([width])] + [streams.pack(b) for b in split(width, n_ctx)]
                   + [streams.pack(pack_bits(low.reshape(-1), low_bits.reshape(-1)),
                                   compress=False)])

  def _tau_code(self, logprobs: np.ndarray) -> np.ndarray:
    if logprobs.shape[1] == self.vocab_size:
      return np.zeros(0, np.int64)  # no tail
    mass = np.exp(logprobs).sum(axis=1)
    with np.errstate(divide="ignore"):
      logit = np.log(np.maximum(1.0 - mass, 0.0)) - np.log(mass)
    code = np.rint(np.nan_to_num(logit, neginf=-1e3) * _TAU_SCALE) + _TAU_OFFSET
    return np.clip(code, 0, 2**16 - 1).astype(np.int64)

  def _prob_contexts(self, tau_code: np.ndarray, t: int, k: int) -> np.ndarray:
    if tau_code.size == 0:
      return np.zeros((t, k), np.int64)
    neg_log_tail = np.log1p(np.exp(-(tau_code - _TAU_OFFSET) / _TAU_SCALE))
    bucket = np.minimum(neg_log_tail // _TAU_BUCKET, _TAU_CONTEXTS - 1).astype(np.int64)
    return np.broadcast_to(bucket[:, None], (t, k))

  # -- decode ----------------------------------------------------------------------

  def decode(self, data: bytes, num_tokens: int) -> dict[str, np.ndarray]:
    reader = _Reader(data, self.name)
    version, k, s, has_tlp = _read_versioned_header(reader, self.tag, num_tokens,
                                                    self.vocab_size, _VERSIONS)
    compressor = _COMPRESSOR_NAMES.get(reader.byte("the compressor"))
    if compressor is None:
      raise ValueError(f"packed data: expected a compressor id in {_COMPRESSOR_NAMES}")
    levels = reader.byte("the levels")
    if levels < 1:
      raise ValueError("packed data: expected levels >= 1, found 0")
    t = num_tokens
    out: dict[str, np.ndarray] = {}
    if k:
      out.update(self._decode_topk(reader, compressor, levels, t, k, version))
    if has_tlp:
      if version == 1:
        out[S.TEACHER_TOKEN_LOGPROB] = reader.array(np.float16, t, "token_logprob").astype(
            np.float32)
      else:
        high, low = (np.frombuffer(_unpack_stream(reader, compressor, t, f"token_logprob "
                                                  f"({part} bytes)"), np.uint8)
                     for part in ("high", "low"))
        bits = (high.astype(np.uint16) << 8) | low
        out[S.TEACHER_TOKEN_LOGPROB] = bits.view(np.float16).astype(np.float32)
    if s:
      count_dtype = _count_dtype(s)
      # Counts first: each row's entries end where the running total reaches S.
      counts = self._read_counts(reader, compressor, count_dtype, t, s)
      total = np.cumsum(counts)
      ends = np.flatnonzero(total % s == 0)
      if ends.size != t or (t and ends[-1] != counts.size - 1):
        raise ValueError(f"packed data: expected sampled counts of {t} rows summing to {s} "
                         f"each, found {ends.size} complete rows")
      rows = np.searchsorted(ends, np.arange(counts.size))
      starts = np.ones(counts.size, bool)
      starts[1:] = rows[1:] != rows[:-1]
      width = reader.byte("the sampled id symbol width") if version > 1 else 0
      classes = np.frombuffer(_unpack_stream(reader, compressor, counts.size,
                                             "sampled id classes"), np.uint8).astype(np.int64)
      classes, mantissa = self._read_gaps(reader, classes, version, width, "sampled id")
      ids = _ungaps(classes, mantissa, starts)
      self._check_ids(ids, S.TEACHER_SAMPLED_IDS)
      out.update(_sampled_layout(rows, ids, counts, t, s))
    reader.done()
    return out

  def _read_counts(self, reader: _Reader, compressor: str, dtype: np.dtype, t: int,
                   s: int) -> np.ndarray:
    # The number of entries is not stored: decompress to at most T * S entries.
    header = reader.varint("the length of sampled counts")
    data = reader.take(header >> 1, "sampled counts")
    if not header & 1:
      # A row holds at most min(S, V) distinct ids.
      limit = t * min(s, self.vocab_size) * dtype.itemsize
      data = _decompress(compressor, data, limit, "sampled counts")
    if len(data) % dtype.itemsize:
      raise ValueError("packed data: expected whole sampled counts, found a partial one")
    return np.frombuffer(data, dtype).astype(np.int64) + 1

  def _read_gaps(self, reader: _Reader, symbols: np.ndarray, version: int, width: int,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """(class, mantissa) of the gaps whose entropy-coded symbols (of ``width`` extra
    bits) are ``symbols``; reads their raw bits."""
    if version == 1:
      return symbols, self._read_mantissa(reader, symbols, f"{what} bits")
    classes, top, low_bits = _symbol_classes(symbols, width, f"{what} classes")
    size = -(-int(low_bits.sum()) // 8)
    low = unpack_bits(_unpack_stream(reader, "none", size, f"{what} bits"), low_bits)
    return classes, (top << low_bits) | low

  def _read_mantissa(self, reader: _Reader, classes: np.ndarray, what: str) -> np.ndarray:
    if classes.size and (classes.min() < 1 or classes.max() > 53):
      raise ValueError(f"packed data: expected {what} classes in 1..53, found "
                       f"{classes.min()}..{classes.max()}")
    nbits = classes - 1
    size = -(-int(nbits.sum()) // 8)
    return unpack_bits(_unpack_stream(reader, "none", size, what), nbits)

  def _check_ids(self, ids: np.ndarray, name: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f"packed data: expected {name} in [0, {self.vocab_size}), found "
                       f"{ids.max()} (data written for another vocab_size?)")

  def _decode_topk(self, reader: _Reader, compressor: str, levels: int, t: int,
                   k: int, version: int) -> dict[str, np.ndarray]:
    has_tail = k < self.vocab_size
    if version == 1:
      size = t * _TAU_DTYPE.itemsize if has_tail else 0
      tau_code = np.frombuffer(_unpack_stream(reader, compressor, size, "tail masses"),
                               _TAU_DTYPE).astype(np.int64)
    else:
      size = t if has_tail else 0
      high, low = (np.frombuffer(_unpack_stream(reader, compressor, size, f"tail masses "
                                                f"({part} bytes)"), np.uint8)
                   for part in ("high", "low"))
      tau_code = (high.astype(np.int64) << 8) | low
    n_ctx = reader.byte("the id contexts")
    width = reader.byte("the id symbol width") if version > 1 else 0
    contexts = _position_contexts(t, k, n_ctx)
    classes = np.zeros((t, k), np.int64)
    for c in range(n_ctx):
      held = contexts == c
      stream = _unpack_stream(reader, compressor, int(held.sum()), f"id classes {c}")
      classes[held] = np.frombuffer(stream, np.uint8)
    classes, mantissa = self._read_gaps(reader, classes.reshape(-1), version, width, "id")
    starts = np.zeros((t, k), bool)
    starts[:, 0] = True
    ids = _ungaps(classes, mantissa, starts.reshape(-1)).reshape(t, k)
    self._check_ids(ids, S.TEACHER_TOPK_IDS)

    p_ctx = self._prob_contexts(tau_code, t, k)
    bins = np.zeros((t, k), np.int64)
    for c in range(_TAU_CONTEXTS):
      held = p_ctx == c
      stream = _unpack_stream(reader, compressor, int(held.sum()), f"probabilities {c}")
      bins[held] = np.frombuffer(stream, np.uint8)
    if bins.size and bins.max() > levels:
      raise ValueError(f"packed data: expected probability bins <= {levels}, found "
                       f"{bins.max()}")
    with np.errstate(divide="ignore"):
      table = 2.0 * np.log(np.arange(levels + 1) / levels)
    table[0] = 2.0 * np.log(0.25 / levels)  # bin 0 holds (0, (0.5 / levels)**2)
    logq = table[bins]
    if has_tail:
      # log(1 - tau) with tau = sigmoid(x): -log1p(exp(x)).
      x = (tau_code - _TAU_OFFSET) / _TAU_SCALE
      scale = -np.logaddexp(0.0, x) - np.log(np.exp(logq).sum(axis=1))
      logq = logq + scale[:, None]
    else:
      logq = logq - np.log(np.exp(logq).sum(axis=1))[:, None]
    logq = np.minimum(logq, 0.0)
    order = np.lexsort((ids, -logq), axis=1) if k else np.zeros((t, 0), np.int64)
    return {S.TEACHER_TOPK_IDS: np.take_along_axis(ids, order, 1).astype(np.int32),
            S.TEACHER_TOPK_LOGPROBS: np.take_along_axis(logq, order, 1).astype(np.float32)}
