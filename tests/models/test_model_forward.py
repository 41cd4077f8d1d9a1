"""The Gemma-style forward pass: masking, sliding windows, soft-caps, cache, sharding."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlds_lm import models as M
from rlds_lm.models import config as C
from rlds_lm.models import gemma

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def params():
  return M.init_params(C.TINY, seed=0)


def _tokens(length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, C.TINY.vocab_size, (1, length)).astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _layer_output(config, params, tokens, layer):
  """Output [T, D] of one layer applied to the embedded tokens [1, T]."""
  model = gemma.bind(config, params)
  t = tokens.shape[1]
  positions = jnp.arange(t, dtype=jnp.int32)[None]
  valid = jnp.ones((1, t), bool)
  mask = model.masks(positions, positions, valid)[model.layers[layer].kind]
  out, _ = model.layers[layer](model.embedder.encode(tokens), positions, mask)
  return out[0]


def _layer_outputs(config, params, tokens, layer):
  return np.asarray(_layer_output(config, params, jnp.asarray(tokens), layer))


def test_local_layer_does_not_attend_beyond_its_window(params):
  window, early = C.TINY.sliding_window, 2
  tokens = _tokens(24)
  perturbed = tokens.copy()
  perturbed[0, early] = 3 + (tokens[0, early] - 3 + 100) % 256
  assert C.TINY.layer_kinds[0] == "local" and C.TINY.layer_kinds[1] == "global"
  before = _layer_outputs(C.TINY, params, tokens, 0)
  after = _layer_outputs(C.TINY, params, perturbed, 0)
  seen = slice(early, early + window)  # positions whose window contains `early`
  assert np.all(np.abs(before[seen] - after[seen]).max(axis=-1) > 1e-4)
  np.testing.assert_array_equal(before[early + window:], after[early + window:])
  np.testing.assert_array_equal(before[:early], after[:early])
  # the same change does reach every later position of a global layer
  before_g = _layer_outputs(C.TINY, params, tokens, 1)
  after_g = _layer_outputs(C.TINY, params, perturbed, 1)
  assert np.all(np.abs(before_g[early:] - after_g[early:]).max(axis=-1) > 1e-4)


def test_all_local_model_has_a_bounded_receptive_field():
  config = dataclasses.replace(C.TINY, layer_pattern=("local",), num_layers=3)
  params = M.init_params(config, seed=1)
  tokens = _tokens(32)
  perturbed = tokens.copy()
  perturbed[0, 0] = 3 + (tokens[0, 0] - 3 + 7) % 256
  reach = config.num_layers * (config.sliding_window - 1)  # 21 positions
  lengths = jnp.array([32])
  a = np.asarray(M.score_logits(config, params, jnp.asarray(tokens), lengths))[0]
  b = np.asarray(M.score_logits(config, params, jnp.asarray(perturbed), lengths))[0]
  np.testing.assert_array_equal(a[reach + 1:], b[reach + 1:])
  assert np.abs(a[reach] - b[reach]).max() > 0


def test_final_softcap_bounds_logits(params):
  config = dataclasses.replace(C.TINY, final_logit_softcap=2.0)
  loud = jax.tree.map(lambda x: x * 8.0, params)  # large logits without the cap
  tokens, lengths = jnp.asarray(_tokens(16)), jnp.array([16])
  capped = np.asarray(M.score_logits(config, loud, tokens, lengths))
  uncapped = np.asarray(M.score_logits(dataclasses.replace(config, final_logit_softcap=None),
                                       loud, tokens, lengths))
  assert np.abs(uncapped).max() > 4.0
  assert np.abs(capped).max() <= 2.0
  np.testing.assert_allclose(capped, 2.0 * np.tanh(uncapped / 2.0), rtol=1e-4, atol=1e-5)


def test_softcap_function():
  x = jnp.linspace(-1e4, 1e4, 101)
  assert float(jnp.abs(gemma.softcap(x, 50.0)).max()) <= 50.0
  np.testing.assert_allclose(gemma.softcap(jnp.array([1e-3]), 50.0), [1e-3], rtol=1e-6)
  assert gemma.softcap(x, None) is x


def test_attention_softcap_bounds_attention_logits(params):
  """With a tiny cap every allowed key gets (almost) the same weight: causal mean of v."""
  config = dataclasses.replace(C.TINY, attn_logit_softcap=1e-4)
  model = gemma.bind(config, params)
  attn = model.layer_1.attn  # global
  t = 10
  x = jax.random.normal(jax.random.key(0), (1, t, config.d_model)) * 3
  positions = jnp.arange(t, dtype=jnp.int32)[None]
  mask = gemma.attention_mask(positions, positions, jnp.ones((1, t), bool), None)
  out, _ = attn(x, positions, mask)
  v = jnp.einsum("btd,dnh->btnh", x, attn.v[...])  # [1, T, K, H]
  mean_v = jnp.cumsum(v, axis=1) / jnp.arange(1, t + 1)[None, :, None, None]
  groups = config.num_heads // config.num_kv_heads
  per_head = jnp.repeat(mean_v, groups, axis=2)  # query head n uses kv head n // groups
  expected = jnp.einsum("btnh,nhd->btd", per_head, attn.o[...])
  np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("variant", ["gemma2", "gemma3"])
def test_cached_decoding_equals_full_forward(variant, params):
  config = C.TINY
  if variant == "gemma3":
    config = dataclasses.replace(C.TINY, layer_pattern=("local",) * 2 + ("global",),
                                 qk_norm=True, attn_logit_softcap=None,
                                 final_logit_softcap=None, rope_base_global=1e6)
    params = M.init_params(config, seed=3)
  tokens = jnp.asarray(_tokens(20, seed=5))
  full = np.asarray(M.score_logits(config, params, tokens, jnp.array([20])))[0]
  # prefill 12 tokens (left-padded by 4), then feed the other 8 one at a time
  prompt = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), tokens[:, :12]], axis=1)
  valid = jnp.arange(16)[None] >= 4
  positions = jnp.maximum(jnp.arange(16)[None] - 4, 0)
  forward = jax.jit(M.forward, static_argnums=0)
  cache = gemma.init_cache(config, 1, 24)
  logits, cache = forward(config, params, prompt, positions, valid, cache=cache,
                          cache_index=jnp.int32(0))
  got = [np.asarray(logits[0, 4:])]
  for i in range(12, 20):
    logits, cache = forward(config, params, tokens[:, i:i + 1], jnp.array([[i]]),
                            jnp.ones((1, 1), bool), cache=cache, cache_index=jnp.int32(4 + i))
    got.append(np.asarray(logits[0]))
  np.testing.assert_allclose(np.concatenate(got), full, rtol=1e-4, atol=1e-4)


def test_padding_does_not_change_logits(params):
  tokens = jnp.asarray(_tokens(10, seed=2))
  alone = np.asarray(M.score_logits(C.TINY, params, tokens, jnp.array([10])))[0]
  padded = jnp.concatenate([tokens, jnp.zeros((1, 6), jnp.int32)], axis=1)
  batch = jnp.concatenate([padded, jnp.asarray(_tokens(16, seed=9))], axis=0)
  both = np.asarray(M.score_logits(C.TINY, params, batch, jnp.array([10, 16])))
  np.testing.assert_allclose(both[0, :10], alone, rtol=1e-5, atol=1e-5)


def test_params_carry_logical_axes():
  axes = gemma.param_logical_axes(C.TINY)
  assert axes["embedder"]["table"] == ("vocab", "embed")
  assert axes["layer_0"]["mlp"]["gate"] == ("embed", "mlp")
  assert axes["layer_0"]["attn"]["q"] == ("embed", "heads", "head_dim")
  assert axes["layer_0"]["attn"]["k"] == ("embed", "kv_heads", "head_dim")


def test_bind_refuses_params_of_another_config(params):
  with pytest.raises(ValueError, match="params do not match config 'small'"):
    gemma.bind(C.SMALL, params)


def test_sharded_forward_and_sampling_match_unsharded():
  """(2, 2) data x model and (4, 1) meshes on 4 fake CPU devices, in a child process."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, os.path.join(HERE, "_sharded_child.py")],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  assert "OK (2, 2)" in result.stdout and "OK (4, 1)" in result.stdout, result.stdout


@pytest.mark.parametrize("name,window", [("tiny", 8), ("small", 16)])
def test_fused_attention_matches_the_masked_einsums(name, window):
  """attention="fused" (jax.nn.dot_product_attention) on left-aligned rows with
  padding and sliding windows gives the explicit-mask path's logits."""
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(mc.get_config(name), attn_logit_softcap=None,
                               sliding_window=window)
  fused = dataclasses.replace(config, attention="fused")
  params = gemma.init_params(config, 0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, config.vocab_size, (3, 40)).astype(np.int32)
  lengths = np.array([40, 17, 5], np.int32)
  positions = np.broadcast_to(np.arange(40, dtype=np.int32), (3, 40))
  valid = positions < lengths[:, None]
  expected, _ = gemma.forward(config, params, tokens, positions, valid)
  found, _ = gemma.forward(fused, params, tokens, positions, valid, lengths=lengths)
  for row, n in enumerate(lengths):
    np.testing.assert_allclose(np.asarray(found)[row, :n], np.asarray(expected)[row, :n],
                               atol=2e-5)
  with pytest.raises(ValueError, match="soft-cap"):
    dataclasses.replace(mc.get_config(name), attention="fused")
