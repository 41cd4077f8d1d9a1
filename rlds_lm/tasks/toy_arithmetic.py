"""The toy arithmetic task: ``"a+b="`` / ``"a-b="`` with exact answers.

What the quickstart, the GKD reproduction and many tests train on. Records have
``question`` (the prompt is the question itself, ``"12+7="``) and ``answer`` (``"19"``);
the episodes' task is ``arithmetic``. Rewards:

* ``toy_arithmetic``: 1.0 when the completion's first line, stripped, is the answer (the
  tutor environment's check, and with an EOS stop the greedy accuracy of
  :func:`rlds_lm.toy.make_eval_fn`);
* ``toy_arithmetic_exact``: 1.0 when the whole completion is exactly the answer (on
  decoded completions, EOS dropped; the J-BOND reproduction's reward until it moved to
  the tie-free ``toy_number_distance``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm.tasks import registry

TASK = "arithmetic"  # recorded as the episodes' task, as for the word problems


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt_id: str
  question: str
  answer: str

  def as_record(self) -> dict[str, Any]:
    """The problem as a prompt record (what the rewards score)."""
    return {"prompt_id": self.prompt_id, "question": self.question, "answer": self.answer}


def arithmetic_problems(count: int, seed: int = 0, max_operand: int = 50) -> list[Problem]:
  """``count`` distinct problems ``"a+b="`` / ``"a-b="`` with exact answers, deterministic
  in seed."""
  if count > 2 * max_operand * max_operand:
    raise ValueError(f"only {2 * max_operand ** 2} distinct problems with operands "
                     f"< {max_operand}; asked for {count}")
  rng = np.random.default_rng(seed)
  out = []
  seen = set()
  while len(out) < count:
    a, b = (int(x) for x in rng.integers(0, max_operand, size=2))
    op = "+" if rng.random() < 0.5 else "-"
    question = f"{a}{op}{b}="
    if question in seen:
      continue
    seen.add(question)
    answer = str(a + b if op == "+" else a - b)
    out.append(Problem(S.content_id(TASK, question, prefix="q-"), question, answer))
  return out


def split_problems(max_operand: int, test_fraction: float, seed: int = 0
                   ) -> tuple[list[Problem], list[Problem]]:
  """(train, test): every distinct problem with operands < ``max_operand``, in the
  generator's (random) order; the first ``test_fraction`` of them are the test split."""
  problems = arithmetic_problems(2 * max_operand ** 2, seed=seed, max_operand=max_operand)
  n_test = int(round(test_fraction * len(problems)))
  return problems[n_test:], problems[:n_test]


def prompt(record: Mapping[str, Any]) -> str:
  """The question itself (``"12+7="``): the policy writes the answer after it."""
  return str(record["question"])


def first_line_is_answer(answer: str, completion: str) -> bool:
  """The completion's first line, stripped, is ``answer``."""
  return completion.split("\n", 1)[0].strip() == answer


@registry.register_reward("toy_arithmetic", task=TASK, fields=("question", "answer"),
                          prompt=prompt)
def score(record: Mapping[str, Any], completions: Sequence[str]) -> np.ndarray:
  """float32 [n]: 1.0 where the completion's first line is the answer."""
  answer = str(record["answer"])
  return np.asarray([float(first_line_is_answer(answer, c)) for c in completions],
                    np.float32)


@registry.register_reward("toy_arithmetic_exact", task=TASK, fields=("question", "answer"),
                          prompt=prompt)
def score_exact(record: Mapping[str, Any], completions: Sequence[str]) -> np.ndarray:
  """float32 [n]: 1.0 where the whole completion is exactly the answer."""
  answer = str(record["answer"])
  return np.asarray([float(c == answer) for c in completions], np.float32)


def check_answer(problem: Problem, completion: str) -> float:
  """1.0 if the completion's first line is exactly the answer, else 0.0."""
  return float(registry.REWARDS["toy_arithmetic"](problem.as_record(),
                                                  [completion]).values[0])
