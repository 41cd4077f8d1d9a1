"""Child of test_multihost: one process of a (possibly multi-process) training run.

``python _multihost_child.py SPEC_JSON``; the spec holds ``dataset``, ``workdir``,
``steps``, ``checkpoint_every``, ``out`` (this process's JSON lines) and optionally
``die_after`` and ``die_process`` (that process kills itself after that many steps,
before the next checkpoint). Joining the job comes from the environment
(``RLDS_LM_COORDINATOR_ADDRESS`` ...), the device count from ``XLA_FLAGS``.

Every process appends to ``out``: per step the (dataset, record) pairs of its rows,
the global batch's SHA-256 (gathered whole) and the loss, and at the end the parameter
digest.
"""

import dataclasses
import hashlib
import json
import os
import sys

import jax
import numpy as np

from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.models import config as model_config
from rlds_lm.models import gemma
from rlds_lm.trainers import common
from rlds_lm.trainers import data as D
from rlds_lm.trainers import multihost

MODEL = dataclasses.replace(model_config.TINY, name="mh", d_model=32, num_layers=1,
                            num_heads=2, num_kv_heads=1, mlp_dim=32,
                            layer_pattern=(model_config.GLOBAL,))
BATCH, LENGTH = 8, 16


def _batch_digest(batch) -> str:
  h = hashlib.sha256()
  for key in sorted(batch):
    array = multihost.to_host(batch[key])
    h.update(f"{key}:{array.dtype.str}:{list(array.shape)}\n".encode())
    h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()[:16]


def main(spec_path: str) -> None:
  with open(spec_path) as f:
    spec = json.load(f)
  multihost.initialize(initialization_timeout=int(spec.get("timeout", 60)))
  out = open(spec["out"], "a")  # pylint: disable=consider-using-with

  def emit(**row):
    out.write(json.dumps({"process": jax.process_index(), **row}) + "\n")
    out.flush()

  multihost.check_divides(BATCH)
  mesh = multihost.data_mesh()
  emit(devices=len(jax.devices()), local_devices=jax.local_device_count(),
       processes=jax.process_count())
  pipeline = D.DataPipeline(
      {spec["dataset"]: 1.0}, D.DataConfig(batch_size=BATCH, max_length=LENGTH, seed=5),
      optional=(), vocab_size=MODEL.vocab_size, shard_index=jax.process_index(),
      shard_count=jax.process_count())

  def loss_fn(params, batch, extra):
    del extra
    valid = batch[D.SEGMENT_IDS] > 0
    logp = common.sequence_logprobs(MODEL, params, batch[D.TOKENS], valid)[:, :-1]
    targets, mask = common.targets_and_mask(batch)
    nll = -common.gather_tokens(logp, targets)
    tokens = jnp_sum(mask)
    return jnp_sum(nll * mask), tokens, {"tokens": tokens}

  optimizer = common.make_optimizer(common.OptimConfig(learning_rate=1e-2, warmup_steps=1,
                                                       total_steps=spec["steps"]))
  with jax.set_mesh(mesh):
    params = gemma.init_params(MODEL, 11, mesh=mesh)
    opt_state = common.init_opt_state(optimizer, params)
  train_step = multihost.make_exact_train_step(loss_fn, optimizer, mesh)
  checkpoints = common.Checkpoints(os.path.join(spec["workdir"], "checkpoints"),
                                   max_to_keep=10)
  start, data_state = 0, None
  restored = checkpoints.restore(params, opt_state)
  if restored is not None:
    start, params, opt_state, data_state, _ = restored
  emit(resumed_from=start)
  iterator = pipeline.iterator(data_state)
  try:
    for step in range(start, spec["steps"]):
      emit(step=step, rows=pipeline.rows(step))  # the records this process decodes
      batch = multihost.global_batch(mesh, next(iterator))
      emit(step=step, batch=_batch_digest(batch))
      # Outside jax.set_mesh: inside the step's shard_map the model runs per device.
      params, opt_state, metrics = train_step(params, opt_state, batch, {})
      emit(step=step, loss=common.to_floats(metrics)["loss"])
      done = step + 1
      if done == spec.get("die_after") and jax.process_index() == spec.get("die_process"):
        os._exit(3)  # a crash between checkpoints: nothing flushed, nothing saved
      if done % spec["checkpoint_every"] == 0 or done == spec["steps"]:
        multihost.check_same("data iterator state", iterator.get_state())
        checkpoints.save(done, params, opt_state, iterator.get_state())
  finally:
    iterator.close()
    checkpoints.close()
  emit(digest=ckpt_lib.digest(MODEL, multihost.to_host(params)))
  out.close()


def jnp_sum(x):
  return jax.numpy.sum(x.astype(jax.numpy.float32))


if __name__ == "__main__":
  main(sys.argv[1])
