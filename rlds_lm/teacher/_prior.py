"""A dataset-level prior over the vocabulary that shapes the tail of stored top-k rows.

A top-k row stores ``K`` probabilities; the tail mass ``tau = 1 - sum(top-k)`` is known,
but not how it splits over the other ``V - K`` ids. ``tail="uniform"`` spreads it evenly.
With a :class:`TailPrior` ``pi`` (``tail="prior"`` in :func:`rlds_lm.teacher.reconstruct`
and :func:`rlds_lm.teacher.kl_divergence`) it is spread in proportion to ``pi``:

    q(v) = tau * pi(v) / (1 - sum_{i in row} pi(i))     for v outside the row,

which still sums to 1 with every ``q(v) > 0``. A uniform ``pi`` gives the uniform tail.
The prior is one object per dataset (V entries, stored once: :meth:`TailPrior.to_bytes`),
not per token.

Estimation. The tail's share of ``KL(true || q)`` summed over tokens is, up to the
per-row normaliser, ``-sum_v W(v) log pi(v)`` with ``W(v) = sum_t p_t(v) [v not in
row_t]``, the teacher probability that falls outside the stored rows; it is smallest for
``pi ∝ W``. :func:`tail_weights` computes ``W`` from full teacher log-probs (available
where the teacher runs, at extraction time). :func:`topk_counts` needs only stored ids
(how often each id is in a top-k); for ids that are rarely in the top-k that frequency
grows with their tail probability, so it is a cheaper, weaker proxy. Both add up over
turns; :meth:`TailPrior.from_weights` turns the total into a prior, mixed with the
uniform distribution (``smoothing``) against the noise of a finite sample. Fit on tokens
other than the ones you measure the KL on.

How much a prior helps depends on how well one marginal predicts each token's tail: a
lot when the ids that are likely anywhere are the likely ones in every tail, little when
the likely tail ids change with the context.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from rlds_lm.teacher._bytes import _Reader
from rlds_lm.teacher._bytes import _varint

# Log-probs are stored as uint16 codes: code = round((max - log_prob) * 1024), i.e. steps
# of 1/1024 nat below the largest entry (relative error of a probability < 5e-4), over a
# range of 64 nats; entries further below the largest are raised to that floor.
_STEPS_PER_NAT = 1024
_MAX_CODE = 2**16 - 1
LOG_RANGE = _MAX_CODE / _STEPS_PER_NAT
_MAGIC = b"RLTP"
_VERSION = 1
_ZLIB = 1
_MAX_VOCAB = 2**31


def _vocab_vector(value: Any, who: str, what: str, expected: str,
                  is_bad: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """``value`` as float64 [V] (1 <= V <= 2**31); raises naming the first bad entry."""
  array = np.asarray(value)
  if array.ndim != 1 or not 1 <= array.size <= _MAX_VOCAB:
    raise ValueError(f"{who}: expected {what} of shape [V], 1 <= V <= 2**31, found shape "
                     f"{array.shape}")
  if array.dtype.kind not in "fiu":
    raise ValueError(f"{who}: expected numeric {what}, found dtype {array.dtype}")
  array = array.astype(np.float64)
  bad = is_bad(array)
  if np.any(bad):
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{who}: expected {expected}, found {array[i]} at id {i} "
                     f"({int(bad.sum())} such)")
  return array


def _logsumexp(x: np.ndarray) -> float:
  top = x.max()
  return float(top + np.log(np.exp(x - top).sum()))


class TailPrior:
  """A distribution over the vocabulary, used to shape reconstructed top-k tails.

  Holds ``V`` log-probabilities on a grid of 1/1024 nat below the largest, over a range
  of :data:`LOG_RANGE` (64) nats: what :meth:`to_bytes` stores, so a prior read back with
  :meth:`from_bytes` equals the original exactly. Every id has a probability > 0.

  Build one with :meth:`from_weights` (from :func:`tail_weights` or :func:`topk_counts`),
  :meth:`uniform`, or from log-probabilities (normalised here; ``-inf`` and entries more
  than 64 nats below the largest are raised to that floor)::

      weights = sum(tail_weights(log_probs(logits), arrays["topk_ids"]) for ...)  # fit set
      prior = TailPrior.from_weights(weights, smoothing=0.1)
      blob = prior.to_bytes()                                   # once per dataset
      kl = kl_divergence(true_lp, arrays, tail="prior", prior=TailPrior.from_bytes(blob))

  Attributes:
    vocab_size: V.
    log_probs: float64 [V], read-only, ``logsumexp == 0``.
  """

  __slots__ = ("_codes", "_log_probs")

  def __init__(self, log_probs: Any):
    lp = _vocab_vector(log_probs, "TailPrior", "log-probs", "numbers < +inf",
                       lambda x: np.isnan(x) | (x == np.inf))
    top = lp.max()
    if top == -np.inf:
      raise ValueError("TailPrior: expected at least one finite log-prob, found all -inf")
    with np.errstate(invalid="ignore"):
      codes = np.clip(np.rint((top - lp) * _STEPS_PER_NAT), 0, _MAX_CODE)
    self._set(codes.astype(np.uint16))

  def _set(self, codes: np.ndarray) -> None:
    lp = codes.astype(np.float64) * (-1.0 / _STEPS_PER_NAT)
    lp -= _logsumexp(lp)
    codes.flags.writeable = False
    lp.flags.writeable = False
    self._codes = codes
    self._log_probs = lp

  @classmethod
  def _from_codes(cls, codes: np.ndarray) -> "TailPrior":
    prior = cls.__new__(cls)
    prior._set(codes)
    return prior

  # -- constructors ------------------------------------------------------------------

  @classmethod
  def uniform(cls, vocab_size: int) -> "TailPrior":
    """The uniform prior: reconstructs exactly the uniform tail."""
    if not isinstance(vocab_size, (int, np.integer)) or not 1 <= vocab_size <= _MAX_VOCAB:
      raise ValueError(f"TailPrior.uniform: expected vocab_size an int in [1, 2**31], "
                       f"found {vocab_size!r}")
    return cls._from_codes(np.zeros(int(vocab_size), np.uint16))

  @classmethod
  def from_weights(cls, weights: Any, *, smoothing: float = 0.0) -> "TailPrior":
    """``pi = (1 - smoothing) * weights / sum(weights) + smoothing / V``.

    Args:
      weights: float [V], >= 0, finite: e.g. :func:`tail_weights` or :func:`topk_counts`
        summed over the turns of a fit sample.
      smoothing: weight of the uniform distribution, in [0, 1]. With 0 every weight must
        be > 0; 1 gives the uniform prior whatever the weights.

    Raises:
      ValueError: weights not of shape [V], negative, NaN or infinite, all 0 (unless
        ``smoothing == 1``), or some 0 with ``smoothing == 0``; smoothing outside [0, 1].
    """
    w = _vocab_vector(weights, "TailPrior.from_weights", "weights", "finite weights >= 0",
                      lambda x: ~np.isfinite(x) | (x < 0))
    if not (isinstance(smoothing, (int, float, np.floating, np.integer))
            and 0.0 <= smoothing <= 1.0):
      raise ValueError(f"TailPrior.from_weights: expected smoothing in [0, 1], found "
                       f"{smoothing!r}")
    vocab = w.size
    if smoothing == 1:
      return cls.uniform(vocab)
    total = w.sum()
    if total == 0:
      raise ValueError("TailPrior.from_weights: expected weights with a positive sum, "
                       "found all 0 (nothing to estimate from; smoothing=1 gives the "
                       "uniform prior)")
    pi = (1.0 - smoothing) * (w / total) + smoothing / vocab
    zeros = int((pi == 0).sum())
    if zeros:
      raise ValueError(f"TailPrior.from_weights: expected every weight > 0 when "
                       f"smoothing = 0, found {zeros} id(s) with weight 0 (never seen in "
                       f"the fit sample?); pass smoothing > 0")
    return cls(np.log(pi))

  # -- serialisation ----------------------------------------------------------------

  def to_bytes(self) -> bytes:
    """``b"RLTP"``, version, varint V, then the uint16 codes, zlib-compressed.

    The codes are stored as two byte planes (high bytes, then low bytes), which
    compresses better than interleaved bytes.
    """
    planes = np.stack([self._codes >> 8, self._codes & 0xFF]).astype(np.uint8)
    payload = zlib.compress(planes.tobytes(), 9)
    return (_MAGIC + bytes([_VERSION]) + _varint(self.vocab_size) + bytes([_ZLIB])
            + payload)

  @classmethod
  def from_bytes(cls, data: bytes) -> "TailPrior":
    """Inverse of :meth:`to_bytes`; corrupt or truncated data raises ValueError."""
    reader = _Reader(data, "tail prior")
    magic = reader.take(len(_MAGIC), "the magic")
    if magic != _MAGIC:
      raise ValueError(f"tail prior data: expected magic {_MAGIC!r}, found {magic!r}")
    version = reader.byte("the format version")
    if version != _VERSION:
      raise ValueError(f"tail prior data: expected format version {_VERSION}, found "
                       f"{version}")
    vocab = reader.varint("V")
    if not 1 <= vocab <= _MAX_VOCAB:
      raise ValueError(f"tail prior data: expected V in [1, 2**31], found {vocab}")
    method = reader.byte("the compression")
    if method != _ZLIB:
      raise ValueError(f"tail prior data: expected compression {_ZLIB} (zlib), found "
                       f"{method}")
    payload = reader.take(len(reader.data) - reader.pos, "the codes")
    size = 2 * vocab
    try:
      obj = zlib.decompressobj()
      raw = obj.decompress(payload, size + 1)
      if not obj.eof or obj.unused_data:
        raise ValueError("an unfinished stream or trailing bytes")
    except (ValueError, zlib.error) as e:
      raise ValueError(f"tail prior data: expected a zlib stream of {size} bytes, found "
                       f"corrupt data ({e})") from e
    if len(raw) != size:
      raise ValueError(f"tail prior data: expected {size} bytes of codes for V = {vocab}, "
                       f"found {len(raw)}")
    planes = np.frombuffer(raw, np.uint8).reshape(2, vocab).astype(np.uint16)
    codes = (planes[0] << 8) | planes[1]
    if codes.min() != 0:
      raise ValueError(f"tail prior data: expected the largest entry at code 0, found "
                       f"smallest code {codes.min()} (corrupt?)")
    return cls._from_codes(codes)

  # -- accessors --------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return int(self._codes.size)

  @property
  def log_probs(self) -> np.ndarray:
    return self._log_probs

  def entropy(self) -> float:
    """Entropy in nats."""
    return float(-(np.exp(self._log_probs) * self._log_probs).sum())

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, TailPrior):
      return NotImplemented
    return np.array_equal(self._codes, other._codes)

  __hash__ = None

  def __repr__(self) -> str:
    return f"TailPrior(vocab_size={self.vocab_size}, entropy={self.entropy():.3f} nats)"


# --------------------------------------------------------------------------------------
# Sufficient statistics for fitting; both add up over turns.
# --------------------------------------------------------------------------------------


def _check_ids(name: str, ids: Any, vocab_size: int) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim != 2:
    raise ValueError(f"{name}: expected shape [T, K], found shape {ids.shape}")
  if ids.size and ids.dtype.kind not in "iu":
    raise ValueError(f"{name}: expected integer ids, found dtype {ids.dtype}")
  ids = ids.astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = ids.min() if ids.min() < 0 else ids.max()
    raise ValueError(f"{name}: expected ids in [0, {vocab_size}), found id {bad}")
  return ids


def tail_weights(true_logprobs: Any, topk_ids: Any, *, chunk: int = 16) -> np.ndarray:
  """``W(v) = sum_t p_t(v) [v not in topk_ids[t]]``: teacher mass outside the rows.

  The KL-optimal prior for a fit sample is ``W`` normalised (see the module docstring).
  Sum it over the turns of the fit sample, then :meth:`TailPrior.from_weights`.

  Args:
    true_logprobs: float [T, V], the teacher's full log-probs (rows renormalised in
      float64, as in :func:`rlds_lm.teacher.kl_divergence`).
    topk_ids: int [T, K], the ids a row stores (``K`` as in the dataset).
    chunk: tokens per float64 block.

  Returns:
    float64 [V], >= 0, summing to the total tail mass of the T rows.
  """
  lp = np.asarray(true_logprobs)
  if lp.dtype.kind != "f" or lp.ndim != 2:
    raise ValueError(f"true_logprobs: expected floating-point values of shape [T, V], "
                     f"found dtype {lp.dtype}, shape {lp.shape}")
  t, vocab = lp.shape
  ids = _check_ids("topk_ids", topk_ids, vocab)
  if ids.shape[0] != t:
    raise ValueError(f"topk_ids: expected T = {t} rows (true_logprobs.shape[0]), found "
                     f"{ids.shape[0]}")
  out = np.zeros(vocab, np.float64)
  for start in range(0, t, chunk):
    stop = min(t, start + chunk)
    p = np.exp(lp[start:stop]).astype(np.float64)
    p /= p.sum(axis=-1, keepdims=True)
    p[np.arange(stop - start)[:, None], ids[start:stop]] = 0.0
    out += p.sum(axis=0)
  return out


def topk_counts(topk_ids: Any, vocab_size: int) -> np.ndarray:
  """How often each id appears in the stored rows: float64 [V].

  Needs the stored ids only. Sum it over the turns of a fit sample, then
  :meth:`TailPrior.from_weights` with ``smoothing > 0`` (ids never stored have count 0).
  """
  if not isinstance(vocab_size, (int, np.integer)) or not 1 <= vocab_size <= _MAX_VOCAB:
    raise ValueError(f"topk_counts: expected vocab_size an int in [1, 2**31], found "
                     f"{vocab_size!r}")
  ids = _check_ids("topk_ids", topk_ids, vocab_size)
  return np.bincount(ids.reshape(-1), minlength=int(vocab_size)).astype(np.float64)
