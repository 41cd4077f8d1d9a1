"""Teacher distributions from logits: top-k, sampled-k and the actual token's log-prob.

Pure functions in ``jax.numpy``: they accept numpy or jax arrays, return jax arrays, and
can be called under ``jax.jit`` (``k`` / ``num_samples`` must then be static). All math
is float32. Every function applies the temperature first, ``log_softmax(logits / t)``
over the *full* vocabulary, so the stored values are the teacher's log-probs at that
temperature and the tail mass is ``1 - sum(exp(topk_logprobs))``.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlds_lm import schema as S

# Log-probs are clipped from below to this value, so that vocabulary entries masked with
# -inf logits give finite values (episodes refuse non-finite floats). exp(-1e4) is 0 in
# float32, so no probability changes.
LOGPROB_FLOOR = -1e4

# Sampling draws a block of the vocabulary, then an id inside it, from two float32
# cumulative sums of at most this length: a single cumsum over 262,144 entries would
# accumulate rounding error of order 1e-3 in the late entries' probabilities.
_SAMPLE_BLOCK = 512


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _check_logits(logits: Any) -> jax.Array:
  logits = jnp.asarray(logits)
  if logits.ndim < 2:
    raise ValueError(f"logits: expected shape [..., T, V] (rank >= 2), found shape "
                     f"{logits.shape}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits: expected floating-point values, found dtype {logits.dtype}")
  if logits.shape[-1] < 1:
    raise ValueError(f"logits: expected a vocabulary of >= 1 entries, found shape "
                     f"{logits.shape}")
  return logits


def _check_temperature(temperature: Any) -> jax.Array:
  if not _is_tracer(temperature):
    value = np.asarray(temperature)
    if value.shape != () or not np.isfinite(value) or float(value) <= 0:
      raise ValueError(f"temperature: expected a finite scalar > 0, found {temperature!r}")
  return jnp.asarray(temperature, jnp.float32)


def _check_count(name: str, value: Any, upper: int | None = None,
                 upper_what: str = "") -> int:
  try:
    value = operator.index(value)
  except TypeError:
    raise TypeError(f"{name}: expected a Python int (static under jit), found "
                    f"{type(value).__name__} {value!r}") from None
  if value < 1 or (upper is not None and value > upper):
    bound = f"1 <= {name} <= {upper_what} ({upper})" if upper is not None else f"{name} >= 1"
    raise ValueError(f"{name}: expected {bound}, found {value}")
  return value


def _log_probs(logits: jax.Array, temperature: jax.Array) -> jax.Array:
  lp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.maximum(lp, LOGPROB_FLOOR)


def log_probs(logits: Any, *, temperature: Any = 1.0) -> jax.Array:
  """Full-vocabulary teacher log-probs at ``temperature``.

  Args:
    logits: float [..., T, V].
    temperature: scalar > 0; the logits are divided by it.

  Returns:
    float32 [..., T, V]: ``log_softmax(logits / temperature)``, clipped below at
    :data:`LOGPROB_FLOOR`.
  """
  return _log_probs(_check_logits(logits), _check_temperature(temperature))


@functools.partial(jax.jit, static_argnames=("k",))
def _topk(logits: jax.Array, temperature: jax.Array, k: int):
  values, ids = jax.lax.top_k(_log_probs(logits, temperature), k)
  return ids.astype(jnp.int32), values


def topk(logits: Any, k: int, *, temperature: Any = 1.0) -> tuple[jax.Array, jax.Array]:
  """The teacher's ``k`` most likely tokens, log-probs normalised over the full vocabulary.

  The log-softmax runs first, over all ``V`` entries, then the top-k is taken, so
  ``exp(logprobs).sum(-1) <= 1`` and the tail mass is what is missing (see
  :func:`tail_mass`). Rows are sorted most likely first; equal log-probs keep the lower
  id first. This is the layout of ``schema.TEACHER_TOPK_IDS`` /
  ``schema.TEACHER_TOPK_LOGPROBS``.

  Example::

      ids, logprobs = topk(logits, 128, temperature=1.0)   # [T, 128] each

  Args:
    logits: float [..., T, V].
    k: number of entries kept, ``1 <= k <= V`` (static under ``jax.jit``).
    temperature: scalar > 0.

  Returns:
    ``(ids, logprobs)``: int32 [..., T, k] and float32 [..., T, k].

  Raises:
    ValueError: ``k`` outside ``[1, V]``, a temperature <= 0, logits of rank < 2.
  """
  logits = _check_logits(logits)
  k = _check_count("k", k, logits.shape[-1], "the vocabulary size")
  return _topk(logits, _check_temperature(temperature), k)


def tail_mass(topk_logprobs: Any) -> jax.Array:
  """Probability mass outside the top-k: ``1 - sum(exp(topk_logprobs))``, clipped at 0.

  Computed as ``-expm1(l_0) - sum_{i>0} exp(l_i)`` with ``l_0`` the largest entry, which
  keeps float32 precision when the top token holds almost all the mass.

  Args:
    topk_logprobs: float [..., K], most likely first.

  Returns:
    float32 [...].
  """
  lp = jnp.asarray(topk_logprobs, jnp.float32)
  if lp.shape[-1] == 0:
    return jnp.ones(lp.shape[:-1], jnp.float32)
  first = jnp.argmax(lp, axis=-1)
  head = jnp.take_along_axis(lp, first[..., None], axis=-1)[..., 0]
  is_head = jnp.arange(lp.shape[-1]) == first[..., None]
  rest = jnp.sum(jnp.where(is_head, 0.0, jnp.exp(lp)), axis=-1)
  return jnp.maximum(-jnp.expm1(head) - rest, 0.0)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _sampled_k(logits: jax.Array, key: jax.Array, temperature: jax.Array,
               num_samples: int):
  lp = _log_probs(logits, temperature)
  batch_shape, vocab = lp.shape[:-1], lp.shape[-1]
  probs = jnp.exp(lp.reshape(-1, vocab))  # [N, V]
  n = probs.shape[0]
  block = min(_SAMPLE_BLOCK, vocab)
  num_blocks = -(-vocab // block)
  probs = jnp.pad(probs, ((0, 0), (0, num_blocks * block - vocab)))
  probs = probs.reshape(n, num_blocks, block)

  # Inverse-CDF sampling in two levels: block, then id within the block. side="right"
  # picks the first entry whose cumulative sum exceeds u * total, which has mass > 0.
  key_block, key_inner = jax.random.split(key)
  u_block = jax.random.uniform(key_block, (n, num_samples), jnp.float32)
  u_inner = jax.random.uniform(key_inner, (n, num_samples), jnp.float32)
  block_cdf = jnp.cumsum(jnp.sum(probs, axis=-1), axis=-1)  # [N, B]
  search = jax.vmap(functools.partial(jnp.searchsorted, side="right"))
  which = search(block_cdf, u_block * block_cdf[:, -1:])
  which = jnp.minimum(which, num_blocks - 1)  # [N, S]
  inner_cdf = jnp.cumsum(jnp.take_along_axis(probs, which[..., None], axis=1), axis=-1)
  inner = jax.vmap(search)(inner_cdf, u_inner[..., None] * inner_cdf[..., -1:])[..., 0]
  draws = which * block + jnp.minimum(inner, block - 1)  # [N, S]

  # Distinct ids ascending with their counts; unused slots stay id 0, count 0.
  draws = jnp.sort(draws, axis=-1)
  is_new = jnp.concatenate(
      [jnp.ones((n, 1), bool), draws[:, 1:] != draws[:, :-1]], axis=-1)
  slot = jnp.cumsum(is_new, axis=-1) - 1
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], slot.shape)
  ids = jnp.zeros((n, num_samples), jnp.int32).at[rows, slot].max(draws.astype(jnp.int32))
  counts = jnp.zeros((n, num_samples), jnp.int32).at[rows, slot].add(1)
  shape = batch_shape + (num_samples,)
  return ids.reshape(shape), counts.reshape(shape)


def sampled_k(logits: Any, num_samples: int, key: Any, *,
              temperature: Any = 1.0) -> tuple[jax.Array, jax.Array]:
  """Gemma-3-style sampled-k: ``num_samples`` draws per token, kept as distinct ids.

  Draws (with replacement) from ``softmax(logits / temperature)`` over the full
  vocabulary; ``counts / num_samples`` on ``ids`` is an unbiased estimate of the teacher
  distribution. Each row holds the distinct drawn ids in ascending order with their
  counts, then unused slots (id 0, count 0); counts sum to ``num_samples``. This is the
  layout of ``schema.TEACHER_SAMPLED_IDS`` / ``schema.TEACHER_SAMPLED_COUNTS`` with
  ``S = num_samples``. Deterministic in ``key``.

  Args:
    logits: float [..., T, V].
    num_samples: draws per token S >= 1 (may exceed V; static under ``jax.jit``).
    key: a ``jax.random`` key.
    temperature: scalar > 0.

  Returns:
    ``(ids, counts)``: int32 [..., T, S] each.

  Raises:
    ValueError: ``num_samples < 1``, a temperature <= 0, logits of rank < 2.
  """
  logits = _check_logits(logits)
  num_samples = _check_count("num_samples", num_samples)
  return _sampled_k(logits, key, _check_temperature(temperature), num_samples)


@jax.jit
def _token_logprob(logits: jax.Array, tokens: jax.Array, temperature: jax.Array):
  lp = _log_probs(logits, temperature)
  return jnp.take_along_axis(lp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_logprob(logits: Any, tokens: Any, *, temperature: Any = 1.0) -> jax.Array:
  """Teacher log-prob of the tokens actually generated (``schema.TEACHER_TOKEN_LOGPROB``).

  Args:
    logits: float [..., T, V]; row ``t`` is the teacher's prediction for ``tokens[t]``.
    tokens: int [..., T], ids in ``[0, V)``.
    temperature: scalar > 0.

  Returns:
    float32 [..., T].

  Raises:
    ValueError: shapes that disagree, ids outside the vocabulary (checked when the
      tokens are concrete), a temperature <= 0.
  """
  logits = _check_logits(logits)
  tokens = jnp.asarray(tokens)
  if tokens.shape != logits.shape[:-1]:
    raise ValueError(f"tokens: expected shape {logits.shape[:-1]} (logits.shape[:-1]), "
                     f"found shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens: expected integer ids, found dtype {tokens.dtype}")
  if not _is_tracer(tokens) and tokens.size:
    lo, hi = int(tokens.min()), int(tokens.max())
    vocab = logits.shape[-1]
    if lo < 0 or hi >= vocab:
      raise ValueError(f"tokens: expected ids in [0, {vocab}), found id "
                       f"{lo if lo < 0 else hi}")
  return _token_logprob(logits, tokens, _check_temperature(temperature))


def teacher_arrays(logits: Any, tokens: Any, *, top_k: int = 0, sampled: int = 0,
                   key: Any = None, temperature: Any = 1.0) -> dict[str, np.ndarray]:
  """All teacher fields of one turn, as numpy arrays keyed by ``schema.TEACHER_*``.

  Example (a dataset with ``SchemaConfig(teacher_top_k=128, teacher_sampled_k=256)``)::

      teacher = teacher_arrays(logits, action_tokens, top_k=cfg.teacher_top_k,
                               sampled=cfg.teacher_sampled_k, key=key)
      turn = schema.Turn(obs, action_tokens, teacher=teacher)

  Args:
    logits: float [T, V], the teacher's logits for each action token.
    tokens: int [T], the action tokens.
    top_k: K of the stored top-k; 0 stores none.
    sampled: S of the stored sampled-k; 0 stores none.
    key: ``jax.random`` key, required when ``sampled > 0``.
    temperature: scalar > 0.

  Returns:
    ``token_logprob`` float32 [T], plus ``topk_ids`` / ``topk_logprobs`` [T, K] and
    ``sampled_ids`` / ``sampled_counts`` [T, S] when requested.
  """
  logits = _check_logits(logits)
  if logits.ndim != 2:
    raise ValueError(f"logits: expected shape [T, V] for one turn, found {logits.shape}")
  out = {S.TEACHER_TOKEN_LOGPROB: np.asarray(
      token_logprob(logits, tokens, temperature=temperature))}
  if top_k:
    ids, lps = topk(logits, top_k, temperature=temperature)
    out[S.TEACHER_TOPK_IDS] = np.asarray(ids)
    out[S.TEACHER_TOPK_LOGPROBS] = np.asarray(lps)
  if sampled:
    if key is None:
      raise ValueError("key: expected a jax.random key when sampled > 0, found None")
    ids, counts = sampled_k(logits, sampled, key, temperature=temperature)
    out[S.TEACHER_SAMPLED_IDS] = np.asarray(ids)
    out[S.TEACHER_SAMPLED_COUNTS] = np.asarray(counts)
  return out
