"""The toy number task: write a number close to a target, scored without ties.

What the J-BOND reproduction (``benchmarks/repro_jbond.py``) trains on. A record has
``target``, a string of decimal digits (``"04719385"``); the prompt is the target and a
colon (``"04719385:"``), and the policy writes a number after it. Reward:

* ``toy_number_distance``: ``-log10(1 + |x - t|)``, where ``t`` is the target and ``x``
  the integer the completion's digits spell (other characters dropped; 0 when it has
  none). 0.0 for the target itself, about ``-k`` for an error of ``k`` digits; on an
  8-digit target a uniform random guess scores about -7.

Unlike a 0/1 check, two completions tie only when they spell the same number or miss
the target by the same amount on either side (or, as the scores are float32, by amounts
within about one part in a million: only far misses can), so the reward's law under a policy with
real entropy is (nearly) continuous: what BOND's quantile rewards and the Best-of-N KL
``log N - (N - 1) / N`` assume. The log keeps the scale useful from a random guess to
the exact answer (a linear distance is dominated by the first digit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm.tasks import registry
from rlds_lm.tasks.errors import RecordError

TASK = "toy_number"
FIELD = "target"
DIGITS = 8  # default length of a target


def _reference(record: Mapping[str, Any]) -> dict[str, Any]:
  return {FIELD: record[FIELD]}


@registry.register_task(TASK, field=FIELD, reference=_reference)
def prompt(record: Mapping[str, Any]) -> str:
  """``"{target}:"``: the policy writes its number after the colon."""
  return f"{record[FIELD]}:"


def targets(count: int, seed: int = 0, digits: int = DIGITS) -> list[dict[str, str]]:
  """``count`` distinct prompt records (``prompt_id``, ``target``) of ``digits`` digits
  each (leading zeros kept), deterministic in ``seed``."""
  if count > 10 ** digits:
    raise ValueError(f"only {10 ** digits} distinct targets of {digits} digits; asked "
                     f"for {count}")
  rng = np.random.default_rng([seed, digits])
  out, seen = [], set()
  while len(out) < count:
    target = "".join(str(int(d)) for d in rng.integers(0, 10, size=digits))
    if target not in seen:
      seen.add(target)
      out.append({"prompt_id": S.content_id(TASK, target, prefix="n-"), FIELD: target})
  return out


def noisy_copy(target: str, rng: np.random.Generator, replace: float) -> str:
  """The target with each digit replaced, with probability ``replace``, by a uniform
  random digit (which may be the same): a guess with per-digit uncertainty."""
  if not 0.0 <= replace <= 1.0:
    raise ValueError(f"replace must be in [0, 1], found {replace}")
  out = []
  for d in target:
    out.append(str(int(rng.integers(0, 10))) if rng.random() < replace else d)
  return "".join(out)


def spelled_number(completion: str) -> int:
  """The integer the completion's decimal digits spell, in order (0 if none)."""
  digits = "".join(c for c in completion if "0" <= c <= "9")
  return int(digits) if digits else 0


def distance_reward(target: str, completion: str) -> float:
  """``-log10(1 + |x - t|)`` for the number ``x`` the completion spells."""
  return -math.log10(1 + abs(spelled_number(completion) - int(target)))


@registry.register_reward("toy_number_distance", task=TASK, fields=(FIELD,))
def score(record: Mapping[str, Any], completions: Sequence[str]) -> np.ndarray:
  """float32 [n]: minus the log10 of 1 + the distance to the target (0.0 = exact)."""
  target = str(record[FIELD])
  if not target.isdigit():
    raise RecordError("no_reference", f"prompt {record.get('prompt_id', '?')}: target "
                                      f"must be decimal digits, found {target!r}")
  return np.asarray([distance_reward(target, c) for c in completions], np.float32)
