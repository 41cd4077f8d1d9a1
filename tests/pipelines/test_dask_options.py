"""Runner options for Beam's DaskRunner, without a cluster: names, addresses, refusals."""

from __future__ import annotations

import os

from apache_beam.options import pipeline_options as beam_options
import pytest

from pipelines import scaffold
from pipelines.errors import PipelineError


def test_beam_itself_does_not_know_the_short_name():
  from apache_beam.runners import runner  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="Unexpected pipeline runner"):
    runner.create_runner("DaskRunner")


def test_the_stages_resolve_the_short_name_and_check_the_scheduler(monkeypatch):
  from apache_beam.runners.dask import dask_runner  # pylint: disable=g-import-not-at-top,unused-import  (the --dask_* flags)
  checked = []
  monkeypatch.setattr(scaffold, "check_dask_scheduler",
                      lambda options: checked.append(options) or 3)  # 3 worker threads
  options = scaffold.pipeline_options(["--runner=DaskRunner",
                                       "--dask_client_address=tcp://127.0.0.1:1"])
  assert options.view_as(beam_options.StandardOptions).runner == scaffold.DASK_RUNNER
  assert len(checked) == 1
  # One bag partition per worker thread (the DaskRunner's default is 128 elements each).
  assert options.get_all_options(drop_default=True)["npartitions"] == 3
  given = scaffold.pipeline_options(["--runner=DaskRunner", "--dask_partition_size=5",
                                     "--dask_client_address=tcp://127.0.0.1:1"])
  assert "npartitions" not in given.get_all_options(drop_default=True)
  local = scaffold.pipeline_options([], workers=2)
  assert local.view_as(beam_options.StandardOptions).runner == "FnApiRunner"
  assert not scaffold.is_dask(local) and len(checked) == 2


def test_a_dask_runner_needs_an_address():
  with pytest.raises(PipelineError, match="--dask_client_address"):
    scaffold.pipeline_options([f"--runner={scaffold.DASK_RUNNER}"])


def test_the_lm_logs_builder_refuses_the_dask_runner_before_writing(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from builders.lm_logs import lm_logs_dataset_builder as B  # pylint: disable=g-import-not-at-top
  builder = B.Builder(config="dummy", data_dir=os.fspath(tmp_path / "data"))
  flags = [f"--runner={scaffold.DASK_RUNNER}", "--dask_client_address=tcp://127.0.0.1:1"]
  with pytest.raises(ValueError, match="DaskRunner"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        beam_options=beam_options.PipelineOptions(flags=flags)))
  assert not list((tmp_path / "data").rglob("*.tfrecord*"))
