"""Codecs that store one turn's teacher arrays as bytes, and read them back.

Every codec follows :class:`TeacherCodec`: ``encode(arrays) -> bytes`` and
``decode(data, num_tokens) -> arrays``, where ``arrays`` holds the teacher fields of
``rlds_lm.schema`` (``topk_ids`` / ``topk_logprobs`` [T, K], ``token_logprob`` [T],
``sampled_ids`` / ``sampled_counts`` [T, S], any subset with at least one of them).
Decoded arrays have the schema's dtypes and layout, so they validate in an episode.

* :class:`RawCodec`: int32 ids, float32 log-probs, int32 counts. Lossless, 8 bytes per
  top-k entry; the reference point.
* :class:`Fp16Codec`: ids bit-packed at ``ceil(log2 V)`` bits (18 for V = 262,144),
  log-probs as float16, no entropy coding: exact ids and half-precision log-probs, the
  layout of offline-distillation tooling; its KL is the fidelity baseline.
* :class:`PackedCodec`: entropy-coded ids and quantised probabilities (see its
  docstring). Lossy in the log-probs only: ids, counts are exact.

A blob starts with a one-byte codec tag and a format version, then the varint sizes
``T``, ``K``, ``S`` and a flags byte; :func:`decode` dispatches on the tag.

This module holds the two simple codecs and the registry (:func:`get_codec`,
:func:`decode`); :class:`PackedCodec` lives in ``_packed.py``, and the header, input
checks and byte-level helpers every codec shares in ``_bytes.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from rlds_lm import schema as S
from rlds_lm.teacher._bytes import _FP16_MIN
from rlds_lm.teacher._bytes import _Reader
from rlds_lm.teacher._bytes import _check
from rlds_lm.teacher._bytes import _check_decoded_ids
from rlds_lm.teacher._bytes import _check_vocab
from rlds_lm.teacher._bytes import _header
from rlds_lm.teacher._bytes import _id_bits
from rlds_lm.teacher._bytes import _le
from rlds_lm.teacher._bytes import _read_header
from rlds_lm.teacher._bytes import pack_bits
from rlds_lm.teacher._bytes import unpack_bits
from rlds_lm.teacher._packed import PackedCodec

@runtime_checkable
class TeacherCodec(Protocol):
  """Stores one turn's teacher arrays as bytes.

  Attributes:
    name: registry name (``"raw"``, ``"fp16"``, ``"packed"``).
    vocab_size: V; every id lies in ``[0, V)``.
    lossless: whether ``decode(encode(a))`` returns ``a`` exactly.
  """

  name: str
  vocab_size: int
  lossless: bool

  def encode(self, arrays: Mapping[str, Any]) -> bytes:
    """Arrays keyed by ``schema.TEACHER_*`` (one turn, ``T`` tokens) to bytes."""
    ...

  def decode(self, data: bytes, num_tokens: int) -> dict[str, np.ndarray]:
    """Bytes from :meth:`encode` back to arrays; ``num_tokens`` must equal ``T``."""
    ...


# --------------------------------------------------------------------------------------
# Raw: lossless, fixed width.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RawCodec:
  """Lossless: int32 ids and counts, float32 log-probs (8 bytes per top-k entry).

  Attributes:
    vocab_size: V.
  """

  vocab_size: int
  name: ClassVar[str] = "raw"
  lossless: ClassVar[bool] = True
  tag: ClassVar[int] = 1

  def __post_init__(self):
    _check_vocab(self)

  def encode(self, arrays: Mapping[str, Any]) -> bytes:
    teacher = _check(arrays, self.vocab_size)
    parts = [_header(self.tag, teacher)]
    if teacher.k:
      parts += [_le(teacher.topk_ids, np.int32), _le(teacher.topk_logprobs, np.float32)]
    if teacher.token_logprob is not None:
      parts.append(_le(teacher.token_logprob, np.float32))
    if teacher.s:
      parts += [_le(teacher.sampled_ids, np.int32), _le(teacher.sampled_counts, np.int32)]
    return b"".join(parts)

  def decode(self, data: bytes, num_tokens: int) -> dict[str, np.ndarray]:
    reader = _Reader(data, self.name)
    k, s, has_tlp = _read_header(reader, self.tag, num_tokens, self.vocab_size)
    t = num_tokens
    out: dict[str, np.ndarray] = {}
    if k:
      out[S.TEACHER_TOPK_IDS] = reader.array(np.int32, t * k, "topk_ids").reshape(t, k)
      out[S.TEACHER_TOPK_LOGPROBS] = reader.array(np.float32, t * k,
                                                  "topk_logprobs").reshape(t, k)
    if has_tlp:
      out[S.TEACHER_TOKEN_LOGPROB] = reader.array(np.float32, t, "token_logprob")
    if s:
      out[S.TEACHER_SAMPLED_IDS] = reader.array(np.int32, t * s, "sampled_ids").reshape(t, s)
      out[S.TEACHER_SAMPLED_COUNTS] = reader.array(np.int32, t * s,
                                                   "sampled_counts").reshape(t, s)
    reader.done()
    _check_decoded_ids(self, out)
    return out


# --------------------------------------------------------------------------------------
# Fp16: the layout of common offline-distillation tooling.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fp16Codec:
  """Ids bit-packed at ``ceil(log2 V)`` bits, log-probs as float16; no entropy coding.

  ``(18 + 16) / 8 = 4.25`` bytes per top-k entry at V = 262,144. Ids and counts are
  exact; log-probs round to float16 (below -65504 they clip there). Rows keep their
  order. The implied tail ``1 - sum(exp(fp16 log-probs))`` can come out negative when the
  true tail is below float16 precision; :func:`rlds_lm.teacher.reconstruct` then uses
  ``MIN_TAIL_MASS``.

  Attributes:
    vocab_size: V.
  """

  vocab_size: int
  name: ClassVar[str] = "fp16"
  lossless: ClassVar[bool] = False
  tag: ClassVar[int] = 2

  def __post_init__(self):
    _check_vocab(self)

  def encode(self, arrays: Mapping[str, Any]) -> bytes:
    teacher = _check(arrays, self.vocab_size)
    bits = _id_bits(self.vocab_size)
    parts = [_header(self.tag, teacher)]
    if teacher.k:
      parts.append(pack_bits(teacher.topk_ids.reshape(-1), bits))
      parts.append(_le(np.maximum(teacher.topk_logprobs, _FP16_MIN), np.float16))
    if teacher.token_logprob is not None:
      parts.append(_le(np.maximum(teacher.token_logprob, _FP16_MIN), np.float16))
    if teacher.s:
      parts.append(pack_bits(teacher.sampled_ids.reshape(-1), bits))
      parts.append(pack_bits(teacher.sampled_counts.reshape(-1), teacher.s.bit_length()))
    return b"".join(parts)

  def decode(self, data: bytes, num_tokens: int) -> dict[str, np.ndarray]:
    reader = _Reader(data, self.name)
    k, s, has_tlp = _read_header(reader, self.tag, num_tokens, self.vocab_size)
    t = num_tokens
    bits = _id_bits(self.vocab_size)
    out: dict[str, np.ndarray] = {}
    if k:
      raw = reader.take(-(-t * k * bits // 8), "topk_ids")
      out[S.TEACHER_TOPK_IDS] = unpack_bits(raw, bits, t * k).astype(np.int32).reshape(t, k)
      out[S.TEACHER_TOPK_LOGPROBS] = reader.array(np.float16, t * k, "topk_logprobs").astype(
          np.float32).reshape(t, k)
    if has_tlp:
      out[S.TEACHER_TOKEN_LOGPROB] = reader.array(np.float16, t, "token_logprob").astype(
          np.float32)
    if s:
      raw = reader.take(-(-t * s * bits // 8), "sampled_ids")
      out[S.TEACHER_SAMPLED_IDS] = unpack_bits(raw, bits, t * s).astype(np.int32).reshape(t, s)
      cbits = s.bit_length()
      raw = reader.take(-(-t * s * cbits // 8), "sampled_counts")
      out[S.TEACHER_SAMPLED_COUNTS] = unpack_bits(raw, cbits, t * s).astype(
          np.int32).reshape(t, s)
    reader.done()
    _check_decoded_ids(self, out)
    return out


_CODECS = {c.name: c for c in (RawCodec, Fp16Codec, PackedCodec)}
_TAG_NAMES = {c.tag: c.name for c in (RawCodec, Fp16Codec, PackedCodec)}


def get_codec(name: str, vocab_size: int, **options: Any) -> TeacherCodec:
  """A codec by name: ``"raw"``, ``"fp16"`` or ``"packed"`` (``options`` go to it)."""
  if name not in _CODECS:
    raise ValueError(f"codec: expected one of {tuple(_CODECS)}, found {name!r}")
  return _CODECS[name](vocab_size, **options)


def decode(data: bytes, num_tokens: int, vocab_size: int) -> dict[str, np.ndarray]:
  """Decodes a blob of any codec (read from its tag); see :meth:`TeacherCodec.decode`."""
  if not data:
    raise ValueError("teacher data: expected a codec tag byte, found empty data")
  name = _TAG_NAMES.get(data[0])
  if name is None:
    raise ValueError(f"teacher data: expected a codec tag in {_TAG_NAMES}, found {data[0]}")
  return _CODECS[name](vocab_size).decode(data, num_tokens)
