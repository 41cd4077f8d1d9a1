"""The J-BOND reproduction's estimators and claim logic (no training: numbers only)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from benchmarks import repro_jbond as J


def test_best_of_n_estimate_is_the_exact_mean_over_subsets():
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(3, 7))
  for n in (1, 2, 4, 7):
    exact = np.mean([np.mean([max(row[list(c)]) for c in itertools.combinations(range(7), n)])
                     for row in rewards])
    np.testing.assert_allclose(J.best_of_n_rewards(rewards, [n]), [exact], rtol=1e-10)


def test_best_of_n_kl_and_the_tilted_optimum_limits():
  assert J.bon_kl(1) == 0.0
  np.testing.assert_allclose(J.bon_kl(4), math.log(4) - 0.75)
  rewards = np.random.default_rng(1).normal(size=(5, 64))
  flat, sharp = J.tilted_frontier(rewards, [1e6, 1e-3])
  np.testing.assert_allclose(flat["reward"], rewards.mean(), atol=1e-4)
  assert abs(flat["kl"]) < 1e-6
  np.testing.assert_allclose(sharp["reward"], rewards.max(-1).mean())
  np.testing.assert_allclose(sharp["kl"], math.log(64))  # all mass on one sample of 64


def _data(curves):
  """A results dict with the frontier r(N) = log N (KL analytic) and the given runs."""
  frontier = [{"n": n, "reward": math.log(n), "kl": J.bon_kl(n)} for n in range(1, 65)]
  runs = [{"key": key, "label": key, "algorithm": key.split("_")[0],
           "curve": [{"step": 10 * i, "reward": r, "kl": k, "reward_se": 0.01, "kl_se": 0.01}
                     for i, (k, r) in enumerate(points)]} for key, points in curves.items()]
  return {"sizes": {"bond_n": 4}, "reference": {"frontier": frontier}, "runs": runs}


def test_claims_follow_the_numbers():
  on = [(0.0, 0.0), (0.2, math.log(2)), (J.bon_kl(8), math.log(8))]
  right = [(0.0, 0.0), (1.0, 0.5), (2.0, 1.0)]
  data = _data({"bond_n4": [(0.0, 0.0), (J.bon_kl(4), math.log(4))], "jbond_a": on,
                "reinforce_a": right})
  claims = {c["claim"][:3]: c for c in J.claims(data)}
  assert claims["(a)"]["reproduced"] and claims["(b)"]["reproduced"]
  assert claims["(c)"]["reproduced"]
  assert claims["(c)"]["runs"][0]["mean_gap"] < 0
  # Swap the roles: J-BOND right of the frontier, REINFORCE on it, BOND short of BoN-4.
  data = _data({"bond_n4": [(0.0, 0.0), (0.3, 0.4)], "jbond_a": right, "reinforce_a": on})
  claims = {c["claim"][:3]: c for c in J.claims(data)}
  assert not any(c["reproduced"] for c in claims.values())
  assert all({"claim", "measured", "reproduced"} <= set(c) for c in claims.values())
