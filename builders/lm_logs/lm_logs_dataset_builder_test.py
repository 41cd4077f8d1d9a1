"""Tests for the lm_logs Beam builder: recorder logs -> TFDS, de-duplicated across logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from apache_beam.options import pipeline_options
import pytest
import tensorflow_datasets as tfds

from builders.lm_logs import lm_logs_dataset_builder as B
from builders.lm_logs import log_transforms as LT
from builders.lm_logs import make_dummy_data
from rlds_lm import logs
from rlds_lm import read as R
from rlds_lm import recorder
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import validate as V

SCHEMA = S.SchemaConfig(vocab_size=259, teacher_top_k=4, teacher_sampled_k=3,
                        reward_names=("correct", "entailment"))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LmLogsBuilderTest(tfds.testing.DatasetBuilderTestCase):
  """Builds the `dummy` config from the committed log dummy_data/log.

  No DownloadConfig is passed here: the builder pins an in-process Beam runner itself.
  """
  DATASET_CLASS = B.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["dummy"]
  SPLITS = {"train": 3}
  SKIP_CHECKSUMS = True  # nothing is downloaded


def _episodes(n: int) -> list[dict]:
  return [T.fake_rollout(SCHEMA, seed=i, turns=1 + i % 3, action_len=2 + i,
                         thinking=bool(i % 2)) for i in range(n)]


def _record(log_dir, episodes, config: S.SchemaConfig = SCHEMA) -> None:
  with recorder.Recorder(log_dir, config) as rec:
    for episode in episodes:
      rec.record(episode)


def _build(data_dir, name: str, log_dir) -> B.Builder:
  """A Beam build with explicit options, as the README tells users to run it."""
  builder = B.Builder(config=B.LmLogsConfig(name=name, log_dir=log_dir),
                      data_dir=os.fspath(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      beam_options=pipeline_options.PipelineOptions(flags=["--runner=DirectRunner"])))
  return builder


def _decoded(dataset_dir) -> list[dict]:
  """Every episode of the train split, through builder_from_directory, in file order."""
  builder = tfds.builder_from_directory(os.fspath(dataset_dir))
  return [{**episode, S.STEPS: list(episode[S.STEPS])}
          for episode in tfds.as_numpy(builder.as_dataset("train"))]


def _id(episode) -> str:
  value = episode[S.EPISODE_ID]
  return value.decode() if isinstance(value, bytes) else value


def test_dummy_log_holds_the_dummy_episodes():
  config = logs.read_log_config(make_dummy_data.DUMMY_LOG_DIR)
  assert config == make_dummy_data.DUMMY_SCHEMA
  back = list(logs.read_log(make_dummy_data.DUMMY_LOG_DIR))
  expected = make_dummy_data.dummy_episodes()
  assert len(back) == len(expected) == 3
  for actual, episode in zip(back, expected):
    T.assert_episodes_equal(actual, V.validate_episode(episode, config))
  size = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(make_dummy_data.DUMMY_LOG_DIR) for name in names)
  assert size < 100_000


def test_beam_build_equals_recorded_and_publish_log(tmp_path):
  episodes = _episodes(6)
  _record(tmp_path / "log", episodes)
  builder = _build(tmp_path / "beam", "one_log", tmp_path / "log")
  assert builder.pipeline_counters[LT.EPISODES_READ] == 6
  assert builder.pipeline_counters[LT.DUPLICATES_DROPPED] == 0
  assert builder.pipeline_counters[LT.EPISODES_WRITTEN] == 6

  stored = tfds.builder_from_directory(os.fspath(builder.data_dir))
  assert R.schema_config(stored) == SCHEMA
  assert R.dataset_lineage(stored)["riegeli_logs"] == [str(tmp_path / "log")]
  assert stored.info.splits["train"].num_examples == 6
  beam = _decoded(builder.data_dir)
  by_id = {_id(e): e for e in beam}
  assert sorted(by_id) == sorted(e[S.EPISODE_ID] for e in episodes)
  for episode in episodes:
    T.assert_episodes_equal(by_id[episode[S.EPISODE_ID]], V.validate_episode(episode, SCHEMA))

  published = _decoded(recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "pub",
                                            name="published"))
  assert [_id(e) for e in beam] == [_id(e) for e in published]  # same keys, same order
  for actual, expected in zip(beam, published):
    T.assert_episodes_equal(actual, expected)


def test_two_logs_with_overlap_give_each_episode_once(tmp_path):
  episodes = _episodes(6)
  relabelled = {**episodes[1], S.LINEAGE: json.dumps({"source": "worker-1"})}
  assert relabelled[S.EPISODE_ID] == episodes[1][S.EPISODE_ID]  # lineage is not content
  _record(tmp_path / "worker-0", episodes[:4])
  _record(tmp_path / "worker-1", episodes[3:] + [relabelled])
  # worker-1 first: its copy of episode 1 must win, whatever the directory names' order.
  builder = _build(tmp_path / "beam", "two_logs",
                   [str(tmp_path / "worker-1"), str(tmp_path / "worker-0")])
  assert builder.pipeline_counters == {
      LT.EPISODES_READ: 8, LT.INCOMPLETE_EPISODES: 0, LT.ORPHAN_STEPS: 0,
      LT.UNREADABLE_STEPS: 0, LT.DAMAGED_EPISODES: 0, LT.INDEXED_NOT_READ: 0,
      LT.UNREACHABLE_STEPS: 0, LT.UNOPENABLE_SHARDS: 0,
      LT.DUPLICATES_DROPPED: 2, LT.CONFLICTING_DUPLICATES: 1, LT.EPISODES_WRITTEN: 6}

  back = _decoded(builder.data_dir)
  ids = [_id(e) for e in back]
  assert len(ids) == len(set(ids)) == 6
  expected = {e[S.EPISODE_ID]: e for e in episodes}
  expected[relabelled[S.EPISODE_ID]] = relabelled
  assert set(ids) == set(expected)
  for episode in back:
    T.assert_episodes_equal(episode, V.validate_episode(expected[_id(episode)], SCHEMA))


def test_a_damaged_log_gives_its_intact_episodes_and_counts_the_rest(tmp_path):
  episodes = _episodes(5)
  _record(tmp_path / "log", episodes)
  (steps,) = [os.path.join(root, "steps.riegeli") for root, _, files
              in os.walk(tmp_path / "log") if "steps.riegeli" in files]
  with open(steps, "r+b") as f:  # a cut tail: the last episode's chunk is damaged
    f.truncate(os.path.getsize(steps) - 5)
  builder = _build(tmp_path / "beam", "damaged", [str(tmp_path / "log")])
  counters = builder.pipeline_counters
  assert counters[LT.EPISODES_WRITTEN] == 4 and counters[LT.DAMAGED_EPISODES] == 1
  assert counters[LT.UNREADABLE_STEPS] > 0
  assert sorted(_id(e) for e in _decoded(builder.data_dir)) == sorted(
      e[S.EPISODE_ID] for e in episodes[:4])


def test_logs_with_different_schemas_are_refused(tmp_path):
  _record(tmp_path / "a", _episodes(1))
  other = S.SchemaConfig(vocab_size=259, reward_names=("correct",))
  _record(tmp_path / "b", [T.fake_rollout(other, seed=0)], config=other)
  with pytest.raises(ValueError, match="do not share one SchemaConfig") as raised:
    B.Builder(config=B.LmLogsConfig(name="mixed", log_dir=[str(tmp_path / "a"),
                                                           str(tmp_path / "b")]),
              data_dir=os.fspath(tmp_path / "data")).info  # pylint: disable=expression-not-assigned
  assert str(tmp_path / "a") in str(raised.value)
  assert str(tmp_path / "b") in str(raised.value)
  # A worker refuses a log whose schema is not the dataset's (changed after _info).
  with pytest.raises(ValueError, match="another SchemaConfig"):
    list(LT.read_log_dir((0, str(tmp_path / "b")), SCHEMA.to_json()))


def test_resolve_log_dirs(tmp_path, monkeypatch):
  for name in ("host-b", "host-a", "other"):
    (tmp_path / name).mkdir()
  monkeypatch.chdir(tmp_path)
  assert B.resolve_log_dirs("host-a") == (str(tmp_path / "host-a"),)
  assert B.resolve_log_dirs(["other", str(tmp_path / "host-*"), "host-a"]) == (
      str(tmp_path / "other"), str(tmp_path / "host-a"), str(tmp_path / "host-b"))
  with pytest.raises(FileNotFoundError, match="matches no directory"):
    B.resolve_log_dirs("nothing-*")
  for empty in ("", [], [""]):
    with pytest.raises(ValueError, match="log_dir"):
      B.resolve_log_dirs(empty)
  with pytest.raises(FileNotFoundError, match="not an rlds_lm Riegeli log"):
    B.common_schema(B.resolve_log_dirs("other"))


def test_tfds_build_command_with_json_config(tmp_path):
  """The README's command: --config as JSON (a list of logs here), DirectRunner."""
  tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
  if not os.path.exists(tfds_cli):
    pytest.skip("the tfds command is not installed beside this Python")
  shutil.copytree(make_dummy_data.DUMMY_LOG_DIR, tmp_path / "copy")  # the same episodes
  config = {"name": "cli_logs", "log_dir": [make_dummy_data.DUMMY_LOG_DIR,
                                            str(tmp_path / "copy")]}
  result = subprocess.run(
      [tfds_cli, "build", "builders/lm_logs", f"--config={json.dumps(config)}",
       f"--data_dir={tmp_path / 'data'}", "--beam_pipeline_options=runner=DirectRunner"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  back = _decoded(tmp_path / "data" / "lm_logs" / "cli_logs" / "1.0.0")
  assert sorted(_id(e) for e in back) == sorted(
      e[S.EPISODE_ID] for e in make_dummy_data.dummy_episodes())


if __name__ == "__main__":
  tfds.testing.test_main()
