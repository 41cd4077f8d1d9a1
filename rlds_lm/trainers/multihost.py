"""Several JAX processes, one per host: start-up, the global batch, checkpoints.

On a TPU pod or on several GPU hosts a trainer runs once per host; each run is one JAX
process that sees its own devices and, after :func:`initialize`, every device of the
job. The trainers stay linear and call these helpers (as they call
:mod:`rlds_lm.trainers.common`):

1. :func:`initialize` joins the job (``jax.distributed.initialize``) from flags
   (:func:`add_flags`) or environment variables (:data:`ENV_COORDINATOR`,
   :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`); on CPU it selects the gloo
   collectives first. A single process (no coordinator, one process) is a no-op, so the
   same trainer runs on a laptop unchanged. On Cloud TPU and under SLURM JAX finds the
   cluster itself: ``--coordinator_address=auto``.
2. :func:`check_divides` refuses a process count that does not divide the global batch
   before anything is read (the data pipeline splits every batch into equal contiguous
   slices, one per process).
3. :func:`data_mesh` builds the ``(data, model)`` mesh over *all* devices with each
   process's devices contiguous on the ``data`` axis, so that process ``p`` holds rows
   ``[p * B / P, (p + 1) * B / P)`` of the batch, which are exactly the rows its
   ``DataPipeline(..., shard_index=jax.process_index(),
   shard_count=jax.process_count())`` decodes. :func:`global_batch` then makes the
   global ``jax.Array`` s from those local rows
   (``jax.make_array_from_process_local_data``); no process reads another's rows.
4. Checkpoints: :class:`rlds_lm.trainers.common.Checkpoints` (Orbax) already writes a
   sharded state from several processes into one directory (every process writes its
   own shards, the primary the metadata and the JSON items) and restores it onto any
   mesh, so a checkpoint saved by ``P`` processes restores in ``Q``. The data iterator
   state is ``{"step", "fingerprint"}``, the same in every process (the shard layout is
   not part of it): :func:`check_same` proves that before it is saved.
   :func:`to_host` gathers a sharded tree to NumPy in every process (for the digest or
   a plain checkpoint), and :func:`is_primary` says which process writes the files
   that exist once (metrics, plots, the final plain checkpoint).

Example (the loop of a trainer, run once per host)::

    multihost.initialize(args.coordinator_address, args.num_processes, args.process_id)
    multihost.check_divides(config.batch_size)
    mesh = multihost.data_mesh()
    pipeline = DataPipeline(..., shard_index=jax.process_index(),
                            shard_count=jax.process_count())
    for step in range(start, steps):
      batch = multihost.global_batch(mesh, next(iterator))
      params, opt_state, metrics = train_step(params, opt_state, batch, extra)
      if done % checkpoint_every == 0:
        multihost.check_same("data state", iterator.get_state())
        checkpoints.save(done, params, opt_state, iterator.get_state())
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from rlds_lm.models import sharding as shd

ENV_COORDINATOR = "RLDS_LM_COORDINATOR_ADDRESS"  # "host:port" of process 0, or "auto"
ENV_NUM_PROCESSES = "RLDS_LM_NUM_PROCESSES"  # processes in the job
ENV_PROCESS_ID = "RLDS_LM_PROCESS_ID"  # this process, 0 .. num_processes - 1
AUTO = "auto"  # let JAX find the cluster (Cloud TPU, SLURM, Open MPI)


class ClusterError(RuntimeError):
  """The job could not be joined (no coordinator, wrong ids, a bad layout)."""


def add_flags(parser: argparse.ArgumentParser) -> None:
  """Adds ``--coordinator_address``, ``--num_processes``, ``--process_id`` and
  ``--initialization_timeout`` (defaults from the environment, see :func:`initialize`)."""
  group = parser.add_argument_group("multi-host (one process per host)")
  group.add_argument("--coordinator_address", default=None,
                     help=f"host:port of process 0, the same in every process; 'auto' on "
                          f"Cloud TPU / SLURM; default ${ENV_COORDINATOR}, else one "
                          f"process")
  group.add_argument("--num_processes", type=int, default=None,
                     help=f"processes in the job (default ${ENV_NUM_PROCESSES})")
  group.add_argument("--process_id", type=int, default=None,
                     help=f"this process, 0 .. num_processes - 1 (default "
                          f"${ENV_PROCESS_ID})")
  group.add_argument("--initialization_timeout", type=int, default=300,
                     help="seconds to wait for every process to join")


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ClusterError(f"${name} must be an integer, found {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, initialization_timeout: int = 300,
               environ: Mapping[str, str] | None = None) -> bool:
  """Joins the multi-process job; returns True when there is one (more than a process).

  Arguments left None come from :data:`ENV_COORDINATOR`, :data:`ENV_NUM_PROCESSES` and
  :data:`ENV_PROCESS_ID`. No coordinator and at most one process: a single-process
  run, nothing is initialised. ``coordinator_address="auto"`` lets JAX detect the
  cluster (Cloud TPU pods, SLURM, Open MPI), where it also knows the count and the id.
  Call this before anything touches a device (before ``jax.devices()``).

  Args:
    coordinator_address: ``host:port`` that process 0 listens on and every process can
      reach, identical in all processes.
    num_processes: processes in the job (one per host).
    process_id: this process's id, ``0 .. num_processes - 1``; process 0 is the
      coordinator.
    initialization_timeout: seconds to wait for the coordinator and the other processes.
    environ: the environment (default ``os.environ``).

  Raises:
    ClusterError: an incomplete or inconsistent setting, or the coordinator did not
      answer within the timeout.
  """
  environ = os.environ if environ is None else environ
  if coordinator_address is None:
    coordinator_address = environ.get(ENV_COORDINATOR, "").strip() or None
  if num_processes is None:
    num_processes = _env_int(environ, ENV_NUM_PROCESSES)
  if process_id is None:
    process_id = _env_int(environ, ENV_PROCESS_ID)
  if coordinator_address is None:
    if num_processes not in (None, 1):
      raise ClusterError(f"num_processes={num_processes} needs a coordinator address "
                         f"(--coordinator_address host:port or ${ENV_COORDINATOR}), the "
                         f"same in every process")
    return False
  kwargs: dict[str, Any] = {"initialization_timeout": int(initialization_timeout)}
  if coordinator_address != AUTO:
    if num_processes is None or process_id is None:
      raise ClusterError(f"coordinator {coordinator_address}: num_processes and process_id "
                         f"are needed too (found num_processes={num_processes}, "
                         f"process_id={process_id})")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ClusterError(f"process_id must be in [0, num_processes); found "
                         f"process_id={process_id}, num_processes={num_processes}")
    kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
    if process_id != 0:
      # JAX aborts the whole process (no exception) when the coordinator does not
      # answer; wait for its port first, so that a wrong address is a clear error.
      _wait_for_coordinator(coordinator_address, process_id, num_processes,
                            initialization_timeout)
  # Only the CPU client reads this; without it CPU processes cannot run collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise ClusterError(
        f"could not join the job as process {process_id} of {num_processes} through the "
        f"coordinator {coordinator_address} within {initialization_timeout} s: {e}. Is "
        f"process 0 running, is the address reachable from this host, and do all "
        f"processes pass the same address and count?") from e
  return True


def _wait_for_coordinator(address: str, process_id: int, num_processes: int,
                          timeout: float) -> None:
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ClusterError(f"coordinator address must be host:port, found {address!r}")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ClusterError(
            f"process {process_id} of {num_processes}: the coordinator {address} did not "
            f"answer within {timeout:g} s ({e}). Start process 0 with the same "
            f"--coordinator_address (it listens there), check that this host can reach "
            f"it, and pass the same address and --num_processes everywhere.") from None
      time.sleep(0.5)


def check_divides(batch_size: int, process_count: int | None = None, *,
                  what: str = "batch_size") -> int:
  """Rows per process; refuses a process count that does not divide the global batch.

  Raises:
    ValueError: ``batch_size % process_count != 0`` (says which counts would work).
  """
  count = jax.process_count() if process_count is None else process_count
  if count < 1 or batch_size < 1 or batch_size % count:
    fits = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
    raise ValueError(
        f"a process count that does not divide the dataset/batch: {what} {batch_size} over "
        f"{count} processes; every process reads an equal, contiguous slice of each "
        f"global batch, so {what} must be a multiple of the process count (counts that "
        f"divide {batch_size}: {fits})")
  return batch_size // count


def data_mesh(data: int | None = None, model: int = 1) -> jax.sharding.Mesh:
  """A ``(data, model)`` mesh over every device of the job, processes in order.

  Devices are sorted by (process, id), so process ``p``'s devices form the ``p``-th
  contiguous block of the ``data`` axis. ``data`` defaults to all devices / ``model``.

  Raises:
    ValueError: the mesh does not use every device, or a process's devices do not form
      whole rows of the ``data`` axis (``model`` must divide each host's device count).
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  if data is None:
    data = len(devices) // max(model, 1)
  if data * model != len(devices):
    raise ValueError(f"data_mesh: a ({data}, {model}) mesh must use all {len(devices)} "
                     f"devices of the {jax.process_count()} processes")
  local = jax.local_device_count()
  if local % model:
    raise ValueError(f"data_mesh: model={model} must divide the {local} devices of each "
                     f"process (a model axis across hosts is not supported)")
  return shd.make_mesh(data, model, devices=devices)


def global_batch(mesh: jax.sharding.Mesh, local: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The global batch from this process's rows (``DataPipeline.batch`` of this shard).

  Every array's leading axis is the batch: this process's ``B / P`` rows become rows
  ``[p * B / P, (p + 1) * B / P)`` of a ``[B, ...]`` array sharded over ``data``. With
  one process this is ``jax.device_put`` onto the mesh.
  """
  count = jax.process_count()
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    shape = (value.shape[0] * count,) + value.shape[1:]
    sharding = shd.batch_sharding(mesh, shape)
    out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
  return out


def to_host(tree: Any) -> Any:
  """Every leaf as a NumPy array, whole, in every process (collective: all call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)


def is_primary() -> bool:
  """Whether this process writes the job's single files (metrics, plots, exports)."""
  return jax.process_index() == 0


def check_same(name: str, value: Any) -> None:
  """Refuses values that differ between processes (collective: all call it).

  ``value`` is anything JSON-serialisable (the data iterator state, a config); it is
  compared by SHA-256 digest, so nothing large crosses the network.

  Raises:
    ClusterError: names this process, its value and the processes that disagree.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  text = json.dumps(value, sort_keys=True, default=str)
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], dtype=np.uint32)
  everyone = np.asarray(multihost_utils.process_allgather(digest))
  differ = [p for p in range(everyone.shape[0])
            if not np.array_equal(everyone[p], everyone[0])]
  if differ:
    raise ClusterError(f"{name} differs between processes: process "
                       f"{jax.process_index()} has {text[:500]}; processes {differ} disagree "
                       f"with process 0 (same datasets, config and seed on every host?)")


def barrier(name: str) -> None:
  """Waits until every process reaches ``name`` (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def make_exact_train_step(loss_fn, optimizer, mesh: jax.sharding.Mesh):
  """A jitted ``(params, opt_state, batch, extra) -> (params, opt_state, metrics)`` whose
  result does not depend on how the devices are spread over processes.

  :func:`rlds_lm.trainers.common.make_train_step` lets XLA all-reduce the gradients;
  the order of that sum differs between one process with 4 devices and 2 processes with
  2 (in-process reduction vs gloo / NCCL / ICI), so the parameters agree only to the
  last bits. Here every device computes the sums over its own rows, the partial sums are
  *gathered* (exact: no arithmetic) and added in device order on every device, so the
  same global batch gives the same bits on any process layout with the same number of
  data devices. The price: a gather of ``data`` gradient copies (fine for small models
  and for tests; use ``common.make_train_step`` where memory matters).

  Args:
    loss_fn: ``(params, local_batch, extra) -> (loss_sum, weight, metrics)`` over this
      device's rows: the loss is ``sum(loss_sum) / sum(weight)`` over devices (e.g. the
      summed token NLL and the number of trained tokens); ``metrics`` are sums too.
    optimizer: the optax transformation (applied to the replicated gradients).
    mesh: the ``(data, model)`` mesh, ``model`` of size 1 (parameters replicated).

  Returns:
    the step; its metrics hold ``loss``, ``weight``, ``grad_norm`` and the summed
    ``metrics``. Parameters and optimizer state are donated.
  """
  import functools  # pylint: disable=g-import-not-at-top
  import operator  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

  if int(dict(mesh.shape)[shd.MODEL]) != 1:
    raise ValueError("make_exact_train_step: the mesh's model axis must have size 1")

  def ordered_sum(x):
    gathered = jax.lax.all_gather(x, shd.DATA)  # [data, ...], exact
    return functools.reduce(operator.add, [gathered[i] for i in range(gathered.shape[0])])

  def local(params, batch, extra):
    def scalar(p):
      loss_sum, weight, metrics = loss_fn(p, batch, extra)
      return loss_sum, (weight, metrics)
    (loss_sum, (weight, metrics)), grads = jax.value_and_grad(scalar, has_aux=True)(params)
    total = ordered_sum(weight)
    denominator = jax.numpy.maximum(total, 1.0)
    grads = jax.tree.map(lambda g: ordered_sum(g) / denominator, grads)
    metrics = jax.tree.map(ordered_sum, dict(metrics))
    return ordered_sum(loss_sum) / denominator, total, grads, metrics

  # Replicated outputs: every device adds the same gathered values in the same order
  # (the type checker cannot see that through all_gather, hence check_vma=False).
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(shd.DATA), P()),
                          out_specs=P(), check_vma=False)

  def step(params, opt_state, batch, extra):
    loss, weight, grads, metrics = sharded(params, batch, extra)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics, loss=loss, weight=weight, grad_norm=optax.tree.norm(grads))
    return params, opt_state, metrics

  return jax.jit(step, donate_argnums=(0, 1))
