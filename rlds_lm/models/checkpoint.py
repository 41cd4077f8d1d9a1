"""Checkpoints: parameters through Orbax, the config as JSON, and a stable digest.

Layout of a checkpoint directory::

  config.json       the ModelConfig (ModelConfig.to_dict)
  params/           the parameter tree (orbax StandardCheckpointer)
  checkpoint.json   {"format", "digest", "num_params"}; written last, so a directory
                    without it is an interrupted save and is refused

The **digest** (16 hex digits) identifies the function a checkpoint computes: SHA-256
over the architecture fields of the config (canonical JSON, without ``name`` and
``dtype``) and every parameter (path, dtype, shape, little-endian bytes) in sorted path
order. It is what rollout episodes record as ``policy/digest``; it does not depend on the
directory, the save time, Orbax's file layout or how the arrays are sharded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from rlds_lm.models import gemma
from rlds_lm.models.config import ModelConfig
from rlds_lm.models.config import config_differences

FORMAT = "rlds_lm.models.checkpoint/1"
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
META_FILE = "checkpoint.json"
DIGEST_LENGTH = 16


class CheckpointConfigError(ValueError):
  """A checkpoint was saved for a model with another config.

  Attributes:
    differences: ``{field: (expected, found in checkpoint)}``.
  """

  def __init__(self, path: str, differences: dict[str, tuple[Any, Any]]):
    self.differences = differences
    listed = "; ".join(f"{k}: model expects {a!r}, checkpoint has {b!r}"
                       for k, (a, b) in sorted(differences.items()))
    super().__init__(f"checkpoint {path} was saved for a different model config, refusing "
                     f"to restore it ({listed})")


class Checkpoint(NamedTuple):
  """A restored checkpoint."""

  config: ModelConfig
  params: gemma.Params
  digest: str


def digest(config: ModelConfig, params: gemma.Params) -> str:
  """16 hex digits of SHA-256 over the config's architecture and the parameters."""
  h = hashlib.sha256()
  h.update(FORMAT.encode() + b"\n")
  h.update(config.architecture_json().encode() + b"\n")
  flat = nnx.traversals.flatten_mapping(params)
  for path in sorted(flat, key=lambda p: "/".join(map(str, p))):
    array = np.asarray(jax.device_get(flat[path]))
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    name = "/".join(map(str, path))
    h.update(f"{name}:{array.dtype.str}:{list(array.shape)}\n".encode())
    h.update(array.tobytes())
  return h.hexdigest()[:DIGEST_LENGTH]


def save(path: str | os.PathLike[str], config: ModelConfig, params: gemma.Params, *,
         overwrite: bool = False) -> str:
  """Saves ``params`` and ``config`` under ``path``; returns the digest.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.
    ValueError: ``params`` do not fit ``config``.
  """
  path = os.path.abspath(os.fspath(path))
  gemma.bind(config, params)  # refuses params of another shape before writing anything
  if os.path.exists(path):
    if not overwrite:
      raise FileExistsError(f"checkpoint directory {path} exists; pass overwrite=True to "
                            f"replace it")
    shutil.rmtree(path)
  os.makedirs(path)
  # This process alone writes host arrays: with several JAX processes the caller saves
  # on one of them (Orbax would otherwise wait for the others at its barriers).
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  with ocp.StandardCheckpointer(multiprocessing_options=alone) as checkpointer:
    checkpointer.save(os.path.join(path, PARAMS_DIR), params)
    checkpointer.wait_until_finished()
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  value = digest(config, params)
  meta = {"format": FORMAT, "digest": value, "num_params": gemma.count_params_of(params)}
  with open(os.path.join(path, META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  return value


def _read_meta(path: str) -> dict[str, Any]:
  meta_path = os.path.join(path, META_FILE)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path} is not a complete checkpoint: {META_FILE} is missing "
                            f"(not a checkpoint directory, or an interrupted save)")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"checkpoint {path}: expected format {FORMAT!r}, found "
                     f"{meta.get('format')!r}")
  return meta


def load_config(path: str | os.PathLike[str]) -> ModelConfig:
  """The config a checkpoint was saved with."""
  path = os.path.abspath(os.fspath(path))
  _read_meta(path)
  with open(os.path.join(path, CONFIG_FILE)) as f:
    return ModelConfig.from_dict(json.load(f))


def read_digest(path: str | os.PathLike[str]) -> str:
  """The digest recorded when the checkpoint was saved (no parameters are read)."""
  return _read_meta(os.path.abspath(os.fspath(path)))["digest"]


def restore(path: str | os.PathLike[str], config: ModelConfig | None = None, *,
            mesh: jax.sharding.Mesh | None = None, verify: bool = True) -> Checkpoint:
  """Restores a checkpoint saved by :func:`save`.

  Args:
    path: checkpoint directory.
    config: the model to restore into; a checkpoint saved with different architecture
      fields is refused. None accepts the saved config.
    mesh: restore the parameters sharded on this mesh (else on the default device).
    verify: recompute the digest and compare it with the recorded one.

  Returns:
    (config, params, digest); with ``config`` given, its runtime fields (name, dtype) are
    kept.

  Raises:
    CheckpointConfigError: ``config`` does not match the saved config (names the fields).
    FileNotFoundError: not a complete checkpoint.
    ValueError: the parameters do not reproduce the recorded digest.
  """
  path = os.path.abspath(os.fspath(path))
  meta = _read_meta(path)
  saved = load_config(path)
  if config is None:
    config = saved
  else:
    differences = config_differences(config, saved)
    if differences:
      raise CheckpointConfigError(path, differences)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, gemma.param_shapes(config))
  else:
    shardings = gemma.param_shardings(config, mesh)
  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        gemma.param_shapes(config), shardings)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(path, PARAMS_DIR), target)
  recorded = meta["digest"]
  if verify:
    found = digest(config, params)
    if found != recorded:
      raise ValueError(f"checkpoint {path}: parameters give digest {found}, but "
                       f"{META_FILE} records {recorded} (corrupted or modified files)")
  return Checkpoint(config, params, recorded)
