"""Validation: every rejection names the episode, the field, the expectation and finding."""

import copy

import numpy as np
import pytest

from conftest import PREFERENCE, ROLLOUT
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import validate as V


def _episode():
  return copy.deepcopy(T.fake_rollout(ROLLOUT, seed=7, action_len=5, turns=2))


def _turn(ep):
  return ep[S.STEPS][0]


CASES = {
    "token id outside the vocabulary": (
        lambda ep: _turn(ep)[S.ACTION].__setitem__(S.ACT_TOKENS, np.array([1, 2, 3, 4, 259])),
        "steps[0]/action/tokens", "token ids in [0, 259)", "token id 259"),
    "negative token id": (
        lambda ep: _turn(ep)[S.OBSERVATION].__setitem__(S.OBS_TOKENS, np.array([-1, 2])),
        "steps[0]/observation/tokens", "token ids in [0, 259)", "token id -1"),
    "NaN log-prob": (
        lambda ep: _turn(ep)[S.ACTION_LOGPROBS].__setitem__(2, np.nan),
        "steps[0]/action_logprobs", "finite values", "nan at flat index 2"),
    "infinite teacher log-prob": (
        lambda ep: _turn(ep)[S.TEACHER][S.TEACHER_TOPK_LOGPROBS].__setitem__((1, 1), -np.inf),
        "steps[0]/teacher/topk_logprobs", "finite values", "-inf"),
    "positive log-prob": (
        lambda ep: _turn(ep)[S.ACTION_LOGPROBS].__setitem__(0, 0.5),
        "steps[0]/action_logprobs", "log-probabilities <= 0", "max 0.5"),
    "lengths disagree": (
        lambda ep: _turn(ep).__setitem__(S.ACTION_LOGPROBS, np.zeros(4, np.float32)),
        "steps[0]/action_logprobs", "T = 5 entries along dim 0", "shape (4,)"),
    "teacher rows disagree": (
        lambda ep: _turn(ep)[S.TEACHER].__setitem__(
            S.TEACHER_TOPK_IDS, np.zeros((6, 4), np.int32)),
        "steps[0]/teacher/topk_ids", "T = 5 entries", "shape (6, 4)"),
    "wrong dtype": (
        lambda ep: _turn(ep)[S.ACTION].__setitem__(S.ACT_TOKENS, np.array([1.5, 2, 3, 4, 5])),
        "steps[0]/action/tokens", "integer values (int32)", "dtype=float64"),
    "wrong rank": (
        lambda ep: _turn(ep)[S.TEACHER].__setitem__(
            S.TEACHER_TOPK_IDS, np.zeros((5,), np.int32)),
        "steps[0]/teacher/topk_ids", "rank 2", "shape (5,)"),
    "wrong top-k width": (
        lambda ep: _turn(ep)[S.TEACHER].__setitem__(
            S.TEACHER_TOPK_IDS, np.zeros((5, 3), np.int32)),
        "steps[0]/teacher/topk_ids", "dim 1 == 4", "shape (5, 3)"),
    "missing field": (
        lambda ep: _turn(ep).pop(S.TOKEN_REWARDS),
        "steps[0]/token_rewards", "a required field", "missing"),
    "missing metadata": (
        lambda ep: ep.pop(S.PROMPT_ID),
        "prompt_id", "a required field", "missing"),
    "unknown field": (
        lambda ep: _turn(ep).__setitem__("rewardz", 1.0),
        "steps[0]/rewardz", "one of the schema fields", "an unknown field"),
    "empty action": (
        lambda ep: (_turn(ep)[S.ACTION].update({S.ACT_TOKENS: np.zeros(0, np.int32),
                                                S.ACT_THINKING_MASK: np.zeros(0, bool)}),
                    _turn(ep).update({S.ACTION_LOGPROBS: np.zeros(0, np.float32),
                                      S.TOKEN_REWARDS: np.zeros(0, np.float32),
                                      S.TEACHER: S.empty_teacher(ROLLOUT, 0)})),
        "steps[0]/action/tokens", "a non-empty action", "0 tokens"),
    "sampled counts do not sum to S": (
        lambda ep: _turn(ep)[S.TEACHER][S.TEACHER_SAMPLED_COUNTS].__setitem__((0, 0), 99),
        "steps[0]/teacher/sampled_counts", "summing to S = 6", "a row summing to"),
    "top-k mass above one": (
        lambda ep: _turn(ep)[S.TEACHER].__setitem__(
            S.TEACHER_TOPK_LOGPROBS, np.full((5, 4), -0.1, np.float32)),
        "steps[0]/teacher/topk_logprobs", "summing to <= 1", "a row summing to"),
    "action on the last step": (
        lambda ep: (ep[S.STEPS][-1][S.ACTION].update({S.ACT_TOKENS: np.array([5]),
                                                      S.ACT_THINKING_MASK: np.zeros(1, bool)}),
                    ep[S.STEPS][-1].update({S.ACTION_LOGPROBS: np.zeros(1, np.float32),
                                            S.TOKEN_REWARDS: np.zeros(1, np.float32),
                                            S.TEACHER: T.fake_teacher(ROLLOUT, np.array([5]),
                                                                      np.random.default_rng(0))})),
        "steps[2]/action/tokens", "no action on the last step", "1 tokens"),
    "reward on the last step": (
        lambda ep: ep[S.STEPS][-1].__setitem__(S.REWARD, 1.0),
        "steps[2]/reward", "0.0 on the last step", "1.0"),
    "is_first twice": (
        lambda ep: ep[S.STEPS][-1].__setitem__(S.IS_FIRST, True),
        "steps[2]/is_first", "False", "True"),
    "duplicate top-k id": (
        lambda ep: _turn(ep)[S.TEACHER][S.TEACHER_TOPK_IDS].__setitem__(
            (2, 1), _turn(ep)[S.TEACHER][S.TEACHER_TOPK_IDS][2, 0]),
        "steps[0]/teacher/topk_ids", "distinct ids", "token 2"),
    "top-k not sorted": (
        lambda ep: _turn(ep)[S.TEACHER].__setitem__(
            S.TEACHER_TOPK_LOGPROBS, _turn(ep)[S.TEACHER][S.TEACHER_TOPK_LOGPROBS][:, ::-1].copy()),
        "steps[0]/teacher/topk_logprobs", "sorted most likely first", "token 0"),
    "zero discount mid-episode": (
        lambda ep: ep[S.STEPS][0].__setitem__(S.DISCOUNT, 0.0),
        "steps[0]/discount", "> 0 before the step", "0.0"),
    "text is not a string": (
        lambda ep: _turn(ep)[S.ACTION].__setitem__(S.ACT_TEXT, 42),
        "steps[0]/action/text", "a string", "int 42"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rejections_name_episode_field_expected_found(name):
  mutate, field, expected, found = CASES[name]
  episode = _episode()
  mutate(episode)
  with pytest.raises(V.EpisodeValidationError) as info:
    V.validate_episode(episode, ROLLOUT)
  error = info.value
  assert error.episode_id == episode.get(S.EPISODE_ID, "")
  assert error.field == field
  assert expected in error.expected, error
  assert found in error.found, error
  message = str(error)
  assert field in message and expected in message and (episode.get(S.EPISODE_ID, "") in message)


def test_valid_episode_is_normalised_not_modified():
  episode = _episode()
  episode[S.STEPS][0][S.ACTION][S.ACT_TOKENS] = [int(t) for t in
                                                 episode[S.STEPS][0][S.ACTION][S.ACT_TOKENS]]
  before = copy.deepcopy(episode)
  out = V.validate_episode(episode, ROLLOUT)
  assert out[S.STEPS][0][S.ACTION][S.ACT_TOKENS].dtype == np.int32
  T.assert_episodes_equal(episode, before)


def test_preference_checks_choice_and_ranking():
  episode = T.fake_preference(PREFERENCE, seed=1, candidates=3)
  V.validate_episode(episode, PREFERENCE)
  bad = copy.deepcopy(episode)
  bad[S.STEPS][0][S.ACTION][S.ACT_RANKING] = np.array([0, 0, 1], np.int32)
  with pytest.raises(V.EpisodeValidationError, match="permutation"):
    V.validate_episode(bad, PREFERENCE)
  bad = copy.deepcopy(episode)
  bad[S.STEPS][0][S.ACTION][S.ACT_CHOICE] = 3
  with pytest.raises(V.EpisodeValidationError, match="choice"):
    V.validate_episode(bad, PREFERENCE)


def test_unsigned_values_must_fit():
  from conftest import AGENTIC
  episode = copy.deepcopy(T.fake_rollout(AGENTIC, seed=1, with_image=True))
  episode[S.STEPS][0][S.OBSERVATION][S.OBS_IMAGE] = np.full((2, 2, 3), 300, np.uint16)
  with pytest.raises(V.EpisodeValidationError, match="fit uint8"):
    V.validate_episode(episode, AGENTIC)


def test_sampled_ids_must_be_distinct():
  episode = _episode()
  teacher = _turn(episode)[S.TEACHER]
  teacher[S.TEACHER_SAMPLED_IDS][0, :2] = 7
  teacher[S.TEACHER_SAMPLED_COUNTS][0] = 0
  teacher[S.TEACHER_SAMPLED_COUNTS][0, :2] = 3
  with pytest.raises(V.EpisodeValidationError, match="distinct drawn ids"):
    V.validate_episode(episode, ROLLOUT)


# -- What validation accepts must publish: poison episodes and the size limits. --------


def _agentic():
  from conftest import AGENTIC
  return AGENTIC, copy.deepcopy(T.fake_rollout(AGENTIC, seed=3, with_image=True))


def _set_image(shape):
  def poison(ep):
    _turn(ep)[S.OBSERVATION][S.OBS_IMAGE] = np.zeros(shape, np.uint8)
  return poison


def _set_text(text):
  def poison(ep):
    _turn(ep)[S.OBSERVATION][S.OBS_TEXT] = text
  return poison


POISON = {
    "0x0 image": (_set_image((0, 0, 3)), "steps[0]/observation/image",
                  "an image of 1 to", "shape (0, 0, 3)"),
    "image without width": (_set_image((4, 0, 3)), "steps[0]/observation/image",
                            "an image of 1 to", "shape (4, 0, 3)"),
    "image without height": (_set_image((0, 4, 3)), "steps[0]/observation/image",
                             "an image of 1 to", "shape (0, 4, 3)"),
    "lone surrogate in a text": (_set_text("ok \ud800 ko"), "steps[0]/observation/text",
                                 "no lone surrogates", "'\\ud800' at character 3"),
    "lone low surrogate": (_set_text("\udfff"), "steps[0]/observation/text",
                           "no lone surrogates", "at character 0"),
    "lone surrogate in metadata": (lambda ep: ep.__setitem__(S.TASK, "t\udc80"), S.TASK,
                                   "no lone surrogates", "at character 1"),
    "undecodable bytes": (_set_text(b"ok \xff"), "steps[0]/observation/text", "UTF-8 text",
                          "undecodable bytes at byte 3"),
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_poison_episodes_are_refused_naming_the_field(name):
  poison, field, expected, found = POISON[name]
  config, episode = _agentic()
  poison(episode)
  with pytest.raises(V.EpisodeValidationError) as raised:
    V.validate_episode(episode, config)
  err = raised.value
  assert err.episode_id == episode[S.EPISODE_ID] and err.field == field
  assert expected in err.expected and found in err.found, (err.expected, err.found)


def test_string_vectors_are_checked_item_by_item():
  episode = copy.deepcopy(T.fake_preference(PREFERENCE, seed=1, candidates=2))
  for bad, found in (("a\ud800", "at character 1"), (b"\xc3", "undecodable bytes")):
    ep = copy.deepcopy(episode)
    ep[S.CANDIDATE_IDS] = np.asarray([ep[S.CANDIDATE_IDS][0], bad], dtype=object)
    with pytest.raises(V.EpisodeValidationError) as raised:
      V.validate_episode(ep, PREFERENCE)
    assert raised.value.field == f"{S.CANDIDATE_IDS}[1]" and found in raised.value.found


def test_size_limits_just_above_and_at(monkeypatch):
  config, episode = _agentic()
  base = copy.deepcopy(episode)
  _set_text("")(base)
  V.validate_episode(base, config)
  monkeypatch.setattr(V, "MAX_EPISODE_BYTES", 10**9)
  # Find the episode's size without the text, then a limit that just fits 100 bytes.
  checker = V._Checker(config, "")  # pylint: disable=protected-access
  monkeypatch.setattr(V, "_Checker", lambda *a: checker)
  V.validate_episode(base, config)
  monkeypatch.undo()
  limit = checker.size + 100
  monkeypatch.setattr(V, "MAX_EPISODE_BYTES", limit)
  _set_text("x" * 100)(episode)
  V.validate_episode(episode, config)  # exactly at the limit: accepted
  for text in ("x" * 101, "é" * 51):  # one byte above (é is 2 bytes in UTF-8)
    _set_text(text)(episode)
    with pytest.raises(V.EpisodeValidationError) as raised:
      V.validate_episode(episode, config)
    assert raised.value.field == "steps[0]/observation/text"
    assert f"at most {limit} bytes" in raised.value.expected
  monkeypatch.setattr(V, "MAX_IMAGE_SIDE", 4)
  _set_text("")(episode)
  _set_image((4, 4, 3))(episode)
  V.validate_episode(episode, config)
  _set_image((4, 5, 3))(episode)
  with pytest.raises(V.EpisodeValidationError, match="1 to 4 pixels per side"):
    V.validate_episode(episode, config)


class _HugeText(str):
  """A short str that reports a length of 2 GiB: tests the real limit, allocates nothing."""

  def __len__(self):
    return 2**31


def test_the_real_limit_refuses_a_2_gib_text():
  assert V.MAX_EPISODE_BYTES < 2**31 - 2**20  # below protobuf's 2 GiB with room to spare
  assert V.MAX_IMAGE_SIDE == 1_000_000  # libpng's default
  config, episode = _agentic()
  _set_text(_HugeText("x"))(episode)
  with pytest.raises(V.EpisodeValidationError) as raised:
    V.validate_episode(episode, config)
  assert raised.value.field == "steps[0]/observation/text"
  assert "holding 2147483648" in raised.value.found


def test_what_validation_accepts_publishes_and_reads_back(tmp_path):
  """Edge cases that are valid (1x1 image, unusual but encodable text) round-trip."""
  from rlds_lm import logs
  from rlds_lm import read as R
  from rlds_lm import recorder
  config, _ = _agentic()
  edges = {"1x1 image": _set_image((1, 1, 3)), "NUL": _set_text("a\x00b"),
           "astral": _set_text("\U0001f600 \U00010348"), "noncharacter": _set_text("\uffff"),
           "empty": _set_text(""), "combining": _set_text("e\u0301\u202eabc")}
  episodes = []
  for i, poison in enumerate(edges.values()):
    ep = copy.deepcopy(T.fake_rollout(config, seed=100 + i, with_image=True))
    poison(ep)
    episodes.append(V.validate_episode(ep, config))
  with recorder.Recorder(tmp_path / "log", config) as rec:
    for i, ep in enumerate(episodes):
      rec.record(ep)
      poisoned = copy.deepcopy(T.fake_rollout(config, seed=200 + i, with_image=True))
      POISON[sorted(POISON)[i % len(POISON)]][0](poisoned)
      with pytest.raises(V.EpisodeValidationError):  # refused whole: nothing written
        rec.record(poisoned)
  stats = logs.LogReadStats()
  assert len(list(logs.read_log(tmp_path / "log", stats=stats))) == len(episodes)
  assert stats == logs.LogReadStats(episodes=len(episodes))
  path = recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "data", name="edges")
  source = R.data_source(path)
  back = {ep[S.EPISODE_ID]: ep for ep in (R.materialize(source[i]) for i in range(len(source)))}
  assert len(back) == len(episodes)
  for ep in episodes:
    T.assert_episodes_equal(back[ep[S.EPISODE_ID]], ep)
