"""rlds_lm.publish: names that cannot leave the data directory, the dataset card."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROLLOUT, rollouts
from rlds_lm import publish as P
from rlds_lm import recorder
from rlds_lm import validate as V

# Each one, used as a path component, would escape data_dir or is not a TFDS name.
HOSTILE = ["../../x", "..", ".", "a/b", "a\\b", "x\n", "", "A", "a-b", "a.b", "~x",
           "x\x00", "a" * (P.MAX_NAME_LENGTH + 1), "_x", "1x", 7, None]


def _hostile(tmp_path):
  # An absolute path under tmp_path, so that a write there is seen and stays contained.
  return HOSTILE + [os.fspath(tmp_path / "abs" / "path"), os.fspath(tmp_path / "abs")]


def _written(tmp_path):
  return sorted(os.path.relpath(os.path.join(root, f), tmp_path)
                for root, dirs, files in os.walk(tmp_path) for f in files + dirs)


def test_check_dataset_name_accepts_identifiers_only(tmp_path):
  for name in ("rt", "my_logs_2", "a" * P.MAX_NAME_LENGTH):
    assert P.check_dataset_name(name) == name
  for name in _hostile(tmp_path):
    with pytest.raises(ValueError, match="dataset name: expected a TFDS-style identifier"):
      P.check_dataset_name(name)
  for version in ("1.0", "../1.0.0", "1.0.0\n", "01.0.0", "1.0.0/..", 1):
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
      P.check_version(version)


def test_every_entry_point_refuses_hostile_names_and_writes_nothing(tmp_path):
  episodes = [V.validate_episode(e, ROLLOUT) for e in rollouts(2)]
  log = tmp_path / "log"
  with recorder.Recorder(log, ROLLOUT) as rec:
    for e in episodes:
      rec.record(e)
  before = _written(tmp_path)
  data = tmp_path / "root" / "data"
  for bad in _hostile(tmp_path):
    for kwargs in ({"name": bad}, {"name": "ok", "split": bad}, {"name": "ok", "version": bad}):
      kwargs = dict(kwargs)
      split = kwargs.pop("split", "train")
      with pytest.raises(ValueError, match="expected"):
        P.publish({split: episodes}, data_dir=data, config=ROLLOUT, **kwargs)
      with pytest.raises(ValueError, match="expected"):
        recorder.publish_log(log, data_dir=data, split=split, **kwargs)
      if "version" not in kwargs:
        with pytest.raises(ValueError, match="expected"):
          recorder.Recorder(data, ROLLOUT, backend=recorder.TFDS, split=split, **kwargs)
  assert _written(tmp_path) == before  # not a file, not a directory


def test_import_and_builders_refuse_hostile_names(tmp_path):
  rows = tmp_path / "rows.jsonl"
  rows.write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
  from builders.lm_logs import lm_logs_dataset_builder as B
  from rlds_lm import interop
  before = _written(tmp_path)
  for bad in ("../../x", os.fspath(tmp_path / "abs"), ".."):
    with pytest.raises(ValueError, match="dataset name"):
      interop.import_rows(rows, "prompt_completion", data_dir=tmp_path / "data", name=bad)
    with pytest.raises(ValueError, match="lm_logs config name"):
      B.Builder(config=B.LmLogsConfig(name=bad, log_dir=B._DUMMY_LOG_DIR),
                data_dir=tmp_path / "data")
    with pytest.raises(ValueError, match="lm_logs split name"):
      B.Builder(config=B.LmLogsConfig(name="ok", split=bad, log_dir=B._DUMMY_LOG_DIR),
                data_dir=tmp_path / "data")
  from pipelines import core, publish as stage
  for bad in ("x\n", "Bad-Name", "../x"):
    with pytest.raises(core.PipelineError, match="dataset name.*snake_case"):
      stage.run(["--input", os.fspath(tmp_path / "none"), "--data_dir",
                 os.fspath(tmp_path / "data"), "--name", bad])
  assert _written(tmp_path) == before
  run = subprocess.run(
      [sys.executable, "-m", "rlds_lm.cli", "import", os.fspath(rows), "--format",
       "prompt_completion", "--data_dir", os.fspath(tmp_path / "data"), "--name", "../../x"],
      capture_output=True, text=True, check=False,
      env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
  assert run.returncode != 0 and "dataset name" in run.stderr, run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  assert _written(tmp_path) == before


def test_the_dataset_card_has_homepage_citation_and_license(published):
  import tensorflow_datasets as tfds
  from builders.lm_logs import lm_logs_dataset_builder as B
  path, _ = published
  for info in (tfds.builder_from_directory(path).info, B.Builder().info):
    assert info.homepage == P.HOMEPAGE and "github.com/rlds-lm" not in info.homepage
    assert info.citation.startswith("@software{rlds_lm,")
    assert info.redistribution_info.license == "Apache-2.0"


def test_the_beam_stage_card_has_license_and_citation():
  from pipelines import publish as stage
  card = stage.dataset_card(name="x", version="1.0.0", description="", schema=ROLLOUT,
                            stats={}, lineage={}, dead_letters=None, path="/data/x/1.0.0")
  assert "License: Apache-2.0" in card and P.CITATION in card
