"""benchmarks.repro_gkd: the oracle's teacher arrays, the first-error diagnostic and the
claim verdicts (the experiment itself is run by its command, not by the tests)."""

from __future__ import annotations

import numpy as np

from benchmarks import repro_gkd as G
from rlds_lm import schema as S
from rlds_lm.models import sampling
from rlds_lm.tasks import dyck

SPEC = G.TASK_SPECS["dyck"]


def test_oracle_arrays_are_the_exact_distribution_of_every_token():
  problem = dyck.make_problem(4)
  arrays = G.oracle_arrays(SPEC, problem, "(())")
  ids, logps = arrays[S.TEACHER_TOPK_IDS], arrays[S.TEACHER_TOPK_LOGPROBS]
  assert ids.shape == logps.shape == (5, 3)  # 4 brackets + EOS, 3 outcomes each
  np.testing.assert_allclose(np.exp(logps).sum(axis=1), 1.0, rtol=1e-5)
  assert (np.diff(logps, axis=1) <= 0).all()  # most likely first
  open_id, close_id = ord("(") + 3, ord(")") + 3
  # After "((" in 4: only ")" (up to the smoothing); at the end: only EOS.
  assert ids[2, 0] == close_id and np.exp(logps[2, 0]) > 0.99
  assert ids[4, 0] == G.EOS and np.exp(logps[4, 0]) > 0.99
  # After "(": "(" and ")" are equally likely ("(())" and "()()").
  first_two = dict(zip(ids[1, :2].tolist(), np.exp(logps[1, :2]).tolist()))
  assert set(first_two) == {open_id, close_id}
  np.testing.assert_allclose(list(first_two.values()), 0.5, atol=1e-3)
  np.testing.assert_allclose(arrays[S.TEACHER_TOKEN_LOGPROB][1], np.log(first_two[open_id]))


def test_first_error_is_where_a_sample_leaves_the_valid_strings():
  problem = dyck.make_problem(4)

  def err(text, stop=sampling.STOP_EOS):
    return G.first_error(SPEC, problem, text, sampling.Completion(
        np.zeros(len(text) + 1, np.int32), np.zeros(len(text) + 1, np.float32), stop))

  assert err("()()") is None
  assert err(")()(") == 0.0  # the first character already
  assert err("(((") == 0.5  # "(((" cannot close in 4: the third character
  assert err("((") == 0.5  # ended (EOS) after 2 of 4
  assert err("()()", sampling.STOP_LENGTH) == 1.0  # right string, but no EOS


def _data(gaps_by_length: dict[int, float], seeds: int = 3) -> dict:
  """A minimal result: one on-policy and one off-policy method, validity per length."""
  lengths = sorted(gaps_by_length)
  methods = [{"key": "off", "student_fraction": 0.0}, {"key": "on", "student_fraction": 1.0}]
  runs = []
  for seed in range(seeds):
    for key, bonus in (("off", 0.0), ("on", 1.0)):
      test = {f"valid_L{n}": 0.5 + bonus * gaps_by_length[n] + 0.01 * seed for n in lengths}
      test.update({f"kl_L{n}": 0.2 - bonus * 0.05 for n in lengths})
      runs.append({"method": key, "seed": seed, "train_seconds": 30.0 if key == "off" else 10.0,
                   "val": {"valid": [[100, 0.5 + bonus * 0.1]]}, "test_final": test,
                   "test_equal_steps": test, "test_equal_compute": test,
                   "equal_compute": {"step": 100}})
  return {"sizes": {"lengths": lengths, "student_steps": 100, "compute_ratio": 3},
          "methods": methods, "runs": runs}


def test_claims_follow_the_numbers():
  growing = {c["claim"]: c for c in G.claims(_data({4: 0.01, 12: 0.05, 24: 0.2}))}
  assert all(c["reproduced"] for c in growing.values()), growing
  assert all({"claim", "measured", "reproduced"} <= set(c) for c in growing.values())
  shrinking = G.claims(_data({4: 0.2, 12: 0.05, 24: -0.1}))
  assert [c["reproduced"] for c in shrinking] == [False, False, False, True]


def test_steady_seconds_charges_the_start_up_interval_at_the_steady_rate():
  # 10 s of start-up in the first 25 steps, then 1 s per 25 steps.
  points = [[25, 11.0], [50, 12.0], [75, 13.0]]
  np.testing.assert_allclose([t for _, t in G.steady_seconds(points)], [1.0, 2.0, 3.0])
  assert G.steady_seconds([[25, 11.0]]) == [[25, 11.0]]
