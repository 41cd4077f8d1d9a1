"""benchmarks.read_throughput at a tiny size: every reader's batches are checked against
the reference arrays by the benchmark itself, and its section reports issue 15's ratios
and the CPU time per batch of the worker rows."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import read_throughput as RT


@pytest.fixture(autouse=True)
def _absl_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()


def test_read_throughput_runs_checks_and_reports_the_goals(tmp_path, monkeypatch):
  monkeypatch.setattr(RT, "STREAM_MIN_BATCHES", 64)
  args = argparse.Namespace(
      quick=True, episodes=256, batch=8, length=48, repeats=1, keep=False,
      workdir=str(tmp_path / "work"),
      only="grain_view,pipeline_view,memmap,hf_datasets,grain_view_mp1")
  data = RT.run(args)
  failed = [(r["teacher_top_k"], r["key"], r["error"]) for r in data["rows"] if "error" in r]
  assert not failed
  assert {(r["teacher_top_k"], r["key"]) for r in data["rows"]} == {
      (k, key) for k in (0, RT.TEACHER_TOP_K)
      for key in ("grain_view", "pipeline_view", "memmap", "hf_datasets", "grain_view_mp1")}
  for d in data["datasets"]:
    for ratio in ("view_over_hf_datasets", "view_over_memmap",
                  "pipeline_view_over_hf_datasets", "pipeline_view_over_memmap"):
      assert d["ratios"][ratio] > 0, (d["teacher_top_k"], ratio)
  workers = [r for r in data["rows"] if r["key"] == "grain_view_mp1"]
  assert all(r["consumer_cpu_us_per_batch"] >= 0 and r["worker_cpu_us_per_batch"] >= 0
             for r in workers)
  text = RT.markdown(data)
  assert "Issue 15's goals" in text and "CPU time per batch" in text
  goals = text.split("Issue 15's goals", 1)[1]
  for label in ("grain_batches, view / HF datasets", "grain_batches, view / numpy memmap",
                "DataPipeline, view / numpy memmap", "view, 2 workers / in process"):
    assert f"| {label} |" in goals
