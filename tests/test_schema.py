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


def test_ids_recompute_from_the_stored_episode_whatever_the_input_types():
  obs = S.observation(ROLLOUT, [1, 2, 3], "q")
  teacher = T.fake_teacher(ROLLOUT, np.array([4, 5]), np.random.default_rng(0))
  as_lists = S.rollout_episode(ROLLOUT, [S.Turn(obs, [4, 5], teacher=teacher)],
                               prompt_id="p", temperature=0.7, top_p=0.9)
  obs_arrays = S.observation(ROLLOUT, np.array([1, 2, 3], np.int32), "q")
  as_arrays = S.rollout_episode(ROLLOUT, [S.Turn(obs_arrays, np.array([4, 5], np.int32),
                                                 teacher=teacher)],
                                prompt_id="p", temperature=np.float32(0.7), top_p=0.9)
  assert as_lists[S.EPISODE_ID] == as_arrays[S.EPISODE_ID]
  stored = V.validate_episode(as_lists, ROLLOUT)
  assert S.rollout_episode_id(stored) == as_lists[S.EPISODE_ID]
  pref = T.fake_preference(PREFERENCE, seed=2)
  assert S.preference_episode_id(V.validate_episode(pref, PREFERENCE)) == pref[S.EPISODE_ID]


def test_teacher_schema_refuses_turns_without_teacher_data():
  obs = S.observation(ROLLOUT, [1], "q")
  with pytest.raises(ValueError, match="turn 0 has no teacher data"):
    S.rollout_episode(ROLLOUT, [S.Turn(obs, [4])], prompt_id="p")


@pytest.mark.parametrize("config", [ROLLOUT, AGENTIC, S.SchemaConfig(), PREFERENCE],
                         ids=["rollout", "agentic", "default", "preference"])
def test_token_fields_are_the_per_token_action_fields_of_the_step_table(config):
  fields = S.token_fields(config)
  per_token = {path: spec for path, spec in S.iter_specs(S.step_specs(config))
               if spec.shape[:1] == ("T",)}
  assert {"/".join(field.path): field.spec for field in fields.values()} == per_token
  for key, field in fields.items():
    assert field.key == key and field.dtype == np.dtype(per_token["/".join(field.path)].dtype)
  if config.kind == S.PREFERENCE:
    assert fields == {}
    return
  assert S.SEQ_TOKENS in fields and S.SEQ_BEHAVIOUR_LOGPROBS in fields
  assert (S.SEQ_TEACHER_TOKEN_LOGPROBS in fields) == config.has_teacher
  episode = T.fake_rollout(config, turns=2, thinking=True)
  step = episode[S.STEPS][1]
  np.testing.assert_array_equal(fields[S.SEQ_THINKING_MASK].get(step),
                                step[S.ACTION][S.ACT_THINKING_MASK])
  np.testing.assert_array_equal(fields[S.SEQ_BEHAVIOUR_LOGPROBS].get(step),
                                step[S.ACTION_LOGPROBS])


def test_token_field_widths_come_from_the_config():
  fields = S.token_fields(ROLLOUT)
  assert fields[S.SEQ_TEACHER_TOPK_IDS].trailing == (ROLLOUT.teacher_top_k,)
  assert fields[S.SEQ_TEACHER_TOPK_LOGPROBS].dtype == np.float32
  assert fields[S.SEQ_TEACHER_SAMPLED_COUNTS].trailing == (ROLLOUT.teacher_sampled_k,)
  assert fields[S.SEQ_TEACHER_SAMPLED_IDS].path == (S.TEACHER, S.TEACHER_SAMPLED_IDS)
  assert fields[S.SEQ_TOKENS].trailing == () and fields[S.SEQ_TOKENS].dtype == np.int32
  only_sampled = S.token_fields(S.SchemaConfig(teacher_sampled_k=3))
  assert S.SEQ_TEACHER_TOPK_IDS not in only_sampled
  assert only_sampled[S.SEQ_TEACHER_SAMPLED_IDS].trailing == (3,)
