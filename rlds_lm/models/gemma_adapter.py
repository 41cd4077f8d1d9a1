"""Gemma checkpoints through the ``gemma`` library (google-deepmind/gemma, PyPI ``gemma``).

Converts between the ``gemma`` library's Flax (linen) parameter tree and rlds_lm's
(:mod:`rlds_lm.models.gemma`), and between its ``TransformerConfig`` and
:class:`~rlds_lm.models.config.ModelConfig`, so that a released Gemma 2 / Gemma 3 text
checkpoint runs in rlds_lm's forward pass, sampler and :class:`~rlds_lm.models.Policy`.
The library is an optional extra (``pip install 'rlds_lm[gemma]'``) and is imported only
when a function here needs it.

Example::

  from rlds_lm import models
  from rlds_lm.models import gemma_adapter

  config, params = gemma_adapter.load_gemma_checkpoint(
      "/path/to/gemma3-1b-it", gemma_model="Gemma3_1B")
  policy = models.Policy(config, params, eos_id=1)  # Gemma's <eos>

How the two layouts correspond (``N`` query heads, ``K`` key/value heads, ``D`` = embed
dim, ``H`` = head dim, ``F`` = hidden dim; gemma paths on the left)::

  embedder/input_embedding [V, D]             embedder/table [V, D]
  layer_i/attn/q_einsum/w [N, D, H]           layer_i/attn/q [D, N, H]
  layer_i/attn/kv_einsum/w [2, K, D, H]       layer_i/attn/k, v [D, K, H]
  layer_i/attn/qkv_einsum/w [3, N, D, H]      (instead of the two above when K == N)
  layer_i/attn/attn_vec_einsum/w [N, H, D]    layer_i/attn/o [N, H, D]
  layer_i/attn/_query_norm, _key_norm         layer_i/attn/q_norm, k_norm (Gemma 3)
  layer_i/mlp/gating_einsum [2, D, F]         layer_i/mlp/gate, up [D, F]
    ([2, F, D] with transpose_gating_einsum, as in every released model but Gemma 2 2B)
  layer_i/mlp/linear [F, D]                   layer_i/mlp/down [F, D]
  layer_i/pre_attention_norm, post_attention_norm, pre_ffw_norm, post_ffw_norm
                                              layer_i/pre_attn_norm, post_attn_norm, ...
  final_norm                                  final_norm

Both models compute the same function: embeddings scaled by ``sqrt(D)``, RMSNorm as
``x * rsqrt(mean(x^2) + 1e-6) * (1 + scale)``, rotary embeddings on the two halves of each
head, grouped-query attention, sliding-window local layers (a query at ``p`` sees keys at
``p - window + 1 .. p``), soft-capping, GeGLU with tanh-approximated GELU, tied output
projection (``tests/models/test_model_gemma_adapter.py`` checks the logits agree).

What rlds_lm's model cannot express is refused with a ``ValueError`` naming the field:
RoPE scale factors other than 1 (Gemma 3 4B, 12B, 27B), layers without post-norms
(Gemma 1), LoRA or quantised parameter trees. Vision-encoder parameters (Gemma 3
multimodal checkpoints) are dropped: rlds_lm's model is text only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import traverse_util

from rlds_lm import _compat
from rlds_lm.models.config import GLOBAL
from rlds_lm.models.config import LOCAL
from rlds_lm.models.config import ModelConfig
from rlds_lm.models.gemma import Params

INSTALL_HINT = "pip install 'rlds_lm[gemma]'"

# gemma's AttentionType member names and ours.
_KIND_FROM_GEMMA = {"LOCAL_SLIDING": LOCAL, "GLOBAL": GLOBAL}
_KIND_TO_GEMMA = {v: k for k, v in _KIND_FROM_GEMMA.items()}

# gemma's QueryPreAttentionNormalisation member names.
_BY_HEAD_DIM = "BY_ONE_OVER_SQRT_HEAD_DIM"  # queries * head_dim ** -0.5
_BY_PER_HEAD_WIDTH = "BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS"  # * (D // N) ** -0.5
_TIMES_PER_HEAD_WIDTH = "BY_EMBED_DIM_DIV_NUM_HEADS"  # * (D // N), no inverse root

_GEMMA_NORM_EPS = 1e-6  # gemma's RMSNorm hard-codes it

# Context lengths of the text models rlds_lm can run (RoPE scale 1): the gemma config does
# not record one. Gemma 3 270M and 1B: 32K tokens; Gemma 2: 8K.
_MAX_SEQ_LEN_GEMMA3 = 32_768
_MAX_SEQ_LEN_GEMMA2 = 8_192

# Parameter subtrees of multimodal checkpoints that a text-only model does not use.
_VISION_PREFIXES = ("vision_encoder/", "embedder/mm_input_projection/",
                    "embedder/mm_soft_embedding_norm/")


# -- importing the library ----------------------------------------------------------------


def import_gm() -> Any:
  """The ``gemma`` library's ``gm`` namespace (``from gemma import gm``), ready to use.

  Raises:
    ImportError: the library (the ``gemma`` extra) is not installed, or is installed
      beside a dependency it cannot import with; the message says how to fix it.
  """
  try:
    import gemma  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(
        f"loading Gemma checkpoints needs the gemma library (google-deepmind/gemma), "
        f"which is not installed: {INSTALL_HINT}") from e
  try:
    _compat.patch_kauldron_for_gemma()
    from gemma import gm  # pylint: disable=g-import-not-at-top
    # gm is a lazy namespace: import what the adapter uses now, so that a broken
    # dependency fails here with a clear message rather than at first use.
    _ = gm.nn.config.TransformerConfig, gm.nn.Transformer, gm.ckpts.load_params
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__name__ == "VersionError":  # google.protobuf.runtime_version
      raise ImportError(
          f"the gemma library imports sentencepiece's protobuf module, which "
          f"sentencepiece >= 0.2.3 generates for protobuf 7, while rlds_lm needs "
          f"protobuf < 7 (Apache Beam): {INSTALL_HINT} installs sentencepiece < 0.2.3 "
          f"({e})") from e
    raise ImportError(f"the gemma library is installed but does not import ({e!r}); "
                      f"{INSTALL_HINT} installs the versions rlds_lm was tested "
                      f"with") from e
  return gm


# -- configs ------------------------------------------------------------------------------


def _gemma_config(gemma_config_or_model: Any) -> Any:
  """The ``TransformerConfig`` of a config, a ``gm.nn`` model (class or instance) or the
  name of one (``"Gemma3_1B"``)."""
  obj = gemma_config_or_model
  if isinstance(obj, str):
    gm = import_gm()
    model = getattr(gm.nn, obj, None)
    if model is None or not hasattr(model, "config"):
      raise ValueError(f"gemma.gm.nn has no model named {obj!r} (e.g. 'Gemma3_1B', "
                       f"'Gemma2_2B')")
    obj = model
  if hasattr(obj, "attention_types") and hasattr(obj, "num_embed"):
    return obj
  config = getattr(obj, "config", None)
  if config is not None and hasattr(config, "attention_types"):
    return config
  raise TypeError(f"expected a gemma TransformerConfig, a gemma.gm.nn model (class or "
                  f"instance) or its name, found {type(obj).__name__}")


def _default_name(gemma_config_or_model: Any) -> str:
  obj = gemma_config_or_model
  if isinstance(obj, str):
    return obj.lower()
  if isinstance(obj, type):
    return obj.__name__.lower()
  if hasattr(obj, "attention_types"):
    return "gemma"
  return type(obj).__name__.lower()


def _enum_name(value: Any) -> str:
  return getattr(value, "name", str(value))


def _layer_pattern(kinds: tuple[str, ...]) -> tuple[str, ...]:
  """The shortest pattern that, repeated, gives ``kinds`` (as ``layer_pattern`` does)."""
  n = len(kinds)
  for period in range(1, n + 1):
    if all(kinds[i] == kinds[i % period] for i in range(n)):
      return kinds[:period]
  raise AssertionError("unreachable: the whole sequence is a pattern")


def _query_pre_attn_scalar(g: Any) -> float:
  """rlds_lm's ``query_pre_attn_scalar`` for gemma's query normalisation.

  gemma multiplies queries by ``TransformerConfig.query_pre_attn_scalar()``; rlds_lm by
  ``query_pre_attn_scalar ** -0.5``.
  """
  norm = _enum_name(g.query_pre_attn_norm)
  per_head_width = g.embed_dim // g.num_heads
  if norm == _BY_PER_HEAD_WIDTH:
    return float(per_head_width)
  if norm == _TIMES_PER_HEAD_WIDTH:
    return float(per_head_width) ** -2.0
  return float(g.head_dim)  # gemma's default for any other value, as in gemma itself


def from_gemma_config(gemma_config_or_model: Any, *, name: str | None = None,
                      max_seq_len: int | None = None) -> ModelConfig:
  """The :class:`ModelConfig` computing the same function as a gemma model.

  Args:
    gemma_config_or_model: a gemma ``TransformerConfig``, a ``gm.nn`` model class or
      instance (``gm.nn.Gemma3_1B``), or its name (``"Gemma3_1B"``).
    name: the config's name (default: the model's class name, lower case).
    max_seq_len: context length (the gemma config has none): default 32,768 for Gemma 3
      (QK-norm) models, 8,192 for Gemma 2.

  Returns:
    The config. Its ``vocab_size`` is gemma's ``num_embed`` (Gemma 2's embedding has
    256,128 rows, the tokenizer 256,000 ids).

  Raises:
    ValueError: the model uses something rlds_lm's model does not implement (RoPE
      scaling, layers without post-norms, an unknown attention type).
  """
  g = _gemma_config(gemma_config_or_model)
  label = name or _default_name(gemma_config_or_model)
  problems = []
  if not (g.use_post_attn_norm and g.use_post_ffw_norm):
    problems.append(f"use_post_attn_norm={g.use_post_attn_norm}, use_post_ffw_norm="
                    f"{g.use_post_ffw_norm}: rlds_lm's blocks always have post-norms "
                    f"(Gemma 2 and 3)")
  for field in ("local_scale_factor", "global_scale_factor"):
    value = getattr(g, field, 1.0)
    if value != 1.0:
      problems.append(f"{field}={value}: rlds_lm's rotary embeddings have no position "
                      f"scaling")
  kinds = []
  for i, attention_type in enumerate(g.attention_types):
    kind = _KIND_FROM_GEMMA.get(_enum_name(attention_type))
    if kind is None:
      problems.append(f"layer {i} has attention type {attention_type!r}; expected one of "
                      f"{sorted(_KIND_FROM_GEMMA)}")
    kinds.append(kind)
  if problems:
    raise ValueError(f"gemma model {label!r} cannot be converted to rlds_lm: "
                     + "; ".join(problems))
  if max_seq_len is None:
    max_seq_len = _MAX_SEQ_LEN_GEMMA3 if g.use_qk_norm else _MAX_SEQ_LEN_GEMMA2
  return ModelConfig(
      name=label,
      vocab_size=int(g.num_embed),
      d_model=int(g.embed_dim),
      num_layers=len(kinds),
      num_heads=int(g.num_heads),
      num_kv_heads=int(g.num_kv_heads),
      head_dim=int(g.head_dim),
      mlp_dim=int(g.hidden_dim),
      layer_pattern=_layer_pattern(tuple(kinds)),
      sliding_window=None if g.sliding_window_size is None else int(g.sliding_window_size),
      attn_logit_softcap=_optional_float(g.attn_logits_soft_cap),
      final_logit_softcap=_optional_float(g.final_logit_softcap),
      query_pre_attn_scalar=_query_pre_attn_scalar(g),
      qk_norm=bool(g.use_qk_norm),
      rope_base_local=float(g.local_base_frequency),
      rope_base_global=float(g.global_base_frequency),
      max_seq_len=max_seq_len,
      norm_eps=_GEMMA_NORM_EPS,
  )


def _optional_float(value: Any) -> float | None:
  return None if value is None else float(value)


def _rope_base(value: float) -> int | float:
  return int(value) if float(value).is_integer() else float(value)


def to_gemma_config(config: ModelConfig, *, transpose_gating_einsum: bool = True) -> Any:
  """The gemma ``TransformerConfig`` computing the same function as ``config``.

  Args:
    config: an rlds_lm config.
    transpose_gating_einsum: store the feed-forward gate as ``[2, F, D]`` (every
      released model but Gemma 2 2B) rather than ``[2, D, F]``; must match
      :func:`to_gemma_params`.

  Raises:
    ImportError: the gemma library is not installed.
    ValueError: ``config`` has a ``norm_eps`` or query scaling gemma cannot express.
  """
  gm = import_gm()
  config_module = gm.nn.config
  c = config
  if c.norm_eps != _GEMMA_NORM_EPS:
    raise ValueError(f"config {c.name!r}: gemma's RMSNorm uses eps={_GEMMA_NORM_EPS}, "
                     f"found norm_eps={c.norm_eps}")
  per_head_width = c.d_model // c.num_heads
  scalar = c.query_pre_attn_scalar
  if scalar is None or scalar == c.head_dim:
    norm = _BY_HEAD_DIM
  elif scalar == per_head_width:
    norm = _BY_PER_HEAD_WIDTH
  elif scalar == float(per_head_width) ** -2.0:
    norm = _TIMES_PER_HEAD_WIDTH
  else:
    raise ValueError(f"config {c.name!r}: gemma scales queries by head_dim ** -0.5, "
                     f"(d_model // num_heads) ** -0.5 or d_model // num_heads; "
                     f"query_pre_attn_scalar={scalar} is none of these")
  attention_type = gm.nn.AttentionType
  return config_module.TransformerConfig(
      num_embed=c.vocab_size,
      embed_dim=c.d_model,
      hidden_dim=c.mlp_dim,
      num_heads=c.num_heads,
      head_dim=c.head_dim,
      num_kv_heads=c.num_kv_heads,
      final_logit_softcap=c.final_logit_softcap,
      use_post_attn_norm=True,
      use_post_ffw_norm=True,
      attention_types=tuple(attention_type[_KIND_TO_GEMMA[k]] for k in c.layer_kinds),
      query_pre_attn_norm=config_module.QueryPreAttentionNormalisation[norm],
      attn_logits_soft_cap=c.attn_logit_softcap,
      sliding_window_size=c.sliding_window,
      transpose_gating_einsum=transpose_gating_einsum,
      use_qk_norm=c.qk_norm,
      local_base_frequency=_rope_base(c.rope_base_local),
      global_base_frequency=_rope_base(c.rope_base_global),
  )


# -- parameters ---------------------------------------------------------------------------


class _GemmaLeaves:
  """A gemma parameter tree by ``/``-joined path, taken leaf by leaf with shape checks."""

  def __init__(self, tree: Mapping[str, Any], dtype: Any):
    if set(tree) == {"params"}:  # what `model.init` returns
      tree = tree["params"]
    self._flat = traverse_util.flatten_dict(tree, sep="/")
    self._dtype = dtype

  def take(self, path: str, shape: tuple[int, ...]) -> jnp.ndarray:
    if path not in self._flat:
      near = sorted(p for p in self._flat if p.split("/")[0] == path.split("/")[0])
      raise ValueError(f"gemma params have no {path!r} (expected shape {shape}); "
                       f"found {near[:8] or sorted(self._flat)[:8]}")
    value = self._flat.pop(path)
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"gemma param {path!r} has shape {tuple(value.shape)}, the gemma "
                       f"config implies {shape}")
    return jnp.asarray(value, self._dtype)

  def check_all_taken(self) -> None:
    left = sorted(p for p in self._flat if not p.startswith(_VISION_PREFIXES))
    if left:
      raise ValueError(f"gemma params have {len(left)} entries rlds_lm's model does not "
                       f"use (LoRA, quantised or another architecture?): {left[:8]}")


def _convert_from_gemma(c: ModelConfig, transpose_gating: bool, leaves: _GemmaLeaves
                        ) -> Params:
  d, n, k, h, f = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
  heads_first = (1, 0, 2)  # [N, D, H] -> [D, N, H]
  params: Params = {"embedder": {"table": leaves.take("embedder/input_embedding",
                                                      (c.vocab_size, d))}}
  for i in range(c.num_layers):
    p = f"layer_{i}"
    if n == k:  # gemma fuses the three projections when there is no grouping
      qkv = leaves.take(f"{p}/attn/qkv_einsum/w", (3, n, d, h))
      q, key, value = (qkv[j].transpose(heads_first) for j in range(3))
    else:
      q = leaves.take(f"{p}/attn/q_einsum/w", (n, d, h)).transpose(heads_first)
      kv = leaves.take(f"{p}/attn/kv_einsum/w", (2, k, d, h))
      key, value = kv[0].transpose(heads_first), kv[1].transpose(heads_first)
    attn = {"q": q, "k": key, "v": value,
            "o": leaves.take(f"{p}/attn/attn_vec_einsum/w", (n, h, d))}
    if c.qk_norm:
      attn["q_norm"] = {"scale": leaves.take(f"{p}/attn/_query_norm/scale", (h,))}
      attn["k_norm"] = {"scale": leaves.take(f"{p}/attn/_key_norm/scale", (h,))}
    if transpose_gating:
      gating = leaves.take(f"{p}/mlp/gating_einsum", (2, f, d))
      gate, up = gating[0].T, gating[1].T
    else:
      gating = leaves.take(f"{p}/mlp/gating_einsum", (2, d, f))
      gate, up = gating[0], gating[1]
    norms = {ours: {"scale": leaves.take(f"{p}/{theirs}/scale", (d,))}
             for ours, theirs in (("pre_attn_norm", "pre_attention_norm"),
                                  ("post_attn_norm", "post_attention_norm"),
                                  ("pre_ffw_norm", "pre_ffw_norm"),
                                  ("post_ffw_norm", "post_ffw_norm"))}
    params[p] = {"attn": attn,
                 "mlp": {"gate": gate, "up": up,
                         "down": leaves.take(f"{p}/mlp/linear", (f, d))},
                 **norms}
  params["final_norm"] = {"scale": leaves.take("final_norm/scale", (d,))}
  leaves.check_all_taken()
  return params


def from_gemma_params(gemma_config_or_model: Any, gemma_params: Mapping[str, Any], *,
                      name: str | None = None, max_seq_len: int | None = None,
                      param_dtype: Any = jnp.float32) -> tuple[ModelConfig, Params]:
  """Converts a gemma-library parameter tree to rlds_lm's layout.

  Args:
    gemma_config_or_model: the gemma model the parameters belong to: a
      ``TransformerConfig``, a ``gm.nn`` model class or instance, or its name.
    gemma_params: the parameters, as ``gm.ckpts.load_params`` returns them, or
      ``model.init(...)``'s ``{"params": ...}``.
    name: the config's name (default: the model's class name, lower case).
    max_seq_len: context length; see :func:`from_gemma_config`.
    param_dtype: dtype of the returned parameters (released checkpoints are bfloat16;
      rlds_lm trains in float32).

  Returns:
    ``(config, params)`` for :func:`rlds_lm.models.forward`, ``Policy``, ``save``.

  Raises:
    ValueError: the model cannot be expressed (see :func:`from_gemma_config`), or a
      parameter is missing, has the wrong shape, or is not used by rlds_lm's model.
  """
  g = _gemma_config(gemma_config_or_model)
  config = from_gemma_config(g, name=name or _default_name(gemma_config_or_model),
                             max_seq_len=max_seq_len)
  params = _convert_from_gemma(config, bool(g.transpose_gating_einsum),
                               _GemmaLeaves(gemma_params, param_dtype))
  return config, params


def to_gemma_params(config: ModelConfig, params: Params, *,
                    transpose_gating_einsum: bool = True) -> Params:
  """rlds_lm parameters in the gemma library's layout (inverse of :func:`from_gemma_params`).

  Use with ``gm.nn.Transformer(config=to_gemma_config(config))``, or save with
  ``gm.ckpts.save_params``. Needs no gemma import; dtypes are kept.

  Args:
    config: the model.
    params: its parameters.
    transpose_gating_einsum: must match the gemma config's field (see
      :func:`to_gemma_config`).
  """
  c = config
  heads_first = (1, 0, 2)  # [D, N, H] -> [N, D, H]
  out: Params = {"embedder": {"input_embedding": params["embedder"]["table"]}}
  for i in range(c.num_layers):
    p = f"layer_{i}"
    layer = params[p]
    a = layer["attn"]
    q, key, value = (a[x].transpose(heads_first) for x in ("q", "k", "v"))
    attn = {"attn_vec_einsum": {"w": a["o"]}}
    if c.num_heads == c.num_kv_heads:
      attn["qkv_einsum"] = {"w": jnp.stack([q, key, value])}
    else:
      attn["q_einsum"] = {"w": q}
      attn["kv_einsum"] = {"w": jnp.stack([key, value])}
    if c.qk_norm:
      attn["_query_norm"] = {"scale": a["q_norm"]["scale"]}
      attn["_key_norm"] = {"scale": a["k_norm"]["scale"]}
    m = layer["mlp"]
    if transpose_gating_einsum:
      gating = jnp.stack([m["gate"].T, m["up"].T])
    else:
      gating = jnp.stack([m["gate"], m["up"]])
    out[p] = {
        "attn": attn,
        "mlp": {"gating_einsum": gating, "linear": m["down"]},
        "pre_attention_norm": layer["pre_attn_norm"],
        "post_attention_norm": layer["post_attn_norm"],
        "pre_ffw_norm": layer["pre_ffw_norm"],
        "post_ffw_norm": layer["post_ffw_norm"],
    }
  out["final_norm"] = params["final_norm"]
  return out


# -- checkpoints --------------------------------------------------------------------------


def load_gemma_checkpoint(path: str | os.PathLike[str], *, gemma_model: Any,
                          name: str | None = None, max_seq_len: int | None = None,
                          param_dtype: Any = jnp.float32) -> tuple[ModelConfig, Params]:
  """Loads a Gemma checkpoint with ``gm.ckpts.load_params`` and converts it.

  The checkpoint holds parameters only, so the architecture comes from ``gemma_model``.
  Any layout the library reads works (released checkpoints, ``gm.ckpts.save_params``
  output, kauldron training checkpoints); paths the library can open (local, ``gs://``)
  are accepted. Vision-encoder weights are not loaded.

  Example::

    config, params = load_gemma_checkpoint(
        gm.ckpts.CheckpointPath.GEMMA3_1B_IT, gemma_model=gm.nn.Gemma3_1B)

  Args:
    path: the Orbax checkpoint directory.
    gemma_model: its architecture: a ``gm.nn`` model class or instance
      (``gm.nn.Gemma2_2B``), its name (``"Gemma2_2B"``) or a ``TransformerConfig``.
    name: the config's name (default: the model's class name, lower case).
    max_seq_len: context length; see :func:`from_gemma_config`.
    param_dtype: dtype of the returned parameters.

  Returns:
    ``(config, params)`` in rlds_lm's layout.

  Raises:
    ImportError: the gemma library is not installed (``pip install 'rlds_lm[gemma]'``).
    ValueError: the architecture cannot be converted (checked before anything is read),
      or the checkpoint does not match it.
  """
  gm = import_gm()
  g = _gemma_config(gemma_model)
  label = name or _default_name(gemma_model)
  from_gemma_config(g, name=label, max_seq_len=max_seq_len)  # refuse before reading
  tree = gm.ckpts.load_params(os.fspath(path), text_only=True)
  return from_gemma_params(g, tree, name=label, max_seq_len=max_seq_len,
                           param_dtype=param_dtype)
