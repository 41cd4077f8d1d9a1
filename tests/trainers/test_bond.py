"""The J-BOND trainer: generations recorded, EMA anchor, determinism, exact resume, refusals.

No test asserts learning: the tiny random policy never answers an arithmetic problem.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from rlds_lm import logs
from rlds_lm import schema as S
from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.models import config as model_config
from rlds_lm.models import gemma
from rlds_lm.trainers import bond
from rlds_lm.trainers import common
from rlds_lm.trainers import data as D
from rlds_lm.trainers import losses as L

PROMPTS_PER_STEP = 8  # every tiny train prompt, every step: one sampling shape, one compile
STEPS = 3
ETA = 0.25


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  from builders.arithmetic import arithmetic_dataset_builder  # pylint: disable=g-import-not-at-top
  from pipelines import models  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("bond")
  builder = arithmetic_dataset_builder.Builder(config="tiny", data_dir=os.fspath(root / "data"))
  builder.download_and_prepare()
  policy = os.fspath(root / "policy")
  models.init_checkpoint(policy, "tiny", seed=0)
  return {"prompts": os.fspath(builder.data_dir), "policy": policy, "root": root}


def _config(assets, workdir, **kwargs):
  base = dict(prompts=assets["prompts"], workdir=os.fspath(workdir), policy=assets["policy"],
              steps=STEPS, prompts_per_step=PROMPTS_PER_STEP, max_new_tokens=6,
              anchor_ema=ETA, log_every=1, checkpoint_every=1, seed=3,
              optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=1))
  base.update(kwargs)
  return bond.BondConfig(**base)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _episodes(workdir):
  log_dir = os.path.join(workdir, "generations")
  return list(logs.read_log(log_dir, logs.read_log_config(log_dir)))


@pytest.fixture(scope="module")
def jbond_run(assets):
  """One full J-BOND run (checkpoints after every step), shared by the tests below."""
  workdir = assets["root"] / "jbond"
  return workdir, bond.train(_config(assets, workdir))


def test_jbond_steps_are_finite_and_record_every_generation(jbond_run):
  workdir, result = jbond_run
  rows = _metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  for row in rows:
    for key in ("loss", "reward", "anchor_reward", "kl", "jbond_reward", "grad_norm"):
      assert math.isfinite(row[key]), (key, row)
    assert -math.log(16) <= row["jbond_reward"] <= 0.0
  episodes = _episodes(workdir)
  assert len(episodes) == STEPS * PROMPTS_PER_STEP * 3  # 1 policy + 2 anchor samples
  names = [e[S.POLICY][S.POLICY_NAME] for e in episodes]
  for step in range(STEPS):
    assert names.count(f"policy@{step}") == PROMPTS_PER_STEP
    assert names.count(f"anchor@{step}") == 2 * PROMPTS_PER_STEP
  lineages = [json.loads(e[S.LINEAGE]) for e in episodes]
  assert {(x["trainer"], x["step"]) for x in lineages} == {("jbond", s) for s in range(STEPS)}
  assert all(set(e[S.STEPS][0][S.REWARDS]) == {"arithmetic"} for e in episodes)
  restored = ckpt_lib.restore(result["policy"])
  assert restored.digest == result["policy_digest"]
  assert os.path.getsize(result["plot"]) > 1000


def test_anchor_is_the_ema_of_the_policy(assets, jbond_run):
  workdir, _ = jbond_run
  init = ckpt_lib.restore(assets["policy"]).params
  config = _config(assets, workdir)
  optimizer = common.make_optimizer(dataclasses.replace(config.optim, total_steps=STEPS))
  opt_like = jax.jit(optimizer.init)(init)
  checkpoints = common.Checkpoints(workdir / "checkpoints")
  states = {}
  for step in (1, 2):
    _, state, _, data_state, _ = checkpoints.restore({"policy": init, "anchor": init},
                                                     opt_like, step=step)
    assert data_state == {"step": step}
    states[step] = jax.tree.map(np.asarray, state)
  checkpoints.close()
  leaf = lambda tree: jax.tree.leaves(tree)[0]  # the embedding table
  old_anchor, new_policy = leaf(states[1]["anchor"]), leaf(states[2]["policy"])
  assert not np.allclose(new_policy, old_anchor)  # the policy moved at step 2
  np.testing.assert_allclose(leaf(states[2]["anchor"]),
                             (1 - ETA) * old_anchor + ETA * new_policy, rtol=1e-6, atol=1e-7)
  # Step 1's learning rate is 0 (warm-up from 0): the anchor then still equals the init.
  np.testing.assert_allclose(leaf(states[1]["anchor"]), np.asarray(leaf(init)), atol=1e-7)


def test_same_config_same_run_and_exact_resume_with_the_anchor(assets, jbond_run, tmp_path):
  workdir, full = jbond_run
  again = bond.train(_config(assets, tmp_path / "again"))
  assert _metrics(tmp_path / "again") == _metrics(workdir)
  assert again["policy_digest"] == full["policy_digest"]
  stopped = bond.train(_config(assets, tmp_path / "resumed"), stop_at=2)
  assert stopped["stopped_at"] == 2
  resumed = bond.train(_config(assets, tmp_path / "resumed"))
  assert resumed["resumed_from"] == 2
  assert _metrics(tmp_path / "resumed") == _metrics(workdir)
  assert resumed["policy_digest"] == full["policy_digest"]
  assert len(_episodes(tmp_path / "resumed")) == STEPS * PROMPTS_PER_STEP * 3


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(assets, jbond_run, tmp_path,
                                                              monkeypatch):
  workdir, _ = jbond_run
  shutil.copytree(workdir, tmp_path / "nan")
  config = _config(assets, tmp_path / "nan", steps=STEPS + 1)  # resumes at step STEPS
  monkeypatch.setattr(L, "jeffreys_bond_loss", lambda *a, **k: L.BondLoss(
      np.float32(np.nan) * a[0][0], a[0][0], a[0][0], a[0]))
  bond.compiled_step.cache_clear()  # the patched loss must be traced, and then forgotten
  try:
    with pytest.raises(common.TrainingDivergedError, match=f"at step {STEPS}") as e:
      bond.train(config)
  finally:
    bond.compiled_step.cache_clear()
  assert [i for _, i in e.value.records] == list(range(PROMPTS_PER_STEP))
  checkpoints = common.Checkpoints(tmp_path / "nan" / "checkpoints")
  assert checkpoints.latest_step() == STEPS
  checkpoints.close()


def _plug_in_digits_reward(monkeypatch) -> None:
  """Registers reward "digits" (share of digits in the completion) for one test."""
  def digits(record, completions):
    del record
    return [sum(c.isdigit() for c in text) / max(1, len(text)) for text in completions]

  monkeypatch.setitem(bond.REWARDS, "digits", bond.Reward(
      fields=("question",), prompt=bond.REWARDS["arithmetic"].prompt, score=digits,
      task="arithmetic"))


def test_reinforce_steps_with_a_plugged_in_reward(assets, tmp_path, monkeypatch):
  # A dense scorer (share of digits in the completion), through the REWARDS hook.
  _plug_in_digits_reward(monkeypatch)
  config = _config(assets, tmp_path / "reinforce", algorithm="reinforce", reward="digits")
  assert config.kl_weight == bond.DEFAULT_KL_COEF["reinforce"] > 0
  bond.train(config)
  rows = _metrics(tmp_path / "reinforce")
  assert len(rows) == STEPS
  assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "reward", "kl", "grad_norm"))
  assert "anchor_reward" not in rows[0]
  episodes = _episodes(tmp_path / "reinforce")
  assert len(episodes) == STEPS * PROMPTS_PER_STEP  # one policy sample per prompt
  assert {e[S.POLICY][S.POLICY_NAME].split("@")[0] for e in episodes} == {"policy"}


def test_mc_quantiles_are_the_rank_among_the_reference_samples():
  reference = np.asarray([[0.1, 0.5, 0.9], [2.0, 2.0, 3.0]], np.float32)
  np.testing.assert_allclose(bond.mc_quantiles(np.asarray([0.5, 1.0]), reference),
                             [3 / 4, 1 / 4])  # ties count as <=; never 0
  # A policy sample from the reference's own continuous law has a uniform rank.
  rng = np.random.default_rng(0)
  k = 7
  q = bond.mc_quantiles(rng.normal(size=20000), rng.normal(size=(20000, k)))
  counts = np.bincount(np.rint(q * (k + 1)).astype(int), minlength=k + 2)[1:]
  np.testing.assert_allclose(counts / len(q), 1 / (k + 1), atol=0.01)


def test_baseline_correction_centres_the_backward_rewards():
  rewards = np.asarray([-2.0, 0.0, -1.0, -5.0], np.float32)
  logp = np.asarray([-3.0, -1.0, -2.0, -4.0], np.float32)

  def surrogate(lp, with_baseline):  # jeffreys_bond_loss's backward surrogate
    out = -jax.numpy.mean(rewards * lp)
    return out + bond.baseline_correction(rewards, lp) if with_baseline else out

  grad = jax.grad(surrogate)(logp, True)
  np.testing.assert_allclose(grad, -(rewards - rewards.mean()) / 4, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(surrogate)(logp, False), -rewards / 4, rtol=1e-6)
  # Equal rewards: no gradient at all with the baseline.
  same = np.full(4, -1.5, np.float32)
  np.testing.assert_allclose(
      jax.grad(lambda lp: -jax.numpy.mean(same * lp) + bond.baseline_correction(same, lp))(
          logp), 0.0, atol=1e-7)


def test_best_of_takes_the_best_of_each_run_of_n():
  groups = [bond.rollouts.Group(0, np.asarray([1]), list("abcdef"), list(range(6)))]
  rewards = np.asarray([[0.0, 3.0, 1.0, 5.0, 4.0, 4.0]])
  (best,) = bond.best_of(groups, rewards, n=3)
  assert best.completions == ["b", "d"] and best.seeds == [1, 3]
  (best,) = bond.best_of(groups, rewards)
  assert best.completions == ["d"]
  (best,) = bond.best_of(groups, np.asarray([[0.0, 0.0, 1.0, 1.0, 2.0, 2.0]]), n=2)
  assert best.completions == ["a", "c", "e"]  # the first on ties


def test_bond_draws_reference_samples_for_quantiles_and_best_of_n(assets, tmp_path,
                                                                  monkeypatch):
  # Non-iterative BOND: the anchor is the initial policy; k reference samples a prompt.
  _plug_in_digits_reward(monkeypatch)
  config = _config(assets, tmp_path / "bond", algorithm="bond", reward="digits", bond_n=2,
                   quantile_samples=4, steps=2, baseline=True)
  assert config.kl_weight == 0.0
  bond.train(config)
  rows = _metrics(tmp_path / "bond")
  assert [r["step"] for r in rows] == [1, 2]
  for row in rows:
    for key in ("loss", "reward", "reference_reward", "kl", "log_quantile", "grad_norm",
                "forward_nll", "backward_surrogate"):
      assert math.isfinite(row[key]), (key, row)
    assert math.log(1 / 5) <= row["log_quantile"] <= 0.0
  names = [e[S.POLICY][S.POLICY_NAME] for e in _episodes(tmp_path / "bond")]
  for step in range(2):
    assert names.count(f"policy@{step}") == PROMPTS_PER_STEP
    assert names.count(f"reference@{step}") == 4 * PROMPTS_PER_STEP
  with pytest.raises(ValueError, match="positive multiple of bond_n"):
    _config(assets, tmp_path, algorithm="bond", bond_n=3, quantile_samples=4)


def test_refuses_prompts_without_the_reward_fields(assets, tmp_path, monkeypatch):
  monkeypatch.setitem(bond.REWARDS, "grounded", bond.Reward(
      fields=("document", "facts"), prompt=lambda r: r["document"], score=lambda r, c: 0.0))
  with pytest.raises(D.DataMismatchError, match=r"\['document', 'facts'\].*'grounded'"):
    bond.train(_config(assets, tmp_path / "x", reward="grounded"))


def test_refuses_a_policy_of_another_vocabulary(assets, tmp_path):
  model = dataclasses.replace(model_config.get_config("tiny"), vocab_size=300)
  policy = os.fspath(tmp_path / "wide")
  ckpt_lib.save(policy, model, gemma.init_params(model, 0))
  with pytest.raises(D.DataMismatchError, match="300.*259"):
    bond.train(_config(assets, tmp_path / "y", policy=policy))


def test_config_refusals(assets, tmp_path):
  with pytest.raises(ValueError, match="algorithm"):
    _config(assets, tmp_path, algorithm="ppo")
  with pytest.raises(ValueError, match="reward must be one of"):
    _config(assets, tmp_path, reward="unknown")
  with pytest.raises(ValueError, match="beta"):
    _config(assets, tmp_path, beta=1.5)
  with pytest.raises(ValueError, match="exceeds the 8 prompts"):
    bond.train(_config(assets, tmp_path / "z", prompts_per_step=9))
