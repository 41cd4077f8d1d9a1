"""RLEF: summarization RL with textual-entailment rewards.

A supervised summarization policy is tuned with REINFORCE to write summaries that the
document entails, while a KL penalty keeps it close to where it started. Every step:

1. takes ``prompts_per_step`` documents of a built ``grounded_summarization`` dataset
   (``"Document: {document}\\nSummary:"``, byte tokens), in an order that is a pure
   function of (seed, step);
2. completes each ``samples_per_prompt`` (n) times with the *current* policy, in one
   batched call (:func:`rlds_lm.trainers.rollouts.sample_group`);
3. scores the decoded summaries: ``oracle`` is the exact entailment of the synthetic
   world (:func:`rlds_lm.tasks.summarization.entailment`: the fraction of the
   summary's sentences that state a document fact), the truth; ``nli`` is the mean, over
   the summary's sentences, of a learned classifier's P(document entails sentence)
   (:mod:`rlds_lm.tasks.nli`), what a real setup could afford. ``reward`` picks the one
   that is optimised; both are recorded when available, so the gap between them
   (reward hacking of the learned model) is measured;
4. records every completion as a rollout episode in ``workdir/generations``: rewards
   ``total`` (the optimised one, also the episode's primary ``reward``), ``oracle`` and
   ``nli`` where known, the step in the lineage;
5. takes one optimizer step on

       loss = pg_loss + kl_coef * kl_term

   ``pg_loss`` is :func:`~rlds_lm.trainers.losses.policy_gradient_loss` on the completion
   tokens with the leave-one-out advantage ``A_i = R_i - mean_{j != i} R_j`` over the n
   completions of the same prompt (RLOO, Ahmadian et al. 2024: the baseline does not
   depend on sample i, so the gradient stays unbiased; it is n / (n - 1) times the
   group-mean advantage), ``R_i = score_i - length_penalty * tokens_i``.

   ``kl_term`` penalises KL(pi || ref), ``ref`` the frozen starting policy
   (:func:`~rlds_lm.trainers.losses.kl_penalty_term`). Its value is the mean per-token
   estimate (:func:`~rlds_lm.trainers.losses.kl_penalty`, ``kl_kind`` k1 or k3, on the
   completion tokens, logged as ``kl``). The estimates are *values*: differentiating
   them through log pi would give a zero (k1) or wrong-direction (k3) gradient. So the
   KL enters like a penalty reward, under stop_gradient: each token's log pi is weighted
   by the k1 KL still to come from it on (its own and later tokens'), the unbiased
   score-function gradient of the completion's KL (the RLHF objective
   ``E[R] - beta KL``, Stiennon et al. 2020), whichever ``kl_kind`` is logged (k3 as a
   score-function weight would be biased: its expected gradient is grad KL(pi || ref) -
   grad KL(ref || pi)). Both terms are means over the step's completion tokens, so
   ``kl_coef`` trades a completion's KL against its reward.

Stale rollouts (``sync_every`` > 1). In an actor/learner system (IMPALA, SEED RL) the
samples come from a policy a few updates behind the learner. ``sync_every = k`` makes
that explicit and reproducible: the completions of step s are sampled by the learner's
parameters of step ``k * floor(s / k)``, so rollouts are up to k - 1 updates old. With
``off_policy="vtrace"`` the advantage is then V-trace's (Espeholt et al. 2018,
:func:`~rlds_lm.trainers.losses.vtrace`) with the behaviour log-probs the episodes store
(``action_logprobs``, the sampler's own, so a ``temperature`` != 1 is corrected too on
those steps):
each completion is an episode whose only reward ``R_i`` comes with its last token, and
V(x_t) is its leave-one-out baseline ``b_i`` (a state-independent critic); token t's
advantage becomes ``rho_t c_{t+1} ... c_{T-1} rho_T (R_i - b_i)`` with clipped ratios
``rho = min(clip_rho, pi/mu)``, ``c = min(1, pi/mu)``, which is exactly ``R_i - b_i``
when pi == mu (:func:`vtrace_advantages`). ``off_policy="none"`` ignores the staleness
(the biased baseline to compare against). The correction applies to stale steps only:
on-policy steps keep the plain RLOO advantage, which at ``temperature`` != 1 is slightly
off-policy (log pi is taken at temperature 1; the default is 1), rather than pay the
truncated importance weights' variance on every step. The KL term is on the same stale
samples.

Critic (``critic="value_head"``): V(x_t) is a linear head on the policy's final hidden
state (:func:`value_head`, reading it under stop_gradient, so the trunk is trained by
the policy loss alone) instead of the per-prompt baseline: the advantage of token t
becomes ``R_i - V(x_t)`` (V-trace's with these values on stale steps), and
``value_coef * value_loss`` regresses V on the returns (V-trace's targets v_s on stale
steps). The head is trained and checkpointed with the policy (the parameters become
``{"policy": ..., "value": {"w", "b"}}``); the exported policy is the policy part.

A run is deterministic: the prompt order and the sampling seeds are functions of
(seed, step), so a checkpoint holds parameters, optimizer state and the data state
``{"step": n, "prompts": <fingerprint of the prompt stream>}``, and a resumed run makes
exactly the same samples and updates as one never stopped.

Example (the defaults: 20 steps of 2 prompts x 4 samples; about a minute on 2 CPU cores
with the ``tiny`` policy and the ``tiny`` dataset)::

    from rlds_lm.trainers import rlef
    result = rlef.train(rlef.RlefConfig(
        prompts="data/grounded_summarization/tiny/1.0.0", workdir="runs/rlef",
        policy="ckpt/sft_tiny", reward="nli", nli_model="nli_model", steps=20))
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlds_lm import schema as S
from rlds_lm import tasks
from rlds_lm import tokenizers
from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.models import config as model_config
from rlds_lm.models import sampling
from rlds_lm.tasks import nli
from rlds_lm.trainers import common
from rlds_lm.trainers import data as D
from rlds_lm.trainers import losses as L
from rlds_lm.trainers import rollouts

REWARDS = ("oracle", "nli")
OFF_POLICY = ("vtrace", "none")
CRITICS = ("baseline", "value_head")
# Dataset fields each reward needs (the prompt is made from "document").
_REQUIRED = {"oracle": ("document", "facts"), "nli": ("document",)}
# = rlds_lm.tasks.prompt_text("summarization", record) (a test checks); kept here so
# the prompt format of the trained policy is visible in this file.
PROMPT_FORMAT = "Document: {document}\nSummary:"
TASK = "summarization"


@dataclasses.dataclass(frozen=True)
class RlefConfig:
  """An RLEF run. The small CPU setting is the default."""

  prompts: str  # a built grounded_summarization dataset dir (.../tiny/1.0.0)
  workdir: str  # checkpoints/, metrics.jsonl, metrics.png, generations/, policy/
  policy: str  # checkpoint dir of the supervised policy: the start and the KL reference
  reward: str = "oracle"  # optimised: "oracle" (exact entailment) or "nli" (learned)
  nli_model: str = ""  # rlds_lm.tasks.nli model dir: needed by reward="nli", else recorded
  split: str = "train"
  kl_coef: float = 0.05  # weight of KL(pi || ref) of a completion against its reward
  kl_kind: str = "k1"  # per-token KL estimator (losses.kl_penalty): "k1" or "k3"
  samples_per_prompt: int = 4  # n completions per prompt (>= 2: leave-one-out baseline)
  prompts_per_step: int = 2
  max_new_tokens: int = 32
  temperature: float = 1.0
  length_penalty: float = 0.0  # subtracted from the reward per completion token
  steps: int = 20
  seed: int = 0
  optim: common.OptimConfig = common.OptimConfig(learning_rate=1e-4, warmup_steps=2)
  mesh_data: int = 1
  mesh_model: int = 1
  log_every: int = 1
  checkpoint_every: int = 10
  eos_id: int = 2  # byte tokenizer's EOS: ends a summary
  sync_every: int = 1  # the sampler takes the learner's parameters every k steps
  off_policy: str = "vtrace"  # correction of stale rollouts: "vtrace" or "none"
  clip_rho: float = 1.0  # V-trace's rho-bar (c-bar is 1)
  critic: str = "baseline"  # V(x_t): "baseline" (leave-one-out) or "value_head"
  value_coef: float = 0.5  # weight of the value head's loss (critic="value_head")

  def __post_init__(self):
    if self.reward not in REWARDS:
      raise ValueError(f"reward must be one of {REWARDS}, found {self.reward!r}")
    if self.reward == "nli" and not self.nli_model:
      raise ValueError("reward='nli' needs an NLI model directory (nli_model); train one "
                       "with `python -m pipelines.nli train --out DIR`")
    if self.kl_kind not in L.KL_KINDS:
      raise ValueError(f"kl_kind must be one of {L.KL_KINDS}, found {self.kl_kind!r}")
    if self.kl_coef < 0 or self.length_penalty < 0:
      raise ValueError(f"kl_coef and length_penalty must be >= 0, found {self.kl_coef} "
                       f"and {self.length_penalty}")
    if self.samples_per_prompt < 2:
      raise ValueError(f"samples_per_prompt must be >= 2 (the baseline of a sample is the "
                       f"mean of the others), found {self.samples_per_prompt}")
    if self.prompts_per_step < 1 or self.max_new_tokens < 1 or self.steps < 1:
      raise ValueError("prompts_per_step, max_new_tokens and steps must be >= 1")
    if self.critic not in CRITICS or self.value_coef < 0:
      raise ValueError(f"critic must be one of {CRITICS} and value_coef >= 0, found "
                       f"{self.critic!r}, {self.value_coef}")
    if self.sync_every < 1 or self.off_policy not in OFF_POLICY or self.clip_rho <= 0:
      raise ValueError(f"need sync_every >= 1, off_policy in {OFF_POLICY} and clip_rho "
                       f"> 0, found {self.sync_every}, {self.off_policy!r}, "
                       f"{self.clip_rho}")
    if self.rows % self.mesh_data:
      raise ValueError(f"prompts_per_step * samples_per_prompt = {self.rows} rows must "
                       f"divide evenly over mesh_data={self.mesh_data}")

  @property
  def rows(self) -> int:
    """Completions (training rows) per step."""
    return self.prompts_per_step * self.samples_per_prompt

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# The pieces of a step, in the order the loop uses them.
# --------------------------------------------------------------------------------------


class Prompts(NamedTuple):
  """The prompts of a run: those that leave room for ``max_new_tokens`` in the context."""

  records: list[dict[str, Any]]  # dataset records (document, facts, prompt_id, ...)
  tokens: list[np.ndarray]  # int32 [T_i]: BOS + the bytes of the prompt text
  split_index: list[int]  # position of each record in the dataset split
  dropped: int  # records left out: too long for the context


def load_prompts(config: RlefConfig, context: int) -> Prompts:
  """The split's records and their byte-tokenised prompts, minus those too long.

  Raises:
    D.DataMismatchError: the dataset is empty, lacks a field the reward needs, or no
      prompt leaves room for ``max_new_tokens`` in ``context``.
  """
  records = rollouts.load_prompt_records(config.prompts, config.split)
  if not records:
    raise D.DataMismatchError(f"{config.prompts} has no records in split {config.split!r}")
  missing = [f for f in _REQUIRED[config.reward] if f not in records[0]]
  if missing:
    raise D.DataMismatchError(
        f"prompts dataset {config.prompts} lacks the fields {missing} that reward="
        f"{config.reward!r} needs; it has {sorted(records[0])} (build "
        f"builders/grounded_summarization)")
  tokenizer = tokenizers.ByteTokenizer()
  kept = Prompts([], [], [], 0)
  for index, record in enumerate(records):
    tokens = tokenizer.encode(PROMPT_FORMAT.format(document=record["document"]),
                              add_bos=True)
    if len(tokens) + config.max_new_tokens <= context:
      kept.records.append(record)
      kept.tokens.append(tokens)
      kept.split_index.append(index)
  if not kept.records:
    raise D.DataMismatchError(
        f"all {len(records)} prompts of {config.prompts} are too long: none leaves room "
        f"for max_new_tokens={config.max_new_tokens} in the policy's context ({context})")
  return kept._replace(dropped=len(records) - len(kept.records))


def prompt_order(seed: int, step: int, per_step: int, count: int
                 ) -> tuple[list[int], list[int]]:
  """(stream positions, record indices) of a step's prompts.

  The prompts form one stream, a fresh permutation of the ``count`` records per epoch;
  step ``s`` takes positions ``s * per_step ...``. The position (unique in the run) seeds
  the samples, so a prompt met twice gets different completions.
  """
  positions = list(range(step * per_step, (step + 1) * per_step))
  indices = []
  for k in positions:
    epoch, offset = divmod(k, count)
    permutation = np.random.default_rng([seed, epoch, 0x726C6566]).permutation(count)
    indices.append(int(permutation[offset]))
  return positions, indices


def oracle_scores(facts: Sequence[Sequence[str | bytes]], texts: Sequence[str]
                  ) -> np.ndarray:
  """float32 [n]: the fraction of each summary's sentences that state a document fact."""
  return tasks.get_reward("entailment").rows([{"facts": f} for f in facts], texts)


def nli_scores(classifier: nli.NliClassifier, documents: Sequence[str],
               texts: Sequence[str]) -> np.ndarray:
  """float32 [n]: mean P(document entails sentence) over each summary's sentences (0 for
  a summary without any), all sentences of the batch in one call."""
  return tasks.get_reward("nli").rows([{"document": d} for d in documents], texts,
                                      predict=classifier.predict)


def leave_one_out_baselines(rewards: np.ndarray) -> np.ndarray:
  """[P, n] -> [P, n]: the mean of the other n - 1 rewards of each one's group."""
  n = rewards.shape[-1]
  return ((rewards.sum(-1, keepdims=True) - rewards) / (n - 1)).astype(np.float32)


def leave_one_out_advantages(rewards: np.ndarray) -> np.ndarray:
  """[P, n] -> [P, n]: each reward minus the mean of the other n - 1 of its group."""
  return (rewards - leave_one_out_baselines(rewards)).astype(np.float32)


def vtrace_targets(behaviour_logp: jax.Array, target_logp: jax.Array, mask: jax.Array,
                   returns: jax.Array, values: jax.Array, clip_rho: float = 1.0
                   ) -> L.VTraceOutput:
  """V-trace (value targets, policy-gradient advantages), both [B, T], of completions
  with a terminal reward.

  Row b is one episode over its ``mask`` tokens (one contiguous run): reward
  ``returns[b]`` on the last of them, 0 before; discount 1 inside, 0 at the end; V(x_t)
  = ``values`` ([B]: one per row, e.g. a baseline; or [B, T]: a value head). Columns
  outside the mask get 0 (their ratio is taken as 1: prompt and padding are not actions).
  """
  mask = mask.astype(bool)
  following = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
  last = mask & ~following
  rewards = jnp.where(last, returns[:, None], 0.0)
  discounts = (mask & ~last).astype(jnp.float32)
  values = jnp.broadcast_to(values[:, None] if values.ndim == 1 else values, mask.shape)
  behaviour = jnp.where(mask, behaviour_logp, target_logp)
  out = L.vtrace(behaviour, target_logp, rewards, values,
                 jnp.zeros(mask.shape[:1], jnp.float32), discounts, clip_rho=clip_rho,
                 clip_c=1.0)
  return L.VTraceOutput(jnp.where(mask, out.vs, 0.0), jnp.where(mask, out.pg_advantages, 0.0))


def vtrace_advantages(behaviour_logp: jax.Array, target_logp: jax.Array, mask: jax.Array,
                      returns: jax.Array, baselines: jax.Array, clip_rho: float = 1.0
                      ) -> jax.Array:
  """[B, T] V-trace policy-gradient advantages (:func:`vtrace_targets`) with one
  baseline per row as V."""
  return vtrace_targets(behaviour_logp, target_logp, mask, returns, baselines,
                        clip_rho).pg_advantages


def value_head_init(model: model_config.ModelConfig) -> dict[str, np.ndarray]:
  """A linear value head on the policy's final hidden state, starting at V = 0."""
  return {"w": np.zeros(model.d_model, np.float32), "b": np.zeros((), np.float32)}


def value_head(head: Mapping[str, jax.Array], hidden: jax.Array) -> jax.Array:
  """V(x_t) [B, T] from hidden states [B, T, D]. The trunk is not trained through it:
  the head reads ``stop_gradient(hidden)``, so the value loss leaves the policy alone."""
  features = jax.lax.stop_gradient(hidden).astype(jnp.float32)
  return jnp.einsum("btd,d->bt", features, head["w"]) + head["b"]


def rlef_loss(config: RlefConfig, model: model_config.ModelConfig):
  """loss_fn(params, batch, extra): REINFORCE with a KL(pi || ref) penalty reward.

  ``params``: the policy's parameters, or ``{"policy": ..., "value": ...}`` with
  ``critic="value_head"``. ``batch``: ``tokens``, ``segment_ids``, ``loss_mask`` (the
  completion), ``behaviour_logprobs`` float32 [B, L] (the sampler's, aligned with
  ``tokens``), ``returns`` and ``baselines`` float32 [B], ``stale`` bool [B]. The
  advantage is ``returns - V`` (V the leave-one-out ``baselines`` or the value head's
  V(x_t)), V-trace-corrected on ``stale`` rows when ``config.off_policy == "vtrace"``;
  the value head regresses the returns (V-trace's targets v_s on stale rows).
  ``extra["reference"]``: the frozen reference parameters.
  """
  with_head = config.critic == "value_head"

  def loss_fn(params, batch, extra):
    policy = params["policy"] if with_head else params
    tokens, valid = batch["tokens"], batch["segment_ids"] > 0
    targets, mask = common.targets_and_mask(batch)
    if with_head:
      hidden, logp_all = common.sequence_hidden_and_logprobs(model, policy, tokens, valid)
      values = value_head(params["value"], hidden[:, :-1])  # V before each target token
    else:
      logp_all = common.sequence_logprobs(model, policy, tokens, valid)
      values = jnp.broadcast_to(batch["baselines"][:, None], targets.shape)
    logp = common.gather_tokens(logp_all[:, :-1], targets)
    ref_logp = jax.lax.stop_gradient(common.gather_tokens(
        common.sequence_logprobs(model, extra["reference"], tokens, valid)[:, :-1],
        targets))
    behaviour = batch["behaviour_logprobs"][:, 1:]
    log_ratio = jnp.where(mask, jax.lax.stop_gradient(logp) - behaviour, 0.0)
    fixed_values = jax.lax.stop_gradient(values)
    advantages = batch["returns"][:, None] - fixed_values  # on-policy: R - V(x_t)
    value_targets = jnp.broadcast_to(batch["returns"][:, None], targets.shape)
    if config.off_policy == "vtrace":  # on stale rows only (policy lag > 0)
      corrected = vtrace_targets(behaviour, jax.lax.stop_gradient(logp), mask,
                                 batch["returns"], fixed_values, config.clip_rho)
      stale = batch["stale"][:, None]
      advantages = jnp.where(stale, corrected.pg_advantages, advantages)
      value_targets = jnp.where(stale, corrected.vs, value_targets)
    pg_loss = L.policy_gradient_loss(logp, advantages, mask)
    # Value: the mean per-token estimate (k1 or k3); gradient: each token's log pi
    # weighted by the k1 KL still to come from it on, unbiased for either kind.
    kl_term = L.kl_penalty_term(logp, ref_logp, mask, config.kl_kind)
    kl = kl_term.per_token
    loss = pg_loss + config.kl_coef * kl_term.loss
    metrics = {"pg_loss": pg_loss, "kl": L.masked_mean(kl, mask),
               "kl_sequence": jnp.mean(jnp.sum(kl, -1)),
               # mean pi/mu of the completion tokens: 1 on-policy
               "ratio": L.masked_mean(jnp.exp(log_ratio), mask)}
    if with_head:
      value_loss = L.value_loss(values, value_targets, mask)
      loss = loss + config.value_coef * value_loss
      metrics.update(value_loss=value_loss, value=L.masked_mean(values, mask))
    return loss, metrics

  return loss_fn


def _behaviour_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, "behaviour", f"step_{step}")


def _drop_snapshots(workdir: str, before: int) -> None:
  """Removes the sampler snapshots no checkpoint can need any more."""
  root = os.path.join(workdir, "behaviour")
  for name in os.listdir(root) if os.path.isdir(root) else ():
    if int(name.removeprefix("step_")) < before:
      shutil.rmtree(os.path.join(root, name))


def _fingerprint(config: RlefConfig, records: Sequence[Mapping[str, Any]]) -> str:
  """What the prompt stream depends on; a checkpoint of another stream is refused."""
  return S.content_id([r.get("prompt_id", r["document"]) for r in records], config.seed,
                      config.prompts_per_step, config.samples_per_prompt,
                      config.sync_every, config.off_policy, config.clip_rho, config.critic,
                      prefix="rlef-")


# --------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------


def train(config: RlefConfig, *, stop_at: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) an RLEF run; returns the last metrics and the paths it wrote.

  Args:
    config: the run.
    stop_at: stop after this many steps (with a checkpoint), as if the job had been
      preempted; calling ``train`` again resumes from it.

  Raises:
    D.DataMismatchError: a policy whose vocabulary is not the byte tokenizer's, or a
      prompts dataset without the fields the reward needs (see :func:`load_prompts`).
    D.StateMismatchError: the workdir's checkpoint belongs to another prompt stream.
    common.TrainingDivergedError: a non-finite loss or gradient (the last checkpoint
      stays).
  """
  started = time.perf_counter()

  # 1. Models: the policy trains from the supervised checkpoint, which stays, frozen, as
  #    the KL reference. Prompts are byte-tokenised, so the policy must be a byte model.
  restored = ckpt_lib.restore(config.policy)
  model, host_params = restored.config, jax.device_get(restored.params)
  byte_vocab = tokenizers.ByteTokenizer.vocab_size
  if model.vocab_size != byte_vocab:
    raise D.DataMismatchError(
        f"policy {config.policy} has a vocabulary of {model.vocab_size} ids; RLEF prompts "
        f"are byte-tokenised ({byte_vocab} ids)")
  origin = {"policy": os.path.abspath(config.policy), "digest": restored.digest}

  # 2. Prompts and reward models. The oracle is recorded whenever the facts are known.
  prompts = load_prompts(config, model.max_seq_len)
  records = prompts.records
  has_oracle = "facts" in records[0]
  classifier = nli.NliClassifier.load(config.nli_model) if config.nli_model else None
  reward_names = ["total"] + [name for name, known in (("oracle", has_oracle),
                                                       ("nli", classifier is not None))
                              if known]
  row_length = max(map(len, prompts.tokens)) + config.max_new_tokens  # one step shape
  fingerprint = _fingerprint(config, records)

  # 3. Placement, optimizer, checkpoints: resume if the workdir has one.
  place = common.Placement.create(model, config.mesh_data, config.mesh_model)
  optimizer = common.make_optimizer(dataclasses.replace(config.optim,
                                                        total_steps=config.steps))
  with_head = config.critic == "value_head"
  with place.context():
    params = place.params(host_params)
    if with_head:  # trained with the policy: one optimizer, one checkpoint
      params = {"policy": params, "value": place.replicated(value_head_init(model))}
    # A separate copy: the step donates (overwrites) the policy's buffers.
    extra = {"reference": place.params(jax.tree.map(np.copy, host_params))}
    opt_state = common.init_opt_state(optimizer, params)
  policy_of = (lambda p: p["policy"]) if with_head else (lambda p: p)
  checkpoints = common.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  start_step = 0
  resumed = checkpoints.restore(params, opt_state)
  if resumed is not None:
    start_step, params, opt_state, data_state, _ = resumed
    if data_state.get("prompts") != fingerprint or data_state.get("step") != start_step:
      checkpoints.close()
      raise D.StateMismatchError(
          f"{checkpoints.directory} holds step {start_step} of another run (data state "
          f"{data_state}, this run's prompt stream is {fingerprint}); use a new workdir")
  # The sampler's parameters: the learner's of the last sync step. Between syncs they are
  # a plain checkpoint (workdir/behaviour/step_N), so a resumed run samples from them too.
  behaviour_step, behaviour_params = None, None
  if resumed is not None and start_step % config.sync_every:
    behaviour_step = start_step - start_step % config.sync_every
    snapshot_dir = _behaviour_dir(config.workdir, behaviour_step)
    if "behaviour_digest" not in data_state or not os.path.isdir(snapshot_dir):
      checkpoints.close()
      raise D.StateMismatchError(
          f"step {start_step} falls between two sampler syncs (sync_every="
          f"{config.sync_every}), but the checkpoint names no sampler parameters or "
          f"{snapshot_dir} is gone: it was written with another sync_every")
    snapshot = ckpt_lib.restore(snapshot_dir)
    if snapshot.digest != data_state.get("behaviour_digest"):
      checkpoints.close()
      raise D.StateMismatchError(
          f"the sampler's parameters of step {behaviour_step} have digest "
          f"{snapshot.digest}, the checkpoint of step {start_step} expects "
          f"{data_state.get('behaviour_digest')}")
    behaviour_params, behaviour_digest = snapshot.params, snapshot.digest
  common.write_config(config.workdir, config)
  end = config.steps if stop_at is None else min(stop_at, config.steps)
  books = common.Bookkeeper(config.workdir, steps=config.steps, end=end,
                            log_every=config.log_every,
                            checkpoint_every=config.checkpoint_every,
                            resumed_from=start_step if resumed else None)
  train_step = common.make_train_step(rlef_loss(config, model), optimizer)
  generations = rollouts.GenerationLog(os.path.join(config.workdir, "generations"),
                                       vocab_size=model.vocab_size,
                                       reward_names=reward_names)
  tokenizer = tokenizers.ByteTokenizer()
  sampler = sampling.SamplerConfig(temperature=config.temperature)
  n = config.samples_per_prompt

  # 4. The loop: sample, score, record, update.
  try:
    for step in range(start_step, end):
      # a. The step's prompts, each completed n times by the current policy.
      if step % config.sync_every == 0:  # the sampler takes the learner's parameters
        behaviour_step = step
        behaviour_params = jax.tree.map(np.array, jax.device_get(policy_of(params)))
        if config.sync_every > 1:
          behaviour_digest = ckpt_lib.save(_behaviour_dir(config.workdir, step), model,
                                           behaviour_params, overwrite=True)
      positions, indices = prompt_order(config.seed, step, config.prompts_per_step,
                                        len(records))
      groups = rollouts.sample_group(
          model, behaviour_params, [prompts.tokens[i] for i in indices], positions,
          n=n, seed=config.seed, step=step, sampler=sampler,
          max_new_tokens=config.max_new_tokens, eos_id=config.eos_id)
      completions = [c for g in groups for c in g.completions]  # row order
      rows = [records[i] for i in indices for _ in range(n)]  # the record of each row

      # b. Rewards of the decoded summaries; the advantage baseline is per prompt.
      texts = [tokenizer.decode(c.tokens) for c in completions]
      scores = {}
      if has_oracle:
        scores["oracle"] = oracle_scores([r["facts"] for r in rows], texts)
      if classifier is not None:
        scores["nli"] = nli_scores(classifier, [r["document"] for r in rows], texts)
      lengths = np.asarray([len(c) for c in completions], np.float32)
      total = scores[config.reward] - config.length_penalty * lengths
      baselines = leave_one_out_baselines(total.reshape(-1, n)).reshape(-1)

      # c. Every generation kept, before the update (a re-run step is not re-recorded).
      generations.record(
          groups, {"total": total, **scores}, step=step, policy_name="rlef",
          prompt_ids=[records[i].get("prompt_id") or S.content_id(records[i]["document"])
                      for i in indices],
          task=TASK, trainer="rlef", texts=texts, sampler=sampler,
          policy_step=behaviour_step)

      # d. One update on prompt + completion rows (the loss on the completion).
      batch = rollouts.padded_batch(groups, row_length)
      batch.update(returns=total.astype(np.float32), baselines=baselines,
                   stale=np.full(len(total), step > behaviour_step))
      with place.context():
        params, opt_state, metrics = train_step(params, opt_state, place.batch(batch),
                                                extra)
      values = common.to_floats(metrics)
      values.update({name: float(v.mean()) for name, v in scores.items()})
      values.update(reward=float(total.mean()), length=float(lengths.mean()),
                    eos=float(np.mean([c.stop_reason == sampling.STOP_EOS
                                       for c in completions])),
                    policy_lag=float(step - behaviour_step))
      split_index = np.repeat([prompts.split_index[i] for i in indices], n)
      common.check_finite(step, values, {"dataset": np.zeros_like(split_index),
                                         "record_index": split_index})

      # e. Log and checkpoint.
      done = step + 1
      books.after_step(done, values)
      if books.checkpoint_due(done):
        data_state = {"step": done, "prompts": fingerprint}
        if done % config.sync_every:  # resuming needs this sync's sampler parameters
          data_state["behaviour_digest"] = behaviour_digest
        checkpoints.save(done, params, opt_state, data_state,
                         {"origin": origin, "metrics": values})
        _drop_snapshots(config.workdir, before=done - done % config.sync_every)
  finally:
    checkpoints.close()
    generations.close()

  summary = {"metrics": books.last, "resumed_from": start_step,
             "prompts": {"kept": len(records), "dropped": prompts.dropped},
             "generations": os.path.join(config.workdir, "generations")}
  if books.stopped:
    return {**summary, "stopped_at": end}

  # 5. The tuned policy as a plain checkpoint (pipelines.generate samples from it), plots.
  keys = ["reward"] + [k for k in ("oracle", "nli") if k in reward_names] + ["kl", "length"]
  keys += ["value_loss"] if with_head else []
  final = books.finish("policy", model, policy_of(params), keys,
                       f"RLEF (reward={config.reward}, kl_coef={config.kl_coef})")
  return {**summary, **final, "seconds": time.perf_counter() - started}
