"""Synthetic rollout episodes for the benchmarks, built from random arrays.

``rlds_lm.testing.fake_teacher`` draws a full-vocabulary distribution per token, which is
slow for a 32k vocabulary; here the teacher top-k is drawn directly so that it passes
validation: ids are distinct within a row and in ``[0, vocab_size)``, log-probs are
``<= 0`` and sorted (most likely first), and each row's probabilities sum to a random
mass in ``[0.5, 0.99]`` (the rest is tail mass). Payloads are random, so they compress
about as badly as real log-probs do; token ids are uniform over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rlds_lm import schema as S

REWARD_NAME = "correct"


def random_text(rng: np.random.Generator, length: int) -> str:
  """Lower-case 'words' separated by spaces, ``length`` ASCII characters."""
  chars = rng.integers(ord("a"), ord("z") + 1, size=length, dtype=np.uint8)
  chars[rng.random(length) < 0.18] = ord(" ")
  return chars.tobytes().decode("ascii")


def random_topk(rng: np.random.Generator, length: int, k: int,
                vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``[length, k]`` distinct ids per row and sorted log-probs with total mass < 1."""
  # Distinct ids: a random start plus strictly increasing offsets spanning < vocab_size,
  # then shuffled within the row so that ids are not sorted.
  gaps = rng.integers(1, max(2, vocab_size // k + 1), size=(length, k))
  offsets = np.cumsum(gaps, axis=1) - gaps[:, :1]
  start = rng.integers(0, vocab_size, size=(length, 1))
  ids = ((start + offsets) % vocab_size).astype(np.int32)
  ids = rng.permuted(ids, axis=1)
  probs = -np.sort(-rng.random((length, k)), axis=1)
  mass = rng.uniform(0.5, 0.99, size=(length, 1))
  probs = probs / probs.sum(axis=1, keepdims=True) * mass
  return ids, np.log(probs).astype(np.float32)


def make_rollouts(config: S.SchemaConfig, num_episodes: int, *, prompt_len: Any = 32,
                  action_len: Any = 128, chars_per_token: int = 4,
                  seed: int = 0) -> list[dict[str, Any]]:
  """Single-turn rollout episodes of ``config`` with random payloads.

  ``prompt_len`` / ``action_len`` are ints or inclusive ``(low, high)`` ranges.
  """
  rng = np.random.default_rng(seed)

  def draw(spec: Any) -> int:
    if isinstance(spec, int):
      return spec
    low, high = spec
    return int(rng.integers(low, high + 1))

  k = config.teacher_top_k
  episodes = []
  for i in range(num_episodes):
    p, t = draw(prompt_len), draw(action_len)
    prompt = rng.integers(0, config.vocab_size, size=p, dtype=np.int32)
    tokens = rng.integers(0, config.vocab_size, size=t, dtype=np.int32)
    teacher = None
    if config.has_teacher:
      teacher = {S.TEACHER_TOKEN_LOGPROB: -rng.exponential(size=t).astype(np.float32)}
      if k:
        ids, logprobs = random_topk(rng, t, k, config.vocab_size)
        teacher[S.TEACHER_TOPK_IDS] = ids
        teacher[S.TEACHER_TOPK_LOGPROBS] = logprobs
    correct = float(rng.random() < 0.5)
    turn = S.Turn(
        observation=S.observation(config, prompt, random_text(rng, chars_per_token * p),
                                  "prompt"),
        action_tokens=tokens,
        action_text=random_text(rng, chars_per_token * t),
        action_logprobs=-rng.exponential(size=t).astype(np.float32),
        reward=correct,
        rewards={name: correct for name in config.reward_names},
        teacher=teacher,
    )
    episodes.append(S.rollout_episode(
        config, [turn], prompt_id=f"prompt-{i // 4}", sample_index=i % 4, task="bench",
        policy_name="bench-policy", policy_digest="0" * 16, seed=i,
        lineage={"source": "benchmarks"}))
  return episodes


def action_tokens(episode: Mapping[str, Any]) -> int:
  return sum(int(np.asarray(s[S.ACTION][S.ACT_TOKENS]).shape[0]) for s in episode[S.STEPS])


def episode_buffers(episode: Mapping[str, Any]) -> list[bytes | memoryview]:
  """The episode's per-token arrays and texts as buffers (scalars left out)."""
  out: list[bytes | memoryview] = []

  def walk(tree: Mapping[str, Any]) -> None:
    for value in tree.values():
      if isinstance(value, Mapping):
        walk(value)
      elif isinstance(value, np.ndarray) and value.size and value.dtype != object:
        out.append(memoryview(np.ascontiguousarray(value)).cast("B"))
      elif isinstance(value, str) and value:
        out.append(value.encode("utf-8"))

  for step in episode[S.STEPS]:
    walk(step)
  return out
