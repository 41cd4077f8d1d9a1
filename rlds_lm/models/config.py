"""Model configurations: :class:`ModelConfig`, the named configs, parameter and FLOP counts.

A config is a frozen, hashable dataclass, so it can be a static argument of ``jax.jit``
and is saved as JSON next to every checkpoint (:mod:`rlds_lm.models.checkpoint`).

Named configs (``get_config(name)``):

| name | parameters | use |
| --- | --- | --- |
| ``tiny`` | 0.17 M | unit tests on CPU, seconds |
| ``small`` | 17.4 M | CPU experiments |
| ``gemma_100m`` | 104 M | throughput / MFU benchmarks |
| ``gemma2_2b`` | 2.61 B | shape-only: Gemma 2 2B as published |
| ``gemma3_1b`` | 1.00 B | shape-only: Gemma 3 1B (text) as published |

``tiny``, ``small`` and ``gemma_100m`` use the byte tokenizer's vocabulary (259 ids);
``dataclasses.replace(config, vocab_size=...)`` adapts them to another tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

LOCAL = "local"  # sliding-window attention layer
GLOBAL = "global"  # full causal attention layer
LAYER_KINDS = (LOCAL, GLOBAL)

# Fields that change how a model runs but not which function it computes; they are
# left out of checkpoint identity (digest, config matching).
RUNTIME_FIELDS = ("name", "dtype", "attention")
ATTENTION_IMPLS = ("xla", "fused", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Gemma-style decoder-only transformer.

  Attributes:
    name: a label; not part of the model's identity.
    vocab_size: number of token ids; the embedding is tied with the output projection.
    d_model: width of the residual stream (Gemma's ``embed_dim``).
    num_layers: number of transformer blocks.
    num_heads: query heads per layer.
    num_kv_heads: key/value heads per layer (grouped-query attention; divides
      ``num_heads``).
    head_dim: width of each head (even: rotary embeddings rotate pairs).
    mlp_dim: hidden width of the GeGLU feed-forward block.
    layer_pattern: kinds of consecutive layers, repeated to ``num_layers``: ``("local",
      "global")`` is Gemma 2, five ``"local"`` then one ``"global"`` is Gemma 3.
    sliding_window: how many positions a local layer sees, itself included (a query at
      position ``p`` attends to keys at positions ``p - sliding_window + 1 .. p``).
    attn_logit_softcap: ``cap * tanh(logits / cap)`` on attention logits; ``None`` = off.
    final_logit_softcap: the same on output logits; ``None`` = off.
    query_pre_attn_scalar: queries are scaled by ``query_pre_attn_scalar ** -0.5``;
      ``None`` means ``head_dim``.
    qk_norm: RMS-normalise queries and keys per head (Gemma 3).
    rope_base_local: rotary embedding base frequency of local layers.
    rope_base_global: rotary embedding base frequency of global layers.
    max_seq_len: context length: prompt plus generated tokens may not exceed it.
    norm_eps: RMSNorm epsilon.
    dtype: activation dtype ("float32" or "bfloat16"); parameters are float32.
    attention: how full-sequence (training / scoring) attention is computed: ``"xla"``
      (einsums with an explicit mask, every feature), ``"fused"``
      (``jax.nn.dot_product_attention``, XLA) or ``"cudnn"`` (its cuDNN flash kernel,
      GPUs, bf16). The fused paths need no attention soft-cap and are used only where
      the caller passes sequence lengths (left-aligned rows, positions 0..T-1); cached
      sampling always uses the einsum path. Not part of the architecture.
  """

  name: str
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  layer_pattern: tuple[str, ...] = (LOCAL, GLOBAL)
  sliding_window: int | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  query_pre_attn_scalar: float | None = None
  qk_norm: bool = False
  rope_base_local: float = 10_000.0
  rope_base_global: float = 10_000.0
  max_seq_len: int = 8192
  norm_eps: float = 1e-6
  dtype: str = "float32"
  attention: str = "xla"

  def __post_init__(self):
    object.__setattr__(self, "layer_pattern", tuple(self.layer_pattern))
    # Equal configs must serialise (and so digest) equally: 10_000 and 10_000.0 alike.
    for field in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar",
                  "rope_base_local", "rope_base_global", "norm_eps"):
      value = getattr(self, field)
      if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
        object.__setattr__(self, field, float(value))
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "mlp_dim", "max_seq_len"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ModelConfig {self.name!r}: {field} must be a positive int, "
                         f"found {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"ModelConfig {self.name!r}: num_kv_heads must divide num_heads, "
                       f"found num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig {self.name!r}: head_dim must be even (rotary "
                       f"embeddings rotate pairs), found {self.head_dim}")
    if not self.layer_pattern or any(k not in LAYER_KINDS for k in self.layer_pattern):
      raise ValueError(f"ModelConfig {self.name!r}: layer_pattern must be a non-empty "
                       f"sequence of {LAYER_KINDS}, found {self.layer_pattern!r}")
    if LOCAL in self.layer_pattern and (self.sliding_window is None or
                                        self.sliding_window < 1):
      raise ValueError(f"ModelConfig {self.name!r}: local layers need a positive "
                       f"sliding_window, found {self.sliding_window!r}")
    for field in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"):
      value = getattr(self, field)
      if value is not None and not value > 0:
        raise ValueError(f"ModelConfig {self.name!r}: {field} must be > 0 or None, "
                         f"found {value!r}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig {self.name!r}: attention must be one of "
                       f"{ATTENTION_IMPLS}, found {self.attention!r}")
    if self.attention != "xla" and self.attn_logit_softcap is not None:
      raise ValueError(f"ModelConfig {self.name!r}: attention={self.attention!r} has no "
                       f"logit soft-cap; use attention='xla' or attn_logit_softcap=None")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"ModelConfig {self.name!r}: dtype must be 'float32' or "
                       f"'bfloat16', found {self.dtype!r}")

  @property
  def layer_kinds(self) -> tuple[str, ...]:
    """The kind (``"local"`` / ``"global"``) of each layer, in order."""
    pattern = self.layer_pattern
    return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

  @property
  def query_scale(self) -> float:
    """Factor applied to queries before the dot product with keys."""
    return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def to_dict(self) -> dict[str, Any]:
    """Every field, JSON-ready (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  def to_json(self) -> str:
    """Canonical JSON (sorted keys): equal configs give equal strings."""
    return json.dumps(self.to_dict(), sort_keys=True)

  def architecture_json(self) -> str:
    """Canonical JSON of the fields that define the function computed (no name, dtype,
    attention implementation)."""
    fields = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
    return json.dumps(fields, sort_keys=True)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
    """Inverse of :meth:`to_dict`; refuses unknown or missing fields."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ValueError(f"ModelConfig.from_dict: unknown fields {unknown}; expected a "
                       f"subset of {sorted(known)}")
    return cls(**dict(data))

  @classmethod
  def from_json(cls, text: str) -> ModelConfig:
    return cls.from_dict(json.loads(text))


def config_differences(expected: ModelConfig, found: ModelConfig) -> dict[str, tuple[Any, Any]]:
  """Architecture fields whose values differ: ``{field: (expected, found)}``."""
  a, b = expected.to_dict(), found.to_dict()
  return {k: (a[k], b[k]) for k in a if k not in RUNTIME_FIELDS and a[k] != b[k]}


TINY = ModelConfig(
    name="tiny", vocab_size=259, d_model=64, num_layers=4, num_heads=4, num_kv_heads=2,
    head_dim=16, mlp_dim=128, layer_pattern=(LOCAL, GLOBAL), sliding_window=8,
    attn_logit_softcap=50.0, final_logit_softcap=30.0, max_seq_len=512)

SMALL = ModelConfig(
    name="small", vocab_size=259, d_model=384, num_layers=8, num_heads=6, num_kv_heads=2,
    head_dim=64, mlp_dim=1536, layer_pattern=(LOCAL,) * 3 + (GLOBAL,), sliding_window=256,
    attn_logit_softcap=50.0, final_logit_softcap=30.0, max_seq_len=2048)

GEMMA_100M = ModelConfig(
    name="gemma_100m", vocab_size=259, d_model=768, num_layers=12, num_heads=12,
    num_kv_heads=4, head_dim=64, mlp_dim=3072, layer_pattern=(LOCAL,) * 5 + (GLOBAL,),
    sliding_window=512, qk_norm=True, rope_base_global=1_000_000.0, max_seq_len=4096)

# Gemma 2 2B (Gemma Team, 2024, table 1; HF Gemma2Config): 2,614,341,888 parameters.
GEMMA2_2B = ModelConfig(
    name="gemma2_2b", vocab_size=256_000, d_model=2304, num_layers=26, num_heads=8,
    num_kv_heads=4, head_dim=256, mlp_dim=9216, layer_pattern=(LOCAL, GLOBAL),
    sliding_window=4096, attn_logit_softcap=50.0, final_logit_softcap=30.0,
    query_pre_attn_scalar=256.0, max_seq_len=8192)

# Gemma 3 1B (Gemma Team, 2025; HF Gemma3TextConfig): 999,885,952 parameters.
GEMMA3_1B = ModelConfig(
    name="gemma3_1b", vocab_size=262_144, d_model=1152, num_layers=26, num_heads=4,
    num_kv_heads=1, head_dim=256, mlp_dim=6912, layer_pattern=(LOCAL,) * 5 + (GLOBAL,),
    sliding_window=512, qk_norm=True, query_pre_attn_scalar=256.0,
    rope_base_local=10_000.0, rope_base_global=1_000_000.0, max_seq_len=32_768)

CONFIGS: dict[str, ModelConfig] = {
    c.name: c for c in (TINY, SMALL, GEMMA_100M, GEMMA2_2B, GEMMA3_1B)}


def get_config(name: str, **overrides: Any) -> ModelConfig:
  """A named config, optionally with some fields replaced.

  Example: ``get_config("small", vocab_size=32_000, dtype="bfloat16")``.

  Raises:
    ValueError: unknown name or field.
  """
  if name not in CONFIGS:
    raise ValueError(f"unknown model config {name!r}; expected one of {sorted(CONFIGS)}")
  config = CONFIGS[name]
  if overrides:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
      raise ValueError(f"get_config({name!r}): unknown fields {unknown}")
    config = dataclasses.replace(config, **overrides)
  return config


# -- counting ----------------------------------------------------------------------------


def _layer_matmul_params(config: ModelConfig) -> int:
  """Weights of one block that take part in matrix products (no norms)."""
  c = config
  attention = c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = 3 * c.d_model * c.mlp_dim
  return attention + mlp


def count_params(config: ModelConfig) -> int:
  """Number of parameters, computed from the config alone (nothing is allocated).

  Embedding (tied, counted once) + per layer: q, k, v, o projections, GeGLU gate/up/down,
  four RMSNorm scales (pre/post attention, pre/post feed-forward), two per-head QK-norm
  scales if ``qk_norm`` + the final norm.
  """
  c = config
  per_layer = _layer_matmul_params(c) + 4 * c.d_model + (2 * c.head_dim if c.qk_norm else 0)
  return c.vocab_size * c.d_model + c.num_layers * per_layer + c.d_model


def flops_per_token(config: ModelConfig, seq_len: int, *, training: bool = False) -> float:
  """Matmul FLOPs per token of a sequence of ``seq_len`` tokens (for MFU).

  Forward: ``2 x`` the matmul weights of all layers and of the (tied) output projection,
  plus attention scores and the weighted sum of values, ``4 * num_heads * head_dim * ctx``
  per layer, where ``ctx`` is ``seq_len`` for global layers and
  ``min(seq_len, sliding_window)`` for local ones. Like PaLM's MFU (Chowdhery et al.,
  2022, appendix B), attention is counted over the whole context, not the causal half;
  the embedding lookup, norms and softmax are not counted. Training is 3x the forward
  pass (backward = 2x forward).

  Args:
    config: the model.
    seq_len: tokens per sequence.
    training: count forward + backward.

  Returns:
    FLOPs per token.
  """
  if seq_len < 1:
    raise ValueError(f"flops_per_token: seq_len must be >= 1, found {seq_len}")
  c = config
  dense = 2 * (c.num_layers * _layer_matmul_params(c) + c.vocab_size * c.d_model)
  attention = 0
  for kind in c.layer_kinds:
    ctx = min(seq_len, c.sliding_window) if kind == LOCAL else seq_len
    attention += 4 * c.num_heads * c.head_dim * ctx
  forward = float(dense + attention)
  return 3.0 * forward if training else forward
