"""Every stage on a real Dask cluster (scheduler + 2 worker processes on localhost).

Each stage runs once on the local runner and once on Beam's DaskRunner; the outputs,
decoded record by record, and the dead letters must be identical. Then the bad cases: a
scheduler that does not answer, and a worker killed in the middle of a stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipelines import dask_cluster
from pipelines import generate
from pipelines import judge
from pipelines import publish
from pipelines import score
from pipelines import teacher
from pipelines.dead_letters import DEAD_LETTER_FILE
from pipelines.dead_letters import DEAD_LETTER_SUMMARY
from pipelines.errors import PipelineError
from rlds_lm import schema as S
from rlds_lm import testing as T

from pipeline_testlib import MAX_NEW_TOKENS  # pylint: disable=g-bad-import-order
from pipeline_testlib import episodes as _episodes  # pylint: disable=g-bad-import-order

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

GOOD = [{"question": f"Ann has {n} apples. She gets 2 more. How many now?",
         "answer": str(n + 2)} for n in (3, 5, 7, 9)]
BAD = ['{"question": "unterminated', {"question": "   ", "answer": "1"},
       {"title": "no task fields"}]
COMMON = ["--num_shards=2", "--max_dropped_fraction=0.7"]
STAGES = ("rollouts", "teacher", "scored", "prefs", "bon", "published")


@pytest.fixture(scope="module")
def cluster():
  with dask_cluster.LocalDaskCluster(workers=2) as c:
    yield c


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
  path = tmp_path_factory.mktemp("dask_prompts") / "prompts.jsonl"
  with open(path, "w") as f:
    for line in GOOD + BAD:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return os.fspath(path)


def _stage_argv(stage: str, inputs: dict[str, str], out: str, prompts: str, assets
                ) -> tuple[object, list[str]]:
  """``(stage module, flags)`` of one stage reading ``inputs`` (the chain's outputs)."""
  if stage == "rollouts":
    return generate, [f"--prompts={prompts}", f"--policy={assets['policy']}",
                      "--num_samples=2", f"--max_new_tokens={MAX_NEW_TOKENS}",
                      f"--output={out}"]
  if stage == "teacher":
    return teacher, [f"--rollouts={inputs['rollouts']}", f"--teacher={assets['teacher']}",
                     "--top_k=4", "--sampled_k=8", f"--output={out}"]
  if stage == "scored":
    return score, [f"--rollouts={inputs['teacher']}", "--scorers=arithmetic",
                   f"--output={out}"]
  if stage == "prefs":
    return judge, [f"--rollouts={inputs['scored']}", "--mode=pairwise", f"--output={out}",
                   f"--bon_output={out}_bon"]
  if stage == "published":
    return publish, [f"--input={inputs['scored']}", f"--data_dir={out}", "--name=arith",
                     "--version=1.0.0", "--description=Dask test."]
  raise ValueError(stage)


def _chain(root, prompts: str, assets, runner: list[str]) -> dict[str, str]:
  """generate -> teacher -> score -> judge -> publish with the given runner flags."""
  out: dict[str, str] = {}
  for stage in ("rollouts", "teacher", "scored", "prefs", "published"):
    module, argv = _stage_argv(stage, out, os.fspath(root / stage), prompts, assets)
    result = module.run([*argv, *COMMON, *runner])
    out[stage] = result["preferences"].path if stage == "prefs" else result.path
    if stage == "prefs":
      out["bon"] = result["bon"].path
  return out


@pytest.fixture(scope="module")
def runs(cluster, prompts, assets, tmp_path_factory):
  local_root, dask_root = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("dask")
  local = _chain(local_root, prompts, assets, ["--workers=1"])
  # The short runner name, which scaffold.pipeline_options resolves (Beam 2.77 does not).
  on_dask = _chain(dask_root, prompts, assets,
                   ["--runner=DaskRunner", f"--dask_client_address={cluster.address}"])
  return local, on_dask, (os.fspath(local_root), os.fspath(dask_root))


def _files(path: str) -> dict[str, bytes]:
  return {name: open(os.path.join(path, name), "rb").read() for name in os.listdir(path)
          if ".tfrecord-" in name}


def _all_files(path: str, root: str) -> dict[str, bytes]:
  """Every file of an output but ``rlds_lm_stage.json`` (timings, runner flags), with
  the run's root folder replaced (lineage and cards name their paths)."""
  return {name: open(os.path.join(path, name), "rb").read().replace(root.encode(), b"R")
          for name in sorted(os.listdir(path)) if name != "rlds_lm_stage.json"}


def _dead(path: str) -> list[dict]:
  if not os.path.exists(os.path.join(path, DEAD_LETTER_FILE)):  # none dropped
    return []
  with open(os.path.join(path, DEAD_LETTER_FILE)) as f:
    return [json.loads(line) for line in f]


def _summary(path: str) -> list[dict]:
  with open(os.path.join(path, DEAD_LETTER_SUMMARY)) as f:
    stages = json.load(f)["stages"]
  return [{k: s[k] for k in ("stage", "inputs", "written", "dropped", "by_reason")}
          for s in stages]


def _splits(path: str) -> list[str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return sorted(tfds.builder_from_directory(path).info.splits.keys())


@pytest.mark.parametrize("stage", STAGES)
def test_stage_output_on_dask_equals_the_local_runner(runs, stage):
  local, on_dask = runs[0][stage], runs[1][stage]
  assert _splits(local) == _splits(on_dask)
  for split in _splits(local):
    expected = sorted(_episodes(local, split), key=lambda e: e[S.EPISODE_ID])
    actual = sorted(_episodes(on_dask, split), key=lambda e: e[S.EPISODE_ID])
    assert expected, (stage, split)
    assert [e[S.EPISODE_ID] for e in actual] == [e[S.EPISODE_ID] for e in expected]
    for a, e in zip(actual, expected):
      T.assert_episodes_equal(a, e)
  # The shards are byte-identical too (they depend on the episodes only), and so are the
  # metadata, the dead letters, the statistics and the card, up to the run's folder.
  assert _files(on_dask) == _files(local)
  local_files, dask_files = _all_files(local, runs[2][0]), _all_files(on_dask, runs[2][1])
  assert sorted(dask_files) == sorted(local_files)
  for name, content in local_files.items():
    assert dask_files[name] == content, name
  assert _dead(on_dask) == _dead(local)
  assert _summary(on_dask) == _summary(local)


def test_dead_letters_and_counts_match_on_dask(runs):
  local, on_dask = runs[0]["rollouts"], runs[1]["rollouts"]
  dead = _dead(on_dask)
  assert sorted(d["reason"] for d in dead) == ["bad_json", "empty_prompt", "unknown_task"]
  with open(os.path.join(on_dask, "rlds_lm_stage.json")) as f:
    dask_stage = json.load(f)
  with open(os.path.join(local, "rlds_lm_stage.json")) as f:
    local_stage = json.load(f)
  assert dask_stage["num_examples"] == local_stage["num_examples"] == {"train": 8}
  assert dask_stage["dropped"] == local_stage["dropped"]
  # No Beam counters on the DaskRunner: the counts come from the written files and
  # agree with the local runner's counters.
  for name, value in dask_stage["counters"].items():
    assert local_stage["counters"][name] == value, name
  assert dask_stage["counters"]["generate/dropped"] == 3


@pytest.mark.parametrize("stage", ("rollouts", "teacher", "scored", "prefs", "published"))
def test_stage_runs_on_the_portable_runner_path(runs, prompts, assets, stage, tmp_path):
  """The pipeline graph goes through Beam's portability layer (runner API protos, a job
  service, the SDK harness) on PortableRunner with the in-process job server: no
  download; the same files as the local runner."""
  module, argv = _stage_argv(stage, runs[0], os.fspath(tmp_path / stage), prompts, assets)
  result = module.run([*argv, *COMMON, "--runner=PortableRunner", "--job_endpoint=embed",
                       "--environment_type=LOOPBACK"])
  path = result["preferences"].path if stage == "prefs" else result.path
  assert _files(path) == _files(runs[0][stage])
  assert _dead(path) == _dead(runs[0][stage])


def test_a_cluster_from_the_dask_command_lines_runs_a_stage(runs, tmp_path):
  """docs/pipelines.md's other way: `dask scheduler` and `dask worker` processes."""
  import distributed  # pylint: disable=g-import-not-at-top
  dask = os.path.join(os.path.dirname(sys.executable), "dask")
  address = f"tcp://127.0.0.1:{T.free_port()}"
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=repo)
  started = []
  try:
    started.append(subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
         "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True))
    started.append(subprocess.Popen(
        [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True))
    with distributed.Client(address, timeout=60, set_as_default=False) as client:
      client.wait_for_workers(2, timeout=120)
    out = os.fspath(tmp_path / "scored")
    score.run([f"--rollouts={runs[0]['teacher']}", "--scorers=arithmetic",
               f"--output={out}", *COMMON, *dask_cluster.dask_flags(address)])
    assert _files(out) == _files(runs[0]["scored"])
  finally:
    for process in reversed(started):
      try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
      except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_a_scheduler_that_does_not_answer_fails_fast_and_writes_nothing(runs, tmp_path):
  scored = runs[0]["scored"]
  address = f"tcp://127.0.0.1:{T.free_port()}"
  started = time.perf_counter()
  with pytest.raises(PipelineError, match="did not answer"):
    score.run([f"--rollouts={runs[0]['teacher']}", "--scorers=arithmetic",
               f"--output={tmp_path / 'scored'}", "--runner=DaskRunner",
               f"--dask_client_address={address}"])
  assert time.perf_counter() - started < 30
  assert not (tmp_path / "scored").exists()
  with pytest.raises(PipelineError, match="did not answer"):
    publish.run([f"--input={scored}", f"--data_dir={tmp_path / 'datasets'}",
                 "--name=arith", "--version=1.0.0", "--runner=DaskRunner",
                 f"--dask_client_address={address}"])
  assert not (tmp_path / "datasets").exists()


def test_a_dask_runner_without_an_address_is_refused(runs, tmp_path):
  with pytest.raises(PipelineError, match="--dask_client_address"):
    score.run([f"--rollouts={runs[0]['teacher']}", "--scorers=arithmetic",
               f"--output={tmp_path / 'scored'}", "--runner=DaskRunner"])
  assert not (tmp_path / "scored").exists()


def test_a_worker_killed_mid_stage_then_a_rerun_gives_the_whole_output(
    cluster, runs, prompts, assets, tmp_path):
  out = tmp_path / "rollouts"
  argv = [f"--prompts={prompts}", f"--policy={assets['policy']}", "--num_samples=2",
          f"--max_new_tokens={MAX_NEW_TOKENS}", f"--output={out}", *COMMON,
          *dask_cluster.dask_flags(cluster.address)]
  import distributed  # pylint: disable=g-import-not-at-top
  # Fresh worker processes: the stage then loads and compiles its model again (seconds),
  # which leaves time to kill a worker in the middle of it.
  with distributed.Client(cluster.address, timeout=30, set_as_default=False) as client:
    client.restart_workers(list(client.scheduler_info(n_workers=-1)["workers"]))
  cluster.wait_for_workers()
  pids = cluster.worker_pids()  # worker address -> process id
  killed = threading.Event()
  times: dict[str, float] = {}

  def _kill_when_running():
    # Wait until a worker is running one of the stage's tasks, then kill that worker.
    with distributed.Client(cluster.address, timeout=30, set_as_default=False) as client:
      deadline = time.time() + 120
      while time.time() < deadline:
        busy = [w for w, tasks in client.processing().items() if tasks and w in pids]
        if busy:
          time.sleep(1.0)
          os.kill(pids[busy[0]], signal.SIGKILL)
          times["killed"] = time.perf_counter()
          killed.set()
          return
        time.sleep(0.05)

  killer = threading.Thread(target=_kill_when_running, daemon=True)
  killer.start()
  try:
    generate.run(argv)
    failed = False
  except PipelineError as e:  # Dask gave up on a task: a clear message, nothing published
    assert "worker" in str(e) or "scheduler" in str(e), e
    assert not (out / "dataset_info.json").exists()
    failed = True
  times["ended"] = time.perf_counter()
  killer.join(130)
  assert killed.is_set() and times["killed"] < times["ended"]  # killed mid-stage
  print(f"worker killed {times['ended'] - times['killed']:.1f}s before the end of the "
        f"stage; {'it failed and was rerun' if failed else 'Dask retried the lost tasks'}")
  cluster.wait_for_workers()  # the nanny restarts the killed worker
  if failed:
    generate.run([*argv, "--overwrite"])
  # Dask retried the lost tasks (or the rerun did): the complete, identical output.
  expected = runs[0]["rollouts"]
  assert _files(os.fspath(out)) == _files(expected)
  assert _dead(os.fspath(out)) == _dead(expected)
  assert not (out / "_rlds_lm_tmp").exists()


def test_logs_published_on_dask_equal_the_lm_logs_builder(cluster, tmp_path):
  """`publish --logs` (the lm_logs builder's episodes through the stages' writer) on the
  DaskRunner: the episodes of `tfds build builders/lm_logs` on the local runner, one copy
  of each episode recorded in two logs."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top

  from builders.lm_logs import lm_logs_dataset_builder as B  # pylint: disable=g-import-not-at-top
  from rlds_lm import recorder  # pylint: disable=g-import-not-at-top

  schema = S.SchemaConfig(vocab_size=259, teacher_top_k=4, reward_names=("correct",))
  episodes = [T.fake_rollout(schema, seed=i, turns=1 + i % 2, action_len=3 + i)
              for i in range(7)]
  for name, part in (("worker-0", episodes[:5]), ("worker-1", episodes[3:])):
    with recorder.Recorder(tmp_path / "logs" / name, schema) as rec:
      for episode in part:
        rec.record(episode)
  logs = os.fspath(tmp_path / "logs" / "worker-*")
  published = publish.run([f"--logs={logs}", f"--data_dir={tmp_path / 'dask'}",
                           "--name=from_logs", "--num_shards=2", "--runner=DaskRunner",
                           f"--dask_client_address={cluster.address}"])
  builder = B.Builder(config=B.LmLogsConfig(name="from_logs", log_dir=logs),
                      data_dir=os.fspath(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      beam_options=pipeline_options.PipelineOptions(flags=["--runner=DirectRunner"])))
  expected = sorted(_episodes(os.fspath(builder.data_dir), "train"),
                    key=lambda e: e[S.EPISODE_ID])
  actual = sorted(_episodes(published.path, "train"), key=lambda e: e[S.EPISODE_ID])
  assert len(expected) == 7
  assert [e[S.EPISODE_ID] for e in actual] == [e[S.EPISODE_ID] for e in expected]
  for a, e in zip(actual, expected):
    T.assert_episodes_equal(a, e)
  summary = _summary(published.path)[-1]
  assert summary["inputs"] == summary["written"] == 7 and summary["dropped"] == 0
  with pytest.raises(PipelineError, match="matches no directory"):
    publish.run([f"--logs={tmp_path / 'nothing-*'}", f"--data_dir={tmp_path / 'x'}",
                 "--name=none"])
