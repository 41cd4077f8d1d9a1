"""Batched autoregressive sampling with a KV cache, teacher-forced scoring, and :class:`Policy`.

Sampling prefills the (padded) prompts in one pass, then generates one token per step
inside a ``jax.lax.while_loop`` that stops when every sequence has emitted EOS or
``max_new_tokens`` tokens. :func:`sample_batch` with ``cached=False`` is the reference:
it recomputes the whole prefix at every step, with the same sampling code.

**Determinism contract.** A completion is a function of (prompt, seed, sampler settings,
parameters) only. Each sequence has its own PRNG key built from its 64-bit seed, folded
with the index of the generated token, and sampling is done row by row; masking uses
positions, not slots. So the same seed gives the same completion alone or in any batch,
at any row, with any padding (up to float rounding in the batched matmuls, which can flip
a draw only at an exact tie).

**Sampling distribution.** Logits are divided by ``temperature``, then restricted to the
``top_k`` largest (0 = off), then to the smallest set of the most likely remaining tokens
whose probability (renormalised after top-k) reaches ``top_p`` (1.0 = off). The returned
behaviour log-prob of a token is its log-probability under that final distribution, the
one it was drawn from. Greedy decoding is ``SamplerConfig.greedy()`` (``top_k=1``;
log-probs are 0).

Shapes are bucketed so that compilation is reused: prompt length and batch size are
padded up to powers of two (at least :data:`MIN_LENGTH_BUCKET` / :data:`MIN_BATCH_BUCKET`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlds_lm import schema as S
from rlds_lm.models import gemma
from rlds_lm.models import sharding as shd
from rlds_lm.models.config import ModelConfig

STOP_EOS = "eos"  # the sequence emitted the EOS token (included in its tokens)
STOP_LENGTH = "length"  # the sequence reached max_new_tokens
MIN_LENGTH_BUCKET = 16
MIN_BATCH_BUCKET = 1
LEFT = "left"
RIGHT = "right"

Params = gemma.Params
# Teacher-data extractor, run inside jit: (logits [B, T, V] float32, targets [B, T] int32)
# -> pytree of arrays [B, T, ...].
Extractor = Callable[[jax.Array, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampler settings (the ``sampler`` dict of a rollout episode).

  Attributes:
    temperature: > 0; logits are divided by it.
    top_k: keep the ``top_k`` most likely tokens; 0 = all.
    top_p: nucleus mass in (0, 1]; 1.0 = off.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
      raise ValueError(f"SamplerConfig: temperature must be > 0 (use SamplerConfig.greedy() "
                       f"for greedy decoding), found {self.temperature!r}")
    if (not isinstance(self.top_k, (int, np.integer)) or isinstance(self.top_k, bool)
        or self.top_k < 0):
      raise ValueError(f"SamplerConfig: top_k must be an int >= 0 (0 = off), "
                       f"found {self.top_k!r}")
    if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
      raise ValueError(f"SamplerConfig: top_p must be in (0, 1] (1.0 = off), "
                       f"found {self.top_p!r}")

  @classmethod
  def greedy(cls) -> SamplerConfig:
    """Argmax decoding: the top-1 token, log-prob 0."""
    return cls(temperature=1.0, top_k=1, top_p=1.0)

  @property
  def nucleus(self) -> bool:
    return self.top_p < 1.0

  def check_vocab(self, vocab_size: int) -> None:
    """Raises ValueError if ``top_k`` exceeds the vocabulary."""
    if self.top_k > vocab_size:
      raise ValueError(f"SamplerConfig: top_k={self.top_k} is larger than the vocabulary "
                       f"({vocab_size} ids)")

  def to_dict(self) -> dict[str, float | int]:
    """The episode's ``sampler`` fields, minus the seed."""
    return {S.SAMPLER_TEMPERATURE: float(self.temperature), S.SAMPLER_TOP_K: int(self.top_k),
            S.SAMPLER_TOP_P: float(self.top_p)}


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sampled completion.

  Attributes:
    tokens: int32 [n]: the generated tokens, EOS included if emitted.
    logprobs: float32 [n]: behaviour log-prob of each token under the sampling
      distribution.
    stop_reason: ``"eos"`` or ``"length"``.
  """

  tokens: np.ndarray
  logprobs: np.ndarray
  stop_reason: str

  def __len__(self) -> int:
    return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """A batch of completions, padded to ``max_new_tokens``.

  Attributes:
    tokens: int32 [B, max_new_tokens]; ``pad_id`` after the end.
    logprobs: float32 [B, max_new_tokens]; 0 after the end.
    lengths: int32 [B]: generated tokens per sequence (EOS included).
    stop_reasons: ``"eos"`` / ``"length"`` per sequence.
  """

  tokens: np.ndarray
  logprobs: np.ndarray
  lengths: np.ndarray
  stop_reasons: tuple[str, ...]

  def completions(self) -> list[Completion]:
    return [Completion(self.tokens[i, :n].copy(), self.logprobs[i, :n].copy(), reason)
            for i, (n, reason) in enumerate(zip(self.lengths.tolist(), self.stop_reasons))]


@dataclasses.dataclass(frozen=True)
class Scored:
  """Teacher-forced scores of one sequence's completion (tokens after the prompt).

  Attributes:
    logprobs: float32 [n]: log p(token | everything before it) under the model.
    logits: float32 [n, vocab] (only if asked for): the logits each token was scored by.
    extra: the extractor's output for those n positions (pytree of [n, ...]), or None.
  """

  logprobs: np.ndarray
  logits: np.ndarray | None = None
  extra: Any = None


# -- the sampling distribution ------------------------------------------------------------


def sampling_logprobs(logits: jax.Array, temperature: jax.Array | float,
                      top_p: jax.Array | float, *, top_k: int, nucleus: bool) -> jax.Array:
  """Log-probs of the sampling distribution: -inf outside the kept tokens.

  Args:
    logits: float [B, V].
    temperature: > 0 (scalar, may be traced).
    top_p: nucleus mass (scalar, may be traced); used only if ``nucleus``.
    top_k: static; 0 = off.
    nucleus: static; apply ``top_p``.

  Returns:
    float32 [B, V] log-probabilities summing to 1 over the kept tokens.
  """
  scaled = logits.astype(jnp.float32) / temperature
  if top_k or nucleus:
    vocab = scaled.shape[-1]
    values, indices = jax.lax.top_k(scaled, top_k or vocab)  # sorted, largest first
    if nucleus:
      probs = jax.nn.softmax(values, axis=-1)
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      values = jnp.where(mass_before < top_p, values, -jnp.inf)
    truncated = jnp.full_like(scaled, -jnp.inf)
    rows = jnp.arange(scaled.shape[0])[:, None]
    scaled = truncated.at[rows, indices].set(values)
  return jax.nn.log_softmax(scaled, axis=-1)


def _keys(key_data: jax.Array) -> jax.Array:
  return jax.vmap(lambda d: jax.random.wrap_key_data(d, impl="threefry2x32"))(key_data)


def _draw(keys: jax.Array, step: jax.Array, logits: jax.Array, temperature, top_p, *,
          top_k: int, nucleus: bool) -> tuple[jax.Array, jax.Array]:
  """One token per row from its own key folded with ``step``; and its log-prob."""
  logp = sampling_logprobs(logits, temperature, top_p, top_k=top_k, nucleus=nucleus)
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
  tokens = jax.vmap(jax.random.categorical)(step_keys, logp).astype(jnp.int32)
  return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=1)[:, 0]


# -- the decoding loop --------------------------------------------------------------------


def _generate(first_logits, feed, carry, key_data, active, temperature, top_p, *,
              max_new_tokens, top_k, nucleus, eos_id, pad_id):
  """Draws token 0 from ``first_logits``, then ``feed(carry, token, step)`` gives the
  logits for token ``step``; stops when all active rows are done or at
  ``max_new_tokens``."""
  keys = _keys(key_data)
  batch = first_logits.shape[0]
  draw = functools.partial(_draw, keys, temperature=temperature, top_p=top_p, top_k=top_k,
                           nucleus=nucleus)

  def emit(step, logits, out_tokens, out_logp, done, lengths):
    token, logp = draw(step, logits)
    token = jnp.where(done, pad_id, token)
    logp = jnp.where(done, 0.0, logp)
    out_tokens = jax.lax.dynamic_update_slice(out_tokens, token[:, None], (0, step))
    out_logp = jax.lax.dynamic_update_slice(out_logp, logp[:, None], (0, step))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | (token == eos_id)
    return token, out_tokens, out_logp, done, lengths

  init = emit(jnp.int32(0), first_logits,
              jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
              jnp.zeros((batch, max_new_tokens), jnp.float32),
              ~active, jnp.zeros((batch,), jnp.int32))

  def cond(state):
    step, _, _, _, done, _, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, token, out_tokens, out_logp, done, lengths, carry = state
    logits, carry = feed(carry, token, step)
    token, out_tokens, out_logp, done, lengths = emit(step, logits, out_tokens, out_logp,
                                                      done, lengths)
    return step + 1, token, out_tokens, out_logp, done, lengths, carry

  state = jax.lax.while_loop(cond, body, (jnp.int32(1),) + init + (carry,))
  _, _, out_tokens, out_logp, done, lengths, _ = state
  return out_tokens, out_logp, lengths, done


def _prompt_layout(valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(positions [B, L], prompt lengths [B], slot of each prompt's last token [B])."""
  positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
  lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
  slots = jnp.arange(valid.shape[1], dtype=jnp.int32)
  last = jnp.max(jnp.where(valid, slots, -1), axis=1)
  return positions, lengths, last


@functools.partial(jax.jit, static_argnames=(
    "config", "max_new_tokens", "top_k", "nucleus", "cached"))
def _sample_jit(params, tokens, valid, key_data, active, temperature, top_p, eos_id, pad_id,
                *, config, max_new_tokens, top_k, nucleus, cached):
  batch, length = tokens.shape
  tokens = shd.constrain(tokens, ("batch", "length"))
  positions, prompt_lengths, last = _prompt_layout(valid)
  total = length + max_new_tokens - 1  # the last token is never fed back
  run = functools.partial(gemma.forward, config, params)

  if cached:
    cache = gemma.init_cache(config, batch, total)
    logits, cache = run(tokens, positions, valid, cache=cache, cache_index=0,
                        logit_slots=last)

    def feed(cache, token, step):
      logits, cache = run(token[:, None], (prompt_lengths + step - 1)[:, None],
                          jnp.ones((batch, 1), bool), cache=cache,
                          cache_index=length + step - 1)
      return logits[:, 0], cache

    carry = cache
  else:
    pad = total - length
    buf_tokens = jnp.pad(tokens, ((0, 0), (0, pad)), constant_values=pad_id)
    buf_valid = jnp.pad(valid, ((0, 0), (0, pad)))
    new_positions = prompt_lengths[:, None] + jnp.arange(pad, dtype=jnp.int32)[None]
    buf_positions = jnp.concatenate([positions, new_positions], axis=1)
    logits, _ = run(buf_tokens, buf_positions, buf_valid, logit_slots=last)

    def feed(carry, token, step):
      buf_tokens, buf_valid = carry
      slot = length + step - 1
      buf_tokens = jax.lax.dynamic_update_slice(buf_tokens, token[:, None], (0, slot))
      buf_valid = jax.lax.dynamic_update_slice(buf_valid, jnp.ones((batch, 1), bool),
                                               (0, slot))
      logits, _ = run(buf_tokens, buf_positions, buf_valid,
                      logit_slots=jnp.full((batch,), slot, jnp.int32))
      return logits[:, 0], (buf_tokens, buf_valid)

    carry = (buf_tokens, buf_valid)

  return _generate(logits[:, 0], feed, carry, key_data, active, temperature, top_p,
                   max_new_tokens=max_new_tokens, top_k=top_k, nucleus=nucleus,
                   eos_id=eos_id, pad_id=pad_id)


def sample_batch(config: ModelConfig, params: Params, tokens: jax.Array, valid: jax.Array,
                 key_data: jax.Array, sampler: SamplerConfig, max_new_tokens: int, *,
                 eos_id: int | None, pad_id: int = 0, cached: bool = True,
                 active: jax.Array | None = None,
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Samples from already padded prompts (jitted; no input checks: see :func:`sample`).

  Args:
    config: the model.
    params: its parameters.
    tokens: int32 [B, L] prompts, padded on either side (or both).
    valid: bool [B, L]: False at padding; every row needs at least one True.
    key_data: uint32 [B, 2], from :func:`gemma.seed_key_data`.
    sampler: sampler settings.
    max_new_tokens: tokens to generate at most.
    eos_id: token that ends a sequence, or None.
    pad_id: written after the end of each sequence.
    cached: use the KV cache; False recomputes the whole prefix at every step.
    active: optional bool [B]; inactive rows (batch padding) generate nothing and do
      not keep the loop running.

  Returns:
    (tokens int32 [B, N], logprobs float32 [B, N], lengths int32 [B], eos bool [B]).
  """
  if active is None:
    active = jnp.ones((tokens.shape[0],), bool)
  return _sample_jit(params, tokens, valid, key_data, active,
                     jnp.float32(sampler.temperature), jnp.float32(sampler.top_p),
                     jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
                     config=config, max_new_tokens=max_new_tokens, top_k=sampler.top_k,
                     nucleus=sampler.nucleus, cached=cached)


# -- checking and padding inputs (host side) ----------------------------------------------


def bucket(n: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(n, minimum)."""
  n = max(n, minimum, 1)
  return 1 << (n - 1).bit_length()


def check_tokens(sequences: Sequence[np.ndarray], config: ModelConfig, *, what: str,
                 extra_positions: int = 0) -> list[np.ndarray]:
  """Validates token sequences against the model; returns them as int32 arrays.

  Raises:
    ValueError: an empty batch, a sequence that is not a non-empty 1-D integer array, one
      that (plus ``extra_positions``) does not fit the context, or an id outside the
      vocabulary.
  """
  if len(sequences) == 0:
    raise ValueError(f"expected at least one {what}, found none")
  out = []
  for i, seq in enumerate(sequences):
    array = np.asarray(seq)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
      raise ValueError(f"{what} {i}: expected a non-empty 1-D integer array, found "
                       f"dtype={array.dtype} shape={array.shape}")
    n = array.shape[0]
    if n > config.max_seq_len:
      raise ValueError(f"{what} {i} has {n} tokens, longer than the context of model "
                       f"{config.name!r} (max_seq_len={config.max_seq_len})")
    if n + extra_positions > config.max_seq_len:
      raise ValueError(f"{what} {i} has {n} tokens; with max_new_tokens={extra_positions} "
                       f"it needs {n + extra_positions} positions, more than the context of "
                       f"model {config.name!r} (max_seq_len={config.max_seq_len})")
    bad = np.flatnonzero((array < 0) | (array >= config.vocab_size))
    if bad.size:
      raise ValueError(f"{what} {i}: token id {int(array[bad[0]])} at index {int(bad[0])} "
                       f"is outside the vocabulary [0, {config.vocab_size})")
    out.append(array.astype(np.int32))
  return out


def check_prompt_lengths(sequences: Sequence[np.ndarray],
                         prompt_lengths: Sequence[int]) -> None:
  """One prompt length per sequence, each in ``[1, len(sequence)]`` (for scoring)."""
  if len(prompt_lengths) != len(sequences):
    raise ValueError(f"expected one prompt length per sequence ({len(sequences)}), found "
                     f"{len(prompt_lengths)}")
  for i, (seq, p) in enumerate(zip(sequences, prompt_lengths)):
    if not 1 <= p <= len(seq):
      raise ValueError(f"sequence {i}: prompt length must be in [1, {len(seq)}], found {p}")


def pad_prompts(prompts: Sequence[np.ndarray], *, length: int, batch: int, pad_id: int,
                padding: str = LEFT) -> tuple[np.ndarray, np.ndarray]:
  """Pads prompts into (tokens int32 [batch, length], valid bool [batch, length]).

  Rows past ``len(prompts)`` hold a single ``pad_id`` token (valid, so that they compute
  something harmless) and are to be dropped by the caller.
  """
  if padding not in (LEFT, RIGHT):
    raise ValueError(f"padding must be {LEFT!r} or {RIGHT!r}, found {padding!r}")
  tokens = np.full((batch, length), pad_id, np.int32)
  valid = np.zeros((batch, length), bool)
  for i in range(batch):
    prompt = prompts[i] if i < len(prompts) else np.asarray([pad_id], np.int32)
    n = len(prompt)
    start = length - n if padding == LEFT else 0
    tokens[i, start:start + n] = prompt
    valid[i, start:start + n] = True
  return tokens, valid


def _check_seeds(seeds: Sequence[int], count: int) -> list[int]:
  if len(seeds) != count:
    raise ValueError(f"expected one seed per prompt ({count}), found {len(seeds)}")
  out = []
  for i, seed in enumerate(seeds):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ValueError(f"seed {i}: expected an int, found {type(seed).__name__} {seed!r}")
    out.append(int(seed))
  return out


def _check_max_new(max_new_tokens: int) -> int:
  if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer))
      or max_new_tokens < 1):
    raise ValueError(f"max_new_tokens must be an int >= 1, found {max_new_tokens!r}")
  return int(max_new_tokens)


def _check_special_ids(config: ModelConfig, eos_id: int | None, pad_id: int) -> None:
  for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
    if value is not None and not 0 <= value < config.vocab_size:
      raise ValueError(f"{name} {value} is outside the vocabulary [0, {config.vocab_size})")


def _data_size(mesh: jax.sharding.Mesh | None) -> int:
  return 1 if mesh is None else int(dict(mesh.shape).get(shd.DATA, 1))


def _batch_bucket(n: int, mesh: jax.sharding.Mesh | None) -> int:
  size = bucket(n, MIN_BATCH_BUCKET)
  data = _data_size(mesh)
  return -(-size // data) * data


def _on_mesh(mesh: jax.sharding.Mesh | None, *arrays: np.ndarray) -> list[Any]:
  if mesh is None:
    return [jnp.asarray(a) for a in arrays]
  return [jax.device_put(a, shd.batch_sharding(mesh, a.shape)) for a in arrays]


def _mesh_context(mesh: jax.sharding.Mesh | None):
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


# -- public entry points ------------------------------------------------------------------


def sample(config: ModelConfig, params: Params, prompts: Sequence[np.ndarray],
           seeds: Sequence[int], sampler: SamplerConfig, max_new_tokens: int, *,
           eos_id: int | None, pad_id: int = 0, padding: str = LEFT, cached: bool = True,
           mesh: jax.sharding.Mesh | None = None,
           min_length_bucket: int = MIN_LENGTH_BUCKET) -> SampleOutput:
  """Samples one completion per prompt.

  Args:
    config: the model.
    params: its parameters (placed on ``mesh`` if one is given).
    prompts: 1-D integer token arrays of any lengths.
    seeds: one seed in [0, 2**64) per prompt.
    sampler: sampler settings.
    max_new_tokens: tokens to generate at most per prompt.
    eos_id: token that ends a sequence, or None to always generate max_new_tokens.
    pad_id: padding token.
    padding: pad prompts on the ``"left"`` or ``"right"``; results do not depend on it.
    cached: False uses the uncached reference sampler.
    mesh: run data/model-parallel on this mesh.
    min_length_bucket: smallest padded prompt length.

  Returns:
    A :class:`SampleOutput` with one row per prompt.

  Raises:
    ValueError: bad prompts (empty, too long for the context, ids outside the vocabulary),
      seeds, sampler settings or max_new_tokens.
  """
  max_new_tokens = _check_max_new(max_new_tokens)
  sampler.check_vocab(config.vocab_size)
  _check_special_ids(config, eos_id, pad_id)
  prompts = check_tokens(prompts, config, what="prompt", extra_positions=max_new_tokens)
  seeds = _check_seeds(seeds, len(prompts))
  batch = _batch_bucket(len(prompts), mesh)
  length = bucket(max(len(p) for p in prompts), min_length_bucket)
  tokens, valid = pad_prompts(prompts, length=length, batch=batch, pad_id=pad_id,
                              padding=padding)
  key_data = gemma.seed_key_data(seeds + [0] * (batch - len(seeds)))
  active = np.arange(batch) < len(prompts)
  with _mesh_context(mesh):
    tokens, valid, key_data, active = _on_mesh(mesh, tokens, valid, key_data, active)
    out = sample_batch(config, params, tokens, valid, key_data, sampler, max_new_tokens,
                       eos_id=eos_id, pad_id=pad_id, cached=cached, active=active)
    out_tokens, logprobs, lengths, eos = (np.asarray(x)[:len(prompts)] for x in out)
  return SampleOutput(tokens=out_tokens, logprobs=logprobs, lengths=lengths,
                      stop_reasons=tuple(STOP_EOS if e else STOP_LENGTH for e in eos))


def sample_uncached(*args, **kwargs) -> SampleOutput:
  """:func:`sample` recomputing the whole prefix each step (reference for tests/benchmarks)."""
  return sample(*args, cached=False, **kwargs)


@functools.partial(jax.jit, static_argnames=("config", "extract", "return_logits"))
def _score_jit(params, tokens, lengths, *, config, extract, return_logits):
  logits = gemma.score_logits(config, params, tokens, lengths)[:, :-1]
  targets = tokens[:, 1:]
  logp = jax.nn.log_softmax(logits, axis=-1)
  token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  extra = None if extract is None else extract(logits, targets)
  return token_logp, (logits if return_logits else None), extra


def score(config: ModelConfig, params: Params, sequences: Sequence[np.ndarray],
          prompt_lengths: Sequence[int], *, extract: Extractor | None = None,
          return_logits: bool = False, mesh: jax.sharding.Mesh | None = None,
          min_length_bucket: int = MIN_LENGTH_BUCKET) -> list[Scored]:
  """Teacher-forced log-probs of each sequence's completion (tokens after its prompt).

  Args:
    config: the model.
    params: its parameters.
    sequences: prompt + completion token arrays.
    prompt_lengths: prompt length of each (>= 1; the first token is never scored).
    extract: optional function run inside jit on (logits [B, T, V], targets [B, T]) that
      returns per-position teacher data (e.g. top-k), so full-vocabulary logits need not
      leave the device; a module-level function, so that compilations are reused.
    return_logits: also return the full logits [n, V] of each completion (host memory!).
    mesh: run data/model-parallel on this mesh.
    min_length_bucket: smallest padded sequence length.

  Returns:
    One :class:`Scored` per sequence; ``logprobs[j]`` scores ``sequence[prompt_length + j]``.

  Raises:
    ValueError: bad sequences or prompt lengths.
  """
  sequences = check_tokens(sequences, config, what="sequence")
  check_prompt_lengths(sequences, prompt_lengths)
  batch = _batch_bucket(len(sequences), mesh)
  length = bucket(max(len(s) for s in sequences), min_length_bucket)
  tokens, valid = pad_prompts(sequences, length=length, batch=batch, pad_id=0, padding=RIGHT)
  lengths = valid.sum(axis=1).astype(np.int32)
  with _mesh_context(mesh):
    tokens, lengths = _on_mesh(mesh, tokens, lengths)
    token_logp, logits, extra = _score_jit(params, tokens, lengths, config=config,
                                           extract=extract, return_logits=return_logits)
    token_logp = np.asarray(token_logp)
    logits = None if logits is None else np.asarray(logits)
    extra = jax.tree.map(np.asarray, extra)
  out = []
  for i, (seq, p) in enumerate(zip(sequences, prompt_lengths)):
    rows = functools.partial(_completion_rows, row=i, span=slice(p - 1, len(seq) - 1))
    out.append(Scored(logprobs=rows(token_logp),
                      logits=None if logits is None else rows(logits),
                      extra=jax.tree.map(rows, extra)))
  return out


def _completion_rows(x: np.ndarray, *, row: int, span: slice) -> np.ndarray:
  return x[row, span].copy()


class Policy:
  """A model with its parameters, ready to sample from and to score with.

  Example::

    policy = Policy(config, params, eos_id=tokenizer.eos_id, name="gemma-tiny")
    results = policy.sample([prompt], seeds=[7], sampler=SamplerConfig(temperature=0.8),
                            max_new_tokens=32)
    results[0].tokens, results[0].logprobs, results[0].stop_reason
    policy.score([np.concatenate([prompt, results[0].tokens])], [len(prompt)])
  """

  def __init__(self, config: ModelConfig, params: Params, *, eos_id: int | None,
               pad_id: int = 0, name: str | None = None,
               mesh: jax.sharding.Mesh | None = None, padding: str = LEFT,
               digest: str | None = None):
    """Args:
      config: the model.
      params: its parameters (moved onto ``mesh`` if given).
      eos_id: token that ends a completion, or None.
      pad_id: padding token.
      name: policy name recorded in episodes (default: the config's name).
      mesh: a ``("data", "model")`` mesh from :func:`sharding.make_mesh`, or None.
      padding: prompt padding side.
      digest: the checkpoint digest if known (else computed on first use).
    """
    self.config = config
    self.mesh = mesh
    self.params = params if mesh is None else gemma.shard_params(params, config, mesh)
    self.eos_id = eos_id
    self.pad_id = pad_id
    self.name = name or config.name
    self.padding = padding
    self._digest = digest

  @classmethod
  def from_checkpoint(cls, path: str, *, eos_id: int | None,
                      config: ModelConfig | None = None, **kwargs: Any) -> Policy:
    """Restores a checkpoint (refusing one saved for another config, if ``config``)."""
    from rlds_lm.models import checkpoint  # pylint: disable=g-import-not-at-top
    restored_config, params, digest = checkpoint.restore(path, config,
                                                         mesh=kwargs.get("mesh"))
    return cls(restored_config, params, eos_id=eos_id, digest=digest, **kwargs)

  @property
  def digest(self) -> str:
    """The checkpoint digest (16 hex digits) that episodes record."""
    if self._digest is None:
      from rlds_lm.models import checkpoint  # pylint: disable=g-import-not-at-top
      self._digest = checkpoint.digest(self.config, self.params)
    return self._digest

  def sample(self, prompts: Sequence[np.ndarray], seeds: Sequence[int],
             sampler: SamplerConfig, max_new_tokens: int) -> list[Completion]:
    """One :class:`Completion` per prompt; see :func:`sample`."""
    out = sample(self.config, self.params, prompts, seeds, sampler, max_new_tokens,
                 eos_id=self.eos_id, pad_id=self.pad_id, padding=self.padding,
                 mesh=self.mesh)
    return out.completions()

  def score(self, sequences: Sequence[np.ndarray], prompt_lengths: Sequence[int], *,
            extract: Extractor | None = None, return_logits: bool = False) -> list[Scored]:
    """Teacher-forced scores of each completion; see :func:`score`."""
    return score(self.config, self.params, sequences, prompt_lengths, extract=extract,
                 return_logits=return_logits, mesh=self.mesh)

  def score_logits(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Device logits [B, T, V] of right-padded ``tokens``; see :func:`gemma.score_logits`."""
    with _mesh_context(self.mesh):
      return gemma.score_logits(self.config, self.params, tokens, lengths)
