"""The digit-sum task: "write L digits whose sum is S", with an exact uniform sampler.

A task with many valid outputs where later tokens must adapt to earlier ones: after a
prefix of digits the rest must add up to what is left, within what the remaining
positions can hold (at most 9 each). It is the GKD reproduction's task
(``benchmarks/repro_gkd.py``): a student that drifts to a prefix the teacher's samples
rarely visit (many large digits early) must still finish it, which on-policy data
teaches and off-policy data does not.

Records have ``prompt_id``, ``length`` (L) and ``digit_sum`` (S); the prompt is
``"{L}:{S}="`` and a valid completion is exactly L decimal digits summing to S (the
reward ``digit_sum``, 1.0 when valid). The oracle is the *uniform distribution over the
valid strings*: :func:`next_probs` gives its exact conditional distribution of the next
token (a digit, or the end) after any prefix, and :func:`sample` draws from it, both
from the table of how many n-digit strings sum to s (:func:`counts`).

Example::

    rng = np.random.default_rng(0)
    text = digit_sum.sample(4, 20, rng)          # e.g. "7283": 4 digits, sum 20
    digit_sum.is_valid(4, 20, text)              # True
    digit_sum.next_probs(4, 20, "99")[:3]        # [1/3, 1/3, 1/3]: "02", "11", "20" left
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm.tasks import registry

TASK = "digit_sum"  # recorded as the episodes' task
FIELD = "digit_sum"  # the record field that makes a record this task's (S)
END = 10  # index of "the string ends here" in next_probs' 11 outcomes (digits are 0-9)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One prompt: write ``length`` digits whose sum is ``total``."""

  prompt_id: str
  length: int
  total: int

  @property
  def question(self) -> str:
    """The prompt text, ``"{L}:{S}="``."""
    return f"{self.length}:{self.total}="

  def as_record(self) -> dict[str, Any]:
    """The problem as a prompt record (what the reward scores)."""
    return {"prompt_id": self.prompt_id, "length": self.length, FIELD: self.total}


def make_problem(length: int, total: int) -> Problem:
  """The problem (L, S), with its content-derived prompt id; ValueError if infeasible."""
  if length < 1 or not 0 <= total <= 9 * length:
    raise ValueError(f"digit_sum: no string of {length} digits sums to {total} "
                     f"(expected length >= 1 and 0 <= sum <= {9 * max(length, 0)})")
  return Problem(S.content_id(TASK, length, total, prefix="q-"), length, total)


def problems(count: int, lengths: Sequence[int], seed: int = 0,
             low: float = 1.0, high: float = 8.0) -> list[Problem]:
  """``count`` problems, deterministic in ``seed``: L uniform over ``lengths``, S uniform
  over [low * L, high * L] (the default keeps away from the forced extremes 0 and 9L)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    length = int(rng.choice(np.asarray(lengths)))
    total = int(rng.integers(int(np.ceil(low * length)), int(np.floor(high * length)) + 1))
    out.append(make_problem(length, total))
  return out


@functools.lru_cache(maxsize=None)
def counts(max_length: int) -> tuple[tuple[int, ...], ...]:
  """``counts(m)[n][s]``: how many strings of n digits sum to s (n <= m, exact ints)."""
  table = [[1]]  # zero digits: only the empty string, sum 0
  for n in range(1, max_length + 1):
    prev = table[-1]
    row = [sum(prev[s - d] for d in range(10) if 0 <= s - d < len(prev))
           for s in range(9 * n + 1)]
    table.append(row)
  return tuple(tuple(r) for r in table)


def _count(n: int, s: int) -> int:
  if n < 0 or s < 0 or s > 9 * n:
    return 0
  return counts(n)[n][s]


def next_probs(length: int, total: int, prefix: str) -> np.ndarray | None:
  """float64 [11]: the uniform-over-valid-strings distribution of what follows ``prefix``
  (digits 0-9, then :data:`END`); None when no valid string starts with ``prefix``."""
  if len(prefix) > length or not all(c in "0123456789" for c in prefix):
    return None
  left, rest = total - sum(int(c) for c in prefix), length - len(prefix)
  out = np.zeros(11, np.float64)
  if rest == 0:
    if left != 0:
      return None
    out[END] = 1.0
    return out
  ways = _count(rest, left)
  if ways == 0:
    return None
  for d in range(10):
    out[d] = _count(rest - 1, left - d) / ways
  return out


def sample(length: int, total: int, rng: np.random.Generator, prefix: str = "") -> str:
  """A uniform draw among the valid strings that start with ``prefix``."""
  text = prefix
  while len(text) < length:
    probs = next_probs(length, total, text)
    if probs is None:
      raise ValueError(f"digit_sum: no string of {length} digits summing to {total} "
                       f"starts with {prefix!r}")
    text += str(int(rng.choice(10, p=probs[:10] / probs[:10].sum())))
  return text


def is_valid(length: int, total: int, completion: str) -> bool:
  """``completion`` is exactly ``length`` decimal digits summing to ``total``."""
  return (len(completion) == length and all(c in "0123456789" for c in completion)
          and sum(int(c) for c in completion) == total)


def entropy_bits(length: int, total: int) -> float:
  """log2 of the number of valid strings: the oracle's entropy per problem."""
  return float(np.log2(_count(length, total)))


def _reference(record: Mapping[str, Any]) -> dict[str, Any]:
  return {"length": int(record["length"]), FIELD: int(record[FIELD])}


@registry.register_task(TASK, field=FIELD, reference=_reference)
def prompt(record: Mapping[str, Any]) -> str:
  """``"{L}:{S}="``: the policy writes the digits after it."""
  return f"{int(record['length'])}:{int(record[FIELD])}="


@registry.register_reward("digit_sum", task=TASK, fields=("length", FIELD))
def score(record: Mapping[str, Any], completions: Sequence[str]) -> np.ndarray:
  """float32 [n]: 1.0 where the completion is exactly L digits summing to S."""
  length, total = int(record["length"]), int(record[FIELD])
  return np.asarray([float(is_valid(length, total, c)) for c in completions], np.float32)
