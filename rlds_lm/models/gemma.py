"""A Gemma-style decoder-only transformer in Flax NNX.

What it shares with Gemma 2 / Gemma 3 (Gemma Team 2024, 2025):

- token embedding tied with the output projection: inputs are ``E[token] * sqrt(d_model)``,
  logits are ``x @ E^T``;
- RMSNorm in Gemma's ``x / rms(x) * (1 + scale)`` form (scales start at zero), before
  *and* after the attention and feed-forward blocks, and once at the end;
- rotary position embeddings (halves rotated, not interleaved), with a base per layer kind;
- grouped-query attention: ``num_heads`` query heads share ``num_kv_heads`` key/value
  heads of width ``head_dim``; optional per-head QK RMSNorm (Gemma 3);
- local sliding-window and global layers interleaved by ``config.layer_pattern``;
- soft-capping ``cap * tanh(x / cap)`` of attention and final logits (Gemma 2), optional;
- GeGLU feed-forward: ``down(gelu_tanh(gate(x)) * up(x))``.

Parameters are a plain nested dict of arrays (``Params``): what :func:`init_params`
returns, what optimizers update and what :mod:`rlds_lm.models.checkpoint` saves. Module
objects exist only inside a call (:func:`bind`), so every function here is jittable with
the config as a static argument. Parameter paths read like
``layer_3/attn/q``, ``layer_3/mlp/down``, ``embedder/table``.

Masking works on *positions*, not slots: every token carries its position and a validity
bit, so left-padded, right-padded and cached inputs give the same result for the same
real tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlds_lm.models import sharding as shd
from rlds_lm.models.config import GLOBAL
from rlds_lm.models.config import ModelConfig
from rlds_lm.models.config import count_params

Params = dict[str, Any]

_MASKED = -2.3819763e38  # attention logit of a masked key (Gemma's K_MASK)

# Logical axes of activations.
_ACT = ("batch", "length", "embed")
_ACT_HEADS = ("batch", "length", "heads", "head_dim")
_ACT_KV = ("batch", "length", "kv_heads", "head_dim")
_ACT_MLP = ("batch", "length", "mlp")
_LOGITS = ("batch", "length", "vocab")
_CACHE_KV = ("batch", "cache_length", "kv_heads", "head_dim")


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for ``S`` slots, with each slot's position.

  Attributes:
    keys: per layer, float [B, S, num_kv_heads, head_dim] (rotary embedding applied).
    values: per layer, float [B, S, num_kv_heads, head_dim].
    positions: int32 [B, S]: position of the token in each slot.
    valid: bool [B, S]: the slot holds a real token (not padding, already written).
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  positions: jax.Array
  valid: jax.Array

  @property
  def length(self) -> int:
    return self.positions.shape[1]


def init_cache(config: ModelConfig, batch: int, length: int) -> KVCache:
  """An empty cache of ``length`` slots (all invalid)."""
  shape = (batch, length, config.num_kv_heads, config.head_dim)
  dtype = jnp.dtype(config.dtype)
  zeros = tuple(shd.constrain(jnp.zeros(shape, dtype), _CACHE_KV)
                for _ in range(config.num_layers))
  return KVCache(keys=zeros, values=zeros, positions=jnp.zeros((batch, length), jnp.int32),
                 valid=jnp.zeros((batch, length), bool))


# -- pure functions -----------------------------------------------------------------------


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  """``cap * tanh(x / cap)``: smooth, bounded by ``cap``; identity when ``cap`` is None."""
  if cap is None:
    return x
  return cap * jnp.tanh(x / cap)


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding of x [B, T, N, H] at positions [B, T].

  The first and second halves of each head form the rotated pairs (Gemma's layout);
  frequencies are ``base ** (-2i / H)``. Computed in float32.
  """
  half = x.shape[-1] // 2
  inv_freq = base ** (-2.0 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1 = x[..., :half].astype(jnp.float32)
  x2 = x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefixMask:
  """The mask of left-aligned rows (position = column, valid = column < length), for
  the fused attention kernels: causal, ``lengths`` int [B], each layer's window."""

  lengths: jax.Array
  implementation: str | None = dataclasses.field(metadata=dict(static=True), default=None)


def attention_mask(q_positions: jax.Array, kv_positions: jax.Array, kv_valid: jax.Array,
                   window: int | None) -> jax.Array:
  """Which keys each query may attend to: bool [B, T, S].

  A query at position ``p`` sees valid keys at positions ``q`` with ``q <= p`` (causal)
  and, for a local layer, ``p - q < window``.

  Args:
    q_positions: int [B, T].
    kv_positions: int [B, S].
    kv_valid: bool [B, S].
    window: sliding window, or None for a global layer.
  """
  diff = q_positions[:, :, None] - kv_positions[:, None, :]
  mask = kv_valid[:, None, :] & (diff >= 0)
  if window is not None:
    mask &= diff < window
  return mask


class ParamSource:
  """Initial values for the weights: consecutive slices of one flat normal draw.

  One draw of ``count_params(config)`` normals compiles into one kernel; a draw per
  parameter compiles one kernel each, which takes seconds per layer on CPU. Each weight
  is ``N(0, 1 / fan_in)``; the values depend on the key and the config only.
  """

  def __init__(self, key: jax.Array, config: ModelConfig):
    self._flat = jax.random.normal(key, (count_params(config),), jnp.float32)
    self._offset = 0

  def fan_in(self, shape: Sequence[int], fan_in: int) -> jax.Array:
    size = math.prod(shape)
    if self._offset + size > self._flat.shape[0]:
      raise RuntimeError("ParamSource: drew more values than the config has parameters")
    x = self._flat[self._offset:self._offset + size].reshape(shape)
    self._offset += size
    return x * np.float32(1.0 / math.sqrt(fan_in))  # a product: same bits in and out of jit


# -- modules ------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
  """``x / sqrt(mean(x^2) + eps) * (1 + scale)`` over the last axis, in float32."""

  def __init__(self, dim: int, *, eps: float, axes: tuple[str, ...] = ("embed",)):
    self.eps = eps
    self.scale = nnx.Param(jnp.zeros((dim,), jnp.float32), logical_axes=axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + self.scale[...])).astype(x.dtype)


class Embedder(nnx.Module):
  """The tied embedding table [vocab, d_model]."""

  def __init__(self, config: ModelConfig, *, init: ParamSource):
    c = config
    self.d_model = c.d_model
    self.dtype = c.dtype
    table = init.fan_in((c.vocab_size, c.d_model), c.d_model)
    self.table = nnx.Param(table, logical_axes=("vocab", "embed"))

  def encode(self, tokens: jax.Array) -> jax.Array:
    """int [B, T] -> [B, T, d_model], scaled by sqrt(d_model)."""
    dtype = jnp.dtype(self.dtype)
    x = jnp.take(self.table[...], tokens, axis=0).astype(dtype)
    x = x * jnp.asarray(math.sqrt(self.d_model), dtype)
    return shd.constrain(x, _ACT)

  def decode(self, x: jax.Array) -> jax.Array:
    """[B, T, d_model] -> float32 logits [B, T, vocab] (``x @ E^T``)."""
    table = self.table[...].astype(x.dtype)
    logits = jnp.einsum("btd,vd->btv", x, table, preferred_element_type=jnp.float32)
    return shd.constrain(logits, _LOGITS)


class Attention(nnx.Module):
  """Grouped-query attention with rotary embeddings, optional QK-norm and soft-cap."""

  def __init__(self, config: ModelConfig, kind: str, *, init: ParamSource):
    c = config
    self.kind = kind
    self.window = c.sliding_window if kind != GLOBAL else None
    self.rope_base = c.rope_base_global if kind == GLOBAL else c.rope_base_local
    self.num_kv_heads = c.num_kv_heads
    self.query_scale = c.query_scale
    self.softcap = c.attn_logit_softcap
    self.dtype = c.dtype
    d, h, k, hd = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
    self.q = nnx.Param(init.fan_in((d, h, hd), d),
                       logical_axes=("embed", "heads", "head_dim"))
    self.k = nnx.Param(init.fan_in((d, k, hd), d),
                       logical_axes=("embed", "kv_heads", "head_dim"))
    self.v = nnx.Param(init.fan_in((d, k, hd), d),
                       logical_axes=("embed", "kv_heads", "head_dim"))
    self.o = nnx.Param(init.fan_in((h, hd, d), h * hd),
                       logical_axes=("heads", "head_dim", "embed"))
    if c.qk_norm:
      self.q_norm = RMSNorm(hd, eps=c.norm_eps, axes=("head_dim",))
      self.k_norm = RMSNorm(hd, eps=c.norm_eps, axes=("head_dim",))
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
               kv: tuple[jax.Array, jax.Array] | None = None,
               cache_index: jax.Array | int = 0,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Attends from x [B, T, D] at positions [B, T] to keys allowed by mask [B, T, S].

    Without ``kv`` the keys are x's own (S = T). With ``kv`` (cached keys and values
    [B, S, K, H]) x's keys and values are first written at slots ``cache_index ..
    cache_index + T`` and the updated ``kv`` is returned.
    """
    dtype = jnp.dtype(self.dtype)
    q = jnp.einsum("btd,dnh->btnh", x, self.q[...].astype(dtype))
    k = jnp.einsum("btd,dnh->btnh", x, self.k[...].astype(dtype))
    v = jnp.einsum("btd,dnh->btnh", x, self.v[...].astype(dtype))
    q, k, v = (shd.constrain(q, _ACT_HEADS), shd.constrain(k, _ACT_KV),
               shd.constrain(v, _ACT_KV))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = apply_rope(q, positions, self.rope_base) * jnp.asarray(self.query_scale, dtype)
    k = apply_rope(k, positions, self.rope_base)
    if kv is not None:
      start = (0, cache_index, 0, 0)
      kv = (shd.constrain(jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), start),
                          _CACHE_KV),
            shd.constrain(jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), start),
                          _CACHE_KV))
      k, v = kv
    b, t, n, hd = q.shape
    if isinstance(mask, PrefixMask):  # fused kernel: causal, lengths, sliding window
      out = jax.nn.dot_product_attention(
          q, k, v, scale=1.0, is_causal=True, query_seq_lengths=mask.lengths,
          key_value_seq_lengths=mask.lengths,
          local_window_size=None if self.window is None else (self.window - 1, 0),
          implementation=mask.implementation)
      out = shd.constrain(out.astype(dtype), _ACT_HEADS)
      y = jnp.einsum("btnh,nhd->btd", out, self.o[...].astype(dtype))
      return shd.constrain(y, _ACT), kv
    groups = n // self.num_kv_heads
    q = q.reshape(b, t, self.num_kv_heads, groups, hd)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = softcap(logits, self.softcap)
    logits = jnp.where(mask[:, None, None], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n, hd)
    out = shd.constrain(out, _ACT_HEADS)
    y = jnp.einsum("btnh,nhd->btd", out, self.o[...].astype(dtype))
    return shd.constrain(y, _ACT), kv


class FeedForward(nnx.Module):
  """GeGLU: ``down(gelu_tanh(x @ gate) * (x @ up))``."""

  def __init__(self, config: ModelConfig, *, init: ParamSource):
    d, f = config.d_model, config.mlp_dim
    self.dtype = config.dtype
    self.gate = nnx.Param(init.fan_in((d, f), d), logical_axes=("embed", "mlp"))
    self.up = nnx.Param(init.fan_in((d, f), d), logical_axes=("embed", "mlp"))
    self.down = nnx.Param(init.fan_in((f, d), f), logical_axes=("mlp", "embed"))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = jnp.dtype(self.dtype)
    gate = jax.nn.gelu(x @ self.gate[...].astype(dtype), approximate=True)
    hidden = shd.constrain(gate * (x @ self.up[...].astype(dtype)), _ACT_MLP)
    return shd.constrain(hidden @ self.down[...].astype(dtype), _ACT)


class Block(nnx.Module):
  """Pre-norm attention and feed-forward, each followed by a post-norm (Gemma 2/3)."""

  def __init__(self, config: ModelConfig, kind: str, *, init: ParamSource):
    d, eps = config.d_model, config.norm_eps
    self.kind = kind
    self.pre_attn_norm = RMSNorm(d, eps=eps)
    self.attn = Attention(config, kind, init=init)
    self.post_attn_norm = RMSNorm(d, eps=eps)
    self.pre_ffw_norm = RMSNorm(d, eps=eps)
    self.mlp = FeedForward(config, init=init)
    self.post_ffw_norm = RMSNorm(d, eps=eps)

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
               kv: tuple[jax.Array, jax.Array] | None = None,
               cache_index: jax.Array | int = 0,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """x [B, T, D] -> [B, T, D]; see :meth:`Attention.__call__` for the rest."""
    attended, kv = self.attn(self.pre_attn_norm(x), positions, mask, kv, cache_index)
    x = x + self.post_attn_norm(attended)
    x = x + self.post_ffw_norm(self.mlp(self.pre_ffw_norm(x)))
    return shd.constrain(x, _ACT), kv


class Transformer(nnx.Module):
  """The decoder: embed, ``num_layers`` blocks (``layer_0`` ...), final norm, tied logits."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    init = ParamSource(rngs.params(), config)
    self.embedder = Embedder(config, init=init)
    for i, kind in enumerate(config.layer_kinds):
      setattr(self, f"layer_{i}", Block(config, kind, init=init))
    self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps)

  @property
  def layers(self) -> list[Block]:
    return [getattr(self, f"layer_{i}") for i in range(self.config.num_layers)]

  def masks(self, q_positions: jax.Array, kv_positions: jax.Array,
            kv_valid: jax.Array) -> dict[str, jax.Array]:
    """The attention mask of each layer kind, bool [B, T, S]."""
    return {kind: attention_mask(q_positions, kv_positions, kv_valid,
                                 None if kind == GLOBAL else self.config.sliding_window)
            for kind in set(self.config.layer_kinds)}

  def __call__(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array,
               cache: KVCache | None = None, cache_index: jax.Array | int = 0,
               logit_slots: jax.Array | None = None, lengths: jax.Array | None = None,
               ) -> tuple[jax.Array, KVCache | None]:
    """See :func:`forward`."""
    x, cache = self.trunk(tokens, positions, valid, cache, cache_index, lengths)
    if logit_slots is not None:  # project only what is needed: [B, 1, D]
      x = jnp.take_along_axis(x, logit_slots.astype(jnp.int32)[:, None, None], axis=1)
    return self.logits(x), cache

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Final-normed hidden states [..., D] -> soft-capped logits [..., vocab]."""
    return softcap(self.embedder.decode(hidden), self.config.final_logit_softcap)

  def trunk(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array,
            cache: KVCache | None = None, cache_index: jax.Array | int = 0,
            lengths: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """The final-normed hidden state of every input token [B, T, D] (what the logits
    are projected from), and the updated cache."""
    x = self.embedder.encode(tokens)
    if cache is None:
      kv_positions, kv_valid = positions, valid
    else:
      kv_positions = jax.lax.dynamic_update_slice(
          cache.positions, positions.astype(jnp.int32), (0, cache_index))
      kv_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache_index))
    if cache is None and lengths is not None and self.config.attention != "xla":
      prefix = PrefixMask(lengths.astype(jnp.int32),
                          "cudnn" if self.config.attention == "cudnn" else "xla")
      masks = {kind: prefix for kind in set(self.config.layer_kinds)}
    else:
      masks = self.masks(positions, kv_positions, kv_valid)
    keys, values = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.keys[i], cache.values[i])
      x, kv = layer(x, positions, masks[layer.kind], kv, cache_index)
      if kv is not None:
        keys.append(kv[0])
        values.append(kv[1])
    if cache is not None:
      cache = KVCache(keys=tuple(keys), values=tuple(values), positions=kv_positions,
                      valid=kv_valid)
    return self.final_norm(x), cache


# -- functional API -----------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _abstract(config: ModelConfig) -> tuple[nnx.GraphDef, dict[tuple[str, ...], nnx.Variable]]:
  """Graph definition and abstract (shape-only) variables of the model, by path."""
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  return graphdef, dict(nnx.to_flat_state(state))


def _flatten(params: Params) -> dict[tuple[str, ...], Any]:
  return nnx.traversals.flatten_mapping(params)


def bind(config: ModelConfig, params: Params) -> Transformer:
  """The :class:`Transformer` module holding ``params`` (inside or outside jit).

  Useful to call one part of the model, e.g. ``bind(c, p).layer_0(x, positions, mask)``.

  Raises:
    ValueError: ``params`` does not have the config's parameter paths and shapes.
  """
  graphdef, abstract = _abstract(config)
  flat = _flatten(params)
  if flat.keys() != abstract.keys():
    missing = sorted("/".join(k) for k in abstract.keys() - flat.keys())
    extra = sorted("/".join(k) for k in flat.keys() - abstract.keys())
    raise ValueError(f"params do not match config {config.name!r}: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}")
  for path, var in abstract.items():
    if tuple(flat[path].shape) != tuple(var.shape):
      raise ValueError(f"params do not match config {config.name!r}: {'/'.join(path)} "
                       f"has shape {tuple(flat[path].shape)}, expected {tuple(var.shape)}")
  state = nnx.from_flat_state({k: var.replace(flat[k]) for k, var in abstract.items()})
  return nnx.merge(graphdef, state)


def param_shapes(config: ModelConfig) -> Params:
  """``jax.ShapeDtypeStruct`` of every parameter (nothing allocated)."""
  _, abstract = _abstract(config)
  return nnx.traversals.unflatten_mapping(
      {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in abstract.items()})


def param_logical_axes(config: ModelConfig) -> Params:
  """The logical axes (tuple of names) of every parameter, e.g. ``("vocab", "embed")``."""
  _, abstract = _abstract(config)
  return nnx.traversals.unflatten_mapping(
      {k: tuple(v.get_metadata()["logical_axes"]) for k, v in abstract.items()})


def param_shardings(config: ModelConfig, mesh: jax.sharding.Mesh) -> Params:
  """``NamedSharding`` of every parameter on ``mesh`` (see :data:`sharding.RULES`)."""
  return shd.tree_shardings(param_logical_axes(config), param_shapes(config), mesh)


def shard_params(params: Params, config: ModelConfig, mesh: jax.sharding.Mesh) -> Params:
  """``params`` placed on ``mesh`` with :func:`param_shardings`."""
  return jax.device_put(params, param_shardings(config, mesh))


def seed_key_data(seeds: Sequence[int] | np.ndarray) -> np.ndarray:
  """uint32 [..., 2] threefry key data of 64-bit seeds: ``[seed >> 32, seed & 0xffffffff]``.

  ``jax.random.wrap_key_data(seed_key_data(s))`` equals ``jax.random.key(s)`` (as with
  64-bit JAX) for every seed in ``[0, 2**64)``, without needing 64-bit mode.

  Raises:
    ValueError: a seed outside ``[0, 2**64)``.
  """
  array = np.asarray(seeds, dtype=object)
  flat = [int(s) for s in array.reshape(-1)]
  bad = [s for s in flat if not 0 <= s < 2**64]
  if bad:
    raise ValueError(f"seeds must be integers in [0, 2**64), found {bad[0]}")
  data = np.array([[s >> 32, s & 0xFFFFFFFF] for s in flat], np.uint32).reshape(-1, 2)
  return data.reshape(array.shape + (2,))


def _init(config: ModelConfig, key_data: jax.Array) -> Params:
  key = jax.random.wrap_key_data(key_data, impl="threefry2x32")
  model = Transformer(config, rngs=nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def init_params(config: ModelConfig, seed: int = 0, *,
                mesh: jax.sharding.Mesh | None = None) -> Params:
  """Random parameters (float32); created already sharded when ``mesh`` is given.

  The values depend on ``config`` and ``seed`` only, not on the mesh.
  """
  key_data = seed_key_data(seed)
  if mesh is None:  # eager: the slicing ops are cached by shape, quicker than compiling
    return _init(config, jnp.asarray(key_data))
  return jax.jit(_init, static_argnums=0,
                 out_shardings=param_shardings(config, mesh))(config, key_data)


def count_params_of(params: Params) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params)))


def forward(config: ModelConfig, params: Params, tokens: jax.Array, positions: jax.Array,
            valid: jax.Array, *, cache: KVCache | None = None,
            cache_index: jax.Array | int = 0,
            logit_slots: jax.Array | None = None,
            lengths: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
  """Logits of every input token; jittable with ``config`` static.

  Args:
    config: the model.
    params: its parameters.
    tokens: int [B, T].
    positions: int [B, T]: position of each token in its sequence (0 = first).
    valid: bool [B, T]: False for padding (never attended to).
    cache: optional :class:`KVCache`; the tokens' keys and values are written at slots
      ``cache_index .. cache_index + T`` and attention covers every valid slot.
    cache_index: first slot to write (scalar, may be traced).
    logit_slots: optional int [B]: compute the logits of ``tokens[b, logit_slots[b]]``
      only (T becomes 1 in the result), saving the [B, T, vocab] projection.
    lengths: optional int [B], promising left-aligned rows (``positions`` = column
      index, ``valid`` = column < length, no cache): lets ``config.attention`` "fused" /
      "cudnn" use ``jax.nn.dot_product_attention`` instead of an explicit mask.

  Returns:
    (float32 logits [B, T, vocab] where ``logits[:, t]`` predicts the token after
    ``tokens[:, t]``, the updated cache or None).
  """
  return bind(config, params)(tokens, positions, valid, cache, cache_index, logit_slots,
                             lengths)


def hidden_and_logits(config: ModelConfig, params: Params, tokens: jax.Array,
                      positions: jax.Array, valid: jax.Array, *,
                      lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(final-normed hidden states [B, T, D], float32 logits [B, T, vocab]) of every input
  token, no cache: what a value head on the policy's trunk reads. Arguments as
  :func:`forward`."""
  model = bind(config, params)
  hidden, _ = model.trunk(tokens, positions, valid, lengths=lengths)
  return hidden, model.logits(hidden)


@functools.partial(jax.jit, static_argnums=0)
def score_logits(config: ModelConfig, params: Params, tokens: jax.Array,
                 lengths: jax.Array) -> jax.Array:
  """Teacher-forced logits of right-padded sequences (jitted; full vocabulary).

  Args:
    config: the model (static).
    params: its parameters.
    tokens: int [B, T], sequence ``b`` in ``tokens[b, :lengths[b]]``, then padding.
    lengths: int [B].

  Returns:
    float32 [B, T, vocab]: ``logits[b, t]`` is the distribution of ``tokens[b, t + 1]``
    given ``tokens[b, :t + 1]`` (rows past ``lengths[b]`` are meaningless).
  """
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  valid = positions < lengths[:, None]
  tokens = shd.constrain(tokens, ("batch", "length"))
  logits, _ = forward(config, params, tokens, positions, valid)
  return logits
