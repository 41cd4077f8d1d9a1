"""Recorder -> Riegeli log -> published TFDS dataset, read back with real readers."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import AGENTIC, PREFERENCE, ROLLOUT, agentic, preferences, rollouts
from rlds_lm import logs
from rlds_lm import read as R
from rlds_lm import recorder
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import validate as V


def _published_by_id(path):
  source = R.data_source(path)
  return {ep[S.EPISODE_ID]: ep for ep in (R.materialize(source[i]) for i in range(len(source)))}


@pytest.mark.parametrize("config,make", [(ROLLOUT, rollouts), (AGENTIC, agentic),
                                         (PREFERENCE, preferences)],
                         ids=["rollout-teacher", "agentic-image", "preference"])
def test_record_publish_read_round_trip(tmp_path, config, make):
  episodes = make()
  with recorder.Recorder(tmp_path / "log", config) as rec:
    ids = [rec.record(e) for e in episodes]
  assert ids == [e[S.EPISODE_ID] for e in episodes]
  path = recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "data", name="rt")
  builder = tfds.builder_from_directory(path)
  assert R.schema_config(builder) == config
  assert builder.info.splits["train"].num_examples == len(episodes)
  back = _published_by_id(path)
  for episode in episodes:
    T.assert_episodes_equal(back[episode[S.EPISODE_ID]], V.validate_episode(episode, config))


def test_reopen_appends_without_overwriting_and_rejects_duplicates(tmp_path):
  episodes = rollouts(6)
  with recorder.Recorder(tmp_path, ROLLOUT) as rec:
    for e in episodes[:3]:
      rec.record(e)
  with recorder.Recorder(tmp_path, ROLLOUT) as rec:
    with pytest.raises(V.EpisodeValidationError, match="duplicate"):
      rec.record(episodes[0])
    for e in episodes[3:]:
      rec.record(e)
  back = [e[S.EPISODE_ID] for e in logs.read_log(tmp_path)]
  assert back == [e[S.EPISODE_ID] for e in episodes]
  assert len([d for d in os.listdir(tmp_path) if os.path.isdir(tmp_path / d)]) == 2


def test_reopen_with_another_schema_is_refused(tmp_path):
  with recorder.Recorder(tmp_path, ROLLOUT) as rec:
    rec.record(rollouts(1)[0])
  with pytest.raises(ValueError, match="another schema"):
    recorder.Recorder(tmp_path, AGENTIC)
  with recorder.Recorder(tmp_path / "tfds", ROLLOUT, backend=recorder.TFDS) as rec:
    rec.record(rollouts(1)[0])
  with pytest.raises(ValueError, match="another schema"):
    recorder.Recorder(tmp_path / "tfds", AGENTIC, backend=recorder.TFDS)
  assert len(list(tfds.builder_from_directory(rec.dataset_dir).as_dataset("train"))) == 1


def test_a_failed_finish_is_not_retried_on_exit(tmp_path):
  obs = S.observation(ROLLOUT, np.array([5], np.int32))
  with recorder.Recorder(tmp_path, ROLLOUT) as rec:
    with rec.episode(prompt_id="p") as ep:
      ep.add_turn(S.Turn(obs, np.array([999])))  # no teacher data: finish() refuses
      with pytest.raises(ValueError):
        ep.finish()
    assert rec.num_recorded == 0


def test_rejection_keeps_recorder_usable_and_loses_nothing(tmp_path):
  good = rollouts(4)
  bad = T.fake_rollout(ROLLOUT, seed=99)
  bad[S.STEPS][0][S.ACTION_LOGPROBS][0] = np.nan
  with recorder.Recorder(tmp_path, ROLLOUT) as rec:
    rec.record(good[0])
    rec.record(good[1])
    with pytest.raises(V.EpisodeValidationError, match="action_logprobs"):
      rec.record(bad)
    rec.record(good[2])
    with pytest.raises(V.EpisodeValidationError, match="duplicate"):
      rec.record(good[2])
    rec.record(good[3])
    assert (rec.num_recorded, rec.num_rejected) == (4, 2)
  assert [e[S.EPISODE_ID] for e in logs.read_log(tmp_path)] == [e[S.EPISODE_ID] for e in good]


def test_turn_by_turn_episode_and_discard_on_exception(tmp_path):
  obs = S.observation(AGENTIC, np.array([5, 6], np.int32), "hi", "user")
  with recorder.Recorder(tmp_path, AGENTIC) as rec:
    with rec.episode(prompt_id="p0", task="chat") as ep:
      ep.add_turn(S.Turn(obs, np.array([7, 8, 9]), "yo", rewards={"correct": 1.0}))
      ep.add_turn(S.Turn(S.observation(AGENTIC, np.array([10]), "tool out", "tool"),
                         np.array([11]), rewards={"correct": 0.0}))
      ep.finish()
    with pytest.raises(RuntimeError):
      with rec.episode(prompt_id="p1") as ep:
        ep.add_turn(S.Turn(obs, np.array([1]), rewards={"correct": 0.0}))
        raise RuntimeError("generation failed")
    with rec.episode(prompt_id="p2") as ep:  # left without finish(): truncated
      ep.add_turn(S.Turn(obs, np.array([3]), rewards={"correct": 0.0}))
  back = list(logs.read_log(tmp_path))
  assert [e[S.PROMPT_ID] for e in back] == ["p0", "p2"]
  assert [len(e[S.STEPS]) for e in back] == [3, 2]
  assert [s[S.OBSERVATION][S.OBS_ROLE] for s in back[0][S.STEPS]] == ["user", "tool", "final"]
  assert back[0][S.STEPS][-1][S.IS_TERMINAL] and not back[1][S.STEPS][-1][S.IS_TERMINAL]


def test_direct_to_tfds_backend(tmp_path):
  episodes = rollouts(5)
  with recorder.Recorder(tmp_path, ROLLOUT, backend=recorder.TFDS, name="direct",
                         episodes_per_shard=2) as rec:
    for e in episodes[:3]:
      rec.record(e)
  with recorder.Recorder(tmp_path, ROLLOUT, backend=recorder.TFDS, name="direct") as rec:
    with pytest.raises(V.EpisodeValidationError, match="duplicate"):
      rec.record(episodes[0])
    for e in episodes[3:]:
      rec.record(e)
    path = rec.dataset_dir
  builder = tfds.builder_from_directory(path)
  assert R.schema_config(builder) == ROLLOUT
  back = {ex[S.EPISODE_ID].decode(): ex for ex in tfds.as_numpy(builder.as_dataset("train"))}
  assert sorted(back) == sorted(e[S.EPISODE_ID] for e in episodes)
  first = back[episodes[0][S.EPISODE_ID]]
  steps = list(first[S.STEPS])
  np.testing.assert_array_equal(steps[0][S.ACTION][S.ACT_TOKENS],
                                episodes[0][S.STEPS][0][S.ACTION][S.ACT_TOKENS])


def test_unknown_backend_is_refused(tmp_path):
  with pytest.raises(ValueError, match="backend"):
    recorder.Recorder(tmp_path, ROLLOUT, backend="parquet")


def test_batched_flush_writes_everything_on_close(tmp_path):
  episodes = rollouts(7)
  with recorder.Recorder(tmp_path, ROLLOUT, flush_every=3) as rec:
    for e in episodes:
      rec.record(e)
  assert [e[S.EPISODE_ID] for e in logs.read_log(tmp_path)] == [
      e[S.EPISODE_ID] for e in episodes]
  with pytest.raises(ValueError, match="flush_every"):
    recorder.Recorder(tmp_path / "x", ROLLOUT, flush_every=0)


def test_schema_without_rewards_or_teacher_publishes_and_reads(tmp_path):
  config = S.SchemaConfig()
  episodes = [T.fake_rollout(config, seed=i) for i in range(3)]
  assert S.REWARDS not in episodes[0][S.STEPS][0]
  with recorder.Recorder(tmp_path / "log", config) as rec:
    for e in episodes:
      rec.record(e)
  path = recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "data", name="bare")
  back = _published_by_id(path)
  for episode in episodes:
    T.assert_episodes_equal(back[episode[S.EPISODE_ID]], V.validate_episode(episode, config))
  from rlds_lm import transforms
  assert len(list(transforms.as_dataset(path))) == 3


def _shard_file(log_dir, name):
  (shard,) = [root for root, _, files in os.walk(log_dir) if name in files]
  return os.path.join(shard, name)


def _damage(path, how):
  """Cuts bytes off the end of ``path`` or flips one bit at a fraction of its size."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    if how.startswith("cut"):
      f.truncate(size - int(how[3:]))
    else:
      at = int(size * float(how[4:]))
      f.seek(at)
      byte = f.read(1)[0]
      f.seek(at)
      f.write(bytes([byte ^ 0x10]))


def _lineage(path):
  import json
  with open(os.path.join(path, "metadata.json")) as f:
    return json.loads(json.load(f)["rlds_lm_lineage"])


@pytest.mark.parametrize("how", ["cut5", "cut200", "flip0.3", "flip0.5", "flip0.8"])
def test_damaged_steps_file_loses_only_the_damaged_episode(tmp_path, how):
  episodes = rollouts(10)
  # The inline writer flushes one chunk per episode (a writer process batches them).
  with recorder.Recorder(tmp_path, ROLLOUT, writer=recorder.INLINE) as rec:
    for e in episodes:
      rec.record(e)
  _damage(_shard_file(tmp_path, "steps.riegeli"), how)
  stats = logs.LogReadStats()
  back = [e[S.EPISODE_ID] for e in logs.read_log(tmp_path, stats=stats)]
  ids = [e[S.EPISODE_ID] for e in episodes]
  # One episode per flushed chunk: exactly the damaged one is lost, in order otherwise.
  assert len(back) == 9 and back == [i for i in ids if i in back]
  assert stats.episodes == 9 and stats.damaged_episodes == 1 and stats.unreadable_steps
  assert stats.damaged and stats.indexed_not_read == 1


def test_damaged_offsets_file_is_counted_not_silent(tmp_path):
  with recorder.Recorder(tmp_path, ROLLOUT, writer=recorder.INLINE) as rec:
    for e in rollouts(10):
      rec.record(e)
  _damage(_shard_file(tmp_path, "step_offsets.riegeli"), "flip0.5")
  stats = logs.LogReadStats()
  back = list(logs.read_log(tmp_path, stats=stats))
  assert 0 < len(back) < 10
  assert stats.indexed_not_read == 10 - len(back) and stats.damaged
  assert stats.unreachable_steps == 2 * (10 - len(back))  # 2 log steps per episode
  # Without the episode index, the Riegeli chunk headers still show the lost steps.
  os.truncate(_shard_file(tmp_path, "episode_index.riegeli"), 0)
  stats = logs.LogReadStats()
  assert len(list(logs.read_log(tmp_path, stats=stats))) == len(back)
  assert stats.indexed_not_read == 0 and stats.unreachable_steps == 2 * (10 - len(back))
  assert stats.damaged


def test_publish_log_of_a_damaged_log_warns_and_records_what_was_skipped(tmp_path):
  episodes = rollouts(6)
  with recorder.Recorder(tmp_path / "log", ROLLOUT, writer=recorder.INLINE) as rec:
    for e in episodes:
      rec.record(e)
  clean = recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "data", name="clean",
                               file_formats=("tfrecord",))
  assert _lineage(clean)["log_read"] == logs.LogReadStats(episodes=6).as_dict()
  _damage(_shard_file(tmp_path / "log", "steps.riegeli"), "cut5")
  with pytest.raises(recorder.DamagedLogError, match="damaged"):
    recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "data", name="strict",
                         strict=True)
  assert not os.path.exists(tmp_path / "data" / "strict")
  with pytest.warns(RuntimeWarning, match="DAMAGED"):
    path = recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "data", name="rt")
  read = _lineage(path)["log_read"]
  assert read["episodes"] == 5 and read["damaged_episodes"] == 1
  assert sorted(_published_by_id(path)) == sorted(e[S.EPISODE_ID] for e in episodes[:5])


def test_multi_shard_tfds_backend_gets_array_record_and_reads_without_tf(tmp_path):
  episodes = rollouts(7)
  with recorder.Recorder(tmp_path, ROLLOUT, backend=recorder.TFDS, name="direct",
                         episodes_per_shard=2) as rec:
    for e in episodes[:5]:
      rec.record(e)
    path = rec.dataset_dir
  assert len(tfds.builder_from_directory(path).info.splits["train"].shard_lengths) == 3
  from rlds_lm import publish as P
  P.add_file_format(path, P.ARRAY_RECORD)
  assert sorted(_published_by_id(path)) == sorted(e[S.EPISODE_ID] for e in episodes[:5])
  back = _published_by_id(path)
  for e in episodes[:5]:
    T.assert_episodes_equal(back[e[S.EPISODE_ID]], V.validate_episode(e, ROLLOUT))
  # Appending adds shards; adding the format again covers them all.
  with recorder.Recorder(tmp_path, ROLLOUT, backend=recorder.TFDS, name="direct",
                         episodes_per_shard=2) as rec:
    for e in episodes[5:]:
      rec.record(e)
  P.add_file_format(path, P.ARRAY_RECORD)
  assert sorted(_published_by_id(path)) == sorted(e[S.EPISODE_ID] for e in episodes)
  batches = R.grain_batches(path, batch_size=7, max_length=32, shuffle=False)
  first = next(iter(batches))
  assert all(value.shape[0] == 7 for value in first.values())


def test_a_log_too_damaged_to_open_says_so(tmp_path):
  with recorder.Recorder(tmp_path / "a", ROLLOUT) as rec:
    for e in rollouts(3):
      rec.record(e)
  os.truncate(tmp_path / "a" / "metadata.riegeli", 10)
  with pytest.raises(ValueError, match="cannot open the Riegeli log"):
    list(logs.read_log(tmp_path / "a", ROLLOUT))
  with recorder.Recorder(tmp_path / "b", ROLLOUT) as rec:
    for e in rollouts(3):
      rec.record(e)
  os.truncate(_shard_file(tmp_path / "b", "steps.riegeli"), 0)  # every step unreadable
  stats = logs.LogReadStats()
  assert not list(logs.read_log(tmp_path / "b", stats=stats))
  assert stats.unreadable_steps == 6 and stats.indexed_not_read == 3 and stats.damaged


@pytest.mark.parametrize("victim", ["steps.riegeli", "episode_index.riegeli"])
def test_a_shard_that_cannot_open_loses_only_its_own_episodes(tmp_path, victim):
  episodes = rollouts(9)
  for part in (episodes[:3], episodes[3:6], episodes[6:]):  # three writer sessions
    with recorder.Recorder(tmp_path, ROLLOUT) as rec:
      for e in part:
        rec.record(e)
  shards = sorted(d for d in os.listdir(tmp_path) if os.path.isdir(tmp_path / d))
  os.remove(tmp_path / shards[1] / victim)
  stats = logs.LogReadStats()
  back = [e[S.EPISODE_ID] for e in logs.read_log(tmp_path, stats=stats)]
  assert back == [e[S.EPISODE_ID] for e in episodes[:3] + episodes[6:]]
  assert stats.unopenable_shards == 1 and stats.damaged
  with recorder.Recorder(tmp_path, ROLLOUT) as rec:  # reopening still works
    with pytest.raises(V.EpisodeValidationError, match="duplicate"):
      rec.record(episodes[0])
