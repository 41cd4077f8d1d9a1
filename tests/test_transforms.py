"""rlds.transformations on our episodes: which apply to turn-level steps as they are,
and the common RLDS idioms (windows of steps, transitions, returns) on our data, as
docs/interop.md shows them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import ROLLOUT
from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import transforms
from rlds_lm import validate as V

RLDS = transforms.rlds()
TR = RLDS.transformations


@pytest.fixture(scope="module")
def multi_turn(tmp_path_factory):
  """(dataset path, episodes by id): 1- to 3-turn rollouts with teacher top-k and
  sampled-k, named rewards and per-token rewards."""
  episodes = [V.validate_episode(T.fake_rollout(ROLLOUT, seed=i, turns=1 + i % 3,
                                                action_len=3 + i % 4), ROLLOUT)
              for i in range(6)]
  path = P.publish({"train": episodes}, data_dir=tmp_path_factory.mktemp("multi"),
                   name="multi_turn", config=ROLLOUT)
  return path, {e[S.EPISODE_ID]: e for e in episodes}


def _three_turns(path, by_id):
  for episode in transforms.as_dataset(path):
    stored = by_id[episode[S.EPISODE_ID].numpy().decode()]
    if len(stored[S.STEPS]) == 4:
      return episode[S.STEPS], stored
  raise AssertionError("no three-turn episode")


def _fixed(step):
  """The fixed-shape fields of a step (what batching can stack)."""
  action = step[S.ACTION]
  tokens = action[S.ACT_TOKENS] if isinstance(action, dict) else action  # turn / token
  return {S.REWARD: step[S.REWARD], S.DISCOUNT: step[S.DISCOUNT],
          S.IS_FIRST: step[S.IS_FIRST], S.IS_LAST: step[S.IS_LAST],
          "action_length": tf.size(tokens)}


# Run on turn-level steps as they are (docs/interop.md's table says the same).
WORK_ON_TURNS = {
    "episode_length": lambda steps: TR.episode_length(steps),
    "sum_dataset": lambda steps: TR.sum_dataset(steps, lambda s: s[S.REWARD]),
    "final_step": lambda steps: TR.final_step(steps),
    "map_steps": lambda steps: list(TR.map_steps(steps, _fixed)),
    "truncate_after_condition": lambda steps: list(TR.truncate_after_condition(
        steps, lambda s: s[S.IS_FIRST])),
    "concatenate": lambda steps: list(TR.concatenate(steps, steps)),
    "zero_dataset_like": lambda steps: list(TR.zero_dataset_like(steps)),
    "concat_if_terminal": lambda steps: list(TR.concat_if_terminal(
        steps, lambda _: TR.zero_dataset_like(steps.take(1)))),
    "sar_fields_mask": lambda steps: list(steps.map(TR.sar_fields_mask)),
    "add_alignment_to_step": lambda steps: list(steps.map(
        lambda s: TR.add_alignment_to_step(s, TR.AlignmentType.SAR))),
    "batch (fixed-shape fields)": lambda steps: list(TR.batch(steps.map(_fixed), size=2,
                                                              shift=1)),
    "shift_keys (fixed-shape fields)": lambda steps: list(TR.shift_keys(
        steps.map(_fixed), [S.REWARD], shift=1)),
}
# Stack steps into one tensor: fail on ragged token arrays; run on token-level steps.
NEED_FIXED_SHAPES = {
    "batch": lambda steps: list(TR.batch(steps, size=2, shift=1)),
    "shift_keys": lambda steps: list(TR.shift_keys(steps, [S.REWARD], shift=1)),
}


@pytest.mark.parametrize("name", sorted(WORK_ON_TURNS))
def test_transformations_that_run_on_turn_level_steps(name, multi_turn):
  steps, _ = _three_turns(*multi_turn)
  WORK_ON_TURNS[name](steps)
  WORK_ON_TURNS[name](transforms.token_level(steps))


@pytest.mark.parametrize("name", sorted(NEED_FIXED_SHAPES))
def test_transformations_that_need_fixed_shapes(name, multi_turn):
  steps, _ = _three_turns(*multi_turn)
  with pytest.raises(tf.errors.InvalidArgumentError, match="Cannot batch tensors"):
    NEED_FIXED_SHAPES[name](steps)
  assert NEED_FIXED_SHAPES[name](transforms.token_level(steps))


def test_nested_step_transformations(multi_turn):
  path, by_id = multi_turn
  turn_episodes = transforms.as_dataset(path)
  token_episodes = turn_episodes.map(lambda e: {**e, S.STEPS: transforms.token_level(
      e[S.STEPS])})
  n_tokens = sum(len(s[S.ACTION][S.ACT_TOKENS]) for e in by_id.values() for s in e[S.STEPS])
  # Token level: one step per token plus each episode's final step (action 0).
  for episodes, expected in ((turn_episodes, n_tokens),
                             (token_episodes, n_tokens + len(by_id))):
    lengths = [int(s["action_length"]) for e in TR.map_nested_steps(episodes, _fixed)
               for s in e[S.STEPS]]
    assert sum(lengths) == expected
    firsts = TR.apply_nested_steps(episodes, lambda steps: steps.take(1))
    assert all(len(list(e[S.STEPS])) == 1 for e in firsts)
  total = float(TR.sum_nested_steps(turn_episodes, lambda s: s[S.REWARD]))
  assert total == pytest.approx(sum(S.episode_return(e) for e in by_id.values()), rel=1e-5)


def test_mean_and_std_over_episodes(multi_turn):
  path, by_id = multi_turn
  episodes = transforms.as_dataset(path)
  with pytest.raises((TypeError, ValueError)):  # strings and ragged tokens
    TR.mean_and_std(episodes, TR.sar_fields_mask)
  mean, std = TR.mean_and_std(episodes, lambda s: ({S.REWARD: s[S.REWARD]},
                                                  {S.REWARD: True}))
  rewards = [float(s[S.REWARD]) for e in by_id.values() for s in e[S.STEPS]]
  assert float(mean[S.REWARD]) == pytest.approx(np.mean(rewards), rel=1e-5)
  assert float(std[S.REWARD]) == pytest.approx(np.std(rewards, ddof=1), rel=1e-4)
  token_episodes = episodes.map(lambda e: {**e, S.STEPS: transforms.token_level(
      e[S.STEPS])})
  mean, _ = TR.mean_and_std(token_episodes, TR.sar_fields_mask)
  actions = [v[S.ACTION] for e in by_id.values() for v in R.token_view(e)
             if not v[S.IS_LAST]]  # sar_fields_mask: the final step has no action
  assert float(mean[S.ACTION]) == pytest.approx(np.mean(actions), rel=1e-5)


def test_windows_of_steps(multi_turn):
  steps, stored = _three_turns(*multi_turn)
  # Turn level: rlds' batch, with ragged fields.
  windows = list(transforms.turn_windows(steps, 2, shift=1, drop_remainder=True))
  turns = stored[S.STEPS]
  assert len(windows) == len(turns) - 1
  for i, window in enumerate(windows):
    for j in range(2):
      np.testing.assert_array_equal(window[S.ACTION][S.ACT_TOKENS][j].numpy(),
                                    turns[i + j][S.ACTION][S.ACT_TOKENS])
      np.testing.assert_array_equal(window[S.TEACHER][S.TEACHER_TOPK_IDS][j].numpy(),
                                    turns[i + j][S.TEACHER][S.TEACHER_TOPK_IDS])
    np.testing.assert_allclose(window[S.REWARD].numpy(),
                               [turns[i][S.REWARD], turns[i + 1][S.REWARD]])
  # Token level: rlds' own batch, every field dense.
  token_windows = list(TR.batch(transforms.token_level(steps), size=3, shift=1,
                                drop_remainder=True))
  actions = [v[S.ACTION] for v in R.token_view(stored)]
  assert len(token_windows) == len(actions) - 2
  for i, window in enumerate(token_windows):
    assert window[S.ACTION].numpy().tolist() == actions[i:i + 3]


def test_transitions(multi_turn):
  steps, stored = _three_turns(*multi_turn)
  turns = stored[S.STEPS]
  # Turn level: (s, a, r, s') from a step and the next one, ragged fields as they are.
  transitions = tf.data.Dataset.zip((steps, steps.skip(1))).map(
      lambda step, following: {"observation": step[S.OBSERVATION][S.OBS_TOKENS],
                               "action": step[S.ACTION][S.ACT_TOKENS],
                               "reward": step[S.REWARD],
                               "next_observation": following[S.OBSERVATION][S.OBS_TOKENS]})
  got = list(tfds.as_numpy(transitions))
  assert len(got) == len(turns) - 1
  for i, transition in enumerate(got):
    np.testing.assert_array_equal(transition["action"], turns[i][S.ACTION][S.ACT_TOKENS])
    np.testing.assert_array_equal(transition["next_observation"],
                                  turns[i + 1][S.OBSERVATION][S.OBS_TOKENS])
  # Token level: rlds' shift_keys puts the next step's observation beside the action.
  shifted = TR.shift_keys(transforms.token_level(steps), [S.OBSERVATION], shift=1)
  view = R.token_view(stored)
  got = list(tfds.as_numpy(shifted))
  assert len(got) == len(view) - 1
  for i, step in enumerate(got):
    assert step[S.ACTION] == view[i][S.ACTION]
    assert step[S.OBSERVATION][R.TOKEN_POSITION] == view[i + 1][S.OBSERVATION][
        R.TOKEN_POSITION]


def _returns(rewards, discounts, gamma):
  out, following = [], 0.0
  for r, d in zip(reversed(rewards), reversed(discounts)):
    following = r + gamma * d * following
    out.append(following)
  return out[::-1]


def test_returns(multi_turn):
  path, by_id = multi_turn
  steps, stored = _three_turns(path, by_id)
  gamma = 0.9
  turns = stored[S.STEPS]
  got = [float(s["return"]) for s in transforms.with_returns(steps, gamma)]
  np.testing.assert_allclose(got, _returns([float(s[S.REWARD]) for s in turns],
                                           [float(s[S.DISCOUNT]) for s in turns], gamma),
                             rtol=1e-5)
  assert got[0] == pytest.approx(  # undiscounted, the episode's return
      float(TR.sum_dataset(steps, lambda s: s[S.REWARD])), rel=1e-5) if gamma == 1 else True
  view = R.token_view(stored)
  got = [float(s["return"]) for s in transforms.with_returns(
      transforms.token_level(steps), gamma)]
  np.testing.assert_allclose(got, _returns([float(v[S.REWARD]) for v in view],
                                           [float(v[S.DISCOUNT]) for v in view], gamma),
                             rtol=1e-4, atol=1e-5)
  # Over a whole dataset, in graph mode: the episodes' undiscounted returns.
  firsts = transforms.as_dataset(path).flat_map(
      lambda e: transforms.with_returns(e[S.STEPS]).take(1))
  assert sorted(round(float(s["return"]), 4) for s in firsts) == sorted(
      round(S.episode_return(e), 4) for e in by_id.values())
