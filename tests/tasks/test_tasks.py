"""rlds_lm.tasks: prompt formats, the reward registry, its worked example, import rules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from rlds_lm import tasks
from rlds_lm import toy
from rlds_lm.models import sampling
from rlds_lm.tasks import registry
from rlds_lm.tasks import summarization
from rlds_lm.tokenizers import ByteTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FACTS = ["Ada Costa|lives_in|Marlow", "Ada Costa|works_at|Helix Biotech"]
DOCUMENT = "Ada Costa lives in Marlow. Ada Costa is employed by Helix Biotech."


def _python_blocks(doc: str) -> list[str]:
  with open(os.path.join(REPO, "docs", doc)) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_docs_worked_example_is_the_module_and_runs_as_written():
  module, usage = _python_blocks("tasks.md")
  with open(os.path.join(REPO, "rlds_lm", "tasks", "concise_arithmetic.py")) as f:
    assert module == f.read()
  exec(compile(usage, "docs/tasks.md", "exec"), {})  # pylint: disable=exec-used


def test_a_new_module_is_all_a_reward_takes():
  # The example module is found by the package (no table names it) and every caller
  # accepts its name: bond's config, the score stage's scorer list.
  from rlds_lm.trainers import bond  # pylint: disable=g-import-not-at-top
  assert "arithmetic_concise" in tasks.REWARDS and bond.REWARDS is tasks.REWARDS
  bond.BondConfig(prompts="p", workdir="w", policy="c", reward="arithmetic_concise")
  with pytest.raises(ValueError, match="reward must be one of"):
    bond.BondConfig(prompts="p", workdir="w", policy="c", reward="no_such_reward")


def test_bond_refuses_a_reward_that_needs_a_model_before_it_starts(tmp_path):
  from rlds_lm.trainers import bond  # pylint: disable=g-import-not-at-top
  config = bond.BondConfig(prompts="p", workdir=str(tmp_path / "w"), policy="c",
                           reward="nli")
  with pytest.raises(ValueError, match="nli reward needs a model directory"):
    bond.train(config)
  assert not (tmp_path / "w").exists()


def test_prompt_formats_and_detection():
  arithmetic = tasks.to_prompt({"question": "What is 2 + 2?", "answer": "4"})
  assert (arithmetic.task, arithmetic.text) == ("arithmetic", "What is 2 + 2?\nAnswer:")
  assert arithmetic.reference == {"answer": "4"}
  assert arithmetic.prompt_id.startswith("p-")
  summary = tasks.to_prompt({"prompt_id": "d1", "document": DOCUMENT, "facts": FACTS})
  assert (summary.task, summary.prompt_id) == ("summarization", "d1")
  assert summary.text == f"Document: {DOCUMENT}\nSummary:"
  assert summary.record() == {"prompt_id": "d1", "document": DOCUMENT, "facts": FACTS,
                              "reference_summaries": []}
  with pytest.raises(tasks.RecordError) as e:
    tasks.to_prompt({"title": "x"})
  fields = sorted(t.field for t in tasks.TASKS.values())  # every registered task's
  assert {"document", "question"} <= set(fields)
  assert e.value.reason == "unknown_task" and str(fields) in str(e.value)
  with pytest.raises(tasks.RecordError) as e:
    tasks.to_prompt({"question": "  "})
  assert e.value.reason == "empty_prompt"


def test_the_pipelines_dead_letters_use_the_tasks_error():
  from pipelines import core  # pylint: disable=g-import-not-at-top
  assert core.RecordError is tasks.RecordError
  assert core.reason_of(tasks.RecordError("no_reference", "x")) == "no_reference"


def test_built_in_rewards():
  record = {"prompt_id": "q", "question": "2+2?", "answer": "4"}
  values = tasks.get_reward("arithmetic")(record, ["The answer is 4.", "5", "four"]).values
  np.testing.assert_array_equal(values, [1.0, 0.0, 0.0])
  assert values.dtype == np.float32
  with pytest.raises(tasks.RecordError, match="prompt q has no answer"):
    tasks.get_reward("arithmetic")({"prompt_id": "q", "question": "?"}, ["4"])
  summaries = ["Ada Costa lives in Marlow.", "Ada Costa lives in Arden. Blorp.", ""]
  values = tasks.get_reward("entailment")({"facts": FACTS}, summaries).values
  np.testing.assert_allclose(values, [1.0, 0.0, 0.0])
  with pytest.raises(tasks.RecordError) as e:
    tasks.get_reward("entailment")({"document": DOCUMENT, "facts": []}, ["x"])
  assert e.value.reason == "no_reference"
  toy_record = {"question": "3+4=", "answer": "7"}
  np.testing.assert_array_equal(
      tasks.get_reward("toy_arithmetic")(toy_record, ["7", " 7 \nmore", "77"]).values,
      [1.0, 1.0, 0.0])
  np.testing.assert_array_equal(
      tasks.get_reward("toy_arithmetic_exact")(toy_record, ["7", " 7 \nmore"]).values,
      [1.0, 0.0])
  assert tasks.get_reward("toy_arithmetic").prompt(toy_record) == "3+4="
  with pytest.raises(ValueError, match="unknown reward 'bleu'"):
    tasks.get_reward("bleu")


def _external_predict(premises, hypotheses):
  """The oracle behind the NLI interface: 1.0 when the sentence states a document fact."""
  out = []
  for premise, hypothesis in zip(premises, hypotheses):
    facts = set(summarization.facts_in(premise))
    out.append(1.0 if summarization.parse_sentence(hypothesis) in facts else 0.0)
  return out


def test_sentence_mean_rewards_bind_their_options_and_batch_rows():
  reward = tasks.get_reward("external_nli")
  bound = reward.bind(external_nli=f"{__name__}:_external_predict", nli_model="ignored")
  record = {"document": DOCUMENT}
  texts = ["Ada Costa lives in Marlow. Ada Costa lives in Arden.", "", "Blorp."]
  np.testing.assert_allclose(bound(record, texts).values, [0.5, 0.0, 0.0])
  # Many prompts in one call give what one call per prompt gives.
  other = {"document": "Ada Costa lives in Arden."}
  rows = reward.rows([record] * 3 + [other], texts + ["Ada Costa lives in Arden."],
                     predict=_external_predict)
  np.testing.assert_allclose(rows, [0.5, 0.0, 0.0, 1.0])
  with pytest.raises(ValueError, match="cannot load external NLI function"):
    reward.bind(external_nli="no_such_module:fn")
  with pytest.raises(tasks.RecordError) as e:
    reward(record, texts, predict=lambda p, h: [0.5])
  assert e.value.reason == "bad_nli_output"


def test_reward_output_is_checked():
  reward = registry.Reward(fields=(), prompt=str, score=lambda r, c: [1.0], name="bad")
  with pytest.raises(tasks.RecordError, match="scorer bad returned shape") as e:
    reward({}, ["a", "b"])
  assert e.value.reason == "bad_scorer_output"
  tokens = registry.Reward(fields=(), prompt=str, name="tok", score=lambda r, c: tasks.Scores(
      [1.0, 0.0], ([0.5, 0.5], [0.0])))
  scores = tokens({}, ["ab", "c"])
  assert [t.tolist() for t in scores.per_token] == [[0.5, 0.5], [0.0]]


def test_registration_refuses_a_name_twice():
  with pytest.raises(ValueError, match="registered twice"):
    registry.register_reward("arithmetic", task="arithmetic", fields=())(lambda r, c: c)
  with pytest.raises(ValueError, match="unknown task"):
    registry.register_reward("new_reward", task="poetry", fields=())(lambda r, c: c)
  assert "new_reward" not in tasks.REWARDS


def test_toy_accuracy_counts_the_registered_reward_and_eos():
  problem = toy.arithmetic_problems(1, seed=3)[0]
  tok = ByteTokenizer()

  def completion(text, stop):
    return SimpleNamespace(tokens=tok.encode(text), stop_reason=stop)

  right = completion(problem.answer, sampling.STOP_EOS)
  assert toy.is_correct(problem, right)
  assert not toy.is_correct(problem, completion(problem.answer, "length"))
  assert not toy.is_correct(problem, completion(problem.answer + "1", sampling.STOP_EOS))
  np.testing.assert_array_equal(toy.correct([problem] * 2, [right, right]), [True, True])
  assert toy.check_answer(problem, problem.answer + "\nmore") == 1.0


@pytest.mark.parametrize("module", [
    "rlds_lm.tasks", "rlds_lm.tasks.nli", "rlds_lm.tasks.summarization",
    "rlds_lm.trainers.bond", "rlds_lm.trainers.rlef", "rlds_lm.toy"])
def test_imports_neither_pipelines_builders_tensorflow_nor_beam(module):
  code = (f"import {module}, sys; print(sorted(m for m in sys.modules if m.split('.')[0] "
          "in ('pipelines', 'builders', 'tensorflow', 'apache_beam')))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, check=False, cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO))
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "[]"
