"""The rlds-lm command line, run as a user runs it."""

import os
import subprocess
import sys

import tensorflow_datasets as tfds

from rlds_lm import cli


def _run(*args, check=True):
  result = subprocess.run([sys.executable, "-m", "rlds_lm.cli", *args], capture_output=True,
                          text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_quickstart_then_inspect(tmp_path):
  workdir = tmp_path / "qs"
  out = _run("quickstart", "--workdir", str(workdir), "--prompts", "12", "--samples", "2")
  dataset_dir = workdir / "datasets" / "arithmetic_rollouts" / "1.0.0"
  assert f"TFDS dataset:    {dataset_dir}" in out.stdout
  assert "24 rollout episodes, 48 steps" in out.stdout
  builder = tfds.builder_from_directory(str(dataset_dir))
  assert builder.info.splits["train"].num_examples == 24
  again = _run("quickstart", "--workdir", str(workdir), check=False)
  assert again.returncode != 0 and "--overwrite" in again.stderr + again.stdout

  shown = _run("inspect", str(dataset_dir), "--show", "1").stdout
  assert "24 rollout episodes" in shown and "teacher top-k 8" in shown
  assert "steps/teacher/topk_logprobs" in shown and '"command": "rlds-lm quickstart"' in shown
  assert "prompt:" in shown and "model:" in shown
  log = _run("inspect", str(workdir / "logs" / "rollouts"), "--json").stdout
  assert '"episodes": 24' in log


def test_inspect_a_missing_path_is_a_clear_error(tmp_path):
  assert cli.main(["inspect", str(tmp_path / "nope")]) == 2
