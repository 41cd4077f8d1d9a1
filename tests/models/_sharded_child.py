"""Run by test_model_forward.py with 4 fake CPU devices (XLA_FLAGS set before JAX starts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rlds_lm import models as M
from rlds_lm.models import sharding as shd


def main():
  assert jax.device_count() == 4, jax.devices()
  config = M.get_config("tiny")
  params = M.init_params(config, seed=0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, config.vocab_size, (4, 24)).astype(np.int32)
  lengths = np.array([24, 17, 9, 20], np.int32)
  reference = np.asarray(M.score_logits(config, params, jnp.asarray(tokens),
                                        jnp.asarray(lengths)))
  prompts = [rng.integers(3, config.vocab_size, n).astype(np.int32) for n in (5, 12, 3)]
  sampler = M.SamplerConfig(temperature=0.9, top_k=40)
  plain = M.Policy(config, params, eos_id=None).sample(prompts, [4, 5, 6], sampler, 6)

  for data, model in ((2, 2), (4, 1)):
    mesh = M.make_mesh(data, model)
    sharded = M.shard_params(params, config, mesh)
    q = sharded["layer_0"]["attn"]["q"]
    if model > 1:  # heads and MLP units split over "model"
      assert q.sharding.spec == P(None, "model", None), q.sharding.spec
      assert sharded["layer_0"]["mlp"]["down"].sharding.spec == P("model", None)
    if model > 1:  # created sharded: same values as unsharded
      born_sharded = M.init_params(config, seed=0, mesh=mesh)
      jax.tree.map(np.testing.assert_array_equal, born_sharded, params)
      assert born_sharded["layer_0"]["attn"]["q"].sharding.spec == q.sharding.spec

    with jax.set_mesh(mesh):
      logits = M.score_logits(config, sharded,
                              jax.device_put(tokens, shd.batch_sharding(mesh, tokens.shape)),
                              jax.device_put(lengths, shd.batch_sharding(mesh, lengths.shape)))
    assert logits.sharding.spec[0] == "data", logits.sharding
    np.testing.assert_allclose(np.asarray(logits), reference, rtol=2e-5, atol=2e-5)

    if model > 1:  # sampling, data- and model-parallel
      got = M.Policy(config, params, eos_id=None, mesh=mesh).sample(prompts, [4, 5, 6],
                                                                    sampler, 6)
      for a, b in zip(plain, got):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-4, atol=1e-4)
    print(f"OK ({data}, {model})", flush=True)


if __name__ == "__main__":
  main()
