"""Distillation trainer: supervised KD from stored teacher data, SeqKD, and on-policy GKD.

Reads published rollout datasets (``rlds_lm.trainers.data``) and trains a student
decoder (``rlds_lm.models``) with one of the losses of ``rlds_lm.trainers.losses``:

* ``topk_kd``: KL to the stored teacher top-k plus one tail bucket (off-policy data);
* ``sampled_kd``: cross-entropy to the stored Gemma-3-style sampled-k teacher draws;
* ``seqkd``: negative log-likelihood of the dataset's completions (SeqKD when the
  completions were sampled from the teacher; SFT when they are reference answers);
* ``jsd``: GKD's divergence between the live teacher's and the student's full
  distributions (needs ``teacher``): the generalized JSD(beta) for 0 < beta < 1, the
  forward KL(teacher || student) at beta = 0 and the reverse KL(student || teacher) at
  beta = 1 (:func:`rlds_lm.trainers.losses.gkd_divergence`).

Losses are picked by name from :data:`LOSSES` (name -> per-token function and the dataset
fields it needs); a new one is one entry there.

With ``student_fraction`` (GKD's lambda) > 0, that fraction of the steps trains on the
student's own samples instead of the dataset's completions: the step's prompts are
completed by the current student, the teacher scores them, and the same divergence is
applied; with ``record_generations`` (the default) every such generation is recorded as a
rollout episode (with the teacher's top-``generation_top_k``, a second teacher pass) in
``workdir/generations`` through :class:`rlds_lm.recorder.Recorder`, so the on-policy
data is kept like any other. Which steps are on-policy and the sampling seeds are
functions of (seed, step): a resumed run makes the same choices.

``keep_when`` (e.g. ``"accuracy>=0.5"``) keeps the student the first time an evaluation
reaches a threshold, as ``workdir/kept`` next to the final ``workdir/student``; with
``stop_when_kept`` the run ends there (training *until* a validation score, e.g. an SFT
warm start), and the final student is that same one.

On a TPU pod or several GPU hosts the same command runs once per host with the flags of
:func:`rlds_lm.trainers.multihost.add_flags`: each process reads its own rows of every
batch; ``exact_step`` makes the run bit-identical to one process with as many devices
(docs/multihost.md).

Example (CPU, seconds)::

    from rlds_lm.trainers import distill
    result = distill.train(distill.DistillConfig(
        datasets={"datasets/arith_rollouts/1.0.0": 1.0}, workdir="runs/kd",
        student="tiny", loss="topk_kd", steps=50))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlds_lm import schema as S
from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.models import config as model_config
from rlds_lm.models import gemma
from rlds_lm.models import sampling
from rlds_lm.models import sharding as shd
from rlds_lm.models import teacher_scoring
from rlds_lm.trainers import common
from rlds_lm.trainers import data as D
from rlds_lm.trainers import losses as L
from rlds_lm.trainers import multihost


# --------------------------------------------------------------------------------------
# Losses: name -> per-token loss on dataset completions.
# --------------------------------------------------------------------------------------


class Inputs(NamedTuple):
  """What a per-token loss reads: the student's log-probs ``logp`` float32 [B, T, V]
  (``T = L - 1``: position t predicts token t + 1), the next ``targets`` [B, T], the
  trained-token ``mask`` [B, T], the ``batch`` and ``teacher_logp()``, the live teacher's
  log-probs [B, T, V] (stop-gradient; only losses that call it run the teacher)."""

  logp: jax.Array
  targets: jax.Array
  mask: jax.Array
  batch: Mapping[str, jax.Array]
  teacher_logp: Callable[[], jax.Array]


@dataclasses.dataclass(frozen=True)
class Loss:
  """A distillation loss: ``per_token(config, inputs) -> [B, T]`` (averaged over the
  mask), the dataset fields it needs (a dataset without them is refused before
  training) and whether it needs a live teacher checkpoint."""

  per_token: Callable[[DistillConfig, Inputs], jax.Array]
  requires: tuple[str, ...] = ()
  live_teacher: bool = False


def _topk_kd(config: DistillConfig, x: Inputs) -> jax.Array:
  del config
  return L.topk_kd(x.logp, x.batch[D.TEACHER_TOPK_IDS][:, 1:],
                   x.batch[D.TEACHER_TOPK_LOGPROBS][:, 1:], x.mask)


def _sampled_kd(config: DistillConfig, x: Inputs) -> jax.Array:
  del config
  return L.sampled_kd(x.logp, x.batch[D.TEACHER_SAMPLED_IDS][:, 1:],
                      x.batch[D.TEACHER_SAMPLED_COUNTS][:, 1:], x.mask)


def _seqkd(config: DistillConfig, x: Inputs) -> jax.Array:
  del config
  return -common.gather_tokens(x.logp, x.targets)


def _jsd(config: DistillConfig, x: Inputs) -> jax.Array:
  # beta = 0 / 1 are the forward / reverse KL (JSD(0) = JSD(1) = 0 would train nothing).
  return L.gkd_divergence(x.teacher_logp(), x.logp, config.beta, x.mask)


LOSSES: dict[str, Loss] = {
    "topk_kd": Loss(_topk_kd, (S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS)),
    "sampled_kd": Loss(_sampled_kd, (S.TEACHER_SAMPLED_IDS, S.TEACHER_SAMPLED_COUNTS)),
    "seqkd": Loss(_seqkd),
    "jsd": Loss(_jsd, live_teacher=True),
}
_KEEP_WHEN = re.compile(r"^\s*([\w/.-]+)\s*(>=|<=)\s*([-+0-9.eE]+|[-+]?inf)\s*$")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """A distillation run. The small CPU setting is the default."""

  datasets: Mapping[str, float]  # published rollout datasets -> mixture weight
  workdir: str  # checkpoints/, metrics.jsonl, plots, generations/
  student: str = "tiny"  # a named model config (fresh init) or a checkpoint directory
  teacher: str = ""  # teacher checkpoint: required by loss="jsd" and on-policy steps
  loss: str = "topk_kd"
  beta: float = 0.5  # JSD(beta): 0 -> forward KL(teacher||student), 1 -> reverse KL
  student_fraction: float = 0.0  # GKD lambda: fraction of steps on student samples
  steps: int = 100
  batch_size: int = 16
  max_length: int = 64
  max_new_tokens: int = 16  # on-policy completions
  temperature: float = 1.0  # on-policy sampling temperature
  record_generations: bool = True  # on-policy generations -> workdir/generations
  generation_top_k: int = 8  # teacher top-k stored with each recorded generation
  tokenizer: str = "byte"  # the recorded generations' tokenizer (schema metadata)
  seed: int = 0
  optim: common.OptimConfig = common.OptimConfig()
  mesh_data: int = 1  # with several processes: 1 means every device of the job
  mesh_model: int = 1
  # Sum the per-device token losses in device order (multihost.make_exact_train_step):
  # the same bits on any process layout with the same device count; costs a gather of
  # the gradients per step, mesh_model must be 1.
  exact_step: bool = False
  log_every: int = 10
  checkpoint_every: int = 50
  eval_every: int = 0  # 0: evaluate at the end only (when an eval_fn is given)
  # "<eval metric>>=<value>" (or <=): keep the student as workdir/kept the first time an
  # evaluation reaches it (e.g. "accuracy>=0.5"); "" keeps nothing but the final one.
  keep_when: str = ""
  stop_when_kept: bool = False  # end the run once keep_when has kept a student
  eos_id: int = 2  # byte tokenizer's EOS: ends on-policy completions

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"loss must be one of {tuple(LOSSES)}, found {self.loss!r}")
    if not 0.0 <= self.beta <= 1.0:
      raise ValueError(f"beta must be in [0, 1], found {self.beta}")
    if not 0.0 <= self.student_fraction <= 1.0:
      raise ValueError(f"student_fraction must be in [0, 1], found {self.student_fraction}")
    if (LOSSES[self.loss].live_teacher or self.student_fraction > 0) and not self.teacher:
      raise ValueError("loss='jsd' and on-policy steps (student_fraction > 0) need a "
                       "teacher checkpoint")
    if self.exact_step and self.mesh_model != 1:
      raise ValueError(f"exact_step needs mesh_model=1 (replicated parameters), found "
                       f"{self.mesh_model}")
    if self.generation_top_k < 1:
      raise ValueError(f"generation_top_k must be >= 1, found {self.generation_top_k}")
    if self.stop_when_kept and not self.keep_when:
      raise ValueError("stop_when_kept needs keep_when (the threshold that ends the run)")
    if self.keep_when and not _KEEP_WHEN.match(self.keep_when):
      raise ValueError(f"keep_when: expected '<eval metric>>=<value>' or "
                       f"'<eval metric><=<value>' (e.g. 'accuracy>=0.5'), found "
                       f"{self.keep_when!r}")

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["datasets"] = dict(self.datasets)
    return out


def student_config(spec: str) -> model_config.ModelConfig:
  """The student's architecture: a checkpoint directory's, or a named config."""
  if os.path.isdir(spec):
    return ckpt_lib.load_config(spec)
  return model_config.get_config(spec)


def load_student(spec: str, seed: int, mesh: jax.sharding.Mesh | None = None):
  """(ModelConfig, params, origin): a checkpoint directory (restored onto ``mesh`` when
  given, else onto the first device), or a named config (fresh, on the default device)."""
  if os.path.isdir(spec):
    restored = ckpt_lib.restore(spec, mesh=mesh)
    return restored.config, restored.params, {"checkpoint": os.path.abspath(spec),
                                               "digest": restored.digest}
  config = model_config.get_config(spec)
  return config, gemma.init_params(config, seed), {"init": spec, "seed": seed}


def _inputs(model: model_config.ModelConfig, params, batch, extra) -> Inputs:
  valid = batch[D.SEGMENT_IDS] > 0
  logp = common.sequence_logprobs(model, params, batch[D.TOKENS], valid)[:, :-1]
  targets, mask = common.targets_and_mask(batch)

  def teacher_logp():
    return jax.lax.stop_gradient(common.sequence_logprobs(
        extra["teacher_config"], extra["teacher"], batch[D.TOKENS], valid)[:, :-1])

  return Inputs(logp, targets, mask, batch, teacher_logp)


def off_policy_loss(config: DistillConfig, model: model_config.ModelConfig):
  """loss_fn(params, batch, extra) on dataset completions: ``LOSSES[config.loss]``."""
  per_token_fn = LOSSES[config.loss].per_token

  def loss_fn(params, batch, extra):
    x = _inputs(model, params, batch, extra)
    loss = L.masked_mean(per_token_fn(config, x), x.mask)
    nll = L.masked_mean(-common.gather_tokens(x.logp, x.targets), x.mask)
    return loss, {"nll": nll, "tokens": jnp.sum(x.mask)}

  return loss_fn


def summed_loss(config: DistillConfig, model: model_config.ModelConfig,
                on_policy: bool = False):
  """The loss of :func:`off_policy_loss` (or :func:`on_policy_loss`) as sums, for
  :func:`multihost.make_exact_train_step`: ``loss_fn(params, rows, extra) -> (sum of the
  per-token losses, trained tokens, {"nll": summed NLL, "tokens"})`` over a device's
  rows; the step divides by the tokens of the whole batch."""
  per_token_fn = _jsd if on_policy else LOSSES[config.loss].per_token

  def masked_sum(values, mask):
    return jnp.sum(jnp.where(mask, values.astype(jnp.float32), 0.0))

  def loss_fn(params, batch, extra):
    x = _inputs(model, params, batch, extra)
    tokens = jnp.sum(x.mask, dtype=jnp.float32)
    nll = (jnp.float32(0.0) if on_policy
           else masked_sum(-common.gather_tokens(x.logp, x.targets), x.mask))
    return masked_sum(per_token_fn(config, x), x.mask), tokens, {"nll": nll,
                                                                 "tokens": tokens}

  return loss_fn


def on_policy_loss(config: DistillConfig, model: model_config.ModelConfig):
  """loss_fn on the student's own completions: GKD's divergence to the live teacher
  (JSD(beta); forward / reverse KL at beta = 0 / 1)."""

  def loss_fn(params, batch, extra):
    x = _inputs(model, params, batch, extra)
    loss = L.masked_mean(_jsd(config, x), x.mask)
    return loss, {"nll": jnp.float32(0.0), "tokens": jnp.sum(x.mask)}

  # Traced separately from the off-policy step: different batch contents, same shapes.
  return loss_fn


def prompts_of(batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
  """The prompt (tokens before the first trained token) of every row with one."""
  out = []
  for tokens, mask, seg in zip(batch[D.TOKENS], batch[D.LOSS_MASK], batch[D.SEGMENT_IDS]):
    first = np.flatnonzero(mask)
    end = int(first[0]) if first.size else int((seg > 0).sum())
    out.append(np.asarray(tokens[:max(end, 1)], np.int32))
  return out


def student_batch(prompts: list[np.ndarray], completions: list[sampling.Completion],
                  max_length: int) -> dict[str, np.ndarray]:
  """A padded batch of prompt + student completion (loss on the completion)."""
  b = len(prompts)
  tokens = np.zeros((b, max_length), np.int32)
  mask = np.zeros((b, max_length), bool)
  seg = np.zeros((b, max_length), np.int32)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    row = np.concatenate([p, c.tokens])[:max_length]
    tokens[i, :len(row)] = row
    seg[i, :len(row)] = 1
    mask[i, len(p):len(row)] = True
  return {D.TOKENS: tokens, D.LOSS_MASK: mask, D.SEGMENT_IDS: seg}


def _step_rng(seed: int, step: int) -> np.random.Generator:
  return np.random.default_rng([seed, step, 0x6B64])


def train(config: DistillConfig,
          eval_fn: Callable[[model_config.ModelConfig, Any], Mapping[str, float]] | None = None,
          *, stop_at: int | None = None,
          progress: Callable[[int, Mapping[str, float]], None] | None = None
          ) -> dict[str, Any]:
  """Runs (or resumes) a distillation run; returns the final metrics and paths.

  Args:
    config: the run.
    eval_fn: ``(model_config, params) -> metrics`` (e.g. task accuracy), run every
      ``eval_every`` steps and at the end; logged as ``eval/<name>``.
    stop_at: stop after this many steps (with a checkpoint), as if the job had been
      preempted; calling ``train`` again resumes from it.
    progress: called with (steps done, metrics) whenever metrics are logged.

  With several JAX processes (one per host, joined by :func:`multihost.initialize`
  before this call), every process calls ``train`` with the same config: each reads only
  its ``batch_size / processes`` rows of every batch, the step runs over every device
  of the job, and process 0 writes the files that exist once (``config.json``,
  ``metrics.jsonl``, the plot, the exported student); ``checkpoints/`` is written by all
  of them (a directory every host sees). ``eval_fn`` then runs in every process on the
  gathered parameters. On-policy steps complete each process's own rows and record
  them in ``generations/process_<p>``.

  Raises:
    ValueError: a process count that does not divide ``batch_size`` (before anything
      is written), a dataset without the fields the loss needs (``DataMismatchError``),
      a batch without trained tokens.
  """
  started = time.perf_counter()
  # 0. The job: refuse a process count that does not divide the batch before anything
  # is written.
  multi = jax.process_count() > 1
  multihost.check_divides(config.batch_size)
  common.write_config(config.workdir, config)

  # 1. Models. The student trains; the teacher (if any) only scores. With several
  # processes the mesh spans every device of the job (processes in order) and the
  # checkpoints are restored straight onto it.
  model = student_config(config.student)
  place = common.Placement.create(model, config.mesh_data, config.mesh_model)
  if config.exact_step and place.mesh is None:
    place = common.Placement(model, shd.make_mesh(1, 1))  # the step needs a mesh
  restore_on = {"mesh": place.mesh} if multi else {}
  model, params, origin = load_student(config.student, config.seed, **restore_on)
  teacher = None
  if config.teacher:
    teacher = sampling.Policy.from_checkpoint(config.teacher, eos_id=config.eos_id,
                                              **restore_on)
    if teacher.config.vocab_size != model.vocab_size:
      raise D.DataMismatchError(f"teacher vocabulary {teacher.config.vocab_size} != "
                                f"student vocabulary {model.vocab_size}")

  # 2. Data: refuses datasets without the fields the loss needs, or another vocabulary.
  pipeline = D.DataPipeline(
      dict(config.datasets),
      D.DataConfig(batch_size=config.batch_size, max_length=config.max_length,
                   seed=config.seed),
      require=LOSSES[config.loss].requires, optional=(), vocab_size=model.vocab_size,
      shard_index=jax.process_index(), shard_count=jax.process_count())
  if config.student_fraction > 0 and config.max_new_tokens >= config.max_length:
    raise ValueError("max_new_tokens must leave room for the prompt in max_length")

  # 3. Placement, optimizer, checkpoints: resume if the workdir has one.
  optimizer = common.make_optimizer(dataclasses.replace(config.optim,
                                                        total_steps=config.steps))
  with place.context():
    params = place.params(params)
    opt_state = common.init_opt_state(optimizer, params)
  checkpoints = common.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  start_step, data_state = 0, None
  restored = checkpoints.restore(params, opt_state)
  if restored is not None:
    start_step, params, opt_state, data_state, _ = restored
  extra = {}
  if teacher is not None:
    with place.context():
      extra = {"teacher": place.params(teacher.params)}
  end = config.steps if stop_at is None else min(stop_at, config.steps)
  books = common.Bookkeeper(
      config.workdir, steps=config.steps, end=end, log_every=config.log_every,
      checkpoint_every=config.checkpoint_every, eval_every=config.eval_every,
      eval_fn=eval_fn, model=model, progress=progress,
      resumed_from=start_step if restored else None)

  teacher_config = teacher.config if teacher is not None else None
  if config.exact_step:
    off_step, on_step = (multihost.make_exact_train_step(
        _with_static(summed_loss(config, model, on), teacher_config), optimizer,
        place.mesh) for on in (False, True))
  else:
    off_step = common.make_train_step(_with_static(off_policy_loss(config, model),
                                                   teacher_config), optimizer)
    on_step = common.make_train_step(_with_static(on_policy_loss(config, model),
                                                  teacher_config), optimizer)
  recorder = (_generations_recorder(config, model)
              if config.student_fraction > 0 and config.record_generations else None)
  kept = _kept(config)

  # 4. The loop.
  iterator = pipeline.iterator(data_state)
  try:
    for step in range(start_step, end):
      batch = next(iterator)
      on_policy = _step_rng(config.seed, step).random() < config.student_fraction
      if on_policy:
        batch = _generate(config, model, params, teacher, batch, step, recorder)
      with place.context():
        device_batch = place.batch(batch)
      # The exact step runs the model per device (a shard_map): outside jax.set_mesh.
      with contextlib.nullcontext() if config.exact_step else place.context():
        params, opt_state, metrics = (on_step if on_policy else off_step)(
            params, opt_state, device_batch, extra)
      values = common.to_floats(metrics)
      if config.exact_step:  # sums -> the means the plain step logs
        values.pop("weight")
        values["nll"] /= max(values["tokens"], 1.0)
      values["on_policy"] = float(on_policy)
      common.check_finite(step, values, batch)
      if step == start_step and values["tokens"] == 0:
        raise ValueError(
            f"batch {step} has no trained (completion) tokens: every row's prompt fills "
            f"max_length={config.max_length}; raise max_length (the data pipeline cuts "
            f"sequences from the right)")
      done = step + 1
      logged = books.after_step(done, values, params)
      if kept is not None and kept.due(logged):
        kept.save(done, model, params, logged)
        if config.stop_when_kept:  # the kept student is the run's result (a warm start):
          books.steps = books.end = done  # its evaluation is the final one
          break
      if books.checkpoint_due(done):
        multihost.check_same("data iterator state", iterator.get_state())
        checkpoints.save(done, params, opt_state, iterator.get_state(),
                         {"origin": origin, "metrics": values})
  finally:
    iterator.close()
    checkpoints.close()
    if recorder is not None:
      recorder.close()

  if books.stopped:
    return {"metrics": books.last, "stopped_at": end, "resumed_from": start_step}

  # 5. The student as a plain checkpoint (pipelines.generate can sample from it), plots.
  final = books.finish("student", model, params, ["loss", "nll"],
                       f"distill ({config.loss})")
  if kept is not None and kept.due(final):  # first reached by the final evaluation
    kept.save(config.steps, model, params, final)
  return {"metrics": books.last, **final, "seconds": time.perf_counter() - started,
          "resumed_from": start_step, "data": pipeline.summary(),
          "kept": kept.result() if kept is not None else None}


class _Keeper:
  """``keep_when``: the student at the first evaluation that reaches a threshold, kept as
  a plain checkpoint ``workdir/kept`` with ``workdir/kept.json`` (step, metric, value).
  Once kept (also by an earlier part of a resumed run) it is never replaced."""

  def __init__(self, workdir: str, metric: str, op: str, threshold: float):
    self.directory = os.path.join(workdir, "kept")
    self.metric = metric if metric.startswith("eval/") else f"eval/{metric}"
    self.op, self.threshold = op, threshold
    # Read once: with several processes, process 0 writes it while the others decide.
    self.kept = os.path.exists(self.directory + ".json")

  def due(self, logged: Mapping[str, float]) -> bool:
    if self.metric not in logged or self.kept:
      return False
    value = logged[self.metric]
    return value >= self.threshold if self.op == ">=" else value <= self.threshold

  def save(self, step: int, model, params, logged: Mapping[str, float]) -> None:
    digest = common.save_model(self.directory, model, params)  # every process calls it
    if multihost.is_primary():
      with open(self.directory + ".json", "w") as f:
        json.dump({"step": step, "metric": self.metric, "value": logged[self.metric],
                   "digest": digest}, f, indent=2, sort_keys=True)
    multihost.barrier(f"kept {self.directory}")
    self.kept = True

  def result(self) -> dict[str, Any] | None:
    if not os.path.exists(self.directory + ".json"):
      return None
    with open(self.directory + ".json") as f:
      return {"checkpoint": self.directory, **json.load(f)}


def _kept(config: DistillConfig) -> _Keeper | None:
  if not config.keep_when:
    return None
  metric, op, value = _KEEP_WHEN.match(config.keep_when).groups()
  return _Keeper(config.workdir, metric, op, float(value))


def _with_static(loss_fn, teacher_config):
  """Binds the teacher's (static) config into ``extra`` for the jitted loss."""

  def bound(params, batch, extra):
    return loss_fn(params, batch, {**extra, "teacher_config": teacher_config})

  return bound


def _generations_recorder(config: DistillConfig, model: model_config.ModelConfig):
  from rlds_lm import recorder  # pylint: disable=g-import-not-at-top
  schema = S.SchemaConfig(vocab_size=model.vocab_size, tokenizer=config.tokenizer,
                          teacher_top_k=config.generation_top_k)
  directory = os.path.join(config.workdir, "generations")
  if jax.process_count() > 1:  # one log per process: each records its own rows
    directory = os.path.join(directory, f"process_{jax.process_index()}")
  return recorder.Recorder(directory, schema)


def _generate(config, model, params, teacher, batch, step, recorder):
  """The step's prompts completed by the current student; with a ``recorder``, each
  completion is recorded with the teacher's top-``generation_top_k``."""
  prompts = prompts_of(batch)
  budget = config.max_length - config.max_new_tokens
  prompts = [p[-budget:] for p in prompts]
  # The whole batch's seeds; with several processes, this process's rows' share.
  first = jax.process_index() * len(prompts)
  seeds = [int(s) for s in _step_rng(config.seed, step).integers(
      0, 2**62, len(prompts) * jax.process_count())[first:first + len(prompts)]]
  params_host = common.host_params(params)  # every process samples its own rows
  completions = sampling.sample(
      model, params_host, prompts, seeds, sampling.SamplerConfig(config.temperature),
      config.max_new_tokens, eos_id=config.eos_id).completions()
  if recorder is not None:
    sequences = [np.concatenate([p, c.tokens]) for p, c in zip(prompts, completions)]
    keep = [i for i, c in enumerate(completions) if len(c.tokens)]
    teacher_params = (common.host_params(teacher.params) if jax.process_count() > 1
                      else teacher.params)
    annotated = teacher_scoring.annotate(
        teacher.config, teacher_params, [sequences[i] for i in keep],
        [len(prompts[i]) for i in keep], top_k=config.generation_top_k) if keep else []
    schema = recorder.config
    for i, arrays in zip(keep, annotated):
      turn = S.Turn(S.observation(schema, prompts[i]), action_tokens=completions[i].tokens,
                    action_logprobs=completions[i].logprobs, teacher=arrays)
      recorder.record(S.rollout_episode(
          schema, [turn], prompt_id=S.content_id(prompts[i].tolist(), prefix="p-"),
          sample_index=0, policy_name=f"student@{step}", seed=seeds[i],
          task="distill", lineage={"trainer": "distill", "step": step}))
  return student_batch(prompts, completions, config.max_length)


def main(argv=None) -> int:
  """``python -m rlds_lm.trainers.distill --dataset PATH[=WEIGHT] ... --workdir DIR``.

  Multi-host: run the same command once per host with ``--coordinator_address``,
  ``--num_processes`` and ``--process_id`` (or ``--coordinator_address auto`` on Cloud
  TPU / SLURM); see docs/multihost.md. Exit status 2: a refused config, data or job.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m rlds_lm.trainers.distill",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", action="append", required=True,
                      help="published rollout dataset, optionally PATH=WEIGHT; repeatable")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--student", default="tiny", help="named config or checkpoint dir")
  parser.add_argument("--teacher", default="", help="teacher checkpoint (jsd, on-policy)")
  parser.add_argument("--loss", choices=LOSSES, default="topk_kd")
  parser.add_argument("--beta", type=float, default=0.5)
  parser.add_argument("--student_fraction", type=float, default=0.0)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--max_length", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=16)
  parser.add_argument("--generation_top_k", type=int, default=8,
                      help="teacher top-k stored with recorded on-policy generations")
  parser.add_argument("--no_record_generations", action="store_true",
                      help="do not record the on-policy generations")
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--mesh_data", type=int, default=1,
                      help="data-parallel devices (several processes: 1 = every device)")
  parser.add_argument("--mesh_model", type=int, default=1,
                      help="model-parallel devices (within a host)")
  parser.add_argument("--exact_step", action="store_true",
                      help="device-ordered sums: the same bits on any process layout")
  parser.add_argument("--log_every", type=int, default=10)
  parser.add_argument("--checkpoint_every", type=int, default=50)
  multihost.add_flags(parser)
  args = parser.parse_args(argv)
  datasets = {}
  for spec in args.dataset:
    path, _, weight = spec.partition("=")
    datasets[path] = float(weight or 1.0)
  try:
    # Before anything touches a device; one process without a coordinator: a no-op.
    multihost.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         initialization_timeout=args.initialization_timeout)
    config = DistillConfig(
        datasets=datasets, workdir=args.workdir, student=args.student, teacher=args.teacher,
        loss=args.loss, beta=args.beta, student_fraction=args.student_fraction,
        steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
        max_new_tokens=args.max_new_tokens, seed=args.seed, mesh_data=args.mesh_data,
        mesh_model=args.mesh_model, exact_step=args.exact_step, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, generation_top_k=args.generation_top_k,
        record_generations=not args.no_record_generations,
        optim=common.OptimConfig(learning_rate=args.learning_rate))
    result = train(config)
  except (ValueError, FileNotFoundError, common.TrainingDivergedError,
          multihost.ClusterError) as e:
    print(f"distill: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: result[k] for k in ("metrics", "student", "student_digest", "plot",
                                           "seconds", "resumed_from", "data")},
                   indent=2, default=str))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
