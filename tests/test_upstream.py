"""Logs written by the Recorder, read with the upstream envlogger.Reader and decoded."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import AGENTIC, PREFERENCE, ROLLOUT, agentic, preferences, rollouts
from rlds_lm import _compat
from rlds_lm import logs
from rlds_lm import recorder
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import upstream
from rlds_lm import validate as V

CASES = {"rollout": (ROLLOUT, rollouts(5)), "agentic": (AGENTIC, agentic(4)),
         "preference": (PREFERENCE, preferences(4))}


def _log(tmp_path, config, episodes):
  log_dir = tmp_path / "log"
  with recorder.Recorder(log_dir, config) as rec:
    for episode in episodes:
      rec.record(episode)
  return log_dir


@pytest.mark.parametrize("case", sorted(CASES))
def test_upstream_reader_episodes_decode_to_the_recorded_ones(case, tmp_path):
  config, episodes = CASES[case]
  log_dir = _log(tmp_path, config, episodes)
  envlogger = _compat.import_envlogger()
  with envlogger.Reader(str(log_dir)) as reader:
    assert upstream.schema_config(reader) == config
    decoded = list(upstream.episodes(reader))
  expected = [V.validate_episode(e, config) for e in episodes]
  assert len(decoded) == len(expected)
  for got, want in zip(decoded, expected):
    T.assert_episodes_equal(got, want)
  # The same as this package's own reader.
  for got, want in zip(upstream.read(log_dir), logs.read_log(log_dir)):
    T.assert_episodes_equal(got, want)


def test_what_the_upstream_readers_see_without_the_helper(tmp_path):
  """docs/interop.md, "Upstream readers": raw bytes, shifted metadata, a KeyError."""
  from tensorflow_datasets.rlds import envlogger_reader  # pylint: disable=g-import-not-at-top
  single = [T.fake_rollout(AGENTIC, seed=0, turns=1)]
  log_dir = _log(tmp_path, AGENTIC, single)
  envlogger = _compat.import_envlogger()
  with envlogger.Reader(str(log_dir)) as reader:
    (steps,) = reader.episodes
    raw = steps[1].action[S.ACT_TOKENS]
    assert isinstance(raw, bytes)  # int32 little-endian, width from the schema
    np.testing.assert_array_equal(np.frombuffer(raw, np.int32),
                                  single[0][S.STEPS][0][S.ACTION][S.ACT_TOKENS])
    (episode,) = envlogger_reader.generate_episodes(reader)
  assert len(episode["steps"][S.IS_FIRST]) == 2
  assert len(episode["steps"][S.ACTION_LOGPROBS]) == 1  # one short: pairs shifted by one
  multi = [T.fake_rollout(AGENTIC, seed=1, turns=3)]
  log_dir = _log(tmp_path / "multi", AGENTIC, multi)
  with envlogger.Reader(str(log_dir)) as reader:
    with pytest.raises(KeyError, match=logs.EPISODE_METADATA_KEY):
      list(envlogger_reader.generate_episodes(reader))
    (decoded,) = upstream.episodes(reader)
  T.assert_episodes_equal(decoded, V.validate_episode(multi[0], AGENTIC))


def test_decode_episode_refuses_a_partial_episode(tmp_path):
  log_dir = _log(tmp_path, ROLLOUT, rollouts(1))
  envlogger = _compat.import_envlogger()
  with envlogger.Reader(str(log_dir)) as reader:
    (steps,) = reader.episodes
    with pytest.raises(ValueError, match="starting with its FIRST step"):
      upstream.decode_episode(steps[1:], ROLLOUT)
