"""The rlds-lm command line, run as a user runs it."""

import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from rlds_lm import cli


def _run(*args, check=True):
  result = subprocess.run([sys.executable, "-m", "rlds_lm.cli", *args], capture_output=True,
                          text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_small_quickstart_runs_the_whole_loop_then_inspect(quickstart_small):
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top

  _, workdir, out = quickstart_small
  for stage in ("1/5 data", "2/5 teacher", "3/5 student", "4/5 on-policy", "5/5 report"):
    assert stage in out
  last = out.strip().splitlines()[-3:]  # where things are
  assert last[0].endswith(str(workdir / "datasets")) and "checkpoints:" in last[1]
  assert last[2].endswith(str(workdir / "report.md"))
  result = json.loads((workdir / "quickstart.json").read_text())
  assert len(result["iterations"]) == 2
  report = (workdir / "report.md").read_text()
  for name in ("accuracy.png", "divergence.png", "reward.png"):
    assert (workdir / name).stat().st_size > 5000 and f"]({name})" in report
  assert f"| student after SFT | {result['student_sft']['accuracy']:.3f} |" in report
  for it in result["iterations"]:
    # Each iteration's generations are a published TFDS dataset; its episodes' rewards
    # are the exact-answer check, and their mean is the reported reward.
    builder = tfds.builder_from_directory(it["dataset"])
    assert builder.info.splits["train"].num_examples == it["episodes"] > 0
    _, records = R.iter_records(it["dataset"], "train")
    rewards = [float(R.materialize(r)[S.STEPS][0][S.REWARD]) for r in records]
    assert set(rewards) <= {0.0, 1.0}
    assert np.mean(rewards) == pytest.approx(it["reward"])
    assert R.dataset_lineage(builder)["loop_iteration"] == it["iteration"] - 1
    assert f"| student after iteration {it['iteration']} | {it['accuracy']:.3f} |" in report
  again = _run("quickstart", "--workdir", str(workdir), "--size", "small", check=False)
  assert again.returncode == 2 and "--overwrite" in again.stderr

  dataset = result["iterations"][-1]["dataset"]
  shown = _run("inspect", dataset, "--show", "1").stdout
  assert f"{result['iterations'][-1]['episodes']} rollout episodes" in shown
  assert "teacher top-k 8" in shown and "steps/teacher/topk_logprobs" in shown
  assert "prompt:" in shown and "model:" in shown
  log = _run("inspect", str(workdir / "onpolicy" / "iter_0" / "generations"), "--json").stdout
  assert f'"episodes": {result["iterations"][0]["episodes"]}' in log


def test_inspect_a_missing_path_is_a_clear_error(tmp_path):
  assert cli.main(["inspect", str(tmp_path / "nope")]) == 2
