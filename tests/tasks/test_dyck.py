"""rlds_lm.tasks.dyck: the exact counts, the oracle's conditionals, the sampler and the
validity reward."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rlds_lm import tasks
from rlds_lm.tasks import dyck


def _balanced(length: int) -> list[str]:
  return ["".join(s) for s in itertools.product("()", repeat=length)
          if dyck.depth_of("".join(s)) == 0]


@pytest.mark.parametrize("length,catalan", [(2, 1), (4, 2), (6, 5), (8, 14), (10, 42)])
def test_counts_are_the_catalan_numbers_and_match_brute_force(length, catalan):
  assert dyck.completions(length, 0) == catalan == len(_balanced(length))


def test_next_probs_is_the_uniform_distribution_over_valid_continuations():
  problem = dyck.make_problem(8)
  valid = _balanced(8)
  for prefix in ["", "(", "((", "()", "(((", "((((", "(()(", "()()()"]:
    matching = [s for s in valid if s.startswith(prefix)]
    expected = np.zeros(3)
    for s in matching:
      expected["()".index(s[len(prefix)])] += 1
    np.testing.assert_allclose(dyck.next_probs(problem, prefix), expected / len(matching),
                               err_msg=prefix)
  np.testing.assert_array_equal(dyck.next_probs(problem, "(((("), [0, 1, 0])  # must close
  np.testing.assert_array_equal(dyck.next_probs(problem, "(())()()"), [0, 0, 1])  # the end
  for bad in [")", "())", "(((((", "((x", "(())()()("]:
    assert dyck.next_probs(problem, bad) is None, bad


def test_the_sampler_is_uniform_over_valid_strings_and_keeps_a_prefix():
  rng = np.random.default_rng(0)
  problem = dyck.make_problem(6)
  draws = [dyck.sample(problem, rng) for _ in range(5000)]
  assert all(dyck.is_valid(problem, d) for d in draws)
  _, counts = np.unique(draws, return_counts=True)
  assert len(counts) == 5 and counts.min() > 900 and counts.max() < 1100  # ~1000 each
  assert all(dyck.sample(problem, rng, prefix="((").startswith("((") for _ in range(20))
  with pytest.raises(ValueError, match="starts with '\\)'"):
    dyck.sample(problem, rng, prefix=")")


def test_the_reward_scores_validity_and_the_task_is_registered():
  record = dyck.make_problem(4).as_record()
  reward = tasks.get_reward("dyck")
  np.testing.assert_array_equal(
      reward(record, ["(())", "()()", "(()(", ")(()", "()", "()()()", "(x)"]).values,
      [1, 1, 0, 0, 0, 0, 0])
  assert reward.task == "dyck" and tasks.TASKS["dyck"].prompt(record) == "4:"
  assert tasks.detect_task(record) == "dyck"
  with pytest.raises(ValueError, match="no balanced string has length 5"):
    dyck.make_problem(5)
  assert {p.length for p in dyck.problems(50, (4, 12), seed=1)} == {4, 12}
