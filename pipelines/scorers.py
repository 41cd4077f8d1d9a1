"""Pluggable reward functions for the ``score`` stage.

A scorer maps (prompt, completion texts of that prompt) to one float per completion; its
name becomes the reward name in the episodes. Built in:

* ``arithmetic``: 1.0 when the completion's final number equals the exact answer
  (``builders.arithmetic.problems.check``), else 0.0.
* ``entailment``: the exact oracle of the synthetic world: the fraction of the summary's
  sentences that state a fact of the document (``world.entailment``); needs the
  document's facts.
* ``nli``: the learned classifier of :mod:`pipelines.nli`: the mean over summary
  sentences of P(document entails sentence). Needs ``nli_model``.
* ``external_nli``: any NLI model behind a function
  ``fn(premises: list[str], hypotheses: list[str]) -> sequence of P(entailment)``, named
  as ``module:function`` (``external_nli``); scored like ``nli``.

A scorer that cannot score a record (wrong task, no reference) raises
:class:`core.RecordError`, which sends that rollout to the dead-letter output.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipelines import core
from pipelines import tasks

ARITHMETIC = "arithmetic"
ENTAILMENT = "entailment"
NLI = "nli"
EXTERNAL_NLI = "external_nli"
SCORERS = (ARITHMETIC, ENTAILMENT, NLI, EXTERNAL_NLI)
_TASK = {ARITHMETIC: tasks.ARITHMETIC, ENTAILMENT: tasks.SUMMARIZATION,
         NLI: tasks.SUMMARIZATION, EXTERNAL_NLI: tasks.SUMMARIZATION}


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
  """Which scorers to run and what they load (picklable for Beam workers)."""

  names: tuple[str, ...]
  nli_model: str = ""
  external_nli: str = ""  # "module:function"

  def __post_init__(self):
    if not self.names:
      raise core.PipelineError("at least one scorer is needed")
    unknown = [n for n in self.names if n not in SCORERS]
    if unknown:
      raise core.PipelineError(f"unknown scorer(s) {unknown}; known: {list(SCORERS)}")
    if len(set(self.names)) != len(self.names):
      raise core.PipelineError(f"scorer listed twice: {list(self.names)}")
    if NLI in self.names and not self.nli_model:
      raise core.PipelineError("the nli scorer needs --nli_model (train one with "
                               "`python -m pipelines.nli train --out DIR`)")
    if EXTERNAL_NLI in self.names and ":" not in self.external_nli:
      raise core.PipelineError("the external_nli scorer needs --external_nli=module:function")

  def describe(self) -> dict[str, Any]:
    """Identity of every scorer (digests of learned ones), checked in the driver."""
    out: dict[str, Any] = {"names": list(self.names)}
    if NLI in self.names:
      from pipelines import nli  # pylint: disable=g-import-not-at-top
      try:
        model = nli.NliClassifier.load(self.nli_model)
      except (FileNotFoundError, ValueError) as e:
        raise core.PipelineError(str(e)) from e
      out["nli_model"] = {"path": core.absolute(self.nli_model), "digest": model.digest,
                          "test_accuracy": model.meta.get("test_accuracy")}
    if EXTERNAL_NLI in self.names:
      _load_function(self.external_nli)
      out["external_nli"] = self.external_nli
    return out

  def load(self) -> dict[str, Callable[[tasks.Prompt, Sequence[str]], np.ndarray]]:
    """name -> scoring function (run once per worker)."""
    fns: dict[str, Callable[[tasks.Prompt, Sequence[str]], np.ndarray]] = {}
    for name in self.names:
      if name == ARITHMETIC:
        fns[name] = score_arithmetic
      elif name == ENTAILMENT:
        fns[name] = score_entailment
      elif name == NLI:
        from pipelines import nli  # pylint: disable=g-import-not-at-top
        fns[name] = _sentence_mean(nli.NliClassifier.load(self.nli_model).predict)
      else:
        fns[name] = _sentence_mean(_load_function(self.external_nli))
    return fns


def _load_function(spec: str) -> Callable[..., Any]:
  module_name, _, attr = spec.partition(":")
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise core.PipelineError(f"cannot load external NLI function {spec!r}: {e}") from e
  if not callable(fn):
    raise core.PipelineError(f"{spec} is not callable")
  return fn


def check_task(name: str, prompt: tasks.Prompt) -> None:
  if prompt.task != _TASK[name]:
    raise core.RecordError("scorer_not_applicable",
                           f"scorer {name!r} scores {_TASK[name]} rollouts; prompt "
                           f"{prompt.prompt_id} is {prompt.task}")


def score_arithmetic(prompt: tasks.Prompt, completions: Sequence[str]) -> np.ndarray:
  from builders.arithmetic import problems  # pylint: disable=g-import-not-at-top
  answer = prompt.reference.get("answer", "")
  if not answer:
    raise core.RecordError("no_reference", f"prompt {prompt.prompt_id} has no answer")
  return np.asarray([float(problems.check(answer, c)) for c in completions], np.float32)


def score_entailment(prompt: tasks.Prompt, completions: Sequence[str]) -> np.ndarray:
  from builders.grounded_summarization import world  # pylint: disable=g-import-not-at-top
  facts = prompt.reference.get("facts") or []
  if not facts:
    raise core.RecordError("no_reference", f"prompt {prompt.prompt_id} has no gold facts "
                                           f"(real data: use the nli scorers)")
  return np.asarray([world.entailment(facts, c)["score"] for c in completions], np.float32)


def _sentence_mean(predict: Callable[[list[str], list[str]], Any]):
  """A summary's score: mean P(entailment) over its sentences (0.0 if it has none)."""

  def score(prompt: tasks.Prompt, completions: Sequence[str]) -> np.ndarray:
    from builders.grounded_summarization import world  # pylint: disable=g-import-not-at-top
    document = prompt.reference.get("document", "")
    per_completion = [world.sentences(c) for c in completions]
    flat = [s for sentences in per_completion for s in sentences]
    probs = np.asarray(predict([document] * len(flat), flat), np.float32).reshape(-1)
    if probs.shape != (len(flat),) or not np.all(np.isfinite(probs)):
      raise core.RecordError("bad_nli_output", f"the NLI model returned {probs.shape} "
                                               f"values for {len(flat)} sentences")
    out, start = [], 0
    for sentences in per_completion:
      chunk = probs[start:start + len(sentences)]
      out.append(float(chunk.mean()) if len(chunk) else 0.0)
      start += len(sentences)
    return np.asarray(out, np.float32)

  return score


def score_all(fns: Mapping[str, Callable[..., np.ndarray]], prompt: tasks.Prompt,
              completions: Sequence[str]) -> dict[str, np.ndarray]:
  """name -> float32 [n] rewards of the completions of one prompt."""
  out = {}
  for name, fn in fns.items():
    check_task(name, prompt)
    values = np.asarray(fn(prompt, completions), np.float32)
    if values.shape != (len(completions),):
      raise core.RecordError("bad_scorer_output", f"scorer {name} returned shape "
                                                  f"{values.shape} for {len(completions)}")
    out[name] = values
  return out
