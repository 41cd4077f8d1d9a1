"""Multi-host training on one machine: 2 JAX processes x 2 fake CPU devices against one
process with 4 (same global batches, losses, parameter digest, checkpoints both ways, a
crash of one process and a restart of both), for a hand-written loop and for the
``distill`` command line.

The runs are ``_multihost_child.py`` and ``python -m rlds_lm.trainers.distill``
subprocesses on localhost; every test kills what it started, and each run has a time
limit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rlds_lm import testing as T
from rlds_lm.trainers import multihost

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multihost_child.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY = 4, 2
RUN_TIMEOUT = 150  # seconds per run (2 cores shared with other work)


def _env(devices: int, processes: int, process_id: int, port: int) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for name in (multihost.ENV_COORDINATOR, multihost.ENV_NUM_PROCESSES,
               multihost.ENV_PROCESS_ID):
    env.pop(name, None)
  if processes > 1:
    env.update({multihost.ENV_COORDINATOR: f"127.0.0.1:{port}",
                multihost.ENV_NUM_PROCESSES: str(processes),
                multihost.ENV_PROCESS_ID: str(process_id)})
  return env


def _kill(procs) -> None:
  for proc in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  for proc in procs:
    proc.wait(timeout=30)


def _start(tmp, name: str, dataset: str, workdir, processes: int, **extra):
  """Starts one run (``processes`` children, 4 devices in all); returns (procs, out)."""
  out = tmp / f"{name}.jsonl"
  spec = dict(dataset=dataset, workdir=os.fspath(workdir), steps=STEPS,
              checkpoint_every=EVERY, out=os.fspath(out), timeout=60, **extra)
  spec_path = tmp / f"{name}.spec.json"
  spec_path.write_text(json.dumps(spec))
  port = T.free_port()
  procs = []
  for p in range(processes):
    log = open(tmp / f"{name}.{p}.log", "w")  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, CHILD, os.fspath(spec_path)], stdout=log, stderr=log,
        env=_env(4 // processes, processes, p, port), start_new_session=True))
  return procs, out


def _wait(procs, tmp, name: str) -> None:
  deadline = time.monotonic() + RUN_TIMEOUT
  try:
    for p, proc in enumerate(procs):
      code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      assert code == 0, (f"{name} process {p} exited with {code}:\n"
                         + (tmp / f"{name}.{p}.log").read_text()[-3000:])
  finally:
    _kill(procs)


def _run(tmp, name: str, dataset: str, workdir, processes: int) -> dict:
  procs, out = _start(tmp, name, dataset, workdir, processes)
  _wait(procs, tmp, name)
  return _summary(out, processes)


def _summary(out, processes: int) -> dict:
  """What every process saw: {"batches", "losses", "digest", "resumed_from"}; asserts
  that all processes saw the same."""
  per = [{"batches": {}, "losses": {}, "digest": None, "resumed_from": None}
         for _ in range(processes)]
  rows = [{} for _ in range(processes)]
  for line in out.read_text().splitlines():
    row = json.loads(line)
    mine = per[row["process"]]
    if "rows" in row:
      rows[row["process"]][row["step"]] = row["rows"]
    elif "batch" in row:
      mine["batches"][row["step"]] = row["batch"]
    elif "loss" in row:
      mine["losses"][row["step"]] = row["loss"]
    elif "digest" in row:
      mine["digest"] = row["digest"]
    elif "resumed_from" in row:
      mine["resumed_from"] = row["resumed_from"]
    elif "devices" in row:
      assert (row["devices"], row["processes"]) == (4, processes), row
  for other in per[1:]:
    assert other == per[0]
  # The global batch's rows, process after process: {step: [[dataset, record], ...] per row}.
  return dict(per[0], rows={step: [r for p in range(processes) for r in rows[p][step]]
                            for step in rows[0]},
              local_rows=rows)


@pytest.fixture(scope="module")
def dataset(published):
  return os.fspath(published[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dataset):
  """The reference (1 process x 4 devices) and the same run on 2 processes x 2."""
  tmp = tmp_path_factory.mktemp("multihost")
  single = _run(tmp, "single", dataset, tmp / "single", 1)
  double = _run(tmp, "double", dataset, tmp / "double", 2)
  return tmp, single, double


@pytest.mark.cluster
def test_two_processes_train_exactly_like_one(runs):
  _, single, double = runs
  assert single["resumed_from"] == 0 and single["digest"]
  assert sorted(single["losses"]) == list(range(STEPS))
  # Each process decoded only its half of every batch (B / P contiguous rows), the
  # halves in process order are the single process's rows, and the global batches built
  # from them are the single process's to the byte.
  first, second = double["local_rows"]
  for step in range(STEPS):
    assert len(first[step]) == len(second[step]) == len(single["rows"][step]) // 2
  assert double["rows"] == single["rows"]
  assert double["batches"] == single["batches"]
  assert len(set(single["batches"].values())) == STEPS
  # The same loss curve and parameters, to the bit.
  assert double["losses"] == single["losses"]
  assert double["digest"] == single["digest"]


def _resume_copy(src, dst) -> None:
  """``src``'s workdir without its last checkpoint: a run there resumes at EVERY."""
  shutil.copytree(src, dst)
  shutil.rmtree(dst / "checkpoints" / str(STEPS))


@pytest.mark.cluster
@pytest.mark.parametrize("saved_by,restored_by", [(2, 1), (1, 2)])
def test_checkpoints_restore_across_process_counts(runs, dataset, saved_by, restored_by):
  tmp, single, double = runs
  source = tmp / ("double" if saved_by == 2 else "single")
  workdir = tmp / f"from{saved_by}to{restored_by}"
  _resume_copy(source, workdir)
  resumed = _run(tmp, f"from{saved_by}to{restored_by}", dataset, workdir, restored_by)
  assert resumed["resumed_from"] == EVERY
  assert resumed["losses"] == {s: single["losses"][s] for s in range(EVERY, STEPS)}
  assert resumed["batches"] == {s: single["batches"][s] for s in range(EVERY, STEPS)}
  assert resumed["digest"] == single["digest"] == double["digest"]


@pytest.mark.cluster
def test_kill_one_process_restart_both_resumes_exactly(runs, dataset):
  tmp, single, _ = runs
  workdir = tmp / "crash"
  # Process 1 dies after step 3 (checkpoint at 2); process 0 then waits on it forever.
  procs, _ = _start(tmp, "crash", dataset, workdir, 2, die_after=EVERY + 1, die_process=1)
  try:
    assert procs[1].wait(timeout=RUN_TIMEOUT) == 3, (tmp / "crash.1.log").read_text()[-3000:]
  finally:
    _kill(procs)  # the survivor, stuck in a collective
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(EVERY)]
  restarted = _run(tmp, "restart", dataset, workdir, 2)
  assert restarted["resumed_from"] == EVERY
  assert restarted["losses"] == {s: single["losses"][s] for s in range(EVERY, STEPS)}
  assert restarted["digest"] == single["digest"]


@pytest.mark.cluster
def test_a_coordinator_that_does_not_answer_is_a_clear_error():
  code = ("from rlds_lm.trainers import multihost\n"
          f"multihost.initialize('127.0.0.1:{T.free_port()}', 2, 1, initialization_timeout=2)")
  result = subprocess.run([sys.executable, "-c", code], env=_env(1, 1, 0, 0),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert "ClusterError" in result.stderr
  assert "did not answer within 2 s" in result.stderr


def test_a_process_count_that_does_not_divide_the_batch_is_refused():
  assert multihost.check_divides(8, 2) == 4
  with pytest.raises(ValueError, match="a process count that does not divide the "
                                       r"dataset/batch: batch_size 6 over 4 processes.*"
                                       r"\[1, 2, 3, 6\]"):
    multihost.check_divides(6, 4)


def test_initialize_without_a_job_is_a_single_process_run():
  assert multihost.initialize(environ={}) is False
  with pytest.raises(multihost.ClusterError, match="needs a coordinator address"):
    multihost.initialize(num_processes=2, environ={})
  with pytest.raises(multihost.ClusterError, match="process_id must be in"):
    multihost.initialize("127.0.0.1:1", 2, 2, environ={})
  with pytest.raises(multihost.ClusterError, match="must be an integer"):
    multihost.initialize(environ={multihost.ENV_COORDINATOR: "h:1",
                                  multihost.ENV_NUM_PROCESSES: "two"})


def test_one_process_global_batch_is_the_local_batch():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  mesh = multihost.data_mesh()
  rows = 2 * len(jax.devices())
  local = {"tokens": np.arange(rows * 3, dtype=np.int32).reshape(rows, 3)}
  batch = multihost.global_batch(mesh, local)
  np.testing.assert_array_equal(multihost.to_host(batch)["tokens"], local["tokens"])
  multihost.check_same("anything", {"step": 1})  # one process: nothing to compare
  with pytest.raises(ValueError, match="must use all"):
    multihost.data_mesh(data=len(jax.devices()) + 1)


# --------------------------------------------------------------------------------------
# The distill command line, once per process (docs/multihost.md, "The distill command
# line on a pod").
# --------------------------------------------------------------------------------------

DISTILL_STEPS, DISTILL_EVERY = 4, 2
# One process of the job that dies after step DIE_AFTER (between two checkpoints), as a
# crashed host would: argv = DIE_AFTER DIE_PROCESS then distill's own flags.
DYING_DISTILL = """
import os, sys
import jax
from rlds_lm.trainers import common, distill
die_after, die_process = int(sys.argv[1]), int(sys.argv[2])
after_step = common.Bookkeeper.after_step
def dying(self, done, values, params=None):
  if done == die_after and jax.process_index() == die_process:
    os._exit(3)
  return after_step(self, done, values, params)
common.Bookkeeper.after_step = dying
sys.exit(distill.main(sys.argv[3:]))
"""


def _child_model():
  """The one-layer model of ``_multihost_child.py``."""
  sys.path.insert(0, os.path.dirname(CHILD))
  try:
    import _multihost_child  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(os.path.dirname(CHILD))
  return _multihost_child.MODEL


def _checkpoint(tmp_path_factory, name: str, seed: int) -> str:
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp(name) / "mh"
  model = _child_model()
  ckpt_lib.save(path, model, gemma.init_params(model, seed))
  return os.fspath(path)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """The child's one-layer model as a checkpoint directory (``--student``)."""
  return _checkpoint(tmp_path_factory, "student", 11)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """Another one (``--teacher``, for on-policy steps)."""
  return _checkpoint(tmp_path_factory, "teacher", 12)


def _start_distill(tmp, name: str, flags: list[str], processes: int, *, dying=None):
  """``python -m rlds_lm.trainers.distill FLAGS`` once per process (4 devices in all),
  each with the multi-host flags; ``dying=(after, process)`` runs :data:`DYING_DISTILL`."""
  port = T.free_port()
  procs = []
  for p in range(processes):
    job = ([] if processes == 1 else
           ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes",
            str(processes), "--process_id", str(p), "--initialization_timeout", "60"])
    head = ([sys.executable, "-m", "rlds_lm.trainers.distill"] if dying is None else
            [sys.executable, "-c", DYING_DISTILL, str(dying[0]), str(dying[1])])
    out = open(tmp / f"{name}.{p}.out", "w")  # pylint: disable=consider-using-with
    err = open(tmp / f"{name}.{p}.log", "w")  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
        head + flags + job, stdout=out, stderr=err, cwd=REPO,
        env=_env(4 // processes, 1, 0, 0), start_new_session=True))
  return procs


def _finish_distill(procs, tmp, name: str, expect: int = 0) -> list:
  """Waits for every process (bounded); returns their printed results (their stderr
  when ``expect`` != 0)."""
  deadline = time.monotonic() + RUN_TIMEOUT
  try:
    for p, proc in enumerate(procs):
      code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      assert code == expect, (f"{name} process {p} exited with {code}:\n"
                              + (tmp / f"{name}.{p}.log").read_text()[-3000:])
  finally:
    _kill(procs)
  if expect:
    return [(tmp / f"{name}.{p}.log").read_text() for p in range(len(procs))]
  return [_printed(tmp / f"{name}.{p}.out") for p in range(len(procs))]


def _printed(path) -> dict:
  """distill's JSON result from its stdout (gloo writes its own lines there too)."""
  text = path.read_text()
  start = text.index("{\n") if text.startswith("{\n") else text.index("\n{\n") + 1
  return json.JSONDecoder().raw_decode(text[start:])[0]


def _distill_flags(dataset, student, workdir, exact: bool = True, **overrides
                   ) -> list[str]:
  flags = dict(dataset=dataset, workdir=os.fspath(workdir), student=student,
               loss="topk_kd", steps=DISTILL_STEPS, batch_size=8, max_length=16,
               learning_rate=1e-2, seed=5, log_every=1, checkpoint_every=DISTILL_EVERY)
  flags.update(overrides)
  return [f"--{k}={v}" for k, v in flags.items()] + (["--exact_step"] if exact else [])


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def distill_runs(tmp_path_factory, dataset, student):
  """``distill`` on 1 process x 4 devices and on 2 processes x 2: (tmp, single, double),
  each {"results": the printed JSON of every process, "workdir"}."""
  tmp = tmp_path_factory.mktemp("distill_multihost")
  runs = []
  for name, processes, mesh in (("single", 1, 4), ("double", 2, 1)):
    flags = _distill_flags(dataset, student, tmp / name, mesh_data=mesh)
    results = _finish_distill(_start_distill(tmp, name, flags, processes), tmp, name)
    runs.append({"results": results, "workdir": tmp / name})
  return tmp, runs[0], runs[1]


@pytest.mark.cluster
def test_distill_command_line_on_two_processes_trains_exactly_like_one(distill_runs):
  _, single, double = distill_runs
  (one,), (first, second) = single["results"], double["results"]
  # Each process read its own shard of the same data (the same fingerprint).
  assert one["data"]["shard"] == [0, 1]
  assert (first["data"]["shard"], second["data"]["shard"]) == ([0, 2], [1, 2])
  assert first["data"]["fingerprint"] == second["data"]["fingerprint"] == (
      one["data"]["fingerprint"])
  # One loss curve (written once, by process 0) and one student, to the bit.
  curve = _metrics(single["workdir"])
  assert [row["step"] for row in curve] == list(range(1, DISTILL_STEPS + 1))
  assert _metrics(double["workdir"]) == curve
  assert first["student_digest"] == second["student_digest"] == one["student_digest"]
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  assert ckpt_lib.restore(double["workdir"] / "student").digest == one["student_digest"]
  assert first["student"] == second["student"] == os.fspath(double["workdir"] / "student")
  assert sorted(os.listdir(double["workdir"])) == sorted(os.listdir(single["workdir"]))


@pytest.mark.cluster
def test_distill_command_line_without_the_exact_step_agrees_to_rounding(distill_runs,
                                                                        dataset, student):
  """The default step (XLA's all-reduce over the job) on 2 processes: the same curve as
  the exact single-process run up to float32 rounding (the reduction order differs)."""
  tmp, single, _ = distill_runs
  flags = _distill_flags(dataset, student, tmp / "plain", exact=False)
  first, second = _finish_distill(_start_distill(tmp, "plain", flags, 2), tmp, "plain")
  assert first["student_digest"] == second["student_digest"]
  plain, exact = _metrics(tmp / "plain"), _metrics(single["workdir"])
  assert [row["step"] for row in plain] == [row["step"] for row in exact]
  for key in ("loss", "nll", "tokens", "grad_norm"):
    np.testing.assert_allclose([row[key] for row in plain], [row[key] for row in exact],
                               rtol=1e-5, err_msg=key)  # measured: <= 1.1e-7


@pytest.mark.cluster
def test_distill_command_line_resumes_exactly_after_one_process_dies(distill_runs, dataset,
                                                                     student):
  tmp, single, _ = distill_runs
  workdir = tmp / "crash"
  flags = _distill_flags(dataset, student, workdir)
  # Process 1 dies after step 3 (checkpoint at 2); process 0 then waits on it.
  procs = _start_distill(tmp, "crash", flags, 2, dying=(DISTILL_EVERY + 1, 1))
  try:
    assert procs[1].wait(timeout=RUN_TIMEOUT) == 3, (tmp / "crash.1.log").read_text()[-3000:]
  finally:
    _kill(procs)  # the survivor, stuck in a collective
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(DISTILL_EVERY)]
  assert not os.path.exists(workdir / "student")
  results = _finish_distill(_start_distill(tmp, "restart", flags, 2), tmp, "restart")
  assert [r["resumed_from"] for r in results] == [DISTILL_EVERY, DISTILL_EVERY]
  assert _metrics(workdir) == _metrics(single["workdir"])
  assert {r["student_digest"] for r in results} == {
      single["results"][0]["student_digest"]}


@pytest.mark.cluster
def test_distill_command_line_refuses_a_layout_it_cannot_run(tmp_path, dataset, student):
  # 5 rows over 2 processes: every process refuses before writing anything.
  flags = _distill_flags(dataset, student, tmp_path / "odd", batch_size=5)
  errors = _finish_distill(_start_distill(tmp_path, "odd", flags, 2), tmp_path, "odd",
                           expect=2)
  for error in errors:
    assert ("distill: error: a process count that does not divide the dataset/batch: "
            "batch_size 5 over 2 processes") in error
  assert not os.path.exists(tmp_path / "odd")


@pytest.mark.cluster
def test_distill_command_line_on_policy_on_two_processes(tmp_path, dataset, student,
                                                         teacher):
  """On-policy steps: each process completes its own rows (with the single process's
  seeds for them) and records them in its own log; the union is the single process's."""
  from rlds_lm import logs  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  results, episodes = [], []
  for name, processes, mesh in (("single", 1, 4), ("double", 2, 1)):
    flags = _distill_flags(dataset, student, tmp_path / name, mesh_data=mesh,
                           teacher=teacher, student_fraction=0.5, max_new_tokens=4,
                           generation_top_k=3, seed=2)  # seed 2: steps 1, 2 on-policy
    results.append(_finish_distill(_start_distill(tmp_path, name, flags, processes),
                                   tmp_path, name))
    logs_of = ([tmp_path / name / "generations"] if processes == 1 else
               [tmp_path / name / "generations" / f"process_{p}" for p in range(2)])
    found = {}
    for log_dir in logs_of:
      for e in logs.read_log(log_dir, logs.read_log_config(log_dir)):
        found[e[S.EPISODE_ID]] = (e[S.STEPS][0][S.ACTION][S.ACT_TOKENS].tolist(),
                                  e[S.STEPS][0][S.TEACHER][S.TEACHER_TOPK_IDS].tolist())
    episodes.append(found)
  single, double = _metrics(tmp_path / "single"), _metrics(tmp_path / "double")
  on_policy = [row["step"] for row in single if row["on_policy"] == 1.0]
  assert 0 < len(on_policy) < DISTILL_STEPS
  assert double == single
  assert episodes[1] == episodes[0] and episodes[0]
  assert {r["student_digest"] for r in results[1]} == {results[0][0]["student_digest"]}


@pytest.mark.parametrize("loss", ["topk_kd", "sampled_kd", "seqkd", "on_policy_jsd"])
def test_the_exact_steps_sums_over_the_tokens_are_the_plain_steps_means(dataset, loss):
  """``--exact_step`` trains on ``distill.summed_loss`` / tokens: the loss and NLL the
  plain step takes the mean of, whichever loss and on the on-policy rows too."""
  import jax  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import data as D  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  model = _child_model()
  pipeline = D.DataPipeline(
      {dataset: 1.0}, D.DataConfig(batch_size=4, max_length=16, seed=5), optional=(),
      vocab_size=model.vocab_size, require=(S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS,
                                            S.TEACHER_SAMPLED_IDS,
                                            S.TEACHER_SAMPLED_COUNTS))
  iterator = pipeline.iterator()
  batch = next(iterator)
  iterator.close()
  on_policy = loss == "on_policy_jsd"
  config = distill.DistillConfig(datasets={}, workdir="", teacher="t", beta=0.5,
                                 loss="jsd" if on_policy else loss)
  params, teacher = gemma.init_params(model, 1), gemma.init_params(model, 2)
  extra = {"teacher": teacher, "teacher_config": model}
  mean_fn = (distill.on_policy_loss if on_policy else distill.off_policy_loss)(config, model)
  mean, metrics = mean_fn(params, batch, extra)
  total, tokens, sums = distill.summed_loss(config, model, on_policy)(params, batch, extra)
  assert float(tokens) == float(metrics["tokens"]) > 0
  np.testing.assert_allclose(float(total) / float(tokens), float(mean), rtol=1e-6)
  np.testing.assert_allclose(float(sums["nll"]) / float(tokens), float(metrics["nll"]),
                             rtol=1e-6)
  assert float(mean) > 0 and jax.numpy.isfinite(total)


def test_the_exact_step_on_one_device_trains_like_the_plain_step(tmp_path, dataset):
  """``exact_step`` without a mesh (one process, one device) runs on a 1 x 1 mesh: the
  plain step's curve to float32 rounding."""
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  runs = {}
  for exact in (False, True):
    workdir = tmp_path / f"exact{exact}"
    result = distill.train(distill.DistillConfig(
        datasets={dataset: 1.0}, workdir=os.fspath(workdir), steps=3, batch_size=4,
        max_length=16, log_every=1, checkpoint_every=3, exact_step=exact,
        optim=common.OptimConfig(learning_rate=1e-2, warmup_steps=1)))
    runs[exact] = (_metrics(workdir), result["student_digest"])
  (plain, _), (exact, digest) = runs[False], runs[True]
  assert [row["step"] for row in exact] == [1, 2, 3] and "weight" not in exact[0]
  for key in ("loss", "nll", "tokens"):
    np.testing.assert_allclose([r[key] for r in exact], [r[key] for r in plain],
                               rtol=1e-5, err_msg=key)
  assert digest
  with pytest.raises(ValueError, match="exact_step needs mesh_model=1"):
    distill.DistillConfig(datasets={}, workdir="", exact_step=True, mesh_model=2)
