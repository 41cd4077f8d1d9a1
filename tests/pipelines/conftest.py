"""Fixtures of the pipeline tests: tiny checkpoints, built prompt datasets, an NLI model.

Everything is created once per session under a temporary directory; the stages write
their outputs under per-test directories.
"""

from __future__ import annotations

import os

import pytest

from pipelines import models
from pipelines import nli

MAX_NEW_TOKENS = 8


def _build(builder_cls, config: str, data_dir: str) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = builder_cls(config=config, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return os.fspath(builder.data_dir)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
  """Paths: policy / teacher checkpoints, arithmetic and summarization prompts, NLI model."""
  from builders.arithmetic import arithmetic_dataset_builder  # pylint: disable=g-import-not-at-top
  from builders.grounded_summarization import grounded_summarization_dataset_builder  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("pipeline_assets")
  paths = {
      "policy": os.fspath(root / "policy"),
      "teacher": os.fspath(root / "teacher"),
      "nli": os.fspath(root / "nli"),
  }
  models.init_checkpoint(paths["policy"], "tiny", seed=0)
  models.init_checkpoint(paths["teacher"], "tiny", seed=1)
  weights, bias, report = nli.train(count=600, seed=0, steps=200)
  nli.NliClassifier(weights, bias, report).save(paths["nli"])
  data_dir = os.fspath(root / "data")
  paths["arithmetic"] = _build(arithmetic_dataset_builder.Builder, "tiny", data_dir)
  paths["summarization"] = _build(
      grounded_summarization_dataset_builder.Builder, "tiny", data_dir)
  return paths
