"""The gemma-library adapter: rlds_lm's model computes what the gemma library computes.

Tiny randomly initialised gemma-library models (nothing is downloaded) are converted and
their logits and greedy samples compared with the library's own. Needs the optional
``gemma`` extra (``pip install 'rlds_lm[gemma]'``); skipped without it, except the test
of the message that tells how to install it.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlds_lm import models as M
from rlds_lm.models import config as C
from rlds_lm.models import gemma
from rlds_lm.models import gemma_adapter as A

VOCAB = 96
LOGIT_TOLERANCE = 1e-4  # float32, CPU


@pytest.fixture(scope="module")
def gm():
  pytest.importorskip("gemma")
  return A.import_gm()


def _tiny_gemma_configs(gm) -> dict:
  """Small gemma-library configs covering each branch of the conversion."""
  local, glob = gm.nn.AttentionType.LOCAL_SLIDING, gm.nn.AttentionType.GLOBAL
  query_norm = gm.nn.config.QueryPreAttentionNormalisation
  base = dict(num_embed=VOCAB, use_post_attn_norm=True, use_post_ffw_norm=True)
  return {
      # Gemma 2 style: GQA, soft-caps, [2, D, F] gating, queries by (D / N) ** -0.5.
      "gemma2_like": gm.nn.config.TransformerConfig(
          **base, embed_dim=48, hidden_dim=64, num_heads=4, head_dim=16, num_kv_heads=2,
          final_logit_softcap=8.0, attn_logits_soft_cap=10.0,
          attention_types=(local, glob) * 2, sliding_window_size=4,
          query_pre_attn_norm=query_norm.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS,
          transpose_gating_einsum=False),
      # Gemma 3 style: MQA, QK-norm, rope bases per kind, pattern cut short (L, L, G, L).
      "gemma3_like": gm.nn.config.TransformerConfig(
          **base, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8, num_kv_heads=1,
          final_logit_softcap=None, use_qk_norm=True,
          attention_types=gm.nn.config.make_attention_layers_types(
              (local, local, glob), num_layers=4),
          sliding_window_size=3, local_base_frequency=10_000,
          global_base_frequency=1_000_000, transpose_gating_einsum=True),
      # No grouping (fused qkv_einsum), queries times D / N.
      "fused_qkv": gm.nn.config.TransformerConfig(
          **base, embed_dim=32, hidden_dim=32, num_heads=2, head_dim=8, num_kv_heads=2,
          final_logit_softcap=None, attn_logits_soft_cap=20.0, attention_types=(glob,) * 2,
          query_pre_attn_norm=query_norm.BY_EMBED_DIM_DIV_NUM_HEADS,
          transpose_gating_einsum=True),
  }


def _random_gemma_params(model, seed: int):
  """Random params in ``model.init``'s layout, norm scales included (``init`` sets them to
  zero), so that a mis-mapped weight changes the logits. Drawn with NumPy from the
  shapes alone: initialising eagerly compiles one kernel per shape, seconds on CPU. The
  embedding is kept small beside the blocks' outputs, or the tied output projection
  mostly predicts the input token again and greedy samples repeat it."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))
  leaves, treedef = jax.tree.flatten_with_path(shapes["params"])
  rng = np.random.default_rng(seed)
  redrawn = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    scale = 0.5 if "scale" in name else 0.1 if "input_embedding" in name else 0.3
    redrawn.append(jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype))
  return jax.tree.unflatten(treedef, redrawn)


def _tokens() -> np.ndarray:
  """[3, 12]: a full row, a right-padded and a left-padded one (gemma pads with id 0)."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, VOCAB, (3, 12)).astype(np.int32)
  tokens[1, 8:] = 0
  tokens[2, :5] = 0
  return tokens


@jax.jit
def _gemma_layout(tokens):
  """Positions and validity as the gemma library derives them (id 0 is padding)."""
  valid = tokens != 0
  positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
  return positions, valid


_forward = jax.jit(gemma.forward, static_argnums=0)


def _rlds_logits(config, params, tokens) -> np.ndarray:
  positions, valid = _gemma_layout(jnp.asarray(tokens))
  return np.asarray(_forward(config, params, jnp.asarray(tokens), positions, valid)[0])


def _gemma_logits(model, gemma_params, tokens) -> np.ndarray:
  return np.asarray(model.apply({"params": gemma_params}, jnp.asarray(tokens)).logits)


def _assert_logits_close(ours, theirs, tokens):
  valid = tokens != 0
  diff = np.abs(ours - theirs)[valid]
  assert diff.max() < LOGIT_TOLERANCE, f"max |logit difference| {diff.max():.3g}"
  assert np.abs(theirs[valid]).max() > 1.0  # the comparison is not between near-zeros


# -- without the library ------------------------------------------------------------------


def test_missing_library_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "gemma", None)  # `import gemma` now fails
  with pytest.raises(ImportError, match=r"pip install 'rlds_lm\[gemma\]'"):
    A.import_gm()
  with pytest.raises(ImportError, match=r"rlds_lm\[gemma\]"):
    A.load_gemma_checkpoint("/nonexistent", gemma_model="Gemma3_1B")


def test_to_gemma_params_needs_no_library(monkeypatch):
  monkeypatch.setitem(sys.modules, "gemma", None)
  params = M.init_params(C.TINY, seed=0)
  converted = A.to_gemma_params(C.TINY, params)
  assert converted["layer_0"]["attn"]["q_einsum"]["w"].shape == (4, 64, 16)
  assert converted["layer_0"]["mlp"]["gating_einsum"].shape == (2, 128, 64)


# -- configs ------------------------------------------------------------------------------


def test_published_gemma3_1b_config_is_rlds_lm_gemma3_1b(gm):
  assert A.from_gemma_config(gm.nn.Gemma3_1B, name="gemma3_1b") == C.GEMMA3_1B


def test_published_gemma2_2b_config_differs_only_in_padded_vocab(gm):
  converted = A.from_gemma_config("Gemma2_2B")
  assert converted.name == "gemma2_2b"
  # The released Gemma 2 embedding has 256,128 rows; the tokenizer (and rlds_lm's
  # shape-only config, after the paper) has 256,000 ids.
  assert C.config_differences(C.GEMMA2_2B, converted) == {"vocab_size": (256_000, 256_128)}


def test_query_scaling_of_gemma2_27b(gm):
  converted = A.from_gemma_config(gm.nn.Gemma2_27B)
  assert converted.query_pre_attn_scalar == 4608 / 32 != converted.head_dim


def test_rope_scaling_is_refused_with_the_field_named(gm):
  with pytest.raises(ValueError, match=r"global_scale_factor=8.0"):
    A.from_gemma_config(gm.nn.Gemma3_4B)


def test_layers_without_post_norms_are_refused(gm):
  config = dataclasses.replace(_tiny_gemma_configs(gm)["gemma3_like"],
                               use_post_ffw_norm=False)
  with pytest.raises(ValueError, match=r"use_post_ffw_norm=False"):
    A.from_gemma_config(config)


@pytest.mark.parametrize("name", ["gemma2_like", "gemma3_like", "fused_qkv"])
def test_config_round_trip(gm, name):
  gemma_config = _tiny_gemma_configs(gm)[name]
  config = A.from_gemma_config(gemma_config)
  back = A.to_gemma_config(config,
                           transpose_gating_einsum=gemma_config.transpose_gating_einsum)
  assert A.from_gemma_config(back) == config
  assert tuple(back.attention_types) == tuple(gemma_config.attention_types)


# -- logits -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma2_like", "gemma3_like", "fused_qkv"])
def test_logits_match_the_gemma_library(gm, name):
  gemma_config = _tiny_gemma_configs(gm)[name]
  model = gm.nn.Transformer(config=gemma_config, dtype=jnp.float32)
  gemma_params = _random_gemma_params(model, seed=3)
  config, params = A.from_gemma_params(gemma_config, gemma_params, name=name)
  tokens = _tokens()
  _assert_logits_close(_rlds_logits(config, params, tokens),
                       _gemma_logits(model, gemma_params, tokens), tokens)
  # And back: the conversion loses nothing.
  back = A.to_gemma_params(config, params,
                           transpose_gating_einsum=gemma_config.transpose_gating_einsum)
  jax.tree.map(np.testing.assert_array_equal, back, gemma_params)


def test_rlds_lm_tiny_model_runs_in_the_gemma_library(gm):
  config = dataclasses.replace(C.TINY, vocab_size=VOCAB)
  params = M.init_params(config, seed=1)
  params = jax.tree.map(lambda x: x + 0.3 * jnp.ones_like(x) if x.ndim == 1 else x, params)
  model = gm.nn.Transformer(config=A.to_gemma_config(config), dtype=jnp.float32)
  gemma_params = A.to_gemma_params(config, params)
  tokens = _tokens()
  _assert_logits_close(_rlds_logits(config, params, tokens),
                       _gemma_logits(model, gemma_params, tokens), tokens)
  _, back = A.from_gemma_params(model, gemma_params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_init_output_and_bfloat16_params_are_accepted(gm):
  gemma_config = _tiny_gemma_configs(gm)["gemma3_like"]
  model = gm.nn.Transformer(config=gemma_config, dtype=jnp.float32)
  gemma_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16),
                              _random_gemma_params(model, seed=4))
  _, from_bf16 = A.from_gemma_params(model, {"params": gemma_params})
  _, reference = A.from_gemma_params(
      model, jax.tree.map(lambda x: x.astype(jnp.float32), gemma_params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(from_bf16))
  jax.tree.map(np.testing.assert_array_equal, from_bf16, reference)


def test_unknown_and_misshapen_params_are_refused(gm):
  gemma_config = _tiny_gemma_configs(gm)["gemma3_like"]
  model = gm.nn.Transformer(config=gemma_config, dtype=jnp.float32)
  gemma_params = _random_gemma_params(model, seed=5)
  with_lora = jax.tree.map(lambda x: x, gemma_params)
  with_lora["layer_1"]["attn"]["q_einsum"]["lora"] = {"a": jnp.zeros((32, 2))}
  with pytest.raises(ValueError, match=r"layer_1/attn/q_einsum/lora/a"):
    A.from_gemma_params(gemma_config, with_lora)
  misshapen = jax.tree.map(lambda x: x, gemma_params)
  misshapen["layer_2"]["mlp"]["linear"] = jnp.zeros((32, 64))
  with pytest.raises(ValueError, match=r"'layer_2/mlp/linear' has shape \(32, 64\)"):
    A.from_gemma_params(gemma_config, misshapen)


# -- checkpoints and sampling -------------------------------------------------------------


def test_load_gemma_checkpoint_through_the_library(gm, tmp_path):
  gemma_config = _tiny_gemma_configs(gm)["gemma2_like"]
  model = gm.nn.Transformer(config=gemma_config, dtype=jnp.float32)
  gemma_params = _random_gemma_params(model, seed=6)
  stored = jax.tree.map(lambda x: x.astype(jnp.bfloat16), gemma_params)  # as released
  gm.ckpts.save_params(stored, tmp_path / "ckpt", wait_until_finished=True)
  config, params = A.load_gemma_checkpoint(tmp_path / "ckpt", gemma_model=model,
                                           name="tiny_gemma2", max_seq_len=64)
  assert config == A.from_gemma_config(gemma_config, name="tiny_gemma2", max_seq_len=64)
  _, expected = A.from_gemma_params(gemma_config, stored)
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  # The converted checkpoint saves and restores like any rlds_lm one.
  M.save(tmp_path / "rlds", config, params)
  assert M.restore(tmp_path / "rlds").digest == M.digest(config, params)


def _int_tokenizer(gm):
  """A gemma-library tokenizer of space-separated ids (the real ones need a download)."""

  class Ids(gm.text.SpecialTokens):
    PAD = 0
    EOS = 1
    BOS = 2
    UNK = 3
    MASK = 4
    CUSTOM = 5
    START_OF_TURN = 6
    END_OF_TURN = 1  # an alias of EOS: the only stop token, as in rlds_lm's sampler

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class IntTokenizer(gm.text.Tokenizer):
    path: str = ""
    special_tokens = Ids

    def encode(self, text, *, add_bos=False, add_eos=False):
      ids = [int(t) for t in text.split()]
      return [Ids.BOS] * add_bos + ids + [Ids.EOS] * add_eos

    def decode(self, ids):
      return " ".join(str(int(i)) for i in np.asarray(ids).reshape(-1))

  return IntTokenizer()


def test_greedy_samples_match_the_gemma_sampler(gm):
  gemma_config = _tiny_gemma_configs(gm)["gemma3_like"]
  model = gm.nn.Transformer(config=gemma_config, dtype=jnp.float32)
  gemma_params = _random_gemma_params(model, seed=7)
  config, params = A.from_gemma_params(gemma_config, gemma_params, max_seq_len=64)
  prompts = ["17 40 9 33 71 5 12", "60 8 21"]
  max_new = 16
  sampler = gm.text.Sampler(model=model, params=gemma_params,
                            tokenizer=_int_tokenizer(gm), cache_length=64,
                            max_out_length=max_new, pad_length=None)
  theirs = np.asarray(sampler.sample(prompts, max_new_tokens=max_new,
                                     return_state=True).tokens)
  ours = M.sample(config, params,
                  [np.array([2] + [int(t) for t in p.split()], np.int32) for p in prompts],
                  seeds=[0, 1], sampler=M.SamplerConfig.greedy(), max_new_tokens=max_new,
                  eos_id=1)
  for row, completion in enumerate(ours.completions()):
    n = len(completion)
    np.testing.assert_array_equal(completion.tokens, theirs[row, :n])
    assert not theirs[row, n:].any()  # gemma pads with 0 after its end token
  assert len(set(ours.tokens.reshape(-1).tolist())) > 4  # not one token repeated


def test_a_gemma_checkpoint_is_a_backend(gm, tmp_path):
  from rlds_lm.backends import local  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  gemma_config = _tiny_gemma_configs(gm)["gemma3_like"]
  model = gm.nn.Transformer(config=gemma_config, dtype=jnp.float32)
  gm.ckpts.save_params(_random_gemma_params(model, seed=2), tmp_path / "ckpt",
                       wait_until_finished=True)

  class Ids:  # a tokenizer of the id space (the real Gemma one needs a download)
    name, pad_id, eos_id, vocab_size = "ids", 0, 1, VOCAB

    def decode(self, ids):
      return " ".join(str(int(i)) for i in ids)

  backend = local.LocalBackend.from_gemma_checkpoint(
      tmp_path / "ckpt", gemma_model=model, tokenizer=Ids(), name="tiny_gemma3",
      max_seq_len=64)
  prompt = np.array([2, 17, 33, 5], np.int32)
  gen = backend.sample([prompt], [3], sampling.SamplerConfig(temperature=0.9), 6,
                       top_logprobs=2)[0]
  assert 0 < len(gen.tokens) <= 6 and gen.top_ids.shape == (len(gen.tokens), 2)
  teacher = backend.annotate([np.concatenate([prompt, gen.tokens])], [len(prompt)],
                             top_k=3)[0]
  assert teacher["topk_ids"].shape == (len(gen.tokens), 3)
  assert backend.describe()["model"] == "tiny_gemma3"
