"""Schema: configs, features, builders, content ids."""

import numpy as np
import pytest

from conftest import AGENTIC, PREFERENCE, ROLLOUT
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import validate as V


@pytest.mark.parametrize("config", [ROLLOUT, AGENTIC, PREFERENCE, S.SchemaConfig()],
                         ids=["rollout", "agentic", "preference", "default"])
def test_features_encode_and_decode_fake_episodes(config):
  features = S.episode_features(config)
  episode = (T.fake_preference(config) if config.kind == S.PREFERENCE else
             T.fake_rollout(config, turns=2, with_image=bool(config.image_channels)))
  encoded = features.encode_example(V.validate_episode(episode, config))
  assert set(encoded) == set(episode)


def test_feature_paths_match_the_spec_table():
  features = S.episode_features(ROLLOUT)
  steps = features[S.STEPS].feature
  assert steps[S.TEACHER][S.TEACHER_TOPK_IDS].shape == (None, 4)
  assert steps[S.TEACHER][S.TEACHER_SAMPLED_COUNTS].shape == (None, 6)
  assert set(steps[S.REWARDS].keys()) == {"correct", "entailment"}
  assert S.OBS_IMAGE not in steps[S.OBSERVATION]
  assert S.OBS_IMAGE in S.episode_features(AGENTIC)[S.STEPS].feature[S.OBSERVATION]
  assert S.TEACHER not in S.episode_features(AGENTIC)[S.STEPS].feature


def test_config_json_round_trip_and_bad_configs():
  assert S.SchemaConfig.from_json(ROLLOUT.to_json()) == ROLLOUT
  with pytest.raises(ValueError, match="teacher_top_k"):
    S.SchemaConfig(vocab_size=10, teacher_top_k=11)
  with pytest.raises(ValueError, match="kind"):
    S.SchemaConfig(kind="trajectory")
  with pytest.raises(ValueError, match="reward_names"):
    S.SchemaConfig(reward_names=("a", "a"))
  with pytest.raises(ValueError, match="unknown fields"):
    S.SchemaConfig.from_json('{"vocab": 3}')


def test_build_step_and_episode_refuse_collisions():
  with pytest.raises(S.SchemaKeyError, match="reward"):
    S.build_step(observation={}, action={}, metadata={S.REWARD: 1.0})
  with pytest.raises(S.SchemaKeyError, match="steps"):
    S.build_episode([], {S.STEPS: []})


def test_single_turn_generation_is_a_two_step_episode():
  episode = T.fake_rollout(ROLLOUT, seed=3)
  first, last = episode[S.STEPS]
  assert first[S.IS_FIRST] and not first[S.IS_LAST] and first[S.DISCOUNT] == 0.0
  assert last[S.IS_LAST] and last[S.IS_TERMINAL]
  assert len(last[S.ACTION][S.ACT_TOKENS]) == 0


def test_episode_ids_are_content_derived():
  a = T.fake_rollout(ROLLOUT, seed=1)
  assert T.fake_rollout(ROLLOUT, seed=1)[S.EPISODE_ID] == a[S.EPISODE_ID]
  assert T.fake_rollout(ROLLOUT, seed=2)[S.EPISODE_ID] != a[S.EPISODE_ID]
  changed = S.content_id(np.array([1, 2], np.int32)) != S.content_id(np.array([1, 2], np.int64))
  assert changed, "dtype is part of the content"
  assert S.content_id({"a": 1, "b": 2}) == S.content_id({"b": 2, "a": 1})
