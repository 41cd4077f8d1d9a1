"""What every trainer shares: optimizer, log-probs, the jitted step, checkpoints, metrics.

* :func:`make_optimizer`: AdamW with linear warm-up and cosine decay, gradient clipping.
* :func:`sequence_logprobs`: the student's log-probabilities over the vocabulary for a
  padded batch from :mod:`rlds_lm.trainers.data` (position ``t`` predicts token
  ``t + 1``).
* :class:`Placement`: puts parameters, optimizer state and batches on a ``("data",
  "model")`` mesh (:mod:`rlds_lm.models.sharding`) or on the default device; the same
  step function runs on 1 CPU device, several fake CPU devices, a GPU or a TPU slice.
  With several JAX processes (:mod:`rlds_lm.trainers.multihost`) the mesh spans every
  device of the job and each process's batch is its own rows of the global batch.
* :class:`Checkpoints`: Orbax checkpoints of parameters, optimizer state and the data
  iterator state (``{"step", "fingerprint"}``), so a restart continues the exact batch
  sequence.
* :class:`Metrics`: one JSON line per logged step, and PNG plots of chosen series.
* :class:`Bookkeeper`: what each trainer's loop does after its update (log, evaluate,
  time the checkpoints) and at its end (final evaluation, exported model, plot), so the
  three trainers keep their own linear loops without three copies of it. With several
  processes, the files that exist once (``config.json``, ``metrics.jsonl``, plots, the
  exported model) are written by process 0 only (:func:`save_model`).
* :class:`TrainingDivergedError`: a non-finite loss stops training before anything is
  saved, naming the step and the records of the batch; the last good checkpoint stays.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlds_lm.models import gemma
from rlds_lm.models import sharding as shd
from rlds_lm.models.config import ModelConfig
from rlds_lm.trainers import multihost

Params = gemma.Params
Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warm-up then cosine decay to ``final_fraction`` of the peak."""

  learning_rate: float = 1e-3
  warmup_steps: int = 10
  total_steps: int = 100
  final_fraction: float = 0.1
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.98


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=max(1, config.warmup_steps),
      decay_steps=max(config.warmup_steps + 1, config.total_steps),
      end_value=config.learning_rate * config.final_fraction)
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay))


def sequence_logprobs(config: ModelConfig, params: Params, tokens: jax.Array,
                      valid: jax.Array) -> jax.Array:
  """float32 [B, L, V]: log p(next token | prefix) at every position of padded rows.

  ``tokens`` int [B, L] left-aligned, ``valid`` bool [B, L]; ``out[:, t]`` is the
  distribution of ``tokens[:, t + 1]``. Positions are the column index (padding mode of
  the data pipeline; packed rows need segment-aware attention, which the model lacks).
  """
  b, length = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)  # rows are left-aligned
  logits, _ = gemma.forward(config, params, tokens, positions, valid, lengths=lengths)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def sequence_hidden_and_logprobs(config: ModelConfig, params: Params, tokens: jax.Array,
                                 valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`sequence_logprobs` plus the final-normed hidden states [B, L, D] they were
  projected from (``hidden[:, t]`` is the state that predicts ``tokens[:, t + 1]``)."""
  b, length = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)
  hidden, logits = gemma.hidden_and_logits(config, params, tokens, positions, valid,
                                           lengths=lengths)
  return hidden, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def targets_and_mask(batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(targets [B, L-1], mask [B, L-1]): the next token of every position and whether
  it is a trained (action) token."""
  tokens = batch["tokens"]
  return tokens[:, 1:], batch["loss_mask"][:, 1:]


def gather_tokens(logp: jax.Array, targets: jax.Array) -> jax.Array:
  """log p of each target: [B, T, V], [B, T] -> [B, T]."""
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


# --------------------------------------------------------------------------------------
# Placement on devices.
# --------------------------------------------------------------------------------------


class Placement:
  """Where arrays live: a ``(data, model)`` mesh, or the default device (``mesh=None``)."""

  def __init__(self, config: ModelConfig, mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.mesh = mesh

  @classmethod
  def create(cls, config: ModelConfig, data: int = 1, model: int = 1) -> Placement:
    """A ``(data, model)`` mesh over the first ``data * model`` devices (none for 1 x 1).

    With several JAX processes the mesh is :func:`multihost.data_mesh`: every device of
    the job, processes in order, so that each process's devices hold its own rows;
    ``data`` must then be 1 (the default: every device) or ``devices / model``.
    """
    if jax.process_count() > 1:
      every = jax.device_count() // max(model, 1)
      if data not in (1, every):
        raise ValueError(f"with {jax.process_count()} processes the data axis spans every "
                         f"device of the job: mesh_data must be 1 (every device) or "
                         f"{every} (devices {jax.device_count()} / model {model}), found "
                         f"{data}")
      return cls(config, multihost.data_mesh(model=model))
    if data * model == 1:
      return cls(config, None)
    return cls(config, shd.make_mesh(data, model))

  @property
  def data_size(self) -> int:
    return 1 if self.mesh is None else int(dict(self.mesh.shape)[shd.DATA])

  def params(self, params: Params) -> Params:
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, params)
    if jax.process_count() > 1:  # the same values in every process -> global arrays
      params = jax.tree.map(
          lambda x: x if isinstance(x, jax.Array) and not x.is_fully_addressable
          else np.asarray(x), params)
    return gemma.shard_params(params, self.config, self.mesh)

  def replicated(self, tree: Any) -> Any:
    """Small arrays every device holds whole (e.g. a value head)."""
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, tree)
    sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)

  def batch(self, batch: Batch) -> dict[str, jax.Array]:
    """The global batch. With several processes, ``batch`` is this process's rows."""
    if self.mesh is None:
      return {k: jnp.asarray(v) for k, v in batch.items()}
    if jax.process_count() > 1:
      return multihost.global_batch(self.mesh, batch)
    return {k: jax.device_put(np.asarray(v), shd.batch_sharding(self.mesh, np.shape(v)))
            for k, v in batch.items()}

  def context(self):
    import contextlib  # pylint: disable=g-import-not-at-top
    return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)


# --------------------------------------------------------------------------------------
# The training step.
# --------------------------------------------------------------------------------------

LossFn = Callable[[Params, Batch, Any], tuple[jax.Array, dict[str, jax.Array]]]


def init_opt_state(optimizer: optax.GradientTransformation, params: Params) -> Any:
  """The optimizer state, placed (committed) like ``params``: an uncommitted state would
  make the first step compile the train step twice."""
  state = jax.jit(optimizer.init)(params)
  return jax.tree.map(lambda x: jax.device_put(x, x.sharding), state)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
  """A jitted ``(params, opt_state, batch, extra) -> (params, opt_state, metrics)``.

  ``loss_fn(params, batch, extra) -> (loss, metrics)``; ``extra`` carries arrays that
  are not trained (a teacher's or a reference policy's parameters). Metrics gain
  ``loss`` and ``grad_norm``. Parameters and optimizer state are donated.
  """

  def step(params, opt_state, batch, extra):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, extra)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return params, opt_state, metrics

  return jax.jit(step, donate_argnums=(0, 1))


class TrainingDivergedError(RuntimeError):
  """A loss or gradient became NaN / inf; nothing from this step was saved."""

  def __init__(self, step: int, metrics: Mapping[str, float], records: Sequence[Any]):
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    super().__init__(f"non-finite {', '.join(bad)} at step {step}; batch records "
                     f"(dataset, record index): {list(records)[:16]}; the last "
                     f"checkpoint before this step is intact")
    self.step = step
    self.records = list(records)


def check_finite(step: int, metrics: Mapping[str, float], batch: Batch) -> None:
  if all(math.isfinite(v) for v in metrics.values()):
    return
  records = []
  if "dataset" in batch and "record_index" in batch:
    records = [(int(d), int(r)) for d, r in zip(np.asarray(batch["dataset"]).reshape(-1),
                                                np.asarray(batch["record_index"]).reshape(-1))]
  raise TrainingDivergedError(step, metrics, records)


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


# --------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------


class Checkpoints:
  """Orbax checkpoints: ``state`` (params + optimizer), ``data`` (iterator state), ``meta``.

  A checkpoint at step ``n`` holds the state *after* ``n`` steps, and the data state
  whose next batch is batch ``n``; restoring it and continuing gives the same batches,
  parameters and losses as never stopping.
  """

  def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int = 3):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, params: Params, opt_state: Any, data_state: Mapping[str, Any],
           meta: Mapping[str, Any] | None = None) -> None:
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
        data=ocp.args.JsonSave(dict(data_state)),
        meta=ocp.args.JsonSave(dict(meta or {}))))
    self._manager.wait_until_finished()

  def restore(self, params_like: Params, opt_state_like: Any, step: int | None = None
              ) -> tuple[int, Params, Any, dict[str, Any], dict[str, Any]] | None:
    """(step, params, opt_state, data_state, meta) of ``step`` (default: the latest), or
    None when there is no checkpoint. ``*_like`` give structure, shapes and shardings."""
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding",
                                                                            None)),
        {"params": params_like, "opt_state": opt_state_like})
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    state = restored["state"]
    return step, state["params"], state["opt_state"], dict(restored["data"]), dict(
        restored["meta"])

  def close(self) -> None:
    self._manager.close()


# --------------------------------------------------------------------------------------
# Bookkeeping: what every trainer does around its update.
# --------------------------------------------------------------------------------------

EvalFn = Callable[[ModelConfig, Params], Mapping[str, float]]


def host_params(params: Params) -> Params:
  """``params`` as NumPy arrays in this process; with several processes a collective
  (every process calls it) that gathers the sharded leaves."""
  if jax.process_count() > 1:
    return multihost.to_host(params)
  return jax.device_get(params)


def save_model(directory: str, model: ModelConfig, params: Params) -> str:
  """``params`` as a plain checkpoint (:func:`rlds_lm.models.checkpoint.save`,
  replacing ``directory``); returns its digest.

  With several processes every process calls it: the parameters are gathered, process 0
  alone removes and writes ``directory`` (several processes removing it would race) and
  the others wait for it, then return the same digest.
  """
  from rlds_lm.models import checkpoint  # pylint: disable=g-import-not-at-top
  host = host_params(params)
  if multihost.is_primary():
    digest = checkpoint.save(directory, model, host, overwrite=True)
  else:
    digest = checkpoint.digest(model, host)
  multihost.barrier(f"saved {directory}")  # no-op with one process
  return digest


def write_config(workdir: str, config: Any) -> None:
  """``workdir/config.json``: the run's config (``config.to_json()``), as it was run
  (by process 0 only when there are several)."""
  if not multihost.is_primary():
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_json(), f, indent=2, sort_keys=True, default=str)


class Bookkeeper:
  """The logging, evaluation, checkpoint timing and end of a run, shared by the trainers.

  Each trainer keeps its own linear loop and calls, after every update::

      logged = books.after_step(done, values, params)   # metrics.jsonl, eval, progress
      if books.checkpoint_due(done):
        checkpoints.save(done, ...)

  and at the end ``books.finish(...)``. ``done`` counts the steps done (``step + 1``).

  Metrics of step ``done`` are logged every ``log_every`` steps and at the last step;
  ``eval_fn`` (when given) runs every ``eval_every`` steps (0: only at the end) and its
  metrics are logged as ``eval/<name>``; a checkpoint is due every ``checkpoint_every``
  steps, at the last step and where this call stops (``end``, a preemption).
  """

  def __init__(self, workdir: str, *, steps: int, end: int, log_every: int,
               checkpoint_every: int, resumed_from: int | None = None,
               eval_every: int = 0, eval_fn: EvalFn | None = None,
               model: ModelConfig | None = None,
               progress: Callable[[int, Mapping[str, float]], None] | None = None):
    self.workdir = workdir
    self.steps, self.end = steps, end
    self.log_every, self.checkpoint_every, self.eval_every = (log_every, checkpoint_every,
                                                              eval_every)
    self.eval_fn, self.model, self.progress = eval_fn, model, progress
    self.metrics = Metrics(os.path.join(workdir, "metrics.jsonl"),
                           resume_from=resumed_from, write=multihost.is_primary())
    self.last: dict[str, float] = {}  # the metrics of the last step done
    self.evals: dict[str, float] = {}  # the last periodic evaluation ...
    self.evaluated_at: int | None = None  # ... and its step

  def evaluate(self, params: Params, step: int) -> dict[str, float]:
    """``eval_fn``'s metrics as ``eval/<name>``, logged at ``step`` ({} without one)."""
    if self.eval_fn is None:
      return {}
    if jax.process_count() > 1:  # every process evaluates the gathered parameters
      params = host_params(params)
    values = {f"eval/{k}": v for k, v in self.eval_fn(self.model, params).items()}
    self.metrics.log(step, values)
    self.evals, self.evaluated_at = values, step
    return values

  def after_step(self, done: int, values: Mapping[str, float], params: Params | None = None
                 ) -> dict[str, float]:
    """Logs step ``done``'s metrics and evaluates ``params`` when due; returns what was
    logged (also passed to ``progress``)."""
    self.last = dict(values)
    logged = {}
    if done % self.log_every == 0 or done == self.steps:
      self.metrics.log(done, values)
      logged = dict(values)
    if self.eval_every and done % self.eval_every == 0:
      logged.update(self.evaluate(params, done))
    if self.progress is not None and logged:
      self.progress(done, logged)
    return logged

  def checkpoint_due(self, done: int) -> bool:
    return done % self.checkpoint_every == 0 or done in (self.steps, self.end)

  @property
  def stopped(self) -> bool:
    """True when this call ends before the run's last step (``stop_at``)."""
    return self.end < self.steps

  def final_eval(self, params: Params) -> dict[str, float]:
    """The evaluation at the last step: the periodic one when it ran there."""
    if self.evaluated_at == self.steps:
      return self.evals
    return self.evaluate(params, self.steps)

  def finish(self, name: str, model: ModelConfig, params: Params, plot_keys: Sequence[str],
             title: str) -> dict[str, Any]:
    """The end of every trainer: the final evaluation, the trained model as a plain
    checkpoint ``workdir/name`` (``pipelines.generate --policy`` samples from it) and the
    metrics plot. Returns ``{"eval", name, name + "_digest", "plot"}``.

    With several processes every process calls it (it gathers the parameters); process 0
    writes the checkpoint and the plot, and every process returns the same values.
    """
    final = self.final_eval(params)
    directory = os.path.join(self.workdir, name)
    digest = save_model(directory, model, params)
    plot = os.path.join(self.workdir, "metrics.png")
    if multihost.is_primary():
      self.metrics.plot(plot, plot_keys, title=title)
    return {"eval": final, name: directory, f"{name}_digest": digest, "plot": plot}


# --------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------


def metric_curve(workdir: str | os.PathLike[str], key: str) -> list[list[float]]:
  """``[[step, value], ...]`` of ``key`` in ``workdir/metrics.jsonl``, by step (the last
  value logged for a step wins: a resumed run logs its redone steps again)."""
  points = {}
  path = os.path.join(os.fspath(workdir), "metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line) if line.strip() else {}
      if key in row:
        points[int(row["step"])] = float(row[key])
  return [[step, points[step]] for step in sorted(points)]


class Metrics:
  """Appends ``{"step": n, ...}`` JSON lines to ``path``; :meth:`plot` draws PNGs.

  ``write=False`` (the processes other than 0 of a multi-process run) neither changes
  nor writes the file; :meth:`read` still reads it.
  """

  def __init__(self, path: str | os.PathLike[str], *, resume_from: int | None = None,
               write: bool = True):
    self.path = os.fspath(path)
    self.write = write
    if not write:
      return
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    if resume_from is not None and os.path.exists(self.path):
      # Drop lines logged after the checkpoint we resume from (they will be redone).
      kept = [line for line in self.read() if line["step"] <= resume_from]
      with open(self.path, "w") as f:
        for line in kept:
          f.write(json.dumps(line, sort_keys=True) + "\n")
    elif resume_from is None and os.path.exists(self.path):
      os.remove(self.path)

  def log(self, step: int, values: Mapping[str, float]) -> None:
    if not self.write:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}},
                         sort_keys=True) + "\n")

  def read(self) -> list[dict[str, float]]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def plot(self, out_path: str, keys: Sequence[str], title: str = "") -> str:
    """One panel per key against the step; returns ``out_path`` (PNG)."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    rows = self.read()
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.2 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
      points = [(r["step"], r[key]) for r in rows if key in r]
      if points:
        ax.plot(*zip(*points), marker=".", linewidth=1)
      ax.set_ylabel(key)
      ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
      fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
