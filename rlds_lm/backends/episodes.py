"""Rollout episodes from any backend, for users who drive their own loop.

The same episodes the ``generate`` and ``teacher`` stages write, from plain Python::

    policy = OpenAIBackend("http://127.0.0.1:8000/v1", "my-policy", tokenizer=tok)
    teacher = OpenAIBackend("http://127.0.0.1:8001/v1", "my-teacher", tokenizer=tok)
    config = SchemaConfig(vocab_size=tok.vocab_size, teacher_top_k=8)
    with Recorder("logs/run1", config) as recorder:
      for episode in rollouts(policy, {"p-1": "2 + 3 ="}, config, tokenizer=tok,
                              num_samples=4, max_new_tokens=16, teacher=teacher):
        recorder.record(episode)

Seeds are derived from content (prompt id, sample index, the policy's digest and the
sampling settings), as in the stages, so a re-run asks for the same samples; every
episode's lineage says which backend, model, endpoint, revision, request seed and time
produced it (never an API key).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm.backends import base


def sample_seed(prompt_id: str, sample_index: int, policy_digest: str,
                sampling: Mapping[str, Any]) -> int:
  """The seed of one sample: a function of what is sampled, never of time or order."""
  return S.content_seed(prompt_id, sample_index, policy_digest, dict(sampling))


def rollouts(policy: base.Backend, prompts: Mapping[str, str], config: S.SchemaConfig, *,
             tokenizer: Any, num_samples: int = 1, max_new_tokens: int = 32,
             sampler: Any = None, salt: int = 0, teacher: base.Backend | None = None,
             task: str = "", prompts_per_call: int = 32) -> Iterator[dict[str, Any]]:
  """Samples ``num_samples`` completions per prompt and yields rollout episodes.

  Args:
    policy: the backend to sample from.
    prompts: prompt id -> prompt text (encoded with ``tokenizer``, BOS first).
    config: the schema of the episodes (``teacher_top_k`` sets the teacher's K).
    tokenizer: the policy's tokenizer (and the teacher's: see ``check_same_tokenizer``).
    num_samples: samples per prompt.
    max_new_tokens: tokens per completion at most.
    sampler: a ``SamplerConfig`` (default: temperature 1).
    salt: changes every seed (another, equally reproducible draw).
    teacher: annotate each completion with this backend's top-k (``config.teacher_top_k``).
    task: the task name episodes record.
    prompts_per_call: prompts whose samples go to the backend in one call (one batch in
      process; that many concurrent requests, within the client's limit, over HTTP).

  Raises:
    BackendError: a backend that cannot serve the request (says why).
  """
  from rlds_lm.models import sampling as sampling_lib  # pylint: disable=g-import-not-at-top
  sampler = sampler or sampling_lib.SamplerConfig()
  if teacher is not None:
    base.check_same_tokenizer(getattr(tokenizer, "name", ""),
                              teacher.describe().get("tokenizer") or
                              getattr(tokenizer, "name", ""))
    if config.teacher_sampled_k:
      raise base.BackendError("sampled-k teacher data needs the full distribution, which "
                              "a backend does not return: set teacher_sampled_k=0 or use "
                              "the teacher stage with a local checkpoint")
  settings = {"num_samples": num_samples, "max_new_tokens": max_new_tokens,
              **sampler.to_dict(), "salt": salt}
  provenance = {"policy": policy.describe()}
  if teacher is not None:
    provenance["teacher"] = teacher.describe()
  items = list(prompts.items())
  for start in range(0, len(items), max(1, prompts_per_call)):
    chunk = items[start:start + max(1, prompts_per_call)]
    encoded = [np.asarray(tokenizer.encode(text, add_bos=True), np.int32)
               for _, text in chunk]
    seeds = [sample_seed(prompt_id, i, policy.digest, settings)
             for prompt_id, _ in chunk for i in range(num_samples)]
    started = time.time()
    gens = policy.sample([t for t in encoded for _ in range(num_samples)], seeds, sampler,
                         max_new_tokens)
    arrays: list[Any] = [None] * len(gens)
    if teacher is not None:
      arrays = teacher.annotate(
          [np.concatenate([t, g.tokens]) for t, g in
           zip([t for t in encoded for _ in range(num_samples)], gens)],
          [len(t) for t in encoded for _ in range(num_samples)], top_k=config.teacher_top_k)
    for n, ((prompt_id, text), tokens) in enumerate(zip(chunk, encoded)):
      for i in range(num_samples):
        at = n * num_samples + i
        gen, seed = gens[at], seeds[at]
        turn = S.Turn(observation=S.observation(config, tokens, text, "prompt"),
                      action_tokens=gen.tokens, action_text=tokenizer.decode(gen.tokens),
                      action_logprobs=gen.logprobs, teacher=arrays[at])
        lineage = {**provenance, "request": {**gen.provenance, "seed": int(seed),
                                             "time": started},
                   "stop_reason": gen.stop_reason}
        yield S.rollout_episode(
            config, [turn], prompt_id=prompt_id, task=task, sample_index=i,
            policy_name=policy.name, policy_digest=policy.digest, seed=seed,
            lineage=lineage, **sampler.to_dict())
