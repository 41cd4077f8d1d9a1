"""The Dyck task: "write a balanced bracket string of length L", with an exact uniform
sampler.

A task with many valid outputs where later tokens must adapt to earlier ones: a ``)``
is allowed only while a ``(`` is open, and every bracket opened must be closed by the
end, so the last positions are forced by what the first ones did. It is the GKD
reproduction's task (``benchmarks/repro_gkd.py``): a student that opens too many
brackets (a prefix the teacher's samples rarely visit) must still close them in time,
which on-policy data shows it and off-policy data does not.

Records have ``prompt_id`` and ``dyck_length`` (L, even); the prompt is ``"L:"`` and a
valid completion is a balanced string of exactly L characters ``(`` / ``)`` (the reward
``dyck``, 1.0 when valid). The oracle is the *uniform distribution over the valid
strings*: :func:`next_probs` gives its exact conditional distribution of the next token
(``(``, ``)`` or the end) after any prefix, and :func:`sample` draws from it, both from
the count of balanced completions (:func:`completions`).

Example::

    rng = np.random.default_rng(0)
    problem = dyck.make_problem(6)
    text = dyck.sample(problem, rng)             # e.g. "(()())"
    dyck.is_valid(problem, text)                 # True
    dyck.next_probs(problem, "(((")              # [0, 1, 0]: only ")" can follow
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm.tasks import registry

TASK = "dyck"  # recorded as the episodes' task
FIELD = "dyck_length"  # the record field that makes a record this task's (L)
ALPHABET = "()"  # next_probs' outcomes 0 and 1; END is the third
END = 2


@dataclasses.dataclass(frozen=True)
class Problem:
  """One prompt: write a balanced bracket string of ``length`` characters."""

  prompt_id: str
  length: int

  @property
  def question(self) -> str:
    """The prompt text, ``"{L}:"``."""
    return f"{self.length}:"

  def as_record(self) -> dict[str, Any]:
    """The problem as a prompt record (what the reward scores)."""
    return {"prompt_id": self.prompt_id, FIELD: self.length}


def make_problem(length: int) -> Problem:
  """The problem L with its content-derived prompt id; ValueError unless L is even, > 0."""
  if length < 2 or length % 2:
    raise ValueError(f"dyck: no balanced string has length {length} (expected an even "
                     f"length >= 2)")
  return Problem(S.content_id(TASK, length, prefix="q-"), length)


def problems(count: int, lengths: Sequence[int], seed: int = 0) -> list[Problem]:
  """``count`` problems, L uniform over ``lengths``, deterministic in ``seed``."""
  rng = np.random.default_rng(seed)
  return [make_problem(int(rng.choice(np.asarray(lengths)))) for _ in range(count)]


@functools.lru_cache(maxsize=None)
def completions(rest: int, depth: int) -> int:
  """How many strings of ``rest`` brackets close ``depth`` open ones without ever going
  below depth 0 (exact int)."""
  if depth < 0 or depth > rest:
    return 0
  if rest == 0:
    return 1
  return completions(rest - 1, depth + 1) + completions(rest - 1, depth - 1)


def depth_of(prefix: str) -> int | None:
  """The open brackets after ``prefix``; None if it closes one that is not open (or has
  another character)."""
  depth = 0
  for c in prefix:
    if c not in ALPHABET:
      return None
    depth += 1 if c == "(" else -1
    if depth < 0:
      return None
  return depth


def next_probs(problem: Problem, prefix: str) -> np.ndarray | None:
  """float64 [3]: the uniform-over-valid-strings distribution of what follows ``prefix``
  (``(``, ``)``, then :data:`END`); None when no valid string starts with ``prefix``."""
  depth, rest = depth_of(prefix), problem.length - len(prefix)
  if depth is None or rest < 0:
    return None
  ways = completions(rest, depth)
  if ways == 0:
    return None
  out = np.zeros(3, np.float64)
  if rest == 0:
    out[END] = 1.0
    return out
  out[0] = completions(rest - 1, depth + 1) / ways
  out[1] = completions(rest - 1, depth - 1) / ways
  return out


def sample(problem: Problem, rng: np.random.Generator, prefix: str = "") -> str:
  """A uniform draw among the valid strings that start with ``prefix``."""
  text = prefix
  while len(text) < problem.length:
    probs = next_probs(problem, text)
    if probs is None:
      raise ValueError(f"dyck: no balanced string of length {problem.length} starts with "
                       f"{prefix!r}")
    text += ALPHABET[int(rng.choice(2, p=probs[:2] / probs[:2].sum()))]
  return text


def is_valid(problem: Problem, completion: str) -> bool:
  """``completion`` is a balanced bracket string of exactly ``problem.length``."""
  return len(completion) == problem.length and depth_of(completion) == 0


def _reference(record: Mapping[str, Any]) -> dict[str, Any]:
  return {FIELD: int(record[FIELD])}


@registry.register_task(TASK, field=FIELD, reference=_reference)
def prompt(record: Mapping[str, Any]) -> str:
  """``"{L}:"``: the policy writes the brackets after it."""
  return f"{int(record[FIELD])}:"


@registry.register_reward("dyck", task=TASK, fields=(FIELD,))
def score(record: Mapping[str, Any], completions_: Sequence[str]) -> np.ndarray:
  """float32 [n]: 1.0 where the completion is a balanced string of length L."""
  problem = Problem(str(record.get("prompt_id", "")), int(record[FIELD]))
  return np.asarray([float(is_valid(problem, c)) for c in completions_], np.float32)
