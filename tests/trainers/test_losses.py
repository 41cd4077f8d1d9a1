"""Losses: each checked for its defining behaviour against independent NumPy (float64)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlds_lm.trainers import losses as L

V = 12  # vocabulary of the toy distributions


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _dists(seed: int, rows: int = 4, vocab: int = V, scale: float = 2.0):
  """Teacher and student log-prob rows [rows, vocab] (float64)."""
  rng = np.random.default_rng(seed)
  return (_log_softmax(scale * rng.normal(size=(rows, vocab))),
          _log_softmax(scale * rng.normal(size=(rows, vocab))))


def _kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
  """KL(P || Q) per row, with 0 log 0 = 0."""
  p = np.exp(logp)
  safe = p > 0
  return np.sum(np.where(safe, p * (np.where(safe, logp, 0.0) - np.where(safe, logq, 0.0)), 0.0),
                axis=-1)


def _jsd(logp: np.ndarray, logq: np.ndarray, beta: float) -> np.ndarray:
  """The GKD definition, term by term, in float64."""
  p, q = np.exp(logp), np.exp(logq)
  m = beta * p + (1 - beta) * q
  return (beta * np.sum(p * np.log(p / m), -1)
          + (1 - beta) * np.sum(q * np.log(q / m), -1))


def _within_se(samples: np.ndarray, expected: float, z: float = 4.5):
  se = samples.std() / math.sqrt(samples.size)
  assert abs(samples.mean() - expected) < z * se + 1e-6, (samples.mean(), expected, se)


# --------------------------------------------------------------------------------------
# Generalized JSD (GKD).


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_is_the_gkd_definition(beta):
  logp, logq = _dists(0)
  got = L.generalized_jsd(logp, logq, beta)
  np.testing.assert_allclose(got, _jsd(logp, logq, beta), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(L.normalized_jsd(logp, logq, beta),
                             _jsd(logp, logq, beta) / (beta * (1 - beta)), rtol=1e-5)


def test_normalized_jsd_endpoints_are_forward_and_reverse_kl():
  logp, logq = _dists(1)
  # beta = 0: KL(teacher || student); beta = 1: KL(student || teacher).
  np.testing.assert_allclose(L.normalized_jsd(logp, logq, 0.0), _kl(logp, logq), rtol=1e-6)
  np.testing.assert_allclose(L.normalized_jsd(logp, logq, 1.0), _kl(logq, logp), rtol=1e-6)
  np.testing.assert_array_equal(L.generalized_jsd(logp, logq, 0.0), 0.0)
  np.testing.assert_array_equal(L.generalized_jsd(logp, logq, 1.0), 0.0)


def test_normalized_jsd_tends_to_the_kls_near_the_endpoints():
  logp, logq = _dists(2)
  for endpoint_kl, at in ((_kl(logp, logq), lambda eps: eps),  # beta -> 0: forward KL
                          (_kl(logq, logp), lambda eps: 1.0 - eps)):  # beta -> 1: reverse
    err = {eps: np.abs(np.asarray(L.normalized_jsd(logp, logq, at(eps))) - endpoint_kl)
           for eps in (1e-4, 1e-6)}
    # The gap is O(eps): 100x smaller eps, ~100x smaller gap, and small at 1e-6.
    assert np.all(err[1e-6] <= err[1e-4] / 50 + 1e-6), err
    np.testing.assert_array_less(err[1e-6], 1e-3 * endpoint_kl)
    np.testing.assert_array_less(err[1e-4], 1e-1 * endpoint_kl)


@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_normalized_jsd_is_stable_near_the_endpoints(eps):
  """float32 keeps float64's value of the definition: no catastrophic cancellation."""
  logp, logq = _dists(2)
  scale = eps * (1 - eps)
  np.testing.assert_allclose(L.normalized_jsd(logp, logq, eps),
                             _jsd(logp, logq, eps) / scale, rtol=1e-5)
  np.testing.assert_allclose(L.normalized_jsd(logp, logq, 1.0 - eps),
                             _jsd(logp, logq, 1 - eps) / scale, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.7, 1.0])
def test_jsd_symmetry_swaps_beta(beta):
  logp, logq = _dists(3)
  np.testing.assert_allclose(L.generalized_jsd(logp, logq, beta),
                             L.generalized_jsd(logq, logp, 1.0 - beta), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(L.normalized_jsd(logp, logq, beta),
                             L.normalized_jsd(logq, logp, 1.0 - beta), rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1e-6, 0.3, 1.0 - 1e-6, 1.0])
def test_jsd_is_zero_iff_distributions_are_equal(beta):
  logp, logq = _dists(4)
  logq[1] = logp[1]  # one equal row among different ones
  value = np.asarray(L.normalized_jsd(logp, logq, beta))
  assert abs(value[1]) < 1e-6
  assert np.all(np.delete(value, 1) > 1e-3)
  assert np.all(np.asarray(L.generalized_jsd(logp, logp, beta)) < 1e-6)


def _student_grad(fn, logp, logits):
  return np.asarray(jax.grad(lambda z: jnp.sum(fn(logp, jax.nn.log_softmax(z))))(
      jnp.asarray(logits, jnp.float32)))


@pytest.mark.parametrize("beta", [0.0, 1e-6, 1.0 - 1e-6, 1.0])
def test_jsd_student_gradient_is_finite_and_tends_to_the_kl_gradient(beta):
  logp, _ = _dists(5)
  logits = np.random.default_rng(5).normal(size=logp.shape)
  grad = _student_grad(lambda p, q: L.normalized_jsd(p, q, beta), logp, logits)
  assert np.all(np.isfinite(grad))
  q, logq = np.exp(_log_softmax(logits)), _log_softmax(logits)
  if beta < 0.5:  # d KL(P||Q) / d logits = Q - P
    expected = q - np.exp(logp)
  else:  # d KL(Q||P) / d logits = Q (log Q - log P - KL(Q||P))
    expected = q * (logq - logp - _kl(logq, logp)[:, None])
  np.testing.assert_allclose(grad, expected, atol=1e-4)


def test_jsd_handles_zero_teacher_probabilities_and_masks():
  logp, logq = _dists(6)
  logp[:, :3] = -np.inf  # a truncated teacher: no mass on three ids
  logp = _log_softmax(logp)
  logm = np.log(0.5 * np.exp(logp) + 0.5 * np.exp(logq))
  np.testing.assert_allclose(L.generalized_jsd(logp, logq, 0.5),
                             0.5 * _kl(logp, logm) + 0.5 * _kl(logq, logm), rtol=1e-5)
  np.testing.assert_allclose(L.normalized_jsd(logp, logq, 0.0), _kl(logp, logq), rtol=1e-6)
  mask = np.array([1, 0, 1, 0])
  got = np.asarray(L.generalized_jsd(logp, logq, 0.5, mask=mask))
  assert got[1] == 0 and got[3] == 0 and got[0] > 0


def test_jsd_jits_with_a_traced_beta():
  logp, logq = _dists(7)
  jitted = jax.jit(L.normalized_jsd)
  for beta in (0.0, 1e-6, 0.5, 1.0):
    np.testing.assert_allclose(jitted(logp, logq, jnp.float32(beta)),
                               L.normalized_jsd(logp, logq, beta), rtol=1e-5)


# --------------------------------------------------------------------------------------
# Token-level KD from stored teacher data.


def _topk(logp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  ids = np.argsort(-logp, axis=-1)[..., :k]
  return ids, np.take_along_axis(logp, ids, -1)


def _bucket_kl(logp_full, logq_full, ids):
  """KL over the K ids plus one tail bucket, from full distributions (float64)."""
  p, q = np.exp(logp_full), np.exp(logq_full)
  pk, qk = np.take_along_axis(p, ids, -1), np.take_along_axis(q, ids, -1)
  pb = np.concatenate([pk, 1 - pk.sum(-1, keepdims=True)], -1)
  qb = np.concatenate([qk, 1 - qk.sum(-1, keepdims=True)], -1)
  return np.sum(np.where(pb > 0, pb * np.log(np.where(pb > 0, pb, 1) / qb), 0), -1)


@pytest.mark.parametrize("k", [1, 4, V - 1])
def test_topk_kd_is_the_kl_over_k_plus_tail_buckets(k):
  logp, logq = _dists(10)
  ids, top = _topk(logp, k)
  np.testing.assert_allclose(L.topk_kd(logq, ids, top), _bucket_kl(logp, logq, ids),
                             rtol=1e-5, atol=1e-6)
  # d/dz_v of the bucket KL: q_v - p_b q_v / q_b, b the bucket of v (its own id or the tail).
  logits = np.random.default_rng(k).normal(size=logq.shape)
  q = np.exp(_log_softmax(logits))
  p = np.exp(logp)
  in_top = np.zeros_like(q, bool)
  np.put_along_axis(in_top, ids, True, -1)
  tail_ratio = (1 - np.where(in_top, p, 0).sum(-1)) / (1 - np.where(in_top, q, 0).sum(-1))
  expected = np.where(in_top, q - p, q - q * tail_ratio[:, None])
  grad = jax.grad(lambda z: jnp.sum(L.topk_kd(jax.nn.log_softmax(z), ids, top)))(
      jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_topk_kd_is_zero_when_student_matches_teacher_buckets():
  logp, _ = _dists(11)
  k = 4
  ids, top = _topk(logp, k)
  # Same probabilities on the K ids, a different spread of the tail mass.
  p = np.exp(logp)
  q = p.copy()
  rng = np.random.default_rng(11)
  for row in range(q.shape[0]):
    tail = np.setdiff1d(np.arange(V), ids[row])
    q[row, tail] = rng.dirichlet(np.ones(tail.size)) * p[row, tail].sum()
  logq = np.log(q)
  assert np.abs(logq - logp).max() > 0.1
  np.testing.assert_allclose(L.topk_kd(logq, ids, top), 0.0, atol=1e-6)
  assert np.all(np.asarray(L.topk_kd(logp[::-1].copy(), ids, top)) > 1e-3)


def test_topk_kd_with_k_equal_to_vocab_is_the_full_forward_kl():
  logp, logq = _dists(12)
  ids, top = _topk(logp, V)
  np.testing.assert_allclose(L.topk_kd(logq, ids, top), _kl(logp, logq), rtol=1e-5)
  logits = np.random.default_rng(12).normal(size=logq.shape)
  grad = np.asarray(jax.grad(lambda z: jnp.sum(L.topk_kd(jax.nn.log_softmax(z), ids, top)))(
      jnp.asarray(logits, jnp.float32)))
  np.testing.assert_allclose(grad, np.exp(_log_softmax(logits)) - np.exp(logp), atol=1e-5)


def test_topk_kd_masks_padding_and_stays_finite():
  logp, logq = _dists(13)
  ids, top = _topk(logp, 3)
  mask = np.array([1, 1, 0, 1])
  ids[2], top[2] = 0, 0.0  # a padded row: zeros
  got = np.asarray(L.topk_kd(logq, ids, top, mask))
  assert got[2] == 0 and np.all(np.isfinite(got))
  grad = jax.grad(lambda z: jnp.sum(L.topk_kd(jax.nn.log_softmax(z), ids, top, mask)))(
      jnp.zeros((4, V)))
  assert np.all(np.isfinite(np.asarray(grad)))


def _slots(draws: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
  """Raw draws [R, S] -> distinct ids and counts, padded with (id 0, count 0)."""
  ids = np.zeros((draws.shape[0], slots), np.int32)
  counts = np.zeros_like(ids)
  for row, d in enumerate(draws):
    u, c = np.unique(d, return_counts=True)
    ids[row, :u.size], counts[row, :u.size] = u, c
  return ids, counts


def test_sampled_kd_is_unbiased_for_the_cross_entropy_to_the_teacher():
  logp, logq = _dists(20, rows=1)
  s, rows = 4, 20_000
  rng = np.random.default_rng(20)
  draws = rng.choice(V, size=(rows, s), p=np.exp(logp[0]))
  ids, counts = _slots(draws, s)
  student = np.broadcast_to(logq, (rows, V))
  losses = np.asarray(L.sampled_kd(student, ids, counts), np.float64)
  _within_se(losses, -np.sum(np.exp(logp[0]) * logq[0]))


def test_sampled_kd_slot_layouts_agree_and_ignore_unused_slots():
  _, logq = _dists(21)
  draws = np.array([[3, 3, 5, 1], [2, 2, 2, 2], [0, 7, 7, 9], [4, 5, 6, 7]])
  ids, counts = _slots(draws, 4)
  distinct = np.asarray(L.sampled_kd(logq, ids, counts))
  raw = np.asarray(L.sampled_kd(logq, draws, np.ones_like(draws)))
  np.testing.assert_allclose(distinct, raw, rtol=1e-6)
  np.testing.assert_allclose(raw, -np.take_along_axis(logq, draws, -1).mean(-1), rtol=1e-6)
  masked = np.asarray(L.sampled_kd(logq, ids, counts, mask=np.array([1, 0, 1, 1])))
  assert masked[1] == 0 and masked[0] == distinct[0]


def test_seqkd_nll_is_the_masked_token_mean_nll():
  rng = np.random.default_rng(22)
  logp = -rng.random((3, 5))
  mask = (rng.random((3, 5)) > 0.3).astype(np.float32)
  np.testing.assert_allclose(L.seqkd_nll(logp, mask), -(logp * mask).sum() / mask.sum(),
                             rtol=1e-6)
  assert float(L.seqkd_nll(logp, np.zeros_like(mask))) == 0.0


# --------------------------------------------------------------------------------------
# RL.


def test_policy_gradient_loss_expected_gradient_is_minus_grad_of_expected_reward():
  rng = np.random.default_rng(30)
  logits, rewards = rng.normal(size=V), rng.normal(size=V)
  pi = np.exp(_log_softmax(logits))
  # Every action once, weighted by its probability: the exact expectation over a ~ pi.
  grad = jax.grad(lambda z: L.policy_gradient_loss(
      jax.nn.log_softmax(z)[None], rewards[None], mask=pi[None]))(
          jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(grad, -pi * (rewards - pi @ rewards), atol=1e-6)


def test_policy_gradient_loss_stops_gradient_on_advantages():
  logp = jnp.asarray([[-1.0, -2.0, -0.5]])
  adv = jnp.asarray([[2.0, -1.0, 3.0]])
  mask = jnp.asarray([[1.0, 1.0, 0.0]])
  g_logp, g_adv = jax.grad(L.policy_gradient_loss, argnums=(0, 1))(logp, adv, mask)
  np.testing.assert_allclose(g_logp, [[-1.0, 0.5, 0.0]])
  np.testing.assert_array_equal(g_adv, 0.0)
  # Sequence-level advantages broadcast over tokens.
  np.testing.assert_allclose(L.policy_gradient_loss(logp, jnp.asarray([[2.0]]), mask), 3.0)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_penalty_estimators_are_unbiased_for_kl_pi_ref(kind):
  logpi, logref = _dists(31, rows=1, scale=1.0)
  rng = np.random.default_rng(31)
  actions = rng.choice(V, size=50_000, p=np.exp(logpi[0]))
  values = np.asarray(L.kl_penalty(logpi[0][actions], logref[0][actions], kind=kind),
                      np.float64)
  _within_se(values, _kl(logpi[0], logref[0]))
  if kind == "k3":
    assert values.min() >= 0


def test_kl_penalty_masks_and_rejects_unknown_kinds():
  got = L.kl_penalty(jnp.asarray([-1.0, -2.0]), jnp.asarray([-2.0, -1.0]), mask=[1, 0],
                     kind="k3")
  np.testing.assert_allclose(got, [math.exp(-1) + 1 - 1, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="k1"):
    L.kl_penalty(jnp.zeros(2), jnp.zeros(2), kind="k2")


def test_value_loss_is_half_squared_error_to_stop_gradient_targets():
  values = jnp.asarray([[1.0, 2.0, 3.0]])
  returns = jnp.asarray([[0.0, 2.5, 10.0]])
  mask = jnp.asarray([[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(L.value_loss(values, returns, mask), 0.5 * (1 + 0.25) / 2)
  g_v, g_r = jax.grad(L.value_loss, argnums=(0, 1))(values, returns, mask)
  np.testing.assert_allclose(g_v, [[0.5, -0.25, 0.0]])
  np.testing.assert_array_equal(g_r, 0.0)


def _returns_loop(rewards, discounts, bootstrap):
  out = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    g = bootstrap[b]
    for t in reversed(range(rewards.shape[1])):
      g = rewards[b, t] + discounts[b, t] * g
      out[b, t] = g
  return out


def test_discounted_returns_match_the_backward_recursion():
  rng = np.random.default_rng(32)
  rewards = rng.normal(size=(3, 6))
  discounts = np.full((3, 6), 0.9)
  discounts[1, 2] = 0.0  # an episode ends at step 2 of row 1
  bootstrap = rng.normal(size=3)
  np.testing.assert_allclose(L.discounted_returns(rewards, discounts, bootstrap),
                             _returns_loop(rewards, discounts, bootstrap), rtol=1e-5)
  np.testing.assert_allclose(L.discounted_returns(rewards, discounts),
                             _returns_loop(rewards, discounts, np.zeros(3)), rtol=1e-5)


def _vtrace_paper(mu_logp, pi_logp, rewards, values, bootstrap, discounts, rho_bar, c_bar):
  """IMPALA eq. (1) as written: a double loop over s and t, no recursion."""
  b_size, t_size = rewards.shape
  ratio = np.exp(pi_logp - mu_logp)
  rho = ratio if rho_bar is None else np.minimum(rho_bar, ratio)
  c = ratio if c_bar is None else np.minimum(c_bar, ratio)
  v_ext = np.concatenate([values, bootstrap[:, None]], 1)
  vs = np.zeros_like(values)
  for b in range(b_size):
    for s in range(t_size):
      total, weight = v_ext[b, s], 1.0  # weight = prod_{i=s}^{t-1} gamma_i c_i
      for t in range(s, t_size):
        delta = rho[b, t] * (rewards[b, t] + discounts[b, t] * v_ext[b, t + 1] - v_ext[b, t])
        total += weight * delta
        weight *= discounts[b, t] * c[b, t]
      vs[b, s] = total
  vs_next = np.concatenate([vs[:, 1:], bootstrap[:, None]], 1)
  adv = rho * (rewards + discounts * vs_next - values)
  return vs, adv


@pytest.mark.parametrize("clips", [(1.0, 1.0), (2.0, 0.5), (None, None)])
def test_vtrace_matches_the_paper_definition(clips):
  rng = np.random.default_rng(33)
  shape = (3, 7)
  mu = -rng.random(shape) * 2
  pi = mu + rng.normal(size=shape) * 0.7
  rewards, values = rng.normal(size=shape), rng.normal(size=shape)
  bootstrap = rng.normal(size=3)
  discounts = np.where(rng.random(shape) < 0.15, 0.0, 0.95)
  vs, adv = L.vtrace(mu, pi, rewards, values, bootstrap, discounts, *clips)
  exp_vs, exp_adv = _vtrace_paper(mu, pi, rewards, values, bootstrap, discounts, *clips)
  np.testing.assert_allclose(vs, exp_vs, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(adv, exp_adv, rtol=1e-4, atol=1e-5)


def test_vtrace_on_policy_is_the_bootstrapped_n_step_return():
  rng = np.random.default_rng(34)
  shape = (2, 5)
  logp = -rng.random(shape)
  rewards, values = rng.normal(size=shape), rng.normal(size=shape)
  bootstrap = rng.normal(size=2)
  gamma = 0.9
  vs, adv = L.vtrace(logp, logp, rewards, values, bootstrap, np.full(shape, gamma),
                     clip_rho=None, clip_c=None)
  t_size = shape[1]
  expected = np.stack([
      [sum(gamma**(t - s) * rewards[b, t] for t in range(s, t_size))
       + gamma**(t_size - s) * bootstrap[b] for s in range(t_size)] for b in range(2)])
  np.testing.assert_allclose(vs, expected, rtol=1e-5)
  # On-policy the advantage is the one-step TD error against the return: G_s - V(x_s).
  np.testing.assert_allclose(adv, expected - values, rtol=1e-5, atol=1e-6)


def test_vtrace_outputs_are_stop_gradient():
  shape = (1, 3)
  grad = jax.grad(lambda v: jnp.sum(L.vtrace(jnp.zeros(shape), jnp.zeros(shape),
                                             jnp.ones(shape), v, jnp.zeros(1),
                                             jnp.ones(shape)).vs))(jnp.ones(shape))
  np.testing.assert_array_equal(grad, 0.0)


# --------------------------------------------------------------------------------------
# BOND.


def _bon_by_enumeration(ref: np.ndarray, rewards: np.ndarray, n: int) -> np.ndarray:
  """P(Best-of-n returns y): every n-tuple of draws, ties to the first maximal draw."""
  out = np.zeros_like(ref)
  for draws in itertools.product(range(ref.size), repeat=n):
    draws = np.asarray(draws)
    out[draws[np.argmax(rewards[draws])]] += np.prod(ref[draws])
  return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bon_log_prob_weights_give_the_best_of_n_distribution_with_ties(n):
  ref = np.array([0.1, 0.25, 0.2, 0.3, 0.15])
  rewards = np.array([0.3, 0.1, 0.3, 0.7, 0.1])  # ties between different outcomes
  le = np.array([np.sum(ref[rewards <= r]) for r in rewards])
  lt = np.array([np.sum(ref[rewards < r]) for r in rewards])
  bon = ref * np.exp(np.asarray(L.bon_log_prob_weights(le, n, strict_quantiles=lt)))
  np.testing.assert_allclose(bon, _bon_by_enumeration(ref, rewards, n), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(bon.sum(), 1.0, rtol=1e-5)


def test_bon_log_prob_weights_tie_free_form_and_large_n():
  q = np.array([1e-3, 0.2, 0.5, 0.999, 1.0])
  for n in (1, 4, 64):
    tie_free = np.asarray(L.bon_log_prob_weights(q, n))
    np.testing.assert_allclose(tie_free, (n - 1) * np.log(q) + np.log(n), rtol=1e-5)
    np.testing.assert_allclose(L.bon_log_prob_weights(q, n, strict_quantiles=q), tie_free,
                               rtol=1e-5)
    almost = np.asarray(L.bon_log_prob_weights(q, n, strict_quantiles=q * (1 - 1e-7)))
    assert np.all(np.isfinite(almost))
    np.testing.assert_allclose(almost, tie_free, atol=1e-4)
  assert float(L.bon_log_prob_weights(0.0, 1)) == 0.0  # Best-of-1 is the reference


@pytest.mark.parametrize("n", [2, 4, 8])
def test_bon_kl_matches_monte_carlo_best_of_n(n):
  rng = np.random.default_rng(40 + n)
  atoms, draws = 200, 200_000
  ref = rng.dirichlet(np.full(atoms, 20.0))  # a discrete reference, no large atom
  rewards = rng.random(atoms)  # continuous: distinct rewards, no ties
  samples = rng.choice(atoms, size=(draws, n), p=ref)
  best = samples[np.arange(draws), np.argmax(rewards[samples], axis=1)]
  bon = np.bincount(best, minlength=atoms) / draws
  seen = bon > 0
  kl_mc = np.sum(bon[seen] * np.log(bon[seen] / ref[seen]))
  assert abs(kl_mc - float(L.bon_kl(n))) < 0.01, (kl_mc, float(L.bon_kl(n)))


def test_bon_kl_is_an_upper_bound_for_a_coarse_discrete_reference():
  ref = np.array([0.5, 0.3, 0.2])
  rewards = np.array([0.2, 0.9, 0.5])
  for n in (2, 3):
    bon = _bon_by_enumeration(ref, rewards, n)
    exact = np.sum(bon * np.log(bon / ref))
    assert 0 < exact < float(L.bon_kl(n))
  assert float(L.bon_kl(1)) == 0.0


def test_jeffreys_bond_loss_gradient_is_the_jeffreys_divergence_gradient():
  rng = np.random.default_rng(50)
  k, n, beta = 6, 4, 0.3
  logits = rng.normal(size=k)
  ref = np.exp(_log_softmax(rng.normal(size=k)))
  rewards = rng.random(k)
  quantiles = np.array([np.sum(ref[rewards <= r]) for r in rewards])
  target = ref * n * quantiles**(n - 1)
  target /= target.sum()  # pi_BoN (tie-free form), normalised

  def jeffreys(z):  # float64 reference: (1 - beta) KL(pi || BoN) + beta KL(BoN || pi)
    logpi = _log_softmax(z)
    return ((1 - beta) * _kl(logpi, np.log(target)) + beta * _kl(np.log(target), logpi))

  h = 1e-6
  fd = np.array([(jeffreys(logits + h * e) - jeffreys(logits - h * e)) / (2 * h)
                 for e in np.eye(k)])
  pi = np.exp(_log_softmax(logits))

  # Every outcome once, weighted by its sampling probability: exact expectations.
  def loss(z):
    logpi = jax.nn.log_softmax(z)
    return L.jeffreys_bond_loss(logpi, np.log(ref), quantiles, logpi, n, beta,
                                policy_mask=pi, bon_mask=target).loss

  grad = jax.grad(loss)(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(grad, fd, atol=2e-5)


def test_jeffreys_bond_loss_parts_and_rewards():
  policy_logp = jnp.asarray([-3.0, -5.0])
  ref_logp = jnp.asarray([-4.0, -4.5])
  quantiles = jnp.asarray([0.5, 1.0])
  bon_logp = jnp.asarray([-2.0, -6.0, -1.0])
  out = L.jeffreys_bond_loss(policy_logp, ref_logp, quantiles, bon_logp, n=3, beta=0.25)
  expected_rewards = 2 * np.log([0.5, 1.0]) - np.array([1.0, -0.5])
  np.testing.assert_allclose(out.rewards, expected_rewards, rtol=1e-6)
  np.testing.assert_allclose(out.forward_nll, 3.0)
  np.testing.assert_allclose(out.backward_surrogate,
                             np.mean(-expected_rewards * np.array([-3.0, -5.0])), rtol=1e-6)
  np.testing.assert_allclose(out.loss, 0.75 * out.backward_surrogate + 0.25 * 3.0, rtol=1e-6)
  only_forward = jax.grad(lambda p, b: L.jeffreys_bond_loss(
      p, ref_logp, quantiles, b, 3, 1.0).loss, argnums=(0, 1))(policy_logp, bon_logp)
  np.testing.assert_array_equal(only_forward[0], 0.0)
  np.testing.assert_allclose(only_forward[1], [-1 / 3] * 3, rtol=1e-6)


def test_jbond_reward_hand_made_cases():
  policy = jnp.asarray([5.0, 2.0, 0.0, 1.0, 3.0])
  anchors = jnp.asarray([[1.0, 2.0],   # beats both
                         [1.0, 3.0],   # beats one
                         [1.0, 2.0],   # loses to both
                         [1.0, 2.0],   # ties the worse anchor
                         [3.0, 3.0]])  # ties both
  np.testing.assert_allclose(L.jbond_reward(policy, anchors),
                             [0.0, 0.0, -math.log(16), 0.0, 0.0], rtol=1e-6)
  batched = L.jbond_reward(jnp.zeros((2, 3)), jnp.ones((2, 3, 2)))
  assert batched.shape == (2, 3)
  np.testing.assert_allclose(batched, -math.log(16), rtol=1e-6)


def test_ema_update_moves_the_anchor_towards_the_params():
  anchor = {"w": jnp.zeros((2, 2)), "layers": (jnp.asarray([1.0, -1.0]),),
            "half": jnp.zeros(3, jnp.bfloat16)}
  params = {"w": jnp.ones((2, 2)), "layers": (jnp.asarray([3.0, 1.0]),),
            "half": jnp.ones(3, jnp.bfloat16)}
  once = L.ema_update(anchor, params, 0.25)
  assert jax.tree.structure(once) == jax.tree.structure(anchor)
  np.testing.assert_allclose(once["w"], 0.25)
  np.testing.assert_allclose(once["layers"][0], [1.5, -0.5])
  assert once["half"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(L.ema_update(anchor, params, 0.0)["w"], anchor["w"])
  np.testing.assert_array_equal(L.ema_update(anchor, params, 1.0)["layers"][0],
                                params["layers"][0])
  # k steps towards fixed params: anchor_k = params + (1 - rate)^k (anchor_0 - params).
  step = jax.jit(L.ema_update)
  current = anchor
  for _ in range(10):
    current = step(current, params, 0.1)
  np.testing.assert_allclose(current["layers"][0],
                             np.array([3.0, 1.0]) + 0.9**10 * np.array([-2.0, -2.0]),
                             rtol=1e-5)


def test_losses_compile_under_jit():
  logp, logq = _dists(60)
  ids, top = _topk(logp, 3)
  rng = np.random.default_rng(60)
  bt = rng.normal(size=(2, 4)).astype(np.float32)
  calls = {
      "generalized_jsd": (lambda a, b: L.generalized_jsd(a, b, 0.3), (logp, logq)),
      "gkd_divergence": (lambda a, b: L.gkd_divergence(a, b, 0.0), (logp, logq)),
      "kl_penalty_term": (lambda a, b: L.kl_penalty_term(a, b, kind="k3"), (bt, -bt)),
      "topk_kd": (L.topk_kd, (logq, ids, top, np.ones(4))),
      "sampled_kd": (L.sampled_kd, (logq, ids, np.ones_like(ids), np.ones(4))),
      "seqkd_nll": (L.seqkd_nll, (bt, np.ones_like(bt))),
      "policy_gradient_loss": (L.policy_gradient_loss, (bt, bt, np.ones_like(bt))),
      "kl_penalty": (lambda a, b: L.kl_penalty(a, b, kind="k3"), (bt, -bt)),
      "value_loss": (L.value_loss, (bt, -bt)),
      "discounted_returns": (L.discounted_returns, (bt, np.full_like(bt, 0.9))),
      "vtrace": (L.vtrace, (bt, -bt, bt, bt, bt[:, 0], np.full_like(bt, 0.9))),
      "bon_log_prob_weights": (L.bon_log_prob_weights, (np.full(3, 0.5), 4, np.full(3, 0.25))),
      "bon_kl": (L.bon_kl, (4,)),
      "jeffreys_bond_loss": (L.jeffreys_bond_loss, (bt[0], bt[1], np.full(4, 0.5), bt[0], 2,
                                                    0.5)),
      "jbond_reward": (L.jbond_reward, (bt[0], np.stack([bt[1], bt[0]], -1))),
  }
  for name, (fn, args) in calls.items():
    eager, jitted = fn(*args), jax.jit(fn)(*args)
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
      np.testing.assert_allclose(j, e, rtol=1e-5, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------
# Issue 11 item 5: the GKD endpoints, truncated teachers, the k3 gradient, masked NaN.


def _jsd0(logp: np.ndarray, logq: np.ndarray, beta: float) -> np.ndarray:
  """The GKD definition with 0 log 0 = 0 (ids one side gives no mass), float64."""
  p, q = np.exp(logp), np.exp(logq)
  m = beta * p + (1 - beta) * q
  with np.errstate(divide="ignore", invalid="ignore"):
    fwd = np.where(p > 0, p * np.log(p / m), 0.0)
    rev = np.where(q > 0, q * np.log(q / m), 0.0)
  return beta * fwd.sum(-1) + (1 - beta) * rev.sum(-1)


def _gkd_reference(logp, logq, beta):
  """What a config's beta promises: forward KL at 0, reverse KL at 1, JSD between."""
  if beta == 0:
    return _kl(logp, logq)
  if beta == 1:
    return _kl(logq, logp)
  return _jsd0(logp, logq, beta)


def _fd_student_grad(fn, logits: np.ndarray, h: float = 1e-6) -> np.ndarray:
  """Central differences of sum(fn(log_softmax(z))) in float64."""
  grad = np.zeros_like(logits)
  for index in np.ndindex(*logits.shape):
    e = np.zeros_like(logits)
    e[index] = h
    grad[index] = (fn(_log_softmax(logits + e)).sum()
                   - fn(_log_softmax(logits - e)).sum()) / (2 * h)
  return grad


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gkd_divergence_is_the_kl_at_the_endpoints_with_its_gradient(beta):
  logp, logq = _dists(70)
  np.testing.assert_allclose(L.gkd_divergence(logp, logq, beta),
                             _gkd_reference(logp, logq, beta), rtol=1e-5, atol=1e-7)
  traced = jax.jit(L.gkd_divergence)(logp, logq, jnp.float32(beta))
  np.testing.assert_allclose(traced, _gkd_reference(logp, logq, beta), rtol=1e-5, atol=1e-7)
  logits = np.random.default_rng(70).normal(size=logp.shape)
  expected = _fd_student_grad(lambda lq: _gkd_reference(logp, lq, beta), logits)
  assert np.abs(expected).max() > 1e-2  # the endpoints train (JSD(0) = JSD(1) = 0 do not)
  for b in (beta, jnp.float32(beta)):
    grad = _student_grad(lambda p, q: L.gkd_divergence(p, q, b), logp, logits)
    np.testing.assert_allclose(grad, expected, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1e-6, 0.3, 0.5, 0.9, 1.0 - 1e-6])
def test_jsd_gradient_is_finite_and_exact_for_a_truncated_teacher(beta):
  logp, _ = _dists(71)
  logp[:, :3] = -np.inf  # a top-k / top-p teacher: no mass on three ids
  logp = _log_softmax(logp)
  logits = np.random.default_rng(71).normal(size=logp.shape)
  logq = _log_softmax(logits)
  scale = 1.0 if beta in (0.0, 1.0) else beta * (1 - beta)
  reference = lambda lq: _gkd_reference(logp, lq, beta) / scale  # normalized_jsd
  expected = _fd_student_grad(reference, logits)
  # A float32 beta cannot hold 1 - 1e-6 (1 - beta would be 0.14% off): Python only there.
  for b in (beta,) if beta == 1.0 - 1e-6 else (beta, jnp.float32(beta)):
    np.testing.assert_allclose(L.normalized_jsd(logp, logq, b), reference(logq), rtol=1e-4)
    grad = _student_grad(lambda p, q: L.normalized_jsd(p, q, b), logp, logits)
    assert np.all(np.isfinite(grad)), (beta, grad)
    np.testing.assert_allclose(grad, expected, atol=2e-4 * max(1.0, np.abs(expected).max()))
    gkd = _student_grad(lambda p, q: L.gkd_divergence(p, q, b), logp, logits)
    assert np.all(np.isfinite(gkd))
  # The teacher side too (a live teacher is under stop_gradient, but nothing may be NaN).
  teacher_grad = jax.grad(lambda t: jnp.sum(L.normalized_jsd(t, logq, beta)))(
      jnp.asarray(logp, jnp.float32))
  assert np.all(np.isfinite(np.asarray(teacher_grad)))


def _two_step_policy(theta1, theta2):
  """log pi(a1), log pi(a2 | a1) of a tabular two-token policy (float64)."""
  return _log_softmax(theta1), _log_softmax(theta2)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_penalty_term_gradient_is_exact_for_a_tabular_policy(kind):
  """E_{y ~ pi}[grad of the term] = grad KL(pi || ref) / T, every y enumerated."""
  a = 3
  rng = np.random.default_rng(72)
  theta1, theta2 = rng.normal(size=a), rng.normal(size=(a, a))
  ref1, ref2 = _log_softmax(rng.normal(size=a)), _log_softmax(rng.normal(size=(a, a)))

  def sequence_kl(t1, t2):  # KL(pi || ref) over the a * a two-token sequences
    l1, l2 = _two_step_policy(t1, t2)
    p1 = np.exp(l1)
    return float(np.sum(p1 * (l1 - ref1)) + np.sum(p1 * np.sum(np.exp(l2) * (l2 - ref2), -1)))

  flat = np.concatenate([theta1, theta2.ravel()])
  h = 1e-6
  kl_of = lambda x: sequence_kl(x[:a], x[a:].reshape(a, a))
  exact = np.array([(kl_of(flat + h * e) - kl_of(flat - h * e)) / (2 * h)
                    for e in np.eye(flat.size)])
  sequences = np.array(list(itertools.product(range(a), repeat=2)))  # [a * a, 2]
  l1, l2 = _two_step_policy(theta1, theta2)
  prob = np.exp(l1[sequences[:, 0]] + l2[sequences[:, 0], sequences[:, 1]])
  ref = np.stack([ref1[sequences[:, 0]], ref2[sequences[:, 0], sequences[:, 1]]], -1)

  def term(params, y, ref_y, kind=kind):  # one sampled completion of T = 2 tokens
    t1, t2 = params[:a], params[a:].reshape(a, a)
    logp = jnp.stack([jax.nn.log_softmax(t1)[y[0]], jax.nn.log_softmax(t2[y[0]])[y[1]]])
    return L.kl_penalty_term(logp[None], ref_y[None], jnp.ones((1, 2)), kind).loss

  per_sequence = jax.vmap(jax.grad(term), in_axes=(None, 0, 0))(
      jnp.asarray(flat, jnp.float32), sequences, jnp.asarray(ref, jnp.float32))
  expected_grad = np.asarray(per_sequence, np.float64).T @ prob
  np.testing.assert_allclose(expected_grad, exact / 2, atol=2e-5)
  # The value is the chosen estimator's mean, whose expectation is KL / T.
  values = jax.vmap(lambda y, r: term(jnp.asarray(flat, jnp.float32), y, r))(
      sequences, jnp.asarray(ref, jnp.float32))
  np.testing.assert_allclose(np.asarray(values, np.float64) @ prob,
                             sequence_kl(theta1, theta2) / 2, rtol=1e-4)

  if kind == "k3":  # k3 as the score-function weight: biased, as the issue says
    def k3_weighted(params, y, ref_y):
      t1, t2 = params[:a], params[a:].reshape(a, a)
      logp = jnp.stack([jax.nn.log_softmax(t1)[y[0]], jax.nn.log_softmax(t2[y[0]])[y[1]]])
      k3 = L.kl_penalty(jax.lax.stop_gradient(logp), ref_y, kind="k3")
      to_go = jnp.flip(jnp.cumsum(jnp.flip(k3)))
      return jnp.mean(to_go * logp)

    biased = np.asarray(jax.vmap(jax.grad(k3_weighted), in_axes=(None, 0, 0))(
        jnp.asarray(flat, jnp.float32), sequences, jnp.asarray(ref, jnp.float32)),
                        np.float64).T @ prob
    assert np.abs(biased - exact / 2).max() > 1e-2


def _nan_rows(x: np.ndarray, rows) -> np.ndarray:
  x = np.array(x, np.float32, copy=True)
  x[rows] = np.nan
  return x


def test_nan_at_masked_positions_does_not_reach_any_gradient():
  """Every masked loss: NaN in padded positions of any input leaves the gradient (and
  the value) equal to that of the same inputs with finite padding."""
  logp, logq = _dists(73)
  ids, top = _topk(logp, 3)
  mask = np.array([1, 0, 1, 0], np.float32)
  pad = [1, 3]
  # The student's log-probs are the differentiated input (a NaN *logit* would already be
  # NaN through log_softmax, outside any loss).
  logits = jnp.asarray(logq, jnp.float32)
  rng = np.random.default_rng(74)
  bt = rng.normal(size=(4, 5)).astype(np.float32)
  bt_mask = np.ones((4, 5), np.float32)
  bt_mask[:, 3:] = 0
  bt_pad = (slice(None), slice(3, None))
  student = lambda z: z
  cases = {  # name: (loss of the differentiated input, clean args, NaN-padded args)
      "normalized_jsd": (lambda z, t: jnp.sum(L.normalized_jsd(t, student(z), 0.3, mask)),
                         (logp,), (_nan_rows(logp, pad),)),
      "gkd_divergence_0": (lambda z, t: jnp.sum(L.gkd_divergence(t, student(z), 0.0, mask)),
                           (logp,), (_nan_rows(logp, pad),)),
      "topk_kd": (lambda z, lp: jnp.sum(L.topk_kd(student(z), ids, lp, mask)),
                  (top,), (_nan_rows(top, pad),)),
      "sampled_kd": (lambda z, c: jnp.sum(L.sampled_kd(student(z), ids, c, mask)),
                     (np.ones_like(top),), (_nan_rows(np.ones_like(top), pad),)),
  }
  for name, (fn, clean, dirty) in cases.items():
    want = jax.value_and_grad(fn)(logits, *clean)
    got = jax.value_and_grad(fn)(logits, *dirty)
    got_nan_student = jax.value_and_grad(fn)(jnp.asarray(_nan_rows(logits, pad)), *dirty)
    for g in (got, got_nan_student):
      assert np.all(np.isfinite(np.asarray(g[1]))), name
      np.testing.assert_allclose(g[0], want[0], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7, err_msg=name)

  seq_cases = {  # name: loss of (differentiated [B, T], other [B, T])
      "seqkd_nll": lambda x, o: L.seqkd_nll(x, bt_mask),
      "policy_gradient_loss": lambda x, o: L.policy_gradient_loss(x, o, bt_mask),
      "kl_penalty": lambda x, o: jnp.sum(L.kl_penalty(x, o, bt_mask, "k3")),
      "kl_penalty_term": lambda x, o: L.kl_penalty_term(x, o, bt_mask, "k3").loss,
      "value_loss": lambda x, o: L.value_loss(x, o, bt_mask),
      "masked_mean": lambda x, o: L.masked_mean(x, bt_mask),
  }
  for name, fn in seq_cases.items():
    want = jax.value_and_grad(fn)(bt, -bt)
    for x, o in ((bt, _nan_rows(-bt, bt_pad)), (_nan_rows(bt, bt_pad), _nan_rows(-bt, bt_pad))):
      value, grad = jax.value_and_grad(fn)(jnp.asarray(x), jnp.asarray(o))
      assert np.all(np.isfinite(np.asarray(grad))), name
      np.testing.assert_allclose(value, want[0], rtol=1e-6, err_msg=name)
      np.testing.assert_allclose(grad, want[1], rtol=1e-6, atol=1e-7, err_msg=name)

  policy_mask, bon_mask = np.array([1, 1, 0], np.float32), np.array([1, 0], np.float32)
  bond = lambda p, b, r, qn: L.jeffreys_bond_loss(p, r, qn, b, 2, 0.5, policy_mask,
                                                  bon_mask).loss
  args = (np.array([-1.0, -2.0, -3.0], np.float32), np.array([-1.5, -0.5], np.float32),
          np.array([-1.2, -1.8, -2.0], np.float32), np.array([0.5, 1.0, 0.25], np.float32))
  dirty = tuple(_nan_rows(x, [2] if x.size == 3 else [1]) for x in args)
  want = jax.value_and_grad(bond, argnums=(0, 1))(*args)
  got = jax.value_and_grad(bond, argnums=(0, 1))(*dirty)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
