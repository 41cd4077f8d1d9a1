"""The ``arithmetic`` task: word problems with integer answers and an exact checker.

Records have ``question`` (the prompt is ``"{question}\\nAnswer:"``) and ``answer``; the
``arithmetic`` and ``gsm8k`` builders make them. The reward ``arithmetic`` is 1.0 when a
completion's final number (:func:`extract_answer`) equals the exact answer, else 0.0.

Synthetic multi-step problems (the ``arithmetic`` builder's data) are made here too.

A problem starts from a quantity and applies 2-4 operations (add, subtract, multiply,
divide exactly); every intermediate value is a non-negative integer, so the answer is
exact. Problem ``i`` of a split is a function of ``(split_seed, i)`` only, and the split
seed is derived from names with :func:`rlds_lm.schema.content_id`, never from worker
order or wall clock.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm.schema import content_id
from rlds_lm.tasks import registry
from rlds_lm.tasks.errors import RecordError

TASK = "arithmetic"


def _reference(record: Mapping[str, Any]) -> dict[str, Any]:
  return {"answer": str(record.get("answer", ""))}


@registry.register_task(TASK, field="question", reference=_reference)
def prompt(record: Mapping[str, Any]) -> str:
  """``"{question}\\nAnswer:"``, the prompt every arithmetic stage uses."""
  return f"{record['question']}\nAnswer:"


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """How hard the problems are."""
  min_ops: int = 2  # operations per problem, inclusive bounds
  max_ops: int = 4
  max_operand: int = 20  # start value and added / subtracted amounts are in [1, this]
  max_factor: int = 5  # multipliers and divisors are in [2, this]
  # A multiplication never takes a value above max_operand * max_factor.


@dataclasses.dataclass(frozen=True)
class Problem:
  question: str
  answer: str  # decimal text of an integer
  steps: str  # one "a op b=c" line per operation
  num_steps: int

  @property
  def prompt_id(self) -> str:
    return content_id("arithmetic", self.question)

  def as_example(self) -> dict:
    return {"prompt_id": self.prompt_id, "question": self.question,
            "answer": self.answer, "steps": self.steps, "num_steps": self.num_steps}


# (name, item, holder pronoun); kept small and fixed: changing them changes the data.
_ACTORS = (
    ("Ada", "apples", "She"), ("Ben", "marbles", "He"), ("Chen", "stickers", "He"),
    ("Dana", "books", "She"), ("Emeka", "coins", "He"), ("Farah", "pencils", "She"),
    ("Goran", "stamps", "He"), ("Hana", "shells", "She"), ("Ines", "cards", "She"),
    ("Jonas", "bolts", "He"), ("Kiri", "beads", "She"), ("Luis", "eggs", "He"),
)

_ADD = ("{p} gets {n} more.", "{p} finds another {n}.", "{p} is given {n} more.")
_SUB = ("{p} gives away {n}.", "{p} loses {n}.", "{p} uses up {n}.")
_MUL = ("{p} ends up with {n} times as many.", "The pile grows to {n} times its size.")
_DIV = ("{p} splits them into {n} equal groups and keeps one group.",
        "{p} keeps only one {ordinal} of them.")
_ORDINALS = {2: "half", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh",
             8: "eighth", 9: "ninth", 10: "tenth"}


def split_seed(*names: object) -> str:
  """The seed of a split: a content id over its names (builder, config, split)."""
  return content_id("arithmetic-split", *names)


def make_problem(seed: str, index: int, difficulty: Difficulty) -> Problem:
  """Problem ``index`` of the stream ``seed``: a pure function of its arguments."""
  rng = random.Random(content_id(seed, index))
  name, item, pronoun = rng.choice(_ACTORS)
  value = rng.randint(1, difficulty.max_operand)
  sentences = [f"{name} has {value} {item}."]
  steps = []
  num_ops = rng.randint(difficulty.min_ops, difficulty.max_ops)
  for _ in range(num_ops):
    divisors = [d for d in range(2, difficulty.max_factor + 1) if value % d == 0]
    cap = difficulty.max_operand * difficulty.max_factor  # keeps intermediates small
    ops = (["+"] + (["*"] if value * 2 <= cap else []) + (["-"] if value > 1 else [])
           + (["/"] if divisors else []))
    op = rng.choice(ops)
    subject = rng.choice((name, pronoun))
    if op == "+":
      n = rng.randint(1, difficulty.max_operand)
      result = value + n
      sentence = rng.choice(_ADD).format(p=subject, n=n)
    elif op == "-":
      n = rng.randint(1, min(value - 1, difficulty.max_operand))
      result = value - n
      sentence = rng.choice(_SUB).format(p=subject, n=n)
    elif op == "*":
      n = rng.randint(2, min(difficulty.max_factor, cap // value))
      result = value * n
      sentence = rng.choice(_MUL).format(p=subject, n=n)
    else:
      n = rng.choice(divisors)
      result = value // n
      sentence = rng.choice(_DIV).format(p=subject, n=n, ordinal=_ORDINALS[n])
    sentences.append(sentence)
    steps.append(f"{value}{op}{n}={result}")
    value = result
  sentences.append(f"How many {item} does {name} have now?")
  return Problem(question=" ".join(sentences), answer=str(value), steps="\n".join(steps),
                 num_steps=num_ops)


def generate(seed: str, count: int, difficulty: Difficulty,
             exclude: frozenset[str] = frozenset()) -> Iterator[Problem]:
  """``count`` distinct problems of the stream ``seed``, skipping questions in ``exclude``.

  Deterministic: the same arguments give the same problems in the same order.
  """
  seen = set(exclude)
  index = 0
  produced = 0
  while produced < count:
    if index > 50 * count + 1000:
      raise ValueError(f"only {produced} distinct problems found for {count} requested; "
                       "raise the difficulty")
    problem = make_problem(seed, index, difficulty)
    index += 1
    if problem.question in seen:
      continue
    seen.add(problem.question)
    produced += 1
    yield problem


_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
_MARKER = re.compile(r"(?:answer\s*(?:is)?\s*[:=]|####)", re.IGNORECASE)


def extract_answer(completion: str) -> str | None:
  """The answer a completion gives, as the text of a number, or None.

  The first number after the last ``answer:`` (or ``####``) marker if there is one,
  otherwise the last number in the completion. Thousands separators are dropped.
  """
  markers = list(_MARKER.finditer(completion))
  if markers:
    found = _NUMBER.search(completion, markers[-1].end())
    return _clean(found.group()) if found else None
  numbers = _NUMBER.findall(completion)
  return _clean(numbers[-1]) if numbers else None


def _clean(number: str) -> str:
  return number.rstrip(",").replace(",", "")


def check(answer_text: str, completion: str) -> bool:
  """True when ``completion``'s extracted answer equals the integer ``answer_text``."""
  found = extract_answer(completion)
  if found is None or not found.strip("-"):
    return False
  try:
    integral, _, fraction = found.partition(".")
    if fraction.strip("0"):
      return False
    return int(integral) == int(answer_text.strip())
  except ValueError:
    return False


@registry.register_reward("arithmetic", task=TASK, fields=("question", "answer"))
def score(record: Mapping[str, Any], completions: Sequence[str]) -> np.ndarray:
  """float32 [n]: 1.0 where :func:`check` accepts the completion, else 0.0."""
  answer = str(record.get("answer", ""))
  if not answer:
    raise RecordError("no_reference", f"prompt {record.get('prompt_id', '?')} has no "
                                      f"answer")
  return np.asarray([float(check(answer, c)) for c in completions], np.float32)
