"""Losses for the trainers: GKD distillation, stored-teacher KD, RL, V-trace and BOND.

Every function is pure, jit-able and computes in float32 (inputs of other float dtypes
are cast). Shapes use ``...`` for any leading batch / time axes, ``V`` for the
vocabulary, ``K`` for a stored top-k width, ``S`` for the sampled-k slots, ``[B, T]``
for batch-major sequences.

Conventions used throughout:

* **Directions.** ``P`` is always the teacher (or target) distribution, ``Q`` the student
  (the policy being trained). *Forward* KL is ``KL(P || Q) = sum_v P log(P / Q)`` (mode
  covering, an expectation under the teacher); *reverse* KL is ``KL(Q || P)`` (mode
  seeking, an expectation under the student).
* **Masks** are ``0/1`` (bool or float; a float mask acts as a weight). Per-token
  functions return the per-token value with masked positions set to exactly 0 (a ``where``,
  so garbage in padded positions does not leak through); loss functions return a scalar
  mean over the masked tokens, :func:`masked_mean`, ``sum(m x) / sum(m)`` (0 when the mask
  is empty).
* **Gradients.** Targets (advantages, returns, V-trace outputs, rewards) are wrapped in
  ``stop_gradient`` where the docstring says so; log-probabilities are differentiated.

Sources: GKD, Agarwal et al. 2024, "On-Policy Distillation of Language Models"; Gemma 3
technical report (sampled-logit distillation); IMPALA, Espeholt et al. 2018 (V-trace);
Schulman 2020, "Approximating KL divergence" (k1 / k3); BOND, Sessa et al. 2024,
"BOND: Aligning LLMs with Best-of-N Distillation"; Beirami et al. 2024, "Theoretical
guarantees on the best-of-n alignment policy" (the BoN KL formula is an upper bound).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# expm1(x) stays finite in float32 below this (expm1(80) ~ 5.5e34 < 3.4e38).
_EXPM1_SAFE = 80.0
# Stand-in for log(0) where -inf would give NaN gradients (exp(-1e30) == 0 in float32).
_LOG_ZERO = -1e30
# -log(16): J-BOND's reward for a sample worse than both anchor samples.
JBOND_LOSS_REWARD = -math.log(16.0)
KL_KINDS = ("k1", "k3")


def _f32(x: ArrayLike) -> Array:
  return jnp.asarray(x, jnp.float32)


def _weights(mask: ArrayLike | None, shape: tuple[int, ...]) -> Array:
  if mask is None:
    return jnp.ones(shape, jnp.float32)
  return jnp.broadcast_to(_f32(mask), shape)


def _masked(values: Array, mask: ArrayLike | None) -> Array:
  """values * mask, with exactly 0 (not NaN) where mask == 0."""
  if mask is None:
    return values
  m = _weights(mask, values.shape)
  return jnp.where(m > 0, values, 0.0) * m


def _keep(x: Array, mask: ArrayLike | None, fill: ArrayLike = 0.0) -> Array:
  """``x`` with ``fill`` wherever ``mask == 0`` (trailing axes of ``x`` beyond the mask's
  are the same for the whole position: a [..., V] row under a [...] mask).

  Applied to a loss's *inputs*: masking only the output leaves a NaN or inf at a padded
  position in the backward pass (0 * NaN = NaN), so the computation must not see it.
  """
  if mask is None:
    return x
  keep = _f32(mask) > 0
  keep = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
  return jnp.where(keep, x, jnp.asarray(fill, x.dtype))


def masked_mean(values: ArrayLike, mask: ArrayLike | None = None) -> Array:
  """sum(m * x) / sum(m) over all elements; 0 when sum(m) == 0.

  Args:
    values: any shape.
    mask: broadcastable to ``values``; ``None`` is all ones.

  Returns:
    A scalar.
  """
  values = _f32(values)
  m = _weights(mask, values.shape)
  total = jnp.sum(m)
  return jnp.sum(_masked(values, m)) / jnp.where(total > 0, total, 1.0)


def _log1mexp(x: Array) -> Array:
  """log(1 - exp(x)) for x <= 0 (Maechler's two branches); -inf at x >= 0."""
  x = jnp.minimum(x, 0.0)
  near = x > -math.log(2.0)
  x_near = jnp.where(near, x, -1.0)
  x_far = jnp.where(near, -1.0, x)
  return jnp.where(near, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


# --------------------------------------------------------------------------------------
# GKD: generalized Jensen-Shannon divergence.


def _beta_pair(beta: float | ArrayLike) -> tuple[Array, Array]:
  """(beta, 1 - beta) in float32; 1 - beta is formed in float64 for Python numbers."""
  if isinstance(beta, (int, float)):
    if not 0.0 <= beta <= 1.0:
      raise ValueError(f"beta: expected a value in [0, 1], found {beta}")
    return _f32(beta), _f32(1.0 - float(beta))
  b = _f32(beta)
  return b, 1.0 - b


def _log_mix(w: Array, log_w: Array, log_1mw: Array, x: Array) -> Array:
  """log((1 - w) + w exp(x)), accurate to relative precision when w is small.

  ``log1p(w expm1(x))`` keeps the ~w-sized result exact for small w (the normalised JSD
  divides it by w); elsewhere ``logaddexp`` is exact and cannot overflow.
  """
  precise_ok = (w <= 0.5) & (x <= _EXPM1_SAFE)
  precise = jnp.log1p(jnp.minimum(w, 0.5) * jnp.expm1(jnp.minimum(x, _EXPM1_SAFE)))
  robust = jnp.logaddexp(log_w + x, log_1mw)
  return jnp.where(precise_ok, precise, robust)


def _normalized_jsd_interior(logp: Array, logq: Array, b: Array, c: Array) -> Array:
  """JSD(beta) / (beta (1 - beta)) per row for 0 < beta < 1 (c = 1 - beta).

  With M = b P + c Q, s_P = log(M / P), s_Q = log(M / Q) and M - P = c (Q - P),
  M - Q = b (P - Q):

    KL(P||M) / c = sum_v [(Q - P) - P s_P / c],   KL(Q||M) / b = sum_v [(P - Q) - Q s_Q / b],

  each bracket >= 0 and computed without dividing a rounded difference by a small b or c.
  An id that one side gives probability 0 (log-prob -inf) gets d clipped to -+1e4: the
  exact limit of its bracket, and a finite gradient (0 through the clipped d).
  """
  log_b = jnp.where(b < 0.5, jnp.log(b), jnp.log1p(-c))
  log_c = jnp.where(c < 0.5, jnp.log(c), jnp.log1p(-b))
  # Entries where both are 0 contribute 0; clipping keeps exp/log finite when only one is.
  d = jnp.clip(jnp.where(jnp.isneginf(logp) & jnp.isneginf(logq), 0.0, logp - logq),
               -1e4, 1e4)
  p, q = jnp.exp(logp), jnp.exp(logq)
  s_q = _log_mix(b, log_b, log_c, d)  # log(M / Q) = log(c + b e^d)
  s_p = _log_mix(c, log_c, log_b, -d)  # log(M / P) = log(b + c e^-d)
  p_term = (q - p) - p * (s_p / c)
  q_term = (p - q) - q * (s_q / b)
  return jnp.sum(p_term + q_term, axis=-1)


def _kl_rows(logp: Array, logq: Array) -> Array:
  """KL(P || Q) = sum_v P (log P - log Q) per row, with 0 log 0 = 0 (and +inf where
  P > 0 = Q). Ids with P = 0 are computed on a stand-in, so their gradient is 0."""
  p_pos = ~jnp.isneginf(logp)
  p = jnp.exp(jnp.where(p_pos, logp, 0.0))
  diff = jnp.where(p_pos, logp, 0.0) - jnp.where(p_pos, logq, 0.0)
  return jnp.sum(jnp.where(p_pos, p * diff, 0.0), axis=-1)


def _uniform_logp(logp: ArrayLike) -> float:
  """log(1 / V) for [..., V] log-prob rows: the stand-in of a masked row."""
  return -math.log(max(1, np.shape(logp)[-1]))


def normalized_jsd(teacher_logp: ArrayLike, student_logp: ArrayLike,
                   beta: float | ArrayLike, mask: ArrayLike | None = None) -> Array:
  """GKD's JSD(beta) divided by beta (1 - beta): continuous on [0, 1], per token.

  With P = teacher, Q = student, M = beta P + (1 - beta) Q::

    N_beta(P, Q) = [beta KL(P||M) + (1 - beta) KL(Q||M)] / (beta (1 - beta))
    N_0 = KL(P || Q)   (forward KL, teacher || student: the limit beta -> 0)
    N_1 = KL(Q || P)   (reverse KL, student || teacher: the limit beta -> 1)

  The endpoints are those KLs exactly; near them (beta = 1e-6) the value is computed
  without cancellation, so it and its gradient converge to the endpoint. For a Python
  float beta, 1 - beta is formed in float64, so beta = 1 - 1e-6 is honoured.

  Ids of probability 0 (log-prob -inf, as a top-k or top-p truncated teacher gives) keep
  both the value and the student's gradient finite for 0 <= beta < 1 (the unused
  branches run on finite stand-ins); at beta = 1, KL(Q || P) is +inf when the student
  puts mass where the teacher has none, as it should be.

  Args:
    teacher_logp: [..., V] teacher log-probs (normalised rows).
    student_logp: [..., V] student log-probs (normalised rows).
    beta: scalar in [0, 1] (Python float or traced scalar).
    mask: [...] optional padding mask.

  Returns:
    [...] per-token divergence (>= 0, 0 iff P == Q), 0 where masked.
  """
  logp = _keep(_f32(teacher_logp), mask, _uniform_logp(teacher_logp))
  logq = _keep(_f32(student_logp), mask, _uniform_logp(student_logp))
  if isinstance(beta, (int, float)):  # a Python beta: only the branch it selects
    _beta_pair(beta)
    if beta == 0:
      return _masked(_kl_rows(logp, logq), mask)
    if beta == 1:
      return _masked(_kl_rows(logq, logp), mask)
  b, c = _beta_pair(beta)
  endpoint = (b <= 0) | (c <= 0)
  b_in = jnp.where(endpoint, 0.5, b)
  c_in = jnp.where(endpoint, 0.5, c)
  interior = _normalized_jsd_interior(logp, logq, b_in, c_in)
  # A traced beta computes all three; an unselected KL gets Q (or P) in place of the
  # other side, an exact 0 with a finite gradient, so its +inf (a zero-probability id)
  # cannot turn the selected branch's gradient into NaN.
  forward = _kl_rows(jnp.where(b <= 0, logp, logq), logq)
  reverse = _kl_rows(logq, jnp.where(c <= 0, logp, logq))
  value = jnp.where(b <= 0, forward, jnp.where(c <= 0, reverse, interior))
  return _masked(value, mask)


def gkd_divergence(teacher_logp: ArrayLike, student_logp: ArrayLike,
                   beta: float | ArrayLike, mask: ArrayLike | None = None) -> Array:
  """GKD's distillation divergence as its beta is read in configs, per token.

  ::

    beta = 0:      KL(P || Q)          forward KL, teacher || student
    0 < beta < 1:  JSD(beta)(P || Q)   :func:`generalized_jsd`
    beta = 1:      KL(Q || P)          reverse KL, student || teacher

  The endpoints are the KLs (with their gradients), not JSD(0) = JSD(1) = 0, which would
  train nothing; the interior is JSD(beta) itself (not divided by beta (1 - beta)), so it
  is continuous inside (0, 1) but jumps at the ends, as GKD's loss does.

  Args:
    teacher_logp: [..., V] teacher log-probs.
    student_logp: [..., V] student log-probs.
    beta: scalar in [0, 1] (Python float or traced scalar).
    mask: [...] optional padding mask.

  Returns:
    [...] per-token divergence, 0 where masked.
  """
  b, c = _beta_pair(beta)
  scale = jnp.where((b <= 0) | (c <= 0), 1.0, b * c)
  return scale * normalized_jsd(teacher_logp, student_logp, beta, mask)


def generalized_jsd(teacher_logp: ArrayLike, student_logp: ArrayLike,
                    beta: float | ArrayLike, mask: ArrayLike | None = None) -> Array:
  """GKD's generalized JSD(beta) per token, P = teacher, Q = student.

  ::

    M = beta P + (1 - beta) Q
    JSD(beta)(P || Q) = beta KL(P || M) + (1 - beta) KL(Q || M)

  JSD(beta)(P, Q) = JSD(1 - beta)(Q, P); JSD(0) = JSD(1) = 0. Small beta behaves like
  the forward KL(P || Q) (JSD ~ beta KL(P||Q)), beta near 1 like the reverse KL(Q || P)
  (JSD ~ (1 - beta) KL(Q||P)); see :func:`normalized_jsd` for the version that tends to
  those KLs instead of to 0.

  Args:
    teacher_logp: [..., V] teacher log-probs.
    student_logp: [..., V] student log-probs.
    beta: scalar in [0, 1].
    mask: [...] optional padding mask.

  Returns:
    [...] per-token divergence, 0 where masked.
  """
  b, c = _beta_pair(beta)
  return b * c * normalized_jsd(teacher_logp, student_logp, beta, mask)


# --------------------------------------------------------------------------------------
# Token-level KD from stored teacher data.


def topk_kd(student_logp: ArrayLike, topk_ids: ArrayLike, topk_logprobs: ArrayLike,
            mask: ArrayLike | None = None) -> Array:
  """KL(teacher buckets || student buckets) over the K stored ids plus a tail bucket.

  Buckets are the K ids and "everything else". Teacher masses: p_k = exp(topk_logprobs)
  and the tail t = 1 - sum_k p_k (log-probs are normalised over the full vocabulary).
  Student masses: q_k at the same ids and the tail u = 1 - sum_k q_k, computed as the
  logsumexp of the student's log-probs over the ids *not* stored (no cancellation)::

    loss = sum_k p_k (log p_k - log q_k) + t (log t - log u)

  It is 0 when the student's probabilities on the K ids equal the teacher's. When K == V
  (a static shape check) there is no tail bucket; a teacher tail that rounds to <= 0
  contributes 0.

  Args:
    student_logp: [..., V] student log-probs.
    topk_ids: [..., K] int ids (distinct within a row).
    topk_logprobs: [..., K] teacher log-probs of those ids.
    mask: [...] optional padding mask.

  Returns:
    [...] per-token KL, 0 where masked.
  """
  logq = _keep(_f32(student_logp), mask, _uniform_logp(student_logp))
  ids = jnp.asarray(topk_ids, jnp.int32)
  k, v = ids.shape[-1], logq.shape[-1]
  # A masked row's stand-in: the uniform teacher on ids 0..K-1 (distinct, finite).
  ids = _keep(ids, mask, jnp.arange(k, dtype=jnp.int32))
  logp = _keep(_f32(topk_logprobs), mask, -math.log(v))
  logq_top = jnp.take_along_axis(logq, ids, axis=-1)
  p = jnp.exp(logp)
  kl = jnp.sum(jnp.where(p > 0, p * (logp - jnp.where(p > 0, logq_top, 0.0)), 0.0),
               axis=-1)
  if k < v:
    log_t = _log1mexp(jax.nn.logsumexp(logp, axis=-1))
    outside = jnp.put_along_axis(logq, ids, _LOG_ZERO, axis=-1, inplace=False)
    log_u = jax.nn.logsumexp(outside, axis=-1)
    t = jnp.exp(log_t)
    safe_log_t = jnp.where(t > 0, log_t, 0.0)
    kl = kl + jnp.where(t > 0, t * (safe_log_t - log_u), 0.0)
  return _masked(kl, mask)


def sampled_kd(student_logp: ArrayLike, sampled_ids: ArrayLike, sampled_counts: ArrayLike,
               mask: ArrayLike | None = None) -> Array:
  """Gemma-3-style sampled distillation: cross-entropy to the empirical teacher.

  The teacher is represented by S draws y_1..y_S ~ P, stored as distinct ids with counts
  (unused slots: id 0, count 0). With S = sum of the counts::

    loss = -sum_s (c_s / S) log Q(id_s)

  Unbiased: E_{draws}[c_v / S] = P(v), so E[loss] = H(P, Q) = -sum_v P(v) log Q(v), the
  cross-entropy to the full teacher (= KL(P || Q) + H(P); same gradient as the forward
  KL). Slots may also hold repeated ids with count 1 each (raw draws): same value.

  Args:
    student_logp: [..., V] student log-probs.
    sampled_ids: [..., S] int ids.
    sampled_counts: [..., S] draw counts (each real row sums to S).
    mask: [...] optional padding mask.

  Returns:
    [...] per-token cross-entropy, 0 where masked (and for rows without draws).
  """
  logq = _keep(_f32(student_logp), mask, _uniform_logp(student_logp))
  ids = _keep(jnp.asarray(sampled_ids, jnp.int32), mask)
  counts = _keep(_f32(sampled_counts), mask)
  total = jnp.sum(counts, axis=-1, keepdims=True)
  weights = counts / jnp.where(total > 0, total, 1.0)
  logq_s = jnp.take_along_axis(logq, ids, axis=-1)
  ce = -jnp.sum(jnp.where(counts > 0, weights * jnp.where(counts > 0, logq_s, 0.0), 0.0),
                axis=-1)
  return _masked(ce, mask)


def seqkd_nll(student_logp_of_tokens: ArrayLike, mask: ArrayLike | None = None) -> Array:
  """Sequence-level KD: NLL of teacher-generated tokens, mean over masked tokens.

  loss = -sum_t m_t log Q(y_t | y_<t) / sum_t m_t, with y ~ teacher.

  Args:
    student_logp_of_tokens: [...] student log-prob of each teacher token.
    mask: same shape, 1 on completion tokens.

  Returns:
    A scalar.
  """
  values = _f32(student_logp_of_tokens)
  return masked_mean(-_keep(values, mask), mask)


# --------------------------------------------------------------------------------------
# RL.


def policy_gradient_loss(logp: ArrayLike, advantages: ArrayLike,
                         mask: ArrayLike | None = None) -> Array:
  """REINFORCE surrogate: -mean_t m_t sg(A_t) log pi(a_t); its gradient is -A grad log pi.

  Args:
    logp: [B, T] log pi(a_t | s_t) of the taken tokens (differentiated).
    advantages: broadcastable to ``logp`` (e.g. [B, T] or [B, 1]); stop-gradient.
    mask: [B, T] 1 on action tokens.

  Returns:
    A scalar (mean over masked tokens).
  """
  logp = _f32(logp)
  adv = jax.lax.stop_gradient(jnp.broadcast_to(_f32(advantages), logp.shape))
  return masked_mean(-_keep(adv, mask) * _keep(logp, mask), mask)


def kl_penalty(logp: ArrayLike, ref_logp: ArrayLike, mask: ArrayLike | None = None,
               kind: str = "k1") -> Array:
  """Per-token Monte Carlo estimators of KL(pi || ref) for tokens sampled from pi.

  With x = log ref(a) - log pi(a), a ~ pi (Schulman 2020):

    k1 = -x = log pi - log ref            unbiased, can be negative
    k3 = exp(x) - x - 1 (= expm1(x) - x)  unbiased, >= 0, lower variance near pi = ref

  Both have expectation KL(pi || ref) under a ~ pi. They are *values*: use them as a
  reward penalty under stop_gradient, not as a pathwise loss (differentiating k1 through
  log pi has zero expected gradient; differentiating k3 gives the gradient of
  KL(ref || pi), not KL(pi || ref)).

  Args:
    logp: [...] log pi of the sampled tokens.
    ref_logp: [...] log ref of the same tokens.
    mask: [...] optional padding mask.
    kind: "k1" or "k3".

  Returns:
    [...] per-token estimates, 0 where masked.

  Raises:
    ValueError: for an unknown kind.
  """
  x = _keep(_f32(ref_logp), mask) - _keep(_f32(logp), mask)
  if kind == "k1":
    value = -x
  elif kind == "k3":
    value = jnp.expm1(x) - x
  else:
    raise ValueError(f"kl_penalty kind: expected one of {KL_KINDS}, found {kind!r}")
  return _masked(value, mask)


class KlPenaltyTerm(NamedTuple):
  """A KL(pi || ref) penalty of sampled completions.

  Attributes:
    loss: scalar. Value: the mean per-token estimate of the chosen kind. Gradient: the
      unbiased score-function gradient of the completions' KL(pi || ref) per token.
    per_token: [B, T] the chosen estimator's values (stop-gradient), 0 where masked.
  """

  loss: Array
  per_token: Array


def kl_penalty_term(logp: ArrayLike, ref_logp: ArrayLike, mask: ArrayLike | None = None,
                    kind: str = "k1") -> KlPenaltyTerm:
  """KL(pi || ref) of completions sampled from pi, as a loss term with the right gradient.

  For a completion a_1..a_T ~ pi, KL(pi || ref) = E[sum_t k1_t], k1_t = log pi(a_t) -
  log ref(a_t), and its gradient is E[sum_t grad log pi(a_t) sum_{t' >= t} k1_t'] (the
  score function; a token's log-prob does not depend on later tokens, and E[grad log pi]
  = 0 drops k1's own pathwise part). The loss is::

    mean_t est_t + mean_t sg(sum_{t' >= t} k1_t') (log pi(a_t) - sg(log pi(a_t)))

  whose value is the mean estimate ``est`` (:func:`kl_penalty` of ``kind``) and whose
  gradient is that score-function gradient divided by the token count. The gradient
  always weights by k1: k3 = r - 1 - log r (r = ref / pi) has the same expectation, but as
  a score-function weight it is biased (its expected gradient is
  grad KL(pi || ref) - grad KL(ref || pi)), so ``kind="k3"`` changes only the value
  (logged and reported; lower variance, never negative).

  Args:
    logp: [B, T] log pi of the sampled tokens (differentiated).
    ref_logp: [B, T] log ref of the same tokens (stop-gradient).
    mask: [B, T] 1 on completion tokens.
    kind: "k1" or "k3": the estimator of the value.

  Returns:
    KlPenaltyTerm(loss, per_token).
  """
  logp = _keep(_f32(logp), mask)
  fixed = jax.lax.stop_gradient(logp)
  ref = jax.lax.stop_gradient(_f32(ref_logp))
  estimate = kl_penalty(fixed, ref, mask, kind)
  k1 = estimate if kind == "k1" else kl_penalty(fixed, ref, mask, "k1")
  k1_to_go = jnp.flip(jnp.cumsum(jnp.flip(k1, -1), -1), -1)
  loss = masked_mean(estimate, mask) + masked_mean(k1_to_go * (logp - fixed), mask)
  return KlPenaltyTerm(loss, estimate)


def value_loss(values: ArrayLike, returns: ArrayLike, mask: ArrayLike | None = None) -> Array:
  """0.5 mean_t m_t (V_t - sg(G_t))^2: squared error to stop-gradient targets.

  Args:
    values: [B, T] value predictions (differentiated).
    returns: [B, T] targets (returns or V-trace v_s); stop-gradient.
    mask: [B, T] optional mask.

  Returns:
    A scalar.
  """
  values = _f32(values)
  targets = jax.lax.stop_gradient(jnp.broadcast_to(_f32(returns), values.shape))
  err = _keep(values, mask) - _keep(targets, mask)
  return 0.5 * masked_mean(jnp.square(err), mask)


def discounted_returns(rewards: ArrayLike, discounts: ArrayLike,
                       bootstrap_value: ArrayLike | None = None) -> Array:
  """G_t = r_t + gamma_t G_{t+1}, G_T = bootstrap (0 by default), along time.

  ``discounts[t]`` multiplies the return after step t: RLDS's per-step discount (0 on
  the step whose action ended the episode) times the discount factor. Padded steps after
  the end should have reward 0; the terminal step's discount 0 cuts them off.

  Args:
    rewards: [B, T].
    discounts: [B, T].
    bootstrap_value: [B] value of the state after the last step, or None for 0.

  Returns:
    [B, T] returns (stop-gradient).
  """
  rewards, discounts = _f32(rewards), _f32(discounts)
  init = (jnp.zeros(rewards.shape[:1], jnp.float32) if bootstrap_value is None
          else _f32(bootstrap_value))

  def step(g_next, xs):
    r, gamma = xs
    g = r + gamma * g_next
    return g, g

  _, returns = jax.lax.scan(step, init, (rewards.T, discounts.T), reverse=True)
  return jax.lax.stop_gradient(returns.T)


class VTraceOutput(NamedTuple):
  """V-trace targets (both stop-gradient).

  Attributes:
    vs: [B, T] value targets v_s.
    pg_advantages: [B, T] rho_s (r_s + gamma_s v_{s+1} - V(x_s)).
  """

  vs: Array
  pg_advantages: Array


def _log_clip(clip: float | ArrayLike | None) -> Array:
  if clip is None:
    return jnp.asarray(jnp.inf, jnp.float32)
  return jnp.log(_f32(clip))


def vtrace(behaviour_logp: ArrayLike, target_logp: ArrayLike, rewards: ArrayLike,
           values: ArrayLike, bootstrap_value: ArrayLike, discounts: ArrayLike,
           clip_rho: float | None = 1.0, clip_c: float | None = 1.0) -> VTraceOutput:
  """IMPALA's V-trace targets and policy-gradient advantages (Espeholt et al. 2018, eq. 1).

  With rho_t = min(clip_rho, pi/mu), c_t = min(clip_c, pi/mu) (ratios formed in log
  space) and V(x_T) = bootstrap_value::

    delta_t = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t))
    v_s = V(x_s) + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i c_i) delta_t
        = V(x_s) + delta_s + gamma_s c_s (v_{s+1} - V(x_{s+1}))      (lax.scan, backwards)
    A_s = rho_s (r_s + gamma_s v_{s+1} - V(x_s)),   v_T = bootstrap_value

  The advantage uses the same clip_rho, as in the paper. ``None`` disables a clip. With
  pi == mu and no clipping, v_s is the n-step discounted return bootstrapped from
  V(x_T).

  Args:
    behaviour_logp: [B, T] log mu(a_t) (the sampler's log-prob).
    target_logp: [B, T] log pi(a_t) (the learner's).
    rewards: [B, T].
    values: [B, T] V(x_t).
    bootstrap_value: [B] V(x_T).
    discounts: [B, T] gamma_t (0 at episode ends).
    clip_rho: rho-bar, or None.
    clip_c: c-bar, or None.

  Returns:
    VTraceOutput(vs, pg_advantages), both [B, T] and stop-gradient.
  """
  log_ratio = _f32(target_logp) - _f32(behaviour_logp)
  rewards, values, discounts = _f32(rewards), _f32(values), _f32(discounts)
  bootstrap = _f32(bootstrap_value)
  rhos = jnp.exp(jnp.minimum(log_ratio, _log_clip(clip_rho)))
  cs = jnp.exp(jnp.minimum(log_ratio, _log_clip(clip_c)))
  values_next = jnp.concatenate([values[:, 1:], bootstrap[:, None]], axis=1)
  deltas = rhos * (rewards + discounts * values_next - values)

  def step(acc, xs):  # acc = v_{t+1} - V(x_{t+1})
    delta, gamma, c = xs
    acc = delta + gamma * c * acc
    return acc, acc

  _, vs_minus_v = jax.lax.scan(step, jnp.zeros_like(bootstrap),
                               (deltas.T, discounts.T, cs.T), reverse=True)
  vs = values + vs_minus_v.T
  vs_next = jnp.concatenate([vs[:, 1:], bootstrap[:, None]], axis=1)
  advantages = rhos * (rewards + discounts * vs_next - values)
  return VTraceOutput(jax.lax.stop_gradient(vs), jax.lax.stop_gradient(advantages))


# --------------------------------------------------------------------------------------
# BOND.


def _times_n_minus_1(n: int | ArrayLike, log_q: Array) -> Array:
  """(n - 1) log q, with 0 for n == 1 even where q == 0."""
  return jnp.where(n > 1, (n - 1) * jnp.where(n > 1, log_q, 0.0), 0.0)


def bon_log_prob_weights(quantiles: ArrayLike, n: int | ArrayLike,
                         strict_quantiles: ArrayLike | None = None) -> Array:
  """log pi_BoN(y) / pi_ref(y) for Best-of-n sampling from pi_ref (BOND, Theorem 1).

  With p_<=(y) = P_{y'~ref}[r(y') <= r(y)] (``quantiles``) and
  p_<(y) = P[r(y') < r(y)] (``strict_quantiles``), and ties broken in favour of the
  first of the n samples::

    pi_BoN(y) / pi_ref(y) = sum_{i=1}^{n} p_<^{i-1} p_<=^{n-i}
                          = p_<=^{n-1} (1 - rho^n) / (1 - rho),   rho = p_< / p_<=

  Without ties (``strict_quantiles=None``: p_< = p_<=, a continuous reward law) this is
  n p_<=^{n-1}, and the result is (n - 1) log p_<= + log n. The BOND backward-KL reward
  is the (n - 1) log p_<= part: the constant log n does not change its gradient.

  Args:
    quantiles: [...] p_<=(y) in (0, 1] (0 gives -inf).
    n: number of candidates (>= 1).
    strict_quantiles: [...] p_<(y) <= p_<=(y), or None for the tie-free formula.

  Returns:
    [...] log density ratio.
  """
  log_le = jnp.log(_f32(quantiles))
  n_f = _f32(n)
  weights = _times_n_minus_1(n_f, log_le)
  if strict_quantiles is None:
    return weights + jnp.log(n_f)
  x = jnp.minimum(jnp.log(_f32(strict_quantiles)) - log_le, 0.0)  # log rho <= 0
  near = x > -1e-6
  x_far = jnp.where(near, -1.0, x)
  # log((1 - rho^n) / (1 - rho)); its series near rho = 1 is log n + (n - 1) x / 2.
  log_sum = jnp.where(near, jnp.log(n_f) + 0.5 * (n_f - 1) * x,
                      _log1mexp(n_f * x_far) - _log1mexp(x_far))
  return weights + log_sum


def bon_kl(n: int | ArrayLike) -> Array:
  """KL(pi_BoN || pi_ref) = log n - (n - 1) / n (BOND; Beirami et al. 2024).

  Exact when the reward's law under pi_ref is continuous (no ties, no atoms); for a
  discrete law it is an upper bound (Beirami et al. 2024), approached as the largest atom
  shrinks.

  Args:
    n: number of candidates (>= 1).

  Returns:
    A scalar in nats.
  """
  n = _f32(n)
  return jnp.log(n) - (n - 1.0) / n


class BondLoss(NamedTuple):
  """J-BOND loss and its parts.

  Attributes:
    loss: scalar, (1 - beta) backward + beta forward.
    forward_nll: scalar, mean -log pi(y) over Best-of-n samples (KL(pi_BoN || pi) up to
      the entropy of pi_BoN).
    backward_surrogate: scalar, mean -sg(R) log pi(y) over policy samples.
    rewards: [B] R(y) = (n - 1) log p_<=(y) - (log pi(y) - log pi_ref(y)) (stop-gradient).
  """

  loss: Array
  forward_nll: Array
  backward_surrogate: Array
  rewards: Array


def jeffreys_bond_loss(policy_logp: ArrayLike, ref_logp: ArrayLike, quantiles: ArrayLike,
                       bon_logp: ArrayLike, n: int | ArrayLike, beta: float | ArrayLike,
                       policy_mask: ArrayLike | None = None,
                       bon_mask: ArrayLike | None = None) -> BondLoss:
  """BOND's Jeffreys objective, estimated from samples (Sessa et al. 2024, Sec. 4)::

    J_beta(pi) = (1 - beta) KL(pi || pi_BoN) + beta KL(pi_BoN || pi)

  ``beta`` weights the forward KL (pi_BoN || pi, mode covering) and 1 - beta the
  backward KL (pi || pi_BoN, mode seeking); beta = 0.5 is the symmetric Jeffreys
  divergence.

  * Forward KL = E_{y~pi_BoN}[-log pi(y)] + const: the NLL of Best-of-n samples
    (``bon_logp``: the policy's sequence log-prob of each Best-of-n sample).
  * Backward KL: with log pi_BoN = log pi_ref + (n - 1) log p_<= + log n (tie-free,
    :func:`bon_log_prob_weights`), KL(pi || pi_BoN) = -E_{y~pi}[R(y)] - log n with
    R(y) = (n - 1) log p_<=(y) - (log pi(y) - log pi_ref(y)), and its gradient is
    -E_pi[R(y) grad log pi(y)] (score function; E_pi[grad log pi] = 0 absorbs constants).
    The surrogate is -mean sg(R) log pi(y) over ``policy_logp`` samples y ~ pi.

  In iterated BOND / J-BOND, ``ref_logp`` and ``quantiles`` are those of the anchor
  policy. All log-probs are sequence-level (sums over the completion's tokens).

  Args:
    policy_logp: [B] log pi(y) of on-policy samples (differentiated).
    ref_logp: [B] log pi_ref(y) (or anchor) of the same samples.
    quantiles: [B] p_<=(y) in (0, 1], e.g. the Monte Carlo #{j: r_j <= r(y)} / k.
    bon_logp: [B'] log pi(y) of Best-of-n samples (differentiated).
    n: Best-of-n's n (>= 1).
    beta: weight of the forward KL, in [0, 1].
    policy_mask: [B] optional weights of the policy samples.
    bon_mask: [B'] optional weights of the Best-of-n samples.

  Returns:
    BondLoss(loss, forward_nll, backward_surrogate, rewards).
  """
  policy_logp = _keep(_f32(policy_logp), policy_mask)
  log_ratio = jax.lax.stop_gradient(policy_logp - _keep(_f32(ref_logp), policy_mask))
  rewards = jax.lax.stop_gradient(_times_n_minus_1(
      _f32(n), jnp.log(_keep(_f32(quantiles), policy_mask, 1.0))) - log_ratio)
  backward = masked_mean(-rewards * policy_logp, policy_mask)
  forward = masked_mean(-_keep(_f32(bon_logp), bon_mask), bon_mask)
  beta = _f32(beta)
  return BondLoss((1.0 - beta) * backward + beta * forward, forward, backward, rewards)


def jbond_reward(policy_rewards: ArrayLike, anchor_rewards: ArrayLike) -> Array:
  """J-BOND's backward-KL reward from two anchor samples (Sessa et al. 2024, Sec. 5).

  A crude estimate of the log-quantile log p_<=(y) of Best-of-2 (n - 1 = 1) from the two
  anchor samples y'_1, y'_2 ~ pi_anchor::

    r_J-BOND(y) = -log 16   if r(y) < min(r(y'_1), r(y'_2))   (worse than both)
                  0         otherwise                           (beats or ties one)

  Args:
    policy_rewards: [...] reward r(y) of each policy sample.
    anchor_rewards: [..., 2] rewards of its two anchor samples.

  Returns:
    [...] J-BOND rewards.
  """
  r = _f32(policy_rewards)
  worst_anchor = jnp.min(_f32(anchor_rewards), axis=-1)
  return jnp.where(r < worst_anchor, JBOND_LOSS_REWARD, 0.0)


def ema_update(anchor_params: Any, params: Any, rate: float | ArrayLike) -> Any:
  """Exponential moving average anchor: theta_anchor <- (1 - rate) theta_anchor + rate theta.

  J-BOND's anchor update (eta in the paper): rate = 0 keeps the anchor, rate = 1 copies
  the policy. Leaves keep the anchor's dtype.

  Args:
    anchor_params: pytree of arrays.
    params: pytree of the same structure.
    rate: scalar in [0, 1].

  Returns:
    The updated anchor pytree.
  """
  def update(anchor: Array, current: Array) -> Array:
    old = jnp.asarray(anchor, jnp.float32)
    mixed = old + rate * (jnp.asarray(current, jnp.float32) - old)
    return mixed.astype(jnp.asarray(anchor).dtype)

  return jax.tree.map(update, anchor_params, params)
