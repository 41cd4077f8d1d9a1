"""The in-process backend: an rlds_lm JAX checkpoint (or any :class:`sampling.Policy`).

Example::

    backend = LocalBackend.from_checkpoint("ckpt/policy", tokenizer="byte")
    gens = backend.sample([prompt_ids], seeds=[7], sampler=SamplerConfig(temperature=0.8),
                          max_new_tokens=32, top_logprobs=5)
    teacher = backend.annotate([np.concatenate([prompt_ids, gens[0].tokens])],
                               [len(prompt_ids)], top_k=8)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlds_lm import schema as S
from rlds_lm import tokenizers as tokenizers_lib
from rlds_lm.backends import base
from rlds_lm.models import sampling
from rlds_lm.models import teacher_scoring


def _sampling_topk(logits, targets, *, k: int, temperature: float, top_k: int,
                   top_p: float):
  """Top-k ids and log-probs of the sampling distribution at each position (in jit)."""
  del targets
  flat = logits.reshape(-1, logits.shape[-1])
  logp = sampling.sampling_logprobs(flat, temperature, top_p, top_k=top_k,
                                    nucleus=top_p < 1.0)
  values, ids = jax.lax.top_k(logp, k)
  shape = logits.shape[:-1] + (k,)
  return ids.astype(jnp.int32).reshape(shape), values.reshape(shape)


@functools.lru_cache(maxsize=32)
def _extractor(k: int, temperature: float, top_k: int, top_p: float):
  # One function object per setting, so that jit reuses its compilation.
  return functools.partial(_sampling_topk, k=k, temperature=temperature, top_k=top_k,
                           top_p=top_p)


def load_tokenizer(spec: str) -> tokenizers_lib.Tokenizer:
  """``"byte"`` or the path of a SentencePiece ``.model`` file."""
  if spec == "byte":
    return tokenizers_lib.ByteTokenizer()
  try:
    return tokenizers_lib.SentencePieceTokenizer(spec)
  except (OSError, RuntimeError) as e:
    raise base.BackendError(f"tokenizer must be 'byte' or a SentencePiece .model file; "
                            f"{spec!r}: {e}") from e


class LocalBackend(base.Backend):
  """A :class:`sampling.Policy` behind the backend interface."""

  def __init__(self, policy: sampling.Policy, tokenizer: tokenizers_lib.Tokenizer, *,
               path: str = ""):
    self.policy = policy
    self.tokenizer = tokenizer
    self.path = path
    self.name = policy.name
    self.max_seq_len = policy.config.max_seq_len
    self.vocab_size = policy.config.vocab_size

  @classmethod
  def from_checkpoint(cls, path: str, *, tokenizer: str = "byte", name: str | None = None,
                      **kwargs: Any) -> LocalBackend:
    tok = load_tokenizer(tokenizer)
    policy = sampling.Policy.from_checkpoint(path, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                             name=name, **kwargs)
    return cls(policy, tok, path=path)

  @classmethod
  def from_gemma_checkpoint(cls, path: str, *, gemma_model: Any, tokenizer: Any,
                            name: str | None = None, max_seq_len: int | None = None,
                            eos_id: int | None = None) -> LocalBackend:
    """A Gemma checkpoint of the ``gemma`` library (through
    :mod:`rlds_lm.models.gemma_adapter`; ``pip install 'rlds_lm[gemma]'``).

    Args:
      path: the library's checkpoint directory.
      gemma_model: its architecture (``"Gemma3_1B"``, a ``gm.nn`` class or config).
      tokenizer: a tokenizer object, or ``"byte"`` / a SentencePiece ``.model`` path.
      name: the name episodes record (default: the model's).
      max_seq_len: the context length to serve.
      eos_id: the end-of-sequence id (default: the tokenizer's; Gemma's is 1).
    """
    from rlds_lm.models import gemma_adapter  # pylint: disable=g-import-not-at-top
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    config, params = gemma_adapter.load_gemma_checkpoint(
        path, gemma_model=gemma_model, name=name, max_seq_len=max_seq_len)
    policy = sampling.Policy(config, params, name=name,
                             eos_id=tok.eos_id if eos_id is None else eos_id,
                             pad_id=getattr(tok, "pad_id", 0))
    return cls(policy, tok, path=path)

  @property
  def digest(self) -> str:
    return self.policy.digest

  def describe(self) -> dict[str, Any]:
    return {"backend": "local", "model": self.name, "digest": self.digest,
            "path": self.path, "tokenizer": self.tokenizer.name,
            "vocab_size": self.vocab_size, "max_seq_len": self.max_seq_len}

  def sample(self, prompts: Sequence[np.ndarray], seeds: Sequence[int],
             sampler: sampling.SamplerConfig, max_new_tokens: int, *,
             top_logprobs: int = 0) -> list[base.Generation]:
    completions = self.policy.sample(prompts, seeds, sampler, max_new_tokens)
    tops: list[Any] = [None] * len(completions)
    if top_logprobs:
      tops = self._top_alternatives(prompts, completions, sampler, top_logprobs)
    out = []
    for seed, completion, top in zip(seeds, completions, tops):
      ids, logps = top if top is not None else (None, None)
      out.append(base.Generation(
          tokens=completion.tokens, logprobs=completion.logprobs,
          stop_reason=completion.stop_reason, top_ids=ids, top_logprobs=logps,
          text=self.tokenizer.decode(completion.tokens),
          provenance={"seed": int(seed)}))
    return out

  def _top_alternatives(self, prompts, completions, sampler, k: int):
    """(ids [n, k], log-probs [n, k]) of the sampling distribution per generated token."""
    k = min(int(k), self.vocab_size)
    idx = [i for i, c in enumerate(completions) if len(c.tokens)]
    out: list[Any] = [(np.zeros((0, k), np.int32), np.zeros((0, k), np.float32))
                      for _ in completions]
    if not idx:
      return out
    sequences = [np.concatenate([np.asarray(prompts[i], np.int32), completions[i].tokens])
                 for i in idx]
    scored = self.policy.score(sequences, [len(prompts[i]) for i in idx],
                               extract=_extractor(k, float(sampler.temperature),
                                                  int(sampler.top_k), float(sampler.top_p)))
    for i, s in zip(idx, scored):
      ids, logps = s.extra
      out[i] = (np.asarray(ids, np.int32), np.asarray(logps, np.float32))
    return out

  def chat(self, messages, *, seed: int, sampler: sampling.SamplerConfig,
           max_new_tokens: int, text_only: bool = False) -> base.Generation:
    del text_only  # in process, ids are always there
    prompt = self.tokenizer.encode(base.chat_prompt(messages), add_bos=True)
    return self.sample([prompt], [seed], sampler, max_new_tokens)[0]

  def annotate(self, sequences: Sequence[np.ndarray], prompt_lengths: Sequence[int], *,
               top_k: int) -> list[dict[str, np.ndarray]]:
    arrays = teacher_scoring.annotate(self.policy.config, self.policy.params, sequences,
                                      prompt_lengths, top_k=top_k)
    keep = (S.TEACHER_TOKEN_LOGPROB, S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS)
    return [{key: a[key] for key in keep if key in a} for a in arrays]
