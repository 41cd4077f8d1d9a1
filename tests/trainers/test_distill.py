"""The distillation trainer: determinism, exact resume, mesh, NaN guard, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rlds_lm import publish as P
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.trainers import common
from rlds_lm.trainers import data as D
from rlds_lm.trainers import distill
from rlds_lm.trainers import losses as L

HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER_K = S.SchemaConfig(vocab_size=259, teacher_top_k=4, teacher_sampled_k=6)
NO_TEACHER = S.SchemaConfig(vocab_size=259)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill_data")
  with_teacher = P.publish(
      {"train": [T.fake_rollout(TEACHER_K, seed=i, action_len=5 + i % 4) for i in range(24)]},
      data_dir=root, name="with_teacher", config=TEACHER_K)
  without = P.publish(
      {"train": [T.fake_rollout(NO_TEACHER, seed=i, action_len=5) for i in range(8)]},
      data_dir=root, name="without_teacher", config=NO_TEACHER)
  return {"teacher": with_teacher, "plain": without}


def _config(data, workdir, **kwargs):
  base = dict(datasets={data["teacher"]: 1.0}, workdir=os.fspath(workdir), steps=12,
              batch_size=8, max_length=32, log_every=1, checkpoint_every=4, seed=3,
              optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=2))
  base.update(kwargs)
  return distill.DistillConfig(**base)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_loss_decreases_and_the_student_is_saved(datasets, tmp_path):
  result = distill.train(_config(datasets, tmp_path / "run", steps=30,
                                 checkpoint_every=30))
  losses = [m["loss"] for m in _metrics(tmp_path / "run")]
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
  restored = ckpt_lib.restore(result["student"])
  assert restored.digest == result["student_digest"]
  assert os.path.getsize(result["plot"]) > 1000


@pytest.mark.parametrize("loss", ["sampled_kd", "seqkd"])
def test_other_offline_losses_train(datasets, tmp_path, loss):
  distill.train(_config(datasets, tmp_path / loss, loss=loss, steps=4))
  assert all(np.isfinite(m["loss"]) for m in _metrics(tmp_path / loss))


def test_same_config_same_run_and_exact_resume(datasets, tmp_path):
  full = distill.train(_config(datasets, tmp_path / "full"))
  again = distill.train(_config(datasets, tmp_path / "again"))
  assert _metrics(tmp_path / "full") == _metrics(tmp_path / "again")
  assert full["student_digest"] == again["student_digest"]
  # Preempted after 7 steps (checkpoint at 7), then resumed to the end.
  stopped = distill.train(_config(datasets, tmp_path / "resumed"), stop_at=7)
  assert stopped["stopped_at"] == 7
  resumed = distill.train(_config(datasets, tmp_path / "resumed"))
  assert resumed["resumed_from"] == 7
  assert _metrics(tmp_path / "resumed") == _metrics(tmp_path / "full")
  assert resumed["student_digest"] == full["student_digest"]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(datasets, tmp_path,
                                                              monkeypatch):
  config = _config(datasets, tmp_path / "nan")
  distill.train(config, stop_at=8)
  monkeypatch.setattr(L, "topk_kd", lambda *a, **k: np.float32(np.nan) * a[0][..., 0])
  with pytest.raises(common.TrainingDivergedError, match="at step 8") as e:
    distill.train(config)
  assert e.value.records and all(d == 0 for d, _ in e.value.records)
  checkpoints = common.Checkpoints(tmp_path / "nan" / "checkpoints")
  assert checkpoints.latest_step() == 8
  checkpoints.close()
  monkeypatch.undo()
  assert distill.train(config)["resumed_from"] == 8  # the good checkpoint resumes


def test_refuses_data_without_the_fields_the_loss_needs(datasets, tmp_path):
  with pytest.raises(D.DataMismatchError, match="topk_ids"):
    distill.train(_config(datasets, tmp_path / "x", datasets={datasets["plain"]: 1.0}))
  with pytest.raises(ValueError, match="teacher checkpoint"):
    _config(datasets, tmp_path / "y", loss="jsd")


def test_on_policy_steps_record_their_generations(datasets, tmp_path):
  from pipelines import models  # pylint: disable=g-import-not-at-top
  from rlds_lm import logs  # pylint: disable=g-import-not-at-top
  teacher = os.fspath(tmp_path / "teacher")
  models.init_checkpoint(teacher, "tiny", seed=5)
  config = _config(datasets, tmp_path / "gkd", teacher=teacher, loss="jsd",
                   student_fraction=0.5, steps=6, max_new_tokens=8, generation_top_k=5)
  distill.train(config)
  rows = _metrics(tmp_path / "gkd")
  on_policy = [m["step"] for m in rows if m["on_policy"] == 1.0]
  assert 0 < len(on_policy) < 6
  log_dir = tmp_path / "gkd" / "generations"
  episodes = list(logs.read_log(log_dir, logs.read_log_config(log_dir)))
  assert len(episodes) == 8 * len(on_policy) - sum(  # empty completions are not recorded
      1 for e in episodes if len(e[S.STEPS][0][S.ACTION][S.ACT_TOKENS]) == 0)
  steps = {json.loads(e[S.LINEAGE])["step"] for e in episodes}
  assert steps == {s - 1 for s in on_policy}
  assert all(e[S.STEPS][0][S.TEACHER][S.TEACHER_TOPK_IDS].shape[1] == 5 for e in episodes)
  assert distill.DistillConfig(datasets={}, workdir="").generation_top_k == 8  # default


def test_on_policy_steps_without_recording_and_a_checkpoint_kept_at_a_threshold(
    datasets, tmp_path):
  from pipelines import models  # pylint: disable=g-import-not-at-top
  teacher = os.fspath(tmp_path / "teacher")
  models.init_checkpoint(teacher, "tiny", seed=5)
  calls = []

  def eval_fn(model, params):  # 0.1, 0.2, 0.3 at steps 2, 4, 6
    del model, params
    calls.append(1)
    return {"accuracy": len(calls) / 10}

  config = _config(datasets, tmp_path / "quiet", teacher=teacher, student_fraction=0.5,
                   steps=6, max_new_tokens=8, record_generations=False, eval_every=2,
                   keep_when="accuracy>=0.2")
  result = distill.train(config, eval_fn=eval_fn)
  assert any(m.get("on_policy") == 1.0 for m in _metrics(tmp_path / "quiet"))
  assert not os.path.exists(tmp_path / "quiet" / "generations")
  assert result["kept"]["step"] == 4 and result["kept"]["value"] == pytest.approx(0.2)
  assert ckpt_lib.restore(result["kept"]["checkpoint"]).digest == result["kept"]["digest"]
  assert result["kept"]["digest"] != result["student_digest"]  # two more steps trained
  assert result["eval"] == {"eval/accuracy": pytest.approx(0.3)} and len(calls) == 3
  with pytest.raises(ValueError, match="keep_when"):
    _config(datasets, tmp_path / "bad", keep_when="accuracy > high")


def test_stop_when_kept_ends_the_run_at_the_threshold(datasets, tmp_path):
  calls = []

  def eval_fn(model, params):  # 0.1, 0.2, ... at steps 2, 4, ...
    del model, params
    calls.append(1)
    return {"accuracy": len(calls) / 10}

  config = _config(datasets, tmp_path / "until", steps=10, eval_every=2,
                   keep_when="accuracy>=0.2", stop_when_kept=True)
  result = distill.train(config, eval_fn=eval_fn)
  steps = [m["step"] for m in _metrics(tmp_path / "until") if "step" in m]
  assert result["kept"]["step"] == 4 and max(steps) == 4  # steps 5 to 10 never ran
  assert result["kept"]["digest"] == result["student_digest"]
  with pytest.raises(ValueError, match="stop_when_kept needs keep_when"):
    _config(datasets, tmp_path / "bad", stop_when_kept=True)


def _tiny_model():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as model_config  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(model_config.get_config("tiny"), num_layers=2)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_loss_is_the_kl_at_the_endpoints_and_trains(beta):
  """beta = 0 / 1: the forward / reverse KL with a gradient (JSD(0) = JSD(1) = 0 would
  train nothing), on dataset completions and on-policy rows alike."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  model = _tiny_model()
  student, teacher = gemma.init_params(model, 0), gemma.init_params(model, 1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, model.vocab_size, (3, 12)).astype(np.int32)
  mask = np.zeros((3, 12), bool)
  mask[:, 5:] = True
  seg = np.ones((3, 12), np.int32)
  seg[2, 9:] = 0  # a padded row
  mask[2, 9:] = False
  batch = {"tokens": tokens, "loss_mask": mask, "segment_ids": seg}
  extra = {"teacher": teacher, "teacher_config": model}
  valid = seg > 0
  logq = np.asarray(common.sequence_logprobs(model, student, tokens, valid), np.float64)
  logp = np.asarray(common.sequence_logprobs(model, teacher, tokens, valid), np.float64)
  logq, logp = logq[:, :-1], logp[:, :-1]
  p, q = np.exp(logp), np.exp(logq)
  if beta == 0:
    per_token = np.sum(p * (logp - logq), -1)
  elif beta == 1:
    per_token = np.sum(q * (logq - logp), -1)
  else:
    m = 0.5 * p + 0.5 * q
    per_token = 0.5 * np.sum(p * np.log(p / m), -1) + 0.5 * np.sum(q * np.log(q / m), -1)
  m_ = mask[:, 1:]
  expected = (per_token * m_).sum() / m_.sum()
  config = distill.DistillConfig(datasets={}, workdir="", teacher="t", loss="jsd", beta=beta)
  for make in (distill.off_policy_loss, distill.on_policy_loss):
    (loss, _), grads = jax.value_and_grad(make(config, model), has_aux=True)(
        student, batch, extra)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-4)
    assert float(optax.tree.norm(grads)) > 1e-4


def test_same_loss_curve_on_one_and_four_devices(datasets, tmp_path):
  out = tmp_path / "mesh.json"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.join(HERE, "_mesh_child.py"),
                         datasets["teacher"], os.fspath(tmp_path), os.fspath(out)],
                        env=env, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  curves = json.loads(out.read_text())
  assert curves["devices"] == 4
  np.testing.assert_allclose(curves["mesh4"], curves["mesh1"], rtol=2e-4, atol=2e-5)


def test_command_line(datasets, tmp_path):
  base = [sys.executable, "-m", "rlds_lm.trainers.distill", "--dataset",
          f"{datasets['teacher']}=1.0", "--steps", "2", "--batch_size", "4",
          "--max_length", "32"]
  done = subprocess.run(base + ["--workdir", os.fspath(tmp_path / "cli")],
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout)["student"].endswith("student")
  done = subprocess.run(base + ["--workdir", os.fspath(tmp_path / "cli2"), "--max_length",
                                "4"], capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 2 and "no trained (completion) tokens" in done.stderr
