"""Full distributions from stored teacher arrays, and their exact KL to the true teacher.

Host-side numpy. Reconstruction of a top-k row (``tail="uniform"``, the default): the
``K`` stored probabilities, and the tail mass ``1 - sum(exp(topk_logprobs))`` spread
evenly over the other ``V - K`` ids. Spreading it evenly is the maximum-entropy choice
given what is stored (nothing says which tail id is likelier), and it keeps every
probability > 0, so ``KL(true || reconstruction)`` is finite. ``tail="renormalize"``
instead rescales the top-k to sum to 1 and gives the tail 0 (the usual top-k
distillation target); its KL to a true distribution with any tail mass is infinite.
``tail="prior"`` spreads the tail mass in proportion to a dataset-level
:class:`rlds_lm.teacher.TailPrior` ``pi`` instead: ``q(v) = tau * pi(v) / (1 - sum_{i in
row} pi(i))`` off the row (a uniform ``pi`` gives the uniform tail; every ``q(v) > 0``).
A sampled-k row reconstructs as ``counts / S`` on the drawn ids, 0 elsewhere.

KL is computed in float64: the terms are differences of O(1) sums and small tail masses
(``1 - sum`` of probabilities close to 1), which float32 would round away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm.teacher._prior import TailPrior

TAIL_UNIFORM = "uniform"
TAIL_RENORMALIZE = "renormalize"
TAIL_PRIOR = "prior"
TAILS = (TAIL_UNIFORM, TAIL_RENORMALIZE, TAIL_PRIOR)
SOURCE_TOPK = "topk"
SOURCE_SAMPLED = "sampled"
SOURCES = (SOURCE_TOPK, SOURCE_SAMPLED)

# When the stored top-k probabilities sum to 1 or more (rounding of a row whose true
# tail is below the storage precision), the uniform tail gets this mass and the top-k is
# scaled to 1 - MIN_TAIL_MASS, so that every id keeps a probability > 0.
MIN_TAIL_MASS = 1e-9
# Below this, the prior mass off a row, 1 - sum_{i in row} pi(i), is summed id by id
# instead (the difference would lose digits).
_MIN_OFF_ROW_PRIOR = 1e-6


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}: expected one of {choices}, found {value!r}")


def _check_prior(tail: str, prior: Any, vocab_size: int) -> None:
  if tail == TAIL_PRIOR:
    if not isinstance(prior, TailPrior):
      raise ValueError(f"prior: expected a TailPrior with tail={TAIL_PRIOR!r}, found "
                       f"{type(prior).__name__}")
    if prior.vocab_size != vocab_size:
      raise ValueError(f"prior: expected a prior over V = {vocab_size} ids (the "
                       f"vocabulary of the reconstruction), found V = {prior.vocab_size}")
  elif prior is not None:
    raise ValueError(f"prior: given with tail={tail!r}, which ignores it; pass "
                     f"tail={TAIL_PRIOR!r} to use it")


def _off_row_prior_mass(prior: TailPrior, ids: np.ndarray) -> np.ndarray:
  """``sum_{v not in row} pi(v)`` per row (repeated ids in a row count once)."""
  log_pi = prior.log_probs
  ordered = np.sort(ids, axis=-1)
  first = np.ones(ordered.shape, bool)
  first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
  on_row = np.where(first, np.exp(log_pi[ordered]), 0.0).sum(axis=-1)
  off = np.exp(log_pi).sum() - on_row
  for t in np.flatnonzero(off < _MIN_OFF_ROW_PRIOR):
    keep = np.ones(log_pi.size, bool)
    keep[ids[t]] = False
    off[t] = np.exp(log_pi[keep]).sum()
  return off


def _sparse(arrays: Mapping[str, Any], vocab_size: int, tail: str, source: str,
            prior: TailPrior | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
  """The reconstruction as ``(ids [T, K], logq [T, K], log_tail [T], log_pi)``.

  ``logq`` is -inf on slots that hold no probability (unused sampled slots). An id ``v``
  outside row ``t`` has log-probability ``log_tail[t] + log_pi[v]``, ``log_pi`` being
  the prior's log-probs (``tail="prior"``) or ``None`` for 0 (uniform); ``log_tail`` is
  -inf when the rows have no tail.
  """
  _check_choice("tail", tail, TAILS)
  _check_choice("source", source, SOURCES)
  _check_prior(tail, prior, vocab_size)
  if source == SOURCE_TOPK:
    names = (S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS)
  else:
    names = (S.TEACHER_SAMPLED_IDS, S.TEACHER_SAMPLED_COUNTS)
  missing = [n for n in names if n not in arrays]
  if missing:
    raise ValueError(f"arrays: expected fields {names} for source={source!r}, found "
                     f"{sorted(arrays)}")
  ids = np.asarray(arrays[names[0]])
  values = np.asarray(arrays[names[1]])
  if ids.ndim != 2 or ids.shape != values.shape:
    raise ValueError(f"arrays: expected {names[0]} and {names[1]} of one shape [T, K], "
                     f"found {ids.shape} and {values.shape}")
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(f"{names[0]}: expected ids in [0, {vocab_size}), found range "
                     f"[{ids.min()}, {ids.max()}]")
  t, k = ids.shape
  if source == SOURCE_SAMPLED:
    counts = values.astype(np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
      logq = np.log(counts / np.maximum(total, 1))
    return ids, logq, np.full(t, -np.inf), None
  logq = values.astype(np.float64)
  mass = np.exp(logq).sum(axis=-1)
  if tail == TAIL_RENORMALIZE or k == vocab_size:
    return ids, logq - np.log(mass)[:, None], np.full(t, -np.inf), None
  tail_mass = 1.0 - mass
  short = tail_mass < MIN_TAIL_MASS
  if np.any(short):
    logq = logq.copy()
    logq[short] += (np.log1p(-MIN_TAIL_MASS) - np.log(mass[short]))[:, None]
    tail_mass = np.where(short, MIN_TAIL_MASS, tail_mass)
  if tail == TAIL_PRIOR:
    return (ids, logq, np.log(tail_mass) - np.log(_off_row_prior_mass(prior, ids)),
            prior.log_probs)
  return ids, logq, np.log(tail_mass) - np.log(vocab_size - k), None


def reconstruct(arrays: Mapping[str, Any], vocab_size: int, *, tail: str = TAIL_UNIFORM,
                source: str = SOURCE_TOPK, prior: TailPrior | None = None) -> np.ndarray:
  """The full-vocabulary distribution that stored teacher arrays stand for.

  Materialises ``[T, V]``: use :func:`kl_divergence` to compare with the true teacher
  when ``V`` is large.

  Args:
    arrays: teacher arrays keyed by ``schema.TEACHER_*`` (top-k ids and log-probs [T, K],
      or sampled ids and counts [T, S]).
    vocab_size: V.
    tail: ``"uniform"`` (tail mass spread over the ``V - K`` other ids), ``"prior"``
      (spread over them in proportion to ``prior``) or ``"renormalize"`` (top-k rescaled
      to sum to 1). Ignored for sampled-k.
    source: ``"topk"`` or ``"sampled"``.
    prior: a :class:`rlds_lm.teacher.TailPrior` over ``V`` ids; required with
      ``tail="prior"``, refused otherwise.

  Returns:
    float32 [T, V] probabilities; each row sums to 1.

  Raises:
    ValueError: an unknown ``tail`` or ``source``, a missing prior or one over another
      vocabulary size, arrays of the wrong shape or with ids outside ``[0, V)``.
  """
  ids, logq, log_tail, log_pi = _sparse(arrays, vocab_size, tail, source, prior)
  if log_pi is None:
    out = np.repeat(np.exp(log_tail)[:, None], vocab_size, axis=1)
  else:
    out = np.exp(log_tail[:, None] + log_pi[None, :])
  rows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)
  q = np.exp(logq)
  keep = q > 0  # unused sampled slots (id 0, count 0) must not overwrite id 0
  out[rows[keep], ids[keep]] = q[keep]
  return out.astype(np.float32)


def kl_divergence(true_logprobs: Any, arrays: Mapping[str, Any], *,
                  tail: str = TAIL_UNIFORM, source: str = SOURCE_TOPK,
                  prior: TailPrior | None = None, chunk: int = 16) -> np.ndarray:
  """Exact ``KL(true || reconstruction)`` per token, without materialising the latter.

  ``sum_v p_v log p_v - sum_{i in row} p_i log q_i - sum_{v off the row} p_v log q_v``,
  in float64, ``chunk`` tokens at a time. Off the row ``log q_v = log q_tail`` (uniform)
  or ``log q_tail + log pi_v`` (prior); the mass of ``p`` off the row is ``1 - sum_{i in
  row} p_i`` (absolute error ~1e-16, which moves the KL by ~1e-14), and
  ``sum_{v off the row} p_v log pi_v`` is ``sum_v p_v log pi_v`` minus the row's terms.

  Example::

      true_lp = teacher.log_probs(logits)                         # [T, V]
      kl = kl_divergence(true_lp, codec.decode(blob, T)).mean()    # nats per token
      kl_prior = kl_divergence(true_lp, codec.decode(blob, T), tail="prior",
                               prior=prior).mean()

  Args:
    true_logprobs: float [T, V], the teacher's full log-probs (e.g. from
      :func:`rlds_lm.teacher.log_probs`); rows are renormalised in float64.
    arrays: stored teacher arrays (see :func:`reconstruct`).
    tail: ``"uniform"``, ``"prior"`` or ``"renormalize"`` (infinite KL whenever the true
      tail has mass).
    source: ``"topk"`` or ``"sampled"`` (infinite KL whenever the true distribution has
      mass off the drawn ids).
    prior: a :class:`rlds_lm.teacher.TailPrior` over ``V`` ids, with ``tail="prior"``.
      Fit it on other tokens than these, or the KL is optimistic.
    chunk: tokens per float64 block (memory is ``chunk * V * 8`` bytes a few times;
      blocks of a few MB stay in the allocator's cache, larger ones page-fault).

  Returns:
    float64 [T], nats, >= 0 up to rounding.
  """
  true_logprobs = np.asarray(true_logprobs)
  if true_logprobs.dtype.kind != "f":
    raise ValueError(f"true_logprobs: expected floating-point values, found dtype "
                     f"{true_logprobs.dtype}")
  if true_logprobs.ndim != 2:
    raise ValueError(f"true_logprobs: expected shape [T, V], found {true_logprobs.shape}")
  t, vocab_size = true_logprobs.shape
  ids, logq, log_tail, log_pi = _sparse(arrays, vocab_size, tail, source, prior)
  if ids.shape[0] != t:
    raise ValueError(f"arrays: expected T = {t} rows (true_logprobs.shape[0]), found "
                     f"{ids.shape[0]}")
  out = np.empty(t, np.float64)
  for start in range(0, t, chunk):
    stop = min(t, start + chunk)
    block = true_logprobs[start:stop]
    # exp in the input's precision (float32 exp is ~20x faster than float64 here; its
    # 1e-7 relative error moves the KL by ~1e-7), every sum in float64.
    p = np.exp(block).astype(np.float64)
    total = p.sum(axis=-1)
    p /= total[:, None]
    # sum_v p_v log p_v, with log p_v = block_v - log(total) and sum_v p_v = 1.
    neg_entropy = np.einsum("tv,tv->t", p, block.astype(np.float64)) - np.log(total)
    lq = logq[start:stop]
    held = lq > -np.inf
    row_ids = ids[start:stop]
    p_row = np.where(held, np.take_along_axis(p, row_ids, axis=-1), 0.0)
    cross = (p_row * np.where(held, lq, 0.0)).sum(axis=-1)
    # Mass of p on the ids the row does not hold. It is exactly 0 when the row holds
    # every id of positive probability (e.g. K = V), whatever the rounding of the sums
    # (checked only where the difference is within rounding of 0).
    p_off = np.maximum(1.0 - p_row.sum(axis=-1), 0.0)
    for i in np.flatnonzero(p_off < 1e-9):
      if (p[i] > 0).sum() == (p_row[i] > 0).sum():
        p_off[i] = 0.0
    lt = log_tail[start:stop]
    with np.errstate(invalid="ignore"):
      tail_term = np.where(p_off > 0, p_off * lt, 0.0)
    if log_pi is not None:
      off_row = p @ log_pi - (p_row * log_pi[row_ids]).sum(axis=-1)
      tail_term = tail_term + np.where(p_off > 0, off_row, 0.0)
    out[start:stop] = neg_entropy - cross - tail_term
  return out
