"""Generation inside the RL trainers: prompts in, scored completions out, all recorded.

* :func:`load_prompt_records` reads a prompt dataset (the output of ``tfds build
  builders/grounded_summarization`` or ``builders/arithmetic``, tfrecord, no
  TensorFlow) into plain dicts.
* :func:`prompt_seed` / :func:`sample_group`: a batch of prompts, each completed
  ``n`` times by the current policy in one batched call (the central-inference pattern:
  one model serves every prompt of the step), seeds from (seed, step, prompt, index).
* :class:`GenerationLog`: records every completion as a rollout episode (prompt,
  completion, behaviour log-probs, rewards) in a Riegeli log through
  :class:`rlds_lm.recorder.Recorder`, with the trainer step in the lineage, so each
  iteration's generations are kept like any other data.
* :func:`padded_batch`: prompt + completion rows for the policy-gradient loss.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm import validate as V
from rlds_lm.models import sampling


def load_prompt_records(path: str | os.PathLike[str], split: str = "train",
                        limit: int | None = None) -> list[dict[str, Any]]:
  """The records of a TFDS prompt dataset split as plain Python values, in file order."""
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  _, records = R.iter_records(path, split)
  return [R.plain_record(r) for r in itertools.islice(records, limit)]


def prompt_seed(seed: int, step: int, prompt_index: int, sample_index: int) -> int:
  """Seed of one sample: a function of (run seed, step, prompt, sample) only."""
  return S.content_seed(seed, step, prompt_index, sample_index)


@dataclasses.dataclass
class Group:
  """``n`` completions of one prompt."""

  prompt_index: int
  prompt_tokens: np.ndarray
  completions: list[sampling.Completion]
  seeds: list[int]


def sample_group(model, params, prompts: Sequence[np.ndarray], prompt_indices: Sequence[int],
                 *, n: int, seed: int, step: int, sampler: sampling.SamplerConfig,
                 max_new_tokens: int, eos_id: int | None) -> list[Group]:
  """Every prompt completed ``n`` times by the policy, in one batched call."""
  flat_prompts, seeds = [], []
  for p, i in zip(prompts, prompt_indices):
    for j in range(n):
      flat_prompts.append(np.asarray(p, np.int32))
      seeds.append(prompt_seed(seed, step, int(i), j))
  completions = sampling.sample(model, params, flat_prompts, seeds, sampler, max_new_tokens,
                                eos_id=eos_id).completions()
  return [Group(int(i), np.asarray(p, np.int32), completions[k * n:(k + 1) * n],
                seeds[k * n:(k + 1) * n])
          for k, (p, i) in enumerate(zip(prompts, prompt_indices))]


def padded_batch(groups: Sequence[Group], max_length: int, pad_id: int = 0
                 ) -> dict[str, np.ndarray]:
  """Rows of prompt + completion, one per completion, in group order.

  Returns ``tokens`` int32 [B, L], ``segment_ids`` int32 [B, L] (1 on the row's tokens),
  ``loss_mask`` bool [B, L] (the completion), ``behaviour_logprobs`` float32 [B, L].
  Prompts are cut from the left when prompt + completion exceed ``max_length``.
  """
  rows = [(g.prompt_tokens, c) for g in groups for c in g.completions]
  b = len(rows)
  tokens = np.full((b, max_length), pad_id, np.int32)
  segments = np.zeros((b, max_length), np.int32)
  mask = np.zeros((b, max_length), bool)
  behaviour = np.zeros((b, max_length), np.float32)
  for i, (prompt, completion) in enumerate(rows):
    action = completion.tokens[:max_length - 1]
    keep = max(1, max_length - len(action))
    prompt = prompt[-keep:]
    row = np.concatenate([prompt, action])
    tokens[i, :len(row)] = row
    segments[i, :len(row)] = 1
    mask[i, len(prompt):len(row)] = True
    behaviour[i, len(prompt):len(row)] = completion.logprobs[:len(action)]
  return {"tokens": tokens, "segment_ids": segments, "loss_mask": mask,
          "behaviour_logprobs": behaviour}


class GenerationLog:
  """A Riegeli log of a trainer's generations (one rollout episode per completion)."""

  def __init__(self, directory: str | os.PathLike[str], *, vocab_size: int,
               tokenizer: str = "byte", reward_names: Sequence[str] = ()):
    from rlds_lm import recorder  # pylint: disable=g-import-not-at-top
    self.config = S.SchemaConfig(vocab_size=vocab_size, tokenizer=tokenizer,
                                 reward_names=tuple(reward_names))
    self._recorder = recorder.Recorder(os.fspath(directory), self.config)

  def record(self, groups: Sequence[Group], rewards: Mapping[str, np.ndarray], *,
             step: int, policy_name: str, prompt_ids: Sequence[str], task: str,
             trainer: str, texts: Sequence[str] | None = None,
             sampler: sampling.SamplerConfig | None = None,
             policy_step: int | None = None) -> int:
    """Records every completion; ``rewards[name]`` has one value per completion (group
    order). ``policy_step``: the trainer step whose parameters sampled them (default
    ``step``; earlier for stale rollouts), named in ``policy_name`` and the lineage.
    Returns the number recorded (an episode already in the log is skipped)."""
    sampler = sampler or sampling.SamplerConfig()
    policy_step = step if policy_step is None else policy_step
    k = 0
    recorded = 0
    for g, prompt_id in zip(groups, prompt_ids):
      for j, (completion, seed) in enumerate(zip(g.completions, g.seeds)):
        values = {name: float(v[k]) for name, v in rewards.items()}
        turn = S.Turn(S.observation(self.config, g.prompt_tokens),
                      action_tokens=completion.tokens,
                      action_text=texts[k] if texts is not None else "",
                      action_logprobs=completion.logprobs,
                      reward=next(iter(values.values()), 0.0), rewards=values or None)
        episode = S.rollout_episode(
            self.config, [turn], prompt_id=prompt_id, task=task, sample_index=j,
            policy_name=f"{policy_name}@{policy_step}", seed=seed,
            lineage={"trainer": trainer, "step": step, "policy_step": policy_step},
            **sampler.to_dict())
        try:
          self._recorder.record(episode)
          recorded += 1
        except V.EpisodeValidationError as e:
          if e.field != S.EPISODE_ID:  # not "already recorded" (a step re-run on resume)
            raise
        k += 1
    return recorded

  def close(self) -> None:
    self._recorder.close()
