"""The RLEF trainer: recorded generations, determinism, exact resume, KL, refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlds_lm import logs
from rlds_lm import schema as S
from rlds_lm import tokenizers
from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.models import config as model_config
from rlds_lm.models import gemma
from rlds_lm.tasks import summarization as world
from rlds_lm.trainers import common
from rlds_lm.trainers import data as D
from rlds_lm.trainers import losses as L
from rlds_lm.trainers import rlef
from rlds_lm.trainers import rollouts

STEPS, PROMPTS_PER_STEP, N = 3, 2, 2
LENGTH_PENALTY = 0.01


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """The tiny grounded_summarization and arithmetic datasets, a tiny policy, an NLI model."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from builders.arithmetic import arithmetic_dataset_builder  # pylint: disable=g-import-not-at-top
  from builders.grounded_summarization import grounded_summarization_dataset_builder  # pylint: disable=g-import-not-at-top
  from pipelines import models  # pylint: disable=g-import-not-at-top
  from rlds_lm.tasks import nli  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("rlef_assets")
  paths = {"policy": os.fspath(root / "policy"), "nli": os.fspath(root / "nli")}
  for name, builder_cls in (("summaries", grounded_summarization_dataset_builder.Builder),
                            ("arithmetic", arithmetic_dataset_builder.Builder)):
    builder = builder_cls(config="tiny", data_dir=os.fspath(root / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    paths[name] = os.fspath(builder.data_dir)
  models.init_checkpoint(paths["policy"], "tiny", seed=0)
  weights, bias, report = nli.train(count=300, seed=0, steps=100)
  nli.NliClassifier(weights, bias, report).save(paths["nli"])
  return paths


def _config(assets, workdir, **kwargs):
  # reward="nli" (the learned scores vary, so the policy-gradient term is not zero) and
  # k3 (>= 0 per token, so "KL positive later" is not at the mercy of k1's sign).
  base = dict(prompts=assets["summaries"], workdir=os.fspath(workdir),
              policy=assets["policy"], reward="nli", nli_model=assets["nli"],
              kl_kind="k3", kl_coef=0.1, steps=STEPS, prompts_per_step=PROMPTS_PER_STEP,
              samples_per_prompt=N, max_new_tokens=12, length_penalty=LENGTH_PENALTY,
              seed=3, checkpoint_every=2,
              optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=1))
  base.update(kwargs)
  return rlef.RlefConfig(**base)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
  """One full run, shared by the tests that only read what it wrote."""
  workdir = tmp_path_factory.mktemp("rlef_run") / "full"
  return workdir, rlef.train(_config(assets, workdir))


def test_a_run_logs_finite_metrics_and_saves_the_policy(run, assets):
  workdir, result = run
  rows = _metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  for row in rows:
    for key in ("loss", "pg_loss", "kl", "reward", "oracle", "nli", "length", "grad_norm"):
      assert np.isfinite(row[key]), (key, row)
    assert 1 <= row["length"] <= 12
    assert row["reward"] == pytest.approx(row["nli"] - LENGTH_PENALTY * row["length"],
                                          abs=1e-6)
  restored = ckpt_lib.restore(result["policy"])
  assert restored.digest == result["policy_digest"]
  assert restored.digest != ckpt_lib.read_digest(assets["policy"])  # it trained
  assert os.path.getsize(result["plot"]) > 1000
  assert result["prompts"] == {"kept": 6, "dropped": 0}


def test_kl_is_zero_at_the_reference_and_positive_after_it_moved(run):
  rows = _metrics(run[0])
  # Step 0 samples from the reference itself (and warm-up keeps step 0's learning rate
  # at 0, so step 1 does too): only float rounding between the two forward passes.
  assert abs(rows[0]["kl"]) < 1e-6 and abs(rows[1]["kl"]) < 1e-6
  assert rows[-1]["kl"] > 1e-4
  for row in rows:  # loss = pg_loss + kl_coef * (mean per-token KL)
    assert row["loss"] == pytest.approx(row["pg_loss"] + 0.1 * row["kl"], abs=1e-5)


def test_every_generation_is_recorded_with_its_rewards(run, assets):
  log_dir = os.path.join(run[0], "generations")
  episodes = list(logs.read_log(log_dir, logs.read_log_config(log_dir)))
  assert len(episodes) == STEPS * PROMPTS_PER_STEP * N
  facts = {r["prompt_id"]: r["facts"] for r in rollouts.load_prompt_records(
      assets["summaries"])}
  tokenizer = tokenizers.ByteTokenizer()
  per_step = {}
  for episode in episodes:
    turn = episode[S.STEPS][0]
    text = turn[S.ACTION][S.ACT_TEXT]
    assert text == tokenizer.decode(turn[S.ACTION][S.ACT_TOKENS])
    rewards = turn[S.REWARDS]
    assert set(rewards) == {"total", "oracle", "nli"}
    assert rewards["oracle"] == pytest.approx(
        world.entailment(facts[episode[S.PROMPT_ID]], text)["score"])
    length = len(turn[S.ACTION][S.ACT_TOKENS])
    assert rewards["total"] == pytest.approx(rewards["nli"] - LENGTH_PENALTY * length)
    assert turn[S.REWARD] == pytest.approx(rewards["total"])
    step = json.loads(episode[S.LINEAGE])["step"]
    per_step.setdefault(step, []).append(rewards["nli"])
  assert sorted(per_step) == list(range(STEPS))
  rows = _metrics(run[0])  # the logged means are those of the recorded rewards
  for step, values in per_step.items():
    assert rows[step]["nli"] == pytest.approx(np.mean(values), abs=1e-6)


def test_same_config_same_run_and_exact_resume(run, assets, tmp_path):
  # A second run of the same config, preempted after 2 steps (checkpoint at 2): its
  # metrics so far must equal the first run's; resumed to the end, so must the rest.
  full, result = run
  config = _config(assets, tmp_path / "again", checkpoint_every=10)
  stopped = rlef.train(config, stop_at=2)
  assert stopped["stopped_at"] == 2 and "policy" not in stopped
  assert _metrics(tmp_path / "again") == _metrics(full)[:2]
  resumed = rlef.train(config)
  assert resumed["resumed_from"] == 2
  assert _metrics(tmp_path / "again") == _metrics(full)
  assert resumed["policy_digest"] == result["policy_digest"]
  log_dir = tmp_path / "again" / "generations"
  assert sum(1 for _ in logs.read_log(log_dir)) == STEPS * PROMPTS_PER_STEP * N
  # A workdir of another prompt stream is not resumed.
  with pytest.raises(D.StateMismatchError, match="another run"):
    rlef.train(dataclasses.replace(config, seed=4))


def test_refusals(assets, tmp_path):
  with pytest.raises(ValueError, match="needs an NLI model"):
    _config(assets, tmp_path / "x", nli_model="")
  with pytest.raises(ValueError, match=">= 2"):
    _config(assets, tmp_path / "x", samples_per_prompt=1)
  with pytest.raises(D.DataMismatchError, match=r"lacks the fields \['document', 'facts'\]"):
    rlef.train(_config(assets, tmp_path / "x", reward="oracle", prompts=assets["arithmetic"]))
  with pytest.raises(D.DataMismatchError, match=r"lacks the fields \['document'\]"):
    rlef.train(_config(assets, tmp_path / "x", prompts=assets["arithmetic"]))
  other = dataclasses.replace(model_config.get_config("tiny"), vocab_size=300)
  ckpt_lib.save(tmp_path / "wide", other, gemma.init_params(other, 0))
  with pytest.raises(D.DataMismatchError, match="vocabulary of 300 ids.*259"):
    rlef.train(_config(assets, tmp_path / "x", policy=os.fspath(tmp_path / "wide")))
  with pytest.raises(D.DataMismatchError, match="too long"):
    rlef.train(_config(assets, tmp_path / "x", max_new_tokens=400))
  assert not os.path.exists(tmp_path / "x" / "checkpoints")  # refused before anything


def test_oracle_reward_run_and_non_finite_loss(assets, tmp_path, monkeypatch):
  # reward="oracle" without an NLI model; the update of step 0 is made NaN.
  monkeypatch.setattr(L, "policy_gradient_loss", lambda logp, *a, **k: jnp.nan * logp[0, 0])
  config = _config(assets, tmp_path / "nan", reward="oracle", nli_model="", steps=1)
  with pytest.raises(common.TrainingDivergedError, match="non-finite.*at step 0") as e:
    rlef.train(config)
  assert len(e.value.records) == PROMPTS_PER_STEP * N
  assert all(d == 0 and 0 <= i < 6 for d, i in e.value.records)
  checkpoints = common.Checkpoints(tmp_path / "nan" / "checkpoints")
  assert checkpoints.latest_step() is None  # nothing of the bad step was saved
  checkpoints.close()
  # Its generations were recorded (before the update), scored by the oracle alone.
  log_dir = tmp_path / "nan" / "generations"
  episodes = list(logs.read_log(log_dir))
  assert len(episodes) == PROMPTS_PER_STEP * N
  for episode in episodes:
    turn = episode[S.STEPS][0]
    assert set(turn[S.REWARDS]) == {"total", "oracle"}
    length = len(turn[S.ACTION][S.ACT_TOKENS])
    assert turn[S.REWARDS]["total"] == pytest.approx(
        turn[S.REWARDS]["oracle"] - LENGTH_PENALTY * length)


# --------------------------------------------------------------------------------------
# The pieces.
# --------------------------------------------------------------------------------------


def test_prompt_order_is_a_per_epoch_permutation():
  first = [rlef.prompt_order(7, step, 3, 6) for step in range(4)]  # 2 epochs
  assert first == [rlef.prompt_order(7, step, 3, 6) for step in range(4)]
  assert [p for positions, _ in first for p in positions] == list(range(12))
  indices = [i for _, idx in first for i in idx]
  assert sorted(indices[:6]) == sorted(indices[6:]) == list(range(6))
  assert indices[:6] != indices[6:]  # a fresh permutation per epoch (for this seed)
  assert rlef.prompt_order(8, 0, 6, 6)[1] != indices[:6]


def test_leave_one_out_advantages():
  rewards = np.asarray([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
  advantages = rlef.leave_one_out_advantages(rewards)
  np.testing.assert_allclose(advantages[0], [1.0, -1 / 3, -1 / 3, -1 / 3], rtol=1e-6)
  np.testing.assert_array_equal(advantages[1], 0.0)
  # n / (n - 1) times the group-mean advantage.
  np.testing.assert_allclose(advantages, 4 / 3 * (rewards - rewards.mean(1, keepdims=True)),
                             rtol=1e-6, atol=1e-7)


def test_scores_of_summaries(assets):
  from rlds_lm.tasks import nli  # pylint: disable=g-import-not-at-top
  record = rollouts.load_prompt_records(assets["summaries"], limit=1)[0]
  true = record["reference_summaries"][0]
  true = true.decode() if isinstance(true, bytes) else true  # (lists stay bytes today)
  texts = [true, "Blorp zzkk qua.", "", true + " Nobody Known founded Acme Robotics."]
  oracle = rlef.oracle_scores([record["facts"]] * 4, texts)
  np.testing.assert_allclose(oracle[:3], [1.0, 0.0, 0.0])
  assert 0.0 < oracle[3] < 1.0
  classifier = nli.NliClassifier.load(assets["nli"])
  scores = rlef.nli_scores(classifier, [record["document"]] * 4, texts)
  sentences = world.sentences(true)
  expected = classifier.predict([record["document"]] * len(sentences), sentences).mean()
  assert scores[0] == pytest.approx(expected, rel=1e-6)
  assert scores[2] == 0.0  # no sentence
  assert scores[0] > scores[1]


def test_the_trainer_path_imports_neither_tensorflow_nor_beam(assets):
  code = ("import sys\nfrom rlds_lm.trainers import rlef\n"
          f"rlef.load_prompts(rlef.RlefConfig(prompts={assets['summaries']!r}, workdir='',"
          " policy=''), 512)\n"
          "assert 'tensorflow' not in sys.modules and 'apache_beam' not in sys.modules, "
          "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'apache_beam'))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]


def test_prompt_format_is_the_pipelines_one(assets):
  from rlds_lm import tasks  # pylint: disable=g-import-not-at-top
  record = rollouts.load_prompt_records(assets["summaries"], limit=1)[0]
  assert rlef.PROMPT_FORMAT.format(document=record["document"]) == tasks.prompt_text(
      tasks.SUMMARIZATION, record)


def test_kl_term_has_no_gradient_at_the_reference_and_the_right_value():
  # Two layers of the tiny model: the loss, not the model, is under test.
  model = dataclasses.replace(model_config.get_config("tiny"), num_layers=2)
  params = gemma.init_params(model, 0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, model.vocab_size, (4, 16)).astype(np.int32)
  mask = np.zeros((4, 16), bool)
  mask[:, 6:] = True
  batch = {"tokens": tokens, "segment_ids": np.ones((4, 16), np.int32), "loss_mask": mask,
           "behaviour_logprobs": np.zeros((4, 16), np.float32),
           "returns": np.zeros(4, np.float32), "baselines": np.zeros(4, np.float32),
           "stale": np.zeros(4, bool)}
  config = rlef.RlefConfig(prompts="", workdir="", policy="", kl_coef=1.0)
  loss_fn = jax.jit(jax.value_and_grad(rlef.rlef_loss(config, model), has_aux=True))
  (loss, aux), grads = loss_fn(params, batch, {"reference": params})
  # At pi == ref every per-token estimate is 0, so is the gradient.
  assert abs(float(loss)) < 1e-6 and abs(float(aux["kl"])) < 1e-6
  assert float(optax.tree.norm(grads)) < 1e-5

  def naive(p):  # the k1 estimate differentiated as a loss: pushes along grad log pi
    valid = np.ones((4, 16), bool)
    logp = common.gather_tokens(
        common.sequence_logprobs(model, p, tokens, valid)[:, :-1], tokens[:, 1:])
    ref = jax.lax.stop_gradient(logp)
    return L.masked_mean(L.kl_penalty(logp, ref, mask[:, 1:], "k1"), mask[:, 1:])

  assert float(optax.tree.norm(jax.jit(jax.grad(naive))(params))) > 1e-2
  other = gemma.init_params(model, 1)
  (loss, aux), grads = loss_fn(params, batch, {"reference": other})
  assert abs(float(aux["kl"])) > 0.01  # (k1 on tokens not drawn from pi: either sign)
  assert float(loss) == pytest.approx(float(aux["kl"]), rel=1e-5)  # pg_loss is 0
  assert float(optax.tree.norm(grads)) > 1e-3


def test_vtrace_advantages_on_and_off_policy():
  rng = np.random.default_rng(0)
  b, t = 3, 7
  mask = np.zeros((b, t), bool)
  mask[0, 2:6] = mask[1, 1:7] = mask[2, 4:5] = True
  target = -rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)
  returns = rng.normal(size=b).astype(np.float32)
  baselines = rng.normal(size=b).astype(np.float32)
  # On-policy every completion token's advantage is R - b.
  on = np.asarray(rlef.vtrace_advantages(jnp.asarray(target), jnp.asarray(target),
                                         jnp.asarray(mask), returns, baselines))
  np.testing.assert_allclose(on, np.where(mask, (returns - baselines)[:, None], 0.0),
                             rtol=1e-6, atol=1e-6)
  # Stale: rho_t * prod_{t<i<T} c_i * rho_T * (R - b), ratios clipped at 1 (clip_rho=1).
  behaviour = np.where(mask, target + rng.normal(0, 0.5, (b, t)), 0).astype(np.float32)
  off = np.asarray(rlef.vtrace_advantages(jnp.asarray(behaviour), jnp.asarray(target),
                                          jnp.asarray(mask), returns, baselines))
  expected = np.zeros((b, t))
  for row in range(b):
    cols = np.flatnonzero(mask[row])
    ratio = np.minimum(1.0, np.exp(target[row, cols] - behaviour[row, cols]))
    for k, col in enumerate(cols):
      factor = ratio[k] * np.prod(ratio[k + 1:-1]) * (ratio[-1] if k < len(cols) - 1 else 1)
      expected[row, col] = factor * (returns[row] - baselines[row])
  np.testing.assert_allclose(off, expected, rtol=1e-5, atol=1e-6)
  # rho-bar = 2 clips rho at 2, c stays clipped at 1.
  off = np.asarray(rlef.vtrace_advantages(jnp.asarray(behaviour), jnp.asarray(target),
                                          jnp.asarray(mask), returns, baselines, 2.0))
  for row in range(b):
    cols = np.flatnonzero(mask[row])
    ratio = np.exp(target[row, cols] - behaviour[row, cols])
    rho, c = np.minimum(2.0, ratio), np.minimum(1.0, ratio)
    for k, col in enumerate(cols):
      factor = rho[k] * np.prod(c[k + 1:-1]) * (rho[-1] if k < len(cols) - 1 else 1)
      expected[row, col] = factor * (returns[row] - baselines[row])
  np.testing.assert_allclose(off, expected, rtol=1e-5, atol=1e-6)
  assert np.abs(off - np.asarray(rlef.vtrace_advantages(
      jnp.asarray(behaviour), jnp.asarray(target), jnp.asarray(mask), returns,
      baselines))).max() > 1e-3  # the ratios do exceed 1 somewhere


def test_stale_rollouts_with_a_value_head_are_corrected_recorded_and_resume_exactly(
    assets, tmp_path):
  # The sampler syncs every 3 steps: steps 1 and 2 sample with step 0's parameters.
  # (Warm-up makes update 0 a no-op, so only step 2's learner has moved away from them.)
  # The critic is the value head, trained and checkpointed with the policy.
  config = _config(assets, tmp_path / "stale", sync_every=3, checkpoint_every=10,
                   critic="value_head")
  full = rlef.train(dataclasses.replace(config, workdir=os.fspath(tmp_path / "full")))
  rows = _metrics(tmp_path / "full")
  assert [r["policy_lag"] for r in rows] == [0, 1, 2]
  assert all(np.isfinite(r["value_loss"]) for r in rows)
  assert rows[0]["value"] == 0.0 and rows[-1]["value"] != 0.0  # the head trained
  exported = ckpt_lib.restore(full["policy"])  # the plain policy, without the head
  assert exported.config == ckpt_lib.restore(assets["policy"]).config
  assert abs(rows[0]["ratio"] - 1) < 1e-4 and abs(rows[2]["ratio"] - 1) > 1e-3
  episodes = list(logs.read_log(tmp_path / "full" / "generations"))
  steps = sorted({(json.loads(e[S.LINEAGE])["step"], json.loads(e[S.LINEAGE])["policy_step"])
                  for e in episodes})
  assert steps == [(0, 0), (1, 0), (2, 0)]
  # Stopped at step 2 (between two syncs) and resumed: the same samples and updates.
  assert rlef.train(config, stop_at=2)["stopped_at"] == 2
  resumed = rlef.train(config)
  assert resumed["resumed_from"] == 2
  assert _metrics(tmp_path / "stale") == rows
  assert resumed["policy_digest"] == full["policy_digest"]
  # Without the correction the stale step's update differs; on-policy steps do not.
  rlef.train(dataclasses.replace(config, workdir=os.fspath(tmp_path / "none"),
                                 off_policy="none"))
  uncorrected = _metrics(tmp_path / "none")
  assert uncorrected[0]["pg_loss"] == pytest.approx(rows[0]["pg_loss"], abs=1e-5)
  assert uncorrected[2]["pg_loss"] != pytest.approx(rows[2]["pg_loss"], abs=1e-5)


def test_the_value_head_regresses_the_returns_and_leaves_the_trunk_alone():
  model = dataclasses.replace(model_config.get_config("tiny"), num_layers=2)
  policy = gemma.init_params(model, 0)
  rng = np.random.default_rng(0)
  b, length = 6, 12
  tokens = rng.integers(3, model.vocab_size, (b, length)).astype(np.int32)
  mask = np.zeros((b, length), bool)
  mask[:, 5:] = True
  returns = rng.normal(size=b).astype(np.float32)
  batch = {"tokens": tokens, "segment_ids": np.ones((b, length), np.int32),
           "loss_mask": mask, "behaviour_logprobs": np.zeros((b, length), np.float32),
           "returns": returns, "baselines": np.zeros(b, np.float32),
           "stale": np.zeros(b, bool)}
  config = rlef.RlefConfig(prompts="", workdir="", policy="", kl_coef=0.0,
                           critic="value_head", value_coef=1.0)
  loss_fn = rlef.rlef_loss(config, model)
  # The least-squares fit of the returns on the hidden states of the action positions
  # (the state before each completion token), computed here with NumPy.
  hidden, _ = common.sequence_hidden_and_logprobs(model, policy, jnp.asarray(tokens),
                                                  jnp.ones((b, length), bool))
  features = np.asarray(hidden)[:, :-1][mask[:, 1:]].astype(np.float64)
  targets = np.repeat(returns, mask[:, 1:].sum(1)).astype(np.float64)
  design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
  solution = np.linalg.lstsq(design, targets, rcond=None)[0]
  head = {"w": jnp.asarray(solution[:-1], jnp.float32),
          "b": jnp.asarray(solution[-1], jnp.float32)}

  def value_grad(head):
    return jax.grad(lambda h: loss_fn({"policy": policy, "value": h}, batch,
                                      {"reference": policy})[0])(head)

  # The value loss's gradient vanishes at the least-squares head (and only there: not at
  # the zero head), so V regresses the returns.
  at_fit = value_grad(head)
  at_zero = value_grad(rlef.value_head_init(model))
  assert float(optax.tree.norm(at_fit)) < 1e-3 * float(optax.tree.norm(at_zero))
  # The value loss does not reach the trunk: its gradient is the same with and without
  # it; and a zero head gives the policy gradient of zero baselines.
  def trunk_grad(head, value_coef):
    fn = rlef.rlef_loss(dataclasses.replace(config, value_coef=value_coef), model)
    return jax.grad(lambda p: fn({"policy": p, "value": head}, batch,
                                 {"reference": policy})[0])(policy)

  def distance(x, y):
    return float(optax.tree.norm(jax.tree.map(lambda a, b: a - b, x, y)))

  assert distance(trunk_grad(head, 1.0), trunk_grad(head, 0.0)) < 1e-6
  pg_only = rlef.RlefConfig(prompts="", workdir="", policy="", kl_coef=0.0)
  baseline_grad = jax.grad(lambda p: rlef.rlef_loss(pg_only, model)(
      p, batch, {"reference": policy})[0])(policy)
  assert distance(trunk_grad(rlef.value_head_init(model), 1.0), baseline_grad) < 1e-6
