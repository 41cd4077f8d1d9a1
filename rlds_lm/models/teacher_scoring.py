"""Teacher annotation: score completions with a teacher model and keep, per token, the
teacher data of the schema (top-k, Gemma-3-style sampled-k, log-prob of the token).

Full-vocabulary logits never leave the device: extraction runs inside the same ``jit``
as the forward pass. Sampled-k draws use one key per sequence, from the caller's seed,
so a sequence's annotation does not depend on the batch it was scored in.

Example::

    teacher = Policy.from_checkpoint(path, eos_id=tok.eos_id)
    arrays = annotate(teacher.config, teacher.params, [prompt_and_completion],
                      [len(prompt)], top_k=cfg.teacher_top_k,
                      sampled=cfg.teacher_sampled_k, seeds=[episode_seed])
    turn = schema.Turn(obs, completion, teacher=arrays[0])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlds_lm import schema as S
from rlds_lm import teacher as T
from rlds_lm.models import gemma
from rlds_lm.models import sampling
from rlds_lm.models.config import ModelConfig

Params = dict


@functools.partial(jax.jit, static_argnames=("config", "top_k", "sampled"))
def _annotate_jit(params: Params, tokens: jax.Array, lengths: jax.Array,
                  key_data: jax.Array, temperature: jax.Array, *, config: ModelConfig,
                  top_k: int, sampled: int) -> dict[str, jax.Array]:
  logits = gemma.score_logits(config, params, tokens, lengths)[:, :-1]  # [B, L-1, V]
  targets = tokens[:, 1:]
  out = {S.TEACHER_TOKEN_LOGPROB: T.token_logprob(logits, targets, temperature=temperature)}
  if top_k:
    out[S.TEACHER_TOPK_IDS], out[S.TEACHER_TOPK_LOGPROBS] = T.topk(
        logits, top_k, temperature=temperature)
  if sampled:
    keys = jax.vmap(lambda d: jax.random.wrap_key_data(d, impl="threefry2x32"))(key_data)
    ids, counts = jax.vmap(lambda row, key: T.sampled_k(
        row, sampled, key, temperature=temperature))(logits, keys)
    out[S.TEACHER_SAMPLED_IDS], out[S.TEACHER_SAMPLED_COUNTS] = ids, counts
  return out


def annotate(config: ModelConfig, params: Params, sequences: Sequence[np.ndarray],
             prompt_lengths: Sequence[int], *, top_k: int = 0, sampled: int = 0,
             seeds: Sequence[int] | None = None, temperature: float = 1.0,
             min_length_bucket: int = sampling.MIN_LENGTH_BUCKET
             ) -> list[dict[str, np.ndarray]]:
  """Teacher arrays for the completion (tokens after the prompt) of each sequence.

  Args:
    config: the teacher model.
    params: its parameters.
    sequences: prompt + completion token arrays.
    prompt_lengths: prompt length of each sequence (>= 1).
    top_k: K of the stored top-k (0: none).
    sampled: S, the number of teacher draws per token (0: none).
    seeds: one seed per sequence, required when ``sampled > 0``.
    temperature: teacher temperature (> 0).
    min_length_bucket: smallest padded length (lengths are padded to powers of two so
      that compilations are reused).

  Returns:
    One dict per sequence with ``schema.TEACHER_*`` arrays of the completion's length.

  Raises:
    ValueError: bad tokens, prompt lengths, k larger than the vocabulary, temperature
      <= 0, or missing seeds.
  """
  sequences = sampling.check_tokens(sequences, config, what="sequence")
  sampling.check_prompt_lengths(sequences, prompt_lengths)
  if not 0 <= top_k <= config.vocab_size:
    raise ValueError(f"top_k must be in [0, vocab_size={config.vocab_size}], found {top_k}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, found {temperature}")
  if sampled:
    if seeds is None or len(seeds) != len(sequences):
      raise ValueError(f"sampled-k needs one seed per sequence ({len(sequences)}), found "
                       f"{None if seeds is None else len(seeds)}")
    key_data = gemma.seed_key_data(list(seeds))
  else:
    key_data = np.zeros((len(sequences), 2), np.uint32)
  batch = sampling.bucket(len(sequences))
  length = sampling.bucket(max(len(s) for s in sequences), min_length_bucket)
  tokens, valid = sampling.pad_prompts(sequences, length=length, batch=batch, pad_id=0,
                                       padding=sampling.RIGHT)
  lengths = valid.sum(axis=1).astype(np.int32)
  key_data = np.concatenate([key_data, np.zeros((batch - len(sequences), 2), np.uint32)])
  out = _annotate_jit(params, tokens, lengths, key_data, jnp.float32(temperature),
                      config=config, top_k=top_k, sampled=sampled)
  out = {k: np.asarray(v) for k, v in out.items()}
  return [{k: v[i, p - 1:len(seq) - 1].copy() for k, v in out.items()}
          for i, (seq, p) in enumerate(zip(sequences, prompt_lengths))]
