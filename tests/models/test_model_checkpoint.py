"""Checkpoints: Orbax save/restore, config matching, a digest stable across round trips."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from rlds_lm import models as M
from rlds_lm.models import checkpoint as ckpt
from rlds_lm.models import config as C


@pytest.fixture(scope="module")
def params():
  return M.init_params(C.TINY, seed=0)


@pytest.fixture(scope="module")
def saved(params, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  return path, M.save(path, C.TINY, params)


def test_save_restore_round_trip(params, saved):
  path, digest = saved
  assert sorted(os.listdir(path)) == ["checkpoint.json", "config.json", "params"]
  restored = M.restore(path, C.TINY)
  assert restored.config == C.TINY and restored.digest == digest
  jax.tree.map(np.testing.assert_array_equal, restored.params, params)
  assert M.load_config(path) == C.TINY


def test_digest_is_stable_and_tracks_the_parameters(params, saved):
  path, digest = saved
  assert len(digest) == 16 and int(digest, 16) >= 0
  assert M.digest(C.TINY, params) == digest
  assert M.digest(C.TINY, M.restore(path).params) == digest
  assert ckpt.read_digest(path) == digest
  # a renamed config or another activation dtype is the same function: same digest
  assert M.digest(dataclasses.replace(C.TINY, name="x", dtype="bfloat16"), params) == digest
  changed = jax.tree.map(lambda x: x, params)
  changed["layer_1"]["mlp"]["up"] = changed["layer_1"]["mlp"]["up"].at[3, 4].add(1e-3)
  assert M.digest(C.TINY, changed) != digest
  assert M.digest(dataclasses.replace(C.TINY, final_logit_softcap=20.0), params) != digest


def test_restoring_into_another_config_is_refused(saved):
  path, _ = saved
  other = dataclasses.replace(C.TINY, sliding_window=4, final_logit_softcap=None)
  with pytest.raises(M.CheckpointConfigError) as info:
    M.restore(path, other)
  message = str(info.value)
  assert "was saved for a different model config" in message
  assert "sliding_window: model expects 4, checkpoint has 8" in message
  assert "final_logit_softcap: model expects None, checkpoint has 30.0" in message
  assert set(info.value.differences) == {"sliding_window", "final_logit_softcap"}
  with pytest.raises(M.CheckpointConfigError, match="num_layers: model expects 2"):
    M.restore(path, dataclasses.replace(C.TINY, num_layers=2))
  # runtime fields may differ
  renamed = M.restore(path, dataclasses.replace(C.TINY, name="mine"))
  assert renamed.config.name == "mine"


def test_overwrite_and_incomplete_checkpoints(params, saved, tmp_path):
  path, _ = saved
  with pytest.raises(FileExistsError, match="pass overwrite=True"):
    M.save(path, C.TINY, params)
  with pytest.raises(FileNotFoundError, match="checkpoint.json is missing"):
    M.restore(str(tmp_path))
  with pytest.raises(ValueError, match="params do not match config 'small'"):
    M.save(str(tmp_path / "bad"), C.SMALL, params)


def test_modified_files_are_detected(params, tmp_path):
  path = str(tmp_path / "ckpt")
  M.save(path, C.TINY, params)
  meta_path = os.path.join(path, "checkpoint.json")
  with open(meta_path) as f:
    meta = json.load(f)
  meta["digest"] = "0" * 16
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match="records 0000000000000000"):
    M.restore(path)
  assert M.restore(path, verify=False).digest == "0" * 16


def test_policy_from_checkpoint(params, saved):
  path, digest = saved
  policy = M.Policy.from_checkpoint(path, eos_id=2)
  assert policy.digest == digest and policy.config == C.TINY
  with pytest.raises(M.CheckpointConfigError):
    M.Policy.from_checkpoint(path, eos_id=2, config=dataclasses.replace(C.TINY, d_model=32))


def test_equal_configs_spelled_with_ints_or_floats_share_a_digest(tmp_path):
  import dataclasses
  from rlds_lm.models import checkpoint, config as mc, gemma
  as_float = mc.TINY
  as_int = dataclasses.replace(mc.TINY, rope_base_global=10_000, norm_eps=1e-6)
  params = gemma.init_params(as_float, seed=0)
  assert checkpoint.digest(as_float, params) == checkpoint.digest(as_int, params)
  checkpoint.save(tmp_path / "ckpt", as_int, params)
  assert checkpoint.restore(tmp_path / "ckpt", as_float).digest == checkpoint.digest(
      as_float, params)
