"""The ``score`` stage's adapter over the reward registry of :mod:`rlds_lm.tasks`.

A scorer is a registered reward (``rlds_lm.tasks.REWARDS``); its name becomes the reward
name in the episodes. Built in (docs/tasks.md lists them all):

* ``arithmetic``: 1.0 when the completion's final number equals the exact answer
  (:func:`rlds_lm.tasks.arithmetic.check`), else 0.0.
* ``entailment``: the exact oracle of the synthetic world: the fraction of the summary's
  sentences that state a fact of the document (``summarization.entailment``); needs the
  document's facts.
* ``nli``: the learned classifier of :mod:`rlds_lm.tasks.nli`: the mean over summary
  sentences of P(document entails sentence). Needs ``nli_model``.
* ``external_nli``: any NLI model behind a function
  ``fn(premises: list[str], hypotheses: list[str]) -> sequence of P(entailment)``, named
  as ``module:function`` (``external_nli``); scored like ``nli``.

This module only makes the registry picklable for Beam workers (:class:`ScorerSpec`) and
maps a prompt to the record a reward reads. A scorer that cannot score a record (wrong
task, no reference) raises :class:`core.RecordError`, which sends that rollout to the
dead-letter output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipelines import core
from rlds_lm import tasks

ARITHMETIC = "arithmetic"
ENTAILMENT = "entailment"
NLI = "nli"
EXTERNAL_NLI = "external_nli"
SCORERS = tuple(tasks.REWARDS)  # every registered reward

ScoreFn = Callable[[tasks.Prompt, Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
  """Which scorers to run and what they load (picklable for Beam workers)."""

  names: tuple[str, ...]
  nli_model: str = ""
  external_nli: str = ""  # "module:function"

  def __post_init__(self):
    if not self.names:
      raise core.PipelineError("at least one scorer is needed")
    unknown = [n for n in self.names if n not in tasks.REWARDS]
    if unknown:
      raise core.PipelineError(f"unknown scorer(s) {unknown}; known: {list(SCORERS)}")
    if len(set(self.names)) != len(self.names):
      raise core.PipelineError(f"scorer listed twice: {list(self.names)}")
    if NLI in self.names and not self.nli_model:
      raise core.PipelineError("the nli scorer needs --nli_model (train one with "
                               "`python -m pipelines.nli train --out DIR`)")
    if EXTERNAL_NLI in self.names and ":" not in self.external_nli:
      raise core.PipelineError("the external_nli scorer needs --external_nli=module:function")

  def _options(self) -> dict[str, str]:
    return {"nli_model": self.nli_model, "external_nli": self.external_nli}

  def describe(self) -> dict[str, Any]:
    """Identity of every scorer (digests of learned ones), checked in the driver."""
    out: dict[str, Any] = {"names": list(self.names)}
    if NLI in self.names:
      try:
        model = tasks.nli.NliClassifier.load(self.nli_model)
      except (FileNotFoundError, ValueError) as e:
        raise core.PipelineError(str(e)) from e
      out["nli_model"] = {"path": core.absolute(self.nli_model), "digest": model.digest,
                          "test_accuracy": model.meta.get("test_accuracy")}
    if EXTERNAL_NLI in self.names:
      try:
        tasks.summarization.load_function(self.external_nli)
      except ValueError as e:
        raise core.PipelineError(str(e)) from e
      out["external_nli"] = self.external_nli
    return out

  def load(self) -> dict[str, ScoreFn]:
    """name -> scoring function (run once per worker: models load here)."""
    fns: dict[str, ScoreFn] = {}
    for name in self.names:
      try:
        bound = tasks.get_reward(name).bind(**self._options())
      except (FileNotFoundError, ValueError) as e:
        raise core.PipelineError(f"scorer {name}: {e}") from e
      fns[name] = _on_prompts(bound)
    return fns


def _on_prompts(bound: Callable[..., tasks.Scores]) -> ScoreFn:
  def score(prompt: tasks.Prompt, completions: Sequence[str]) -> np.ndarray:
    return bound(prompt.record(), completions).values
  return score


def check_task(name: str, prompt: tasks.Prompt) -> None:
  task = tasks.get_reward(name).task
  if prompt.task != task:
    raise core.RecordError("scorer_not_applicable",
                           f"scorer {name!r} scores {task} rollouts; prompt "
                           f"{prompt.prompt_id} is {prompt.task}")


def score_all(fns: Mapping[str, ScoreFn], prompt: tasks.Prompt,
              completions: Sequence[str]) -> dict[str, np.ndarray]:
  """name -> float32 [n] rewards of the completions of one prompt."""
  out = {}
  for name, fn in fns.items():
    check_task(name, prompt)
    out[name] = np.asarray(fn(prompt, completions), np.float32)
  return out
