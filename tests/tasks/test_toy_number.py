"""The toy number task and its tie-free reward ``toy_number_distance``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlds_lm import tasks
from rlds_lm.tasks import toy_number


def test_reward_is_minus_log_distance_of_the_spelled_number():
  reward = tasks.get_reward("toy_number_distance")
  record = {"prompt_id": "n", "target": "00001234"}
  values = reward(record, ["00001234", "1234", "1235", "1233", "12x34", "", "abc",
                           "00011234"]).values
  assert values.dtype == np.float32
  np.testing.assert_allclose(
      values, [0.0, 0.0, -math.log10(2), -math.log10(2), 0.0, -math.log10(1235),
               -math.log10(1235), -math.log10(10001)], rtol=1e-6)
  assert reward.prompt(record) == "00001234:"
  assert reward.task == "toy_number" and reward.fields == ("target",)
  assert tasks.detect_task(record) == "toy_number"


def test_reward_is_monotone_in_the_distance_and_ties_only_on_equal_distances():
  target = "50000000"
  numbers = [50000000 + d for d in (0, 1, -3, 7, -40, 500, -6000, 10 ** 6, -3 * 10 ** 7)]
  values = tasks.get_reward("toy_number_distance")(
      {"target": target}, [str(x) for x in numbers]).values
  assert np.all(np.diff(values) < 0)  # each further from the target than the last
  # A reference-like sampler: distinct numbers get distinct rewards unless they are
  # equally far on both sides (up to float32: below 10^6 away every distance is exact).
  rng = np.random.default_rng(0)
  guesses = sorted({toy_number.noisy_copy(target, rng, 0.6) for _ in range(400)})
  near = [g for g in guesses if abs(int(g) - int(target)) < 10 ** 6]
  distances = {abs(int(g) - int(target)) for g in near}
  values = tasks.get_reward("toy_number_distance")({"target": target}, near).values
  assert len(set(values.tolist())) == len(distances) > 50
  values = tasks.get_reward("toy_number_distance")({"target": target}, guesses).values
  assert len(set(values.tolist())) >= 0.98 * len(guesses)


def test_targets_and_noisy_copies():
  records = toy_number.targets(50, seed=3)
  assert len({r["target"] for r in records}) == 50
  assert all(len(r["target"]) == toy_number.DIGITS and r["target"].isdigit()
             for r in records)
  assert records == toy_number.targets(50, seed=3) != toy_number.targets(50, seed=4)
  rng = np.random.default_rng(0)
  assert toy_number.noisy_copy("12345678", rng, 0.0) == "12345678"
  copies = [toy_number.noisy_copy("00000000", rng, 0.5) for _ in range(2000)]
  wrong = np.mean([c != "0" for copy in copies for c in copy])
  assert abs(wrong - 0.5 * 0.9) < 0.02  # a replaced digit is still right 1 time in 10
  with pytest.raises(ValueError, match="replace must be in"):
    toy_number.noisy_copy("1", rng, 1.5)
  with pytest.raises(ValueError, match="only 10 distinct targets"):
    toy_number.targets(11, digits=1)


def test_refuses_a_target_that_is_not_digits():
  with pytest.raises(tasks.RecordError, match="prompt p: target must be decimal digits"):
    tasks.get_reward("toy_number_distance")({"prompt_id": "p", "target": "12a"}, ["12"])
