"""ModelConfig: named configs, parameter counts without allocation, FLOPs, JSON."""

from __future__ import annotations

import dataclasses

import pytest

from rlds_lm import models as M
from rlds_lm.models import config as C
from rlds_lm.models import gemma


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_param_count_matches_allocated_params(name):
  config = M.get_config(name)
  params = M.init_params(config, seed=0)
  assert gemma.count_params_of(params) == M.count_params(config)


@pytest.mark.parametrize("name, published", [
    ("gemma2_2b", 2_614_341_888),  # Gemma 2 2B
    ("gemma3_1b", 999_885_952),  # Gemma 3 1B (text)
])
def test_published_shapes_give_published_counts(name, published):
  config = M.get_config(name)
  assert M.count_params(config) == published
  assert gemma.count_params_of(gemma.param_shapes(config)) == published  # shapes only


def test_named_config_sizes():
  assert M.count_params(C.TINY) < 500_000
  assert 10e6 <= M.count_params(C.SMALL) <= 20e6
  assert 100e6 <= M.count_params(C.GEMMA_100M) <= 110e6


def test_published_layer_patterns():
  assert C.GEMMA2_2B.layer_kinds[:4] == ("local", "global", "local", "global")
  kinds = C.GEMMA3_1B.layer_kinds
  assert [i for i, k in enumerate(kinds) if k == "global"] == [5, 11, 17, 23]
  assert C.GEMMA2_2B.attn_logit_softcap == 50.0 and C.GEMMA2_2B.final_logit_softcap == 30.0
  assert C.GEMMA3_1B.attn_logit_softcap is None and C.GEMMA3_1B.qk_norm


def test_flops_per_token():
  config = C.SMALL
  forward = M.flops_per_token(config, 512)
  non_embedding = M.count_params(config) - config.vocab_size * config.d_model
  assert forward > 2 * non_embedding
  assert M.flops_per_token(config, 512, training=True) == 3 * forward
  # local layers stop growing past the window, global ones do not
  long = M.flops_per_token(config, 4096) - M.flops_per_token(config, 2048)
  globals_ = config.layer_kinds.count("global")
  assert long == 4 * config.num_heads * config.head_dim * 2048 * globals_


def test_config_json_round_trip_and_overrides():
  config = M.get_config("small", vocab_size=32_000, dtype="bfloat16")
  assert config.vocab_size == 32_000
  assert M.ModelConfig.from_json(config.to_json()) == config
  renamed = dataclasses.replace(config, name="other", dtype="float32")
  assert renamed.architecture_json() == config.architecture_json()


@pytest.mark.parametrize("overrides, message", [
    (dict(num_kv_heads=3), "num_kv_heads must divide num_heads"),
    (dict(head_dim=15), "head_dim must be even"),
    (dict(layer_pattern=("local", "sliding")), "layer_pattern"),
    (dict(sliding_window=None), "sliding_window"),
    (dict(final_logit_softcap=0.0), "final_logit_softcap must be > 0"),
    (dict(d_model=0), "d_model must be a positive int"),
])
def test_bad_configs_are_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(C.TINY, **overrides)


def test_unknown_names_are_refused():
  with pytest.raises(ValueError, match="unknown model config 'huge'"):
    M.get_config("huge")
  with pytest.raises(ValueError, match=r"unknown fields \['widht'\]"):
    M.ModelConfig.from_dict({**C.TINY.to_dict(), "widht": 3})
