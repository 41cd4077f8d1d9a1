"""The two tables of the package: task name -> :class:`Task`, reward name -> :class:`Reward`.

The modules of :mod:`rlds_lm.tasks` fill them at import with the decorators
:func:`task` and :func:`reward`; the package imports every one of its modules, so a new
task or reward is one new module and nothing else (docs/tasks.md shows one).

A reward is a function of a prompt record and the completions of that prompt::

    score(record, completions, **resources) -> float32 [n]  (or a Scores)

``resources`` are what it loads once (a model), made by the reward's ``load`` from the
options a run names (``nli_model=DIR``); :meth:`Reward.bind` does both and returns
``fn(record, completions) -> Scores``, which the trainers and the ``score`` stage call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from rlds_lm.tasks.errors import RecordError

Record = Mapping[str, Any]


class Scores(NamedTuple):
  """What a reward gives the completions of one prompt.

  Attributes:
    values: float32 [n], one score per completion.
    per_token: float32 [T_i] per completion (its tokens' scores), where the reward has
      them; None otherwise.
  """

  values: np.ndarray
  per_token: tuple[np.ndarray, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
  """A kind of prompt record: which field detects it, its prompt text, its reference.

  Attributes:
    name: recorded as the episodes' ``task``.
    field: the record field with the prompt's content; a record that has it is this task.
    prompt: ``record -> text`` the policy is asked to complete.
    reference: ``record -> dict`` of what the task's rewards read (answers, facts).
  """

  name: str
  field: str
  prompt: Callable[[Record], str]
  reference: Callable[[Record], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Reward:
  """A scorer, the records it reads and the prompt it scores.

  Attributes:
    fields: the record fields ``prompt`` and ``score`` read; a dataset without them is
      refused before anything runs.
    prompt: ``record -> text`` the policy is asked to complete (its task's prompt).
    score: ``score(record, completions, **resources) -> float32 [n]`` or :class:`Scores`.
    task: the task of the records it scores, recorded as the episodes' task.
    name: its name in :data:`REWARDS` (and the reward name in the episodes).
    options: the keyword options ``load`` takes (``nli_model``, ...).
    load: ``load(**options) -> resources`` passed to every ``score`` call; run once.
    score_rows: optional ``(records, completions, **resources) -> float32 [n]`` with one
      record per completion: many prompts in one call (one model batch); it must give
      what ``score`` gives prompt by prompt.
  """

  fields: tuple[str, ...]
  prompt: Callable[[Record], str]
  score: Callable[..., Any]
  task: str = ""
  name: str = ""
  options: tuple[str, ...] = ()
  load: Callable[..., Mapping[str, Any]] | None = None
  score_rows: Callable[..., Any] | None = None

  def __call__(self, record: Record, completions: Sequence[str], **resources) -> Scores:
    """The completions' :class:`Scores`, checked: one finite-shaped value each."""
    return _checked(self.name, self.score(record, list(completions), **resources),
                    len(completions))

  def rows(self, records: Sequence[Record], completions: Sequence[str], **resources
           ) -> np.ndarray:
    """float32 [n]: the score of each completion against its own record."""
    if len(records) != len(completions):
      raise ValueError(f"{len(records)} records for {len(completions)} completions")
    if self.score_rows is not None:
      return _checked(self.name, self.score_rows(list(records), list(completions),
                                                 **resources), len(completions)).values
    out, start = [], 0
    while start < len(records):  # runs of the same record: one call each
      end = start + 1
      while end < len(records) and records[end] is records[start]:
        end += 1
      out.append(self(records[start], completions[start:end], **resources).values)
      start = end
    return np.concatenate(out) if out else np.zeros(0, np.float32)

  def resources(self, **options) -> dict[str, Any]:
    """``load``'s resources for the options this reward takes (the others are ignored)."""
    if self.load is None:
      return {}
    return dict(self.load(**{k: v for k, v in options.items() if k in self.options}))

  def bind(self, **options) -> Callable[[Record, Sequence[str]], Scores]:
    """``fn(record, completions) -> Scores`` with the resources loaded once."""
    return functools.partial(self.__call__, **self.resources(**options))


def _checked(name: str, out: Any, n: int) -> Scores:
  scores = out if isinstance(out, Scores) else Scores(out)
  values = np.asarray(scores.values, np.float32)
  if values.shape != (n,):
    raise RecordError("bad_scorer_output", f"scorer {name} returned shape {values.shape} "
                                           f"for {n}")
  per_token = scores.per_token
  if per_token is not None:
    per_token = tuple(np.asarray(t, np.float32) for t in per_token)
    if len(per_token) != n:
      raise RecordError("bad_scorer_output", f"scorer {name} returned per-token scores "
                                             f"for {len(per_token)} of {n} completions")
  return Scores(values, per_token)


TASKS: dict[str, Task] = {}  # in registration order: detection tries them in turn
REWARDS: dict[str, Reward] = {}


def register_task(name: str, *, field: str, reference: Callable[[Record], dict[str, Any]]
                  ) -> Callable[[Callable[[Record], str]], Callable[[Record], str]]:
  """Decorates a task's ``prompt(record) -> text`` and registers the task ``name``."""

  def register(prompt: Callable[[Record], str]) -> Callable[[Record], str]:
    if name in TASKS:
      raise ValueError(f"task {name!r} is registered twice")
    TASKS[name] = Task(name, field, prompt, reference)
    return prompt

  return register


def register_reward(name: str, *, task: str, fields: Sequence[str],
                    prompt: Callable[[Record], str] | None = None,
                    options: Sequence[str] = (),
                    load: Callable[..., Mapping[str, Any]] | None = None,
                    score_rows: Callable[..., Any] | None = None):
  """Decorates ``score(record, completions, **resources)`` and registers it as ``name``.

  Args:
    name: the reward's name (unique).
    task: the task of the records it scores (registered before it).
    fields: the record fields it reads.
    prompt: the prompt text of a record; the task's by default.
    options: the keyword options ``load`` takes.
    load: ``load(**options) -> resources`` for ``score`` (a model), run once per bind.
    score_rows: a batched form over many prompts (see :class:`Reward`).
  """

  def register(score: Callable[..., Any]) -> Callable[..., Any]:
    if name in REWARDS:
      raise ValueError(f"reward {name!r} is registered twice")
    if prompt is None and task not in TASKS:
      raise ValueError(f"reward {name!r}: unknown task {task!r}; known: {sorted(TASKS)}")
    REWARDS[name] = Reward(fields=tuple(fields), prompt=prompt or TASKS[task].prompt,
                           score=score, task=task, name=name, options=tuple(options),
                           load=load, score_rows=score_rows)
    return score

  return register


def get_reward(name: str) -> Reward:
  """The reward ``name``; ValueError naming the known ones if there is none."""
  if name not in REWARDS:
    raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
  return REWARDS[name]
