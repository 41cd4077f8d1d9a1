"""rlds_lm.tasks.digit_sum: the exact counts, the oracle's conditionals, the sampler and
the validity reward."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rlds_lm import tasks
from rlds_lm.tasks import digit_sum


def _valid_strings(length: int, total: int) -> list[str]:
  return ["".join(d) for d in itertools.product("0123456789", repeat=length)
          if sum(int(c) for c in d) == total]


@pytest.mark.parametrize("length,total", [(1, 7), (2, 9), (3, 13), (3, 27), (4, 18)])
def test_counts_match_brute_force(length, total):
  assert digit_sum.counts(length)[length][total] == len(_valid_strings(length, total))


def test_next_probs_is_the_uniform_distribution_over_valid_continuations():
  length, total = 3, 12
  valid = _valid_strings(length, total)
  for prefix in ["", "9", "93", "09", "00"]:
    probs = digit_sum.next_probs(length, total, prefix)
    matching = [s for s in valid if s.startswith(prefix)]
    if not matching:
      assert probs is None, prefix
      continue
    expected = np.zeros(11)
    for s in matching:
      expected[digit_sum.END if len(prefix) == length else int(s[len(prefix)])] += 1
    np.testing.assert_allclose(probs, expected / len(matching), err_msg=prefix)
  assert digit_sum.next_probs(3, 12, "00") is None  # 12 cannot fit in one digit
  assert digit_sum.next_probs(3, 12, "930")[digit_sum.END] == 1.0  # complete: only the end
  assert digit_sum.next_probs(3, 12, "9x") is None and digit_sum.next_probs(3, 12, "1111") is None


def test_the_sampler_is_uniform_over_valid_strings_and_keeps_a_prefix():
  rng = np.random.default_rng(0)
  draws = [digit_sum.sample(2, 9, rng) for _ in range(5000)]
  assert all(digit_sum.is_valid(2, 9, d) for d in draws)
  _, counts = np.unique(draws, return_counts=True)
  assert len(counts) == 10  # "09" ... "90", each about 500 times
  assert counts.min() > 400 and counts.max() < 600
  assert all(digit_sum.sample(6, 30, rng, prefix="99").startswith("99") for _ in range(20))
  with pytest.raises(ValueError, match="starts with '00'"):
    digit_sum.sample(3, 25, rng, prefix="00")


def test_the_reward_scores_validity_and_the_task_is_registered():
  record = digit_sum.make_problem(4, 10).as_record()
  reward = tasks.get_reward("digit_sum")
  scores = reward(record, ["1234", "4321", "1233", "12340", "123a", ""]).values
  np.testing.assert_array_equal(scores, [1, 1, 0, 0, 0, 0])
  assert reward.task == "digit_sum" and tasks.TASKS["digit_sum"].prompt(record) == "4:10="
  assert tasks.detect_task(record) == "digit_sum"


def test_problems_are_deterministic_and_in_range():
  a = digit_sum.problems(200, (4, 12), seed=3)
  assert a == digit_sum.problems(200, (4, 12), seed=3)
  assert {p.length for p in a} == {4, 12}
  assert all(p.length <= p.total <= 8 * p.length for p in a)
  assert a[0].prompt_id == digit_sum.make_problem(a[0].length, a[0].total).prompt_id
  with pytest.raises(ValueError, match="no string of 2 digits sums to 19"):
    digit_sum.make_problem(2, 19)
