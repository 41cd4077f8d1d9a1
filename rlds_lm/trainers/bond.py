"""J-BOND trainer: Best-of-N distillation against a reward scorer, and a REINFORCE baseline.

J-BOND (Sessa et al. 2024, "BOND: Aligning LLMs with Best-of-N Distillation", Sec. 5)
moves the policy towards Best-of-2 sampling from a slowly moving *anchor*, a copy of
the policy whose parameters are an exponential moving average (EMA) of the policy's.
Each step minimises the Jeffreys divergence of :func:`losses.jeffreys_bond_loss`::

    J_beta = (1 - beta) KL(pi || BoN2(anchor)) + beta KL(BoN2(anchor) || pi)

``beta`` weights the *forward* KL (BoN || pi, mode covering): the negative log-likelihood
of the better of two anchor samples. ``1 - beta`` weights the *backward* KL (pi || BoN,
mode seeking): a policy gradient on the policy's own sample with the reward
``r_J-BOND(y) - (log pi(y) - log anchor(y))``, where ``r_J-BOND`` is
:func:`losses.jbond_reward` (``-log 16`` when the sample is worse than both anchor
samples, else 0). The log-ratio to the anchor is the only pull back: J-BOND needs no KL
to the initial policy, as the anchor trails the policy (``kl_coef`` adds one if wanted).

**Ties.** A 0/1 reward (the arithmetic checker) ties most of the time. Ties are
handled as :func:`losses.jbond_reward` defines them: a sample *equal* to the worse anchor
sample is not a loss (reward 0; only strictly worse than both gets ``-log 16``), and the
Best-of-2 anchor sample is the first one when the two tie (BOND's convention, see
:func:`losses.bon_log_prob_weights`). So while every sample scores 0 the reward carries
no signal: the backward term is only the anchor regulariser and the forward term the NLL
of the first anchor sample, which together just pull the policy towards the anchor.

``algorithm="bond"`` is BOND itself, not iterated (Sec. 4): the anchor is the initial
policy and never moves, and the target is Best-of-``bond_n`` of it. Each step draws
``quantile_samples`` (k) completions of each prompt from the reference; the policy
sample's quantile is estimated by Monte Carlo as its rank among them and itself,
``p_<=(y) = (1 + #{j: r(y'_j) <= r(y)}) / (k + 1)`` (never 0, so its log is finite), and
the forward term's Best-of-``bond_n`` samples are the best of each of the ``k / bond_n``
disjoint runs of ``bond_n`` reference samples. The backward reward is
``(bond_n - 1) log p_<=(y) - (log pi(y) - log ref(y))``. It needs a reward without ties
(``toy_number_distance``, say): with ties the quantiles, and BoN's KL, are off.

``algorithm="reinforce"`` is the comparison point: one sample per prompt, advantage =
reward - ``kl_coef`` * (log pi - log pi_ref) minus its mean over the step's prompts (a
baseline, so ``prompts_per_step`` must exceed 1 for any gradient), no anchor.

Every generation (policy and anchor samples, with its reward and which policy drew it:
``policy@<step>`` or ``anchor@<step>``) is recorded as a rollout episode in
``workdir/generations`` (:class:`rollouts.GenerationLog`). Prompts and sampling seeds
are functions of (seed, step), so a resumed run makes the same draws.

Scorers plug in through the reward registry of :mod:`rlds_lm.tasks` (:data:`REWARDS`): a
:class:`Reward` names the record fields it reads, the prompt text of a record, and
``score(prompt_record, completion_texts) -> float32 [n]``; ``BondConfig.reward`` selects
one by name (so ``config.json`` names the run).

Example (CPU, tiny model, 8 prompts x 3 samples a step: ~10 s to compile, then
about a second a step)::

    from builders.arithmetic import arithmetic_dataset_builder
    from pipelines import models
    from rlds_lm.trainers import bond
    builder = arithmetic_dataset_builder.Builder(config="tiny", data_dir="data")
    builder.download_and_prepare()
    models.init_checkpoint("runs/tiny_policy", "tiny", seed=0)
    bond.train(bond.BondConfig(prompts=str(builder.data_dir), workdir="runs/jbond",
                               policy="runs/tiny_policy", steps=50))
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlds_lm import schema as S
from rlds_lm import tasks
from rlds_lm import tokenizers
from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.models import config as model_config
from rlds_lm.models import sampling
from rlds_lm.trainers import common
from rlds_lm.trainers import data as D
from rlds_lm.trainers import losses as L
from rlds_lm.trainers import rollouts

ALGORITHMS = ("jbond", "bond", "reinforce")
# KL(policy || initial policy) weight when kl_coef is None: the EMA anchor already
# regularises J-BOND; REINFORCE has no other brake.
DEFAULT_KL_COEF = {"jbond": 0.0, "bond": 0.0, "reinforce": 0.05}
ANCHOR_SAMPLES = 2  # J-BOND: Best-of-2 of the anchor


# Rewards: the one registry of rlds_lm.tasks (name -> fields, prompt, task, score).
Reward = tasks.Reward
REWARDS = tasks.REWARDS


# --------------------------------------------------------------------------------------
# Config.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BondConfig:
  """A J-BOND (or REINFORCE) run. The small CPU setting is the default."""

  prompts: str  # a built TFDS prompt dataset (e.g. builders/arithmetic, config "tiny")
  workdir: str  # checkpoints/, metrics.jsonl, metrics.png, generations/, policy/
  policy: str  # checkpoint directory: the initial policy, the anchor's start, the reference
  reward: str = "arithmetic"  # a key of REWARDS
  algorithm: str = "jbond"  # "jbond", "bond" (not iterated: Best-of-bond_n of the
  #                            initial policy, Monte Carlo quantiles) or "reinforce"
  anchor_ema: float = 0.02  # eta: anchor <- (1 - eta) anchor + eta policy, every step
  beta: float = 0.5  # weight of the forward KL(BoN || pi); 1 - beta the backward KL
  bond_n: int = 4  # algorithm="bond": the n of Best-of-n
  quantile_samples: int = 16  # algorithm="bond": reference samples per prompt and step
  # J-BOND / BOND: subtract the batch mean of the backward rewards (as REINFORCE does):
  # less variance, the same expected gradient up to O(1 / prompts_per_step).
  baseline: bool = False
  kl_coef: float | None = None  # KL(pi || initial policy) weight; None: DEFAULT_KL_COEF
  prompts_per_step: int = 8  # distinct prompts per step (J-BOND samples 1 + 2 each)
  split: str = "train"
  max_new_tokens: int = 16
  temperature: float = 1.0  # 1 keeps the samples on-policy; others bias the estimators
  steps: int = 100
  seed: int = 0
  optim: common.OptimConfig = common.OptimConfig(learning_rate=3e-4, warmup_steps=5)
  mesh_data: int = 1
  mesh_model: int = 1
  log_every: int = 1
  checkpoint_every: int = 50
  eval_every: int = 0  # 0: evaluate at the end only (when an eval_fn is given)
  tokenizer: str = "byte"
  eos_id: int = 2  # byte tokenizer's EOS: ends completions

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"algorithm must be one of {ALGORITHMS}, found {self.algorithm!r}")
    if self.reward not in REWARDS:
      raise ValueError(f"reward must be one of {sorted(REWARDS)}, found {self.reward!r}")
    if not 0.0 <= self.anchor_ema <= 1.0:
      raise ValueError(f"anchor_ema must be in [0, 1], found {self.anchor_ema}")
    if not 0.0 <= self.beta <= 1.0:
      raise ValueError(f"beta must be in [0, 1], found {self.beta}")
    if self.kl_coef is not None and self.kl_coef < 0:
      raise ValueError(f"kl_coef must be >= 0, found {self.kl_coef}")
    if self.prompts_per_step < 1 or self.max_new_tokens < 1:
      raise ValueError("prompts_per_step and max_new_tokens must be >= 1")
    if self.bond_n < 1 or self.quantile_samples % self.bond_n or not self.quantile_samples:
      raise ValueError(f"quantile_samples must be a positive multiple of bond_n: found "
                       f"quantile_samples={self.quantile_samples}, bond_n={self.bond_n}")

  @property
  def kl_weight(self) -> float:
    return DEFAULT_KL_COEF[self.algorithm] if self.kl_coef is None else self.kl_coef

  def to_json(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), kl_weight=self.kl_weight)


# --------------------------------------------------------------------------------------
# Losses: loss_fn(params, batch, extra) for common.make_train_step.
#
# The anchor's and the reference's log-probs are not trained through: they arrive in
# the batch (``anchor_logp``, ``ref_logp``, scored beforehand by sampling.score), so
# the step differentiates the policy's forward pass only.
# --------------------------------------------------------------------------------------


def sequence_logp(model: model_config.ModelConfig, params, rows: Mapping[str, jax.Array]
                  ) -> jax.Array:
  """float32 [B]: log pi(completion | prompt), summed over the completion's tokens."""
  valid = rows["segment_ids"] > 0
  logp = common.sequence_logprobs(model, params, rows["tokens"], valid)[:, :-1]
  targets, mask = common.targets_and_mask(rows)
  return jnp.sum(jnp.where(mask, common.gather_tokens(logp, targets), 0.0), axis=-1)


def baseline_correction(rewards: jax.Array, policy_logp: jax.Array) -> jax.Array:
  """What turns the backward surrogate ``-mean(R log pi)`` into ``-mean((R - b) log pi)``
  with the batch-mean baseline ``b = mean(R)`` (not differentiated)."""
  return jax.lax.stop_gradient(jnp.mean(rewards)) * jnp.mean(policy_logp)


def jbond_loss(model: model_config.ModelConfig, beta: float, kl_weight: float,
               n: int = ANCHOR_SAMPLES, baseline: bool = False):
  """Rows ``[:P]`` are the policy's samples, ``[P:]`` the Best-of-n anchor samples.

  ``quantiles`` [P] are p_<= of the policy's samples under the anchor (J-BOND: exp of
  :func:`losses.jbond_reward`, 1/16 for a sample worse than both anchor samples, else 1;
  BOND: the Monte Carlo estimate); ``anchor_logp`` is the anchor's (BOND: the
  reference's) log-prob of the policy's samples.
  """

  def loss_fn(params, batch, extra):
    del extra
    p = batch["quantiles"].shape[0]
    logp = sequence_logp(model, params, batch)
    policy_logp, bon_logp = logp[:p], logp[p:]
    anchor_logp, ref_logp = batch["anchor_logp"], batch["ref_logp"]
    bond = L.jeffreys_bond_loss(policy_logp, anchor_logp, batch["quantiles"], bon_logp,
                                n=n, beta=beta)
    kl = jax.lax.stop_gradient(policy_logp - ref_logp)
    # Score-function gradient of KL(pi || ref): E[(log pi - log ref) grad log pi].
    loss = bond.loss + kl_weight * L.policy_gradient_loss(policy_logp, -kl)
    if baseline:
      loss += (1.0 - beta) * baseline_correction(bond.rewards, policy_logp)
    return loss, {"kl": jnp.mean(kl), "kl_anchor": jnp.mean(policy_logp - anchor_logp),
                  "forward_nll": bond.forward_nll,
                  "backward_surrogate": bond.backward_surrogate,
                  "bond_reward": jnp.mean(bond.rewards)}

  return loss_fn


def reinforce_loss(model: model_config.ModelConfig, kl_weight: float):
  """REINFORCE with the raw reward, a KL penalty to the reference, a batch-mean baseline."""

  def loss_fn(params, batch, extra):
    del extra
    logp = sequence_logp(model, params, batch)
    kl = jax.lax.stop_gradient(logp - batch["ref_logp"])
    shaped = batch["reward"] - kl_weight * kl
    loss = L.policy_gradient_loss(logp, shaped - jnp.mean(shaped))
    return loss, {"kl": jnp.mean(kl), "shaped_reward": jnp.mean(shaped)}

  return loss_fn


@functools.lru_cache(maxsize=8)
def compiled_step(model: model_config.ModelConfig, algorithm: str, beta: float,
                  kl_weight: float, optim: common.OptimConfig, mesh_shape: tuple[int, int],
                  n: int = ANCHOR_SAMPLES, baseline: bool = False):
  """The jitted train step of these settings, built once per process, so that a run
  resumed in the same process (``stop_at``) or repeated reuses its compilation.
  ``mesh_shape`` only keys the cache: the step is traced under its mesh."""
  del mesh_shape
  loss_fn = (reinforce_loss(model, kl_weight) if algorithm == "reinforce"
             else jbond_loss(model, beta, kl_weight, n, baseline))
  return common.make_train_step(loss_fn, common.make_optimizer(optim))


# --------------------------------------------------------------------------------------
# Sampling helpers.
# --------------------------------------------------------------------------------------


def step_prompts(seed: int, step: int, count: int, per_step: int) -> list[int]:
  """The step's prompt indices: ``per_step`` distinct records, a function of (seed, step)."""
  rng = np.random.default_rng([seed, step, 0xB0D])
  return sorted(int(i) for i in rng.choice(count, size=per_step, replace=False))


def anchor_seed(seed: int) -> int:
  """The anchor's sampling stream, distinct from the policy's (``seed``): with the same
  seeds, the policy's sample and the first anchor sample would coincide at step 0."""
  return S.content_seed(seed, "anchor")


def completion_logp(model: model_config.ModelConfig, params, groups: Sequence[rollouts.Group]
                    ) -> np.ndarray:
  """float32 [completions]: log p(completion | prompt) under ``params`` (group order)."""
  rows = [(g.prompt_tokens, c.tokens) for g in groups for c in g.completions]
  scored = sampling.score(model, params, [np.concatenate(r) for r in rows],
                          [len(prompt) for prompt, _ in rows])
  return np.asarray([np.sum(s.logprobs, dtype=np.float32) for s in scored], np.float32)


def best_of(groups: Sequence[rollouts.Group], rewards: np.ndarray, n: int | None = None
            ) -> list[rollouts.Group]:
  """The best completion of each run of ``n`` consecutive completions of each group
  (``n=None``: of the whole group); the first one on ties (``argmax``)."""
  out = []
  for g, r in zip(groups, np.asarray(rewards)):
    runs = np.reshape(r, (-1, len(r) if n is None else n))
    best = [k * runs.shape[1] + int(b) for k, b in enumerate(np.argmax(runs, axis=-1))]
    out.append(rollouts.Group(g.prompt_index, g.prompt_tokens,
                              [g.completions[b] for b in best], [g.seeds[b] for b in best]))
  return out


def mc_quantiles(policy_rewards: np.ndarray, reference_rewards: np.ndarray) -> np.ndarray:
  """float32 [P]: p_<=(y) estimated as y's rank among its k reference samples and itself,
  ``(1 + #{j: r_j <= r(y)}) / (k + 1)``, in (0, 1].

  Args:
    policy_rewards: [P] r(y) of each prompt's policy sample.
    reference_rewards: [P, k] rewards of k reference samples of the same prompt.
  """
  r = np.asarray(policy_rewards, np.float32)[:, None]
  below = np.sum(np.asarray(reference_rewards, np.float32) <= r, axis=-1)
  return ((1.0 + below) / (1.0 + reference_rewards.shape[-1])).astype(np.float32)


# --------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------


# Module level, so that one compilation serves every run of the process.
_ema = jax.jit(L.ema_update, donate_argnums=0)


def train(config: BondConfig,
          eval_fn: Callable[[model_config.ModelConfig, Any], Mapping[str, float]] | None = None,
          *, stop_at: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) a J-BOND / REINFORCE run; returns the final metrics and paths.

  Args:
    config: the run.
    eval_fn: ``(model_config, params) -> metrics``, run every ``eval_every`` steps and at
      the end; logged as ``eval/<name>``.
    stop_at: stop after this many steps (with a checkpoint), as if preempted; calling
      ``train`` again resumes from it.

  Raises:
    D.DataMismatchError: the prompt dataset lacks the reward's fields, or the policy's
      vocabulary is not the tokenizer's.
  """
  started = time.perf_counter()
  jbond = config.algorithm == "jbond"
  bond_ref = config.algorithm == "bond"
  reward = REWARDS[config.reward]
  reward_fn = reward.bind()  # a reward that needs options (a model) is refused here
  common.write_config(config.workdir, config)

  # 1. The initial policy: it starts the policy and the anchor, and stays the reference.
  initial = ckpt_lib.restore(config.policy)
  model = initial.config
  tokenizer = tokenizers.tokenizer_from_name(config.tokenizer)
  if tokenizer.vocab_size != model.vocab_size:
    raise D.DataMismatchError(
        f"policy {config.policy} has a vocabulary of {model.vocab_size} ids, the "
        f"{config.tokenizer!r} tokenizer {tokenizer.vocab_size}")

  # 2. Prompts: refused without the fields the reward reads; tokenised once.
  records = rollouts.load_prompt_records(config.prompts, config.split)
  if not records:
    raise D.DataMismatchError(f"prompt dataset {config.prompts} has no {config.split!r} "
                              f"records")
  have = set().union(*(r.keys() for r in records))
  missing = [k for k in reward.fields if any(k not in r for r in records)]
  if missing:
    raise D.DataMismatchError(
        f"prompt dataset {config.prompts} ({config.split}, {len(records)} records) lacks "
        f"the fields {missing} that reward {config.reward!r} needs; it has {sorted(have)}")
  if config.prompts_per_step > len(records):
    raise ValueError(f"prompts_per_step={config.prompts_per_step} exceeds the "
                     f"{len(records)} prompts of {config.prompts}")
  prompts = [tokenizer.encode(reward.prompt(r), add_bos=True) for r in records]
  prompt_ids = [str(r.get("prompt_id") or S.content_id(p.tolist(), prefix="p-"))
                for r, p in zip(records, prompts)]
  longest = max(len(p) for p in prompts)
  if longest + config.max_new_tokens > model.max_seq_len:
    raise ValueError(f"a prompt of {longest} tokens + max_new_tokens="
                     f"{config.max_new_tokens} exceeds the policy's context "
                     f"({model.max_seq_len})")
  max_length = longest + config.max_new_tokens  # one shape: the step compiles once

  # 3. Placement, optimizer, checkpoints (policy + anchor + optimizer): resume if any.
  # A copy: the step donates the policy's buffers, which the anchor must not alias.
  place = common.Placement.create(model, config.mesh_data, config.mesh_model)
  optim = dataclasses.replace(config.optim, total_steps=config.steps)
  optimizer = common.make_optimizer(optim)
  reference = jax.device_get(initial.params)  # only scores, on the host's device
  with place.context():
    params = place.params(initial.params)
    anchor = jax.tree.map(jnp.copy, params)
    opt_state = common.init_opt_state(optimizer, params)
  checkpoints = common.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  start_step = 0
  # Checkpoints.save stores one "params" pytree: it holds {"policy", "anchor"} here.
  restored = checkpoints.restore({"policy": params, "anchor": anchor}, opt_state)
  if restored is not None:
    start_step, state, opt_state, _, _ = restored
    params, anchor = state["policy"], state["anchor"]
  end = config.steps if stop_at is None else min(stop_at, config.steps)
  books = common.Bookkeeper(
      config.workdir, steps=config.steps, end=end, log_every=config.log_every,
      checkpoint_every=config.checkpoint_every, eval_every=config.eval_every,
      eval_fn=eval_fn, model=model, resumed_from=start_step if restored else None)
  origin = {"checkpoint": os.path.abspath(config.policy), "digest": initial.digest}

  n = config.bond_n if bond_ref else ANCHOR_SAMPLES
  train_step = compiled_step(model, config.algorithm, config.beta, config.kl_weight, optim,
                             (config.mesh_data, config.mesh_model), n, config.baseline)
  generations = rollouts.GenerationLog(os.path.join(config.workdir, "generations"),
                                       vocab_size=model.vocab_size,
                                       tokenizer=config.tokenizer,
                                       reward_names=(config.reward,))
  sampler = sampling.SamplerConfig(config.temperature)
  sample = functools.partial(rollouts.sample_group, model, sampler=sampler,
                             max_new_tokens=config.max_new_tokens, eos_id=config.eos_id)

  def score(groups):
    """Rewards [len(groups), n] and completion texts (group order)."""
    texts, values = [], []
    for g in groups:
      group_texts = [tokenizer.decode(c.tokens) for c in g.completions]
      texts.extend(group_texts)
      values.extend(reward_fn(records[g.prompt_index], group_texts).values)
    return np.asarray(values, np.float32).reshape(len(groups), -1), texts

  def record(groups, rewards, texts, step, name):
    ids = [prompt_ids[g.prompt_index] for g in groups]
    return generations.record(groups, {config.reward: rewards.reshape(-1)}, step=step,
                              policy_name=name, prompt_ids=ids, task=reward.task,
                              trainer=config.algorithm, texts=texts, sampler=sampler)

  # 4. The loop.
  try:
    for step in range(start_step, end):
      # 4a. Sample: 1 completion per prompt from the policy; J-BOND adds 2 from the anchor.
      index = step_prompts(config.seed, step, len(prompts), config.prompts_per_step)
      step_prompt_tokens = [prompts[i] for i in index]
      policy_groups = sample(jax.device_get(params), step_prompt_tokens, index, n=1,
                             seed=config.seed, step=step)
      policy_rewards, texts = score(policy_groups)
      record(policy_groups, policy_rewards, texts, step, "policy")
      values = {"reward": float(policy_rewards.mean())}
      if jbond:
        anchor_host = jax.device_get(anchor)
        anchor_groups = sample(anchor_host, step_prompt_tokens, index,
                               n=ANCHOR_SAMPLES, seed=anchor_seed(config.seed), step=step)
        anchor_rewards, texts = score(anchor_groups)
        record(anchor_groups, anchor_rewards, texts, step, "anchor")
        # 4b. J-BOND reward of each policy sample from its two anchor samples' rewards:
        # BOND's (n - 1) log p_<= with n = 2, so p_<= = exp(reward).
        jbond_reward = np.asarray(L.jbond_reward(policy_rewards[:, 0], anchor_rewards))
        batch = rollouts.padded_batch(policy_groups + best_of(anchor_groups,
                                                              anchor_rewards), max_length)
        batch["quantiles"] = np.exp(jbond_reward).astype(np.float32)
        batch["anchor_logp"] = completion_logp(model, anchor_host, policy_groups)
        values.update(anchor_reward=float(anchor_rewards.mean()),
                      jbond_reward=float(jbond_reward.mean()))
      elif bond_ref:
        # 4b'. BOND: k reference samples per prompt give the Monte Carlo quantiles and,
        # k / n at a time, the Best-of-n samples of the forward term.
        ref_groups = sample(reference, step_prompt_tokens, index, n=config.quantile_samples,
                            seed=anchor_seed(config.seed), step=step)
        ref_rewards, texts = score(ref_groups)
        record(ref_groups, ref_rewards, texts, step, "reference")
        quantiles = mc_quantiles(policy_rewards[:, 0], ref_rewards)
        batch = rollouts.padded_batch(
            policy_groups + best_of(ref_groups, ref_rewards, config.bond_n), max_length)
        batch["quantiles"] = quantiles
        values.update(reference_reward=float(ref_rewards.mean()),
                      log_quantile=float(np.mean(np.log(quantiles))))
      else:
        batch = rollouts.padded_batch(policy_groups, max_length)
        batch["reward"] = policy_rewards[:, 0]
      batch["ref_logp"] = completion_logp(model, reference, policy_groups)
      if bond_ref:
        batch["anchor_logp"] = batch["ref_logp"]  # the anchor is the reference
      del batch["behaviour_logprobs"]  # the losses treat the samples as on-policy
      # 4c. One optimizer step on the Jeffreys loss (or REINFORCE), then the EMA anchor.
      with place.context():
        params, opt_state, metrics = train_step(params, opt_state, place.batch(batch), {})
        if jbond:
          anchor = _ema(anchor, params, config.anchor_ema)
      values.update(common.to_floats(metrics))
      common.check_finite(step, values, {"dataset": np.zeros(len(index), np.int32),
                                         "record_index": np.asarray(index)})
      done = step + 1
      books.after_step(done, values, params)
      if books.checkpoint_due(done):
        checkpoints.save(done, {"policy": params, "anchor": anchor}, opt_state,
                         {"step": done}, {"origin": origin, "metrics": values})
  finally:
    checkpoints.close()
    generations.close()

  if books.stopped:
    return {"metrics": books.last, "stopped_at": end, "resumed_from": start_step}

  # 5. The policy as a plain checkpoint (pipelines.generate can sample from it), plots.
  keys = ["reward", "anchor_reward", "kl", "loss"] if jbond else ["reward", "kl", "loss"]
  final = books.finish("policy", model, params, keys,
                       f"{config.algorithm} ({config.reward})")
  return {"metrics": books.last, **final, "seconds": time.perf_counter() - started,
          "resumed_from": start_step}
