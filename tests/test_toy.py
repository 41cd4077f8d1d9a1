"""rlds_lm.toy: the evaluation helper's per-token accuracy and references of any task."""

from __future__ import annotations

import numpy as np

from rlds_lm import read
from rlds_lm import schema as S
from rlds_lm import toy
from rlds_lm.models import sampling
from rlds_lm.tasks.toy_arithmetic import Problem


def _completion(text: str, eos: bool = True) -> sampling.Completion:
  tokens = toy.ByteTokenizer().encode(text, add_eos=eos)
  return sampling.Completion(tokens, np.zeros(len(tokens), np.float32),
                             sampling.STOP_EOS if eos else sampling.STOP_LENGTH)


def test_token_accuracy_gives_partial_credit_where_exact_match_gives_none():
  problems = [Problem("a", "12+7=", "19")] * 4
  completions = [_completion("19"), _completion("18"), _completion("19", eos=False),
                 _completion("1")]
  # Reference tokens: "1", "9", EOS.
  np.testing.assert_allclose(toy.token_accuracy(problems, completions),
                             [1.0, 2 / 3, 2 / 3, 1 / 3])
  np.testing.assert_array_equal(toy.correct(problems, completions),
                                [True, False, False, False])


def test_make_eval_fn_reports_exact_and_per_token_accuracy():
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  problems = toy.arithmetic_problems(4, seed=0, max_operand=5)
  model = mc.get_config("tiny")
  out = toy.make_eval_fn(problems)(model, gemma.init_params(model, seed=0))
  assert set(out) == {"accuracy", "token_accuracy"}
  assert 0.0 <= out["accuracy"] <= out["token_accuracy"] <= 1.0


def test_publish_references_records_the_task_and_numbers_repeated_prompts(tmp_path):
  rows = [Problem("q-1", "4:10=", "1234"), Problem("q-1", "4:10=", "4321"),
          Problem("q-2", "4:9=", "0009")]
  path = toy.publish_references(str(tmp_path), rows, name="digits", task="digit_sum",
                                source="test")
  _, records = read.iter_records(path, "train")
  episodes = [read.plain_record(r) for r in records]
  assert [_text(e[S.TASK]) for e in episodes] == ["digit_sum"] * 3
  assert sorted((_text(e[S.PROMPT_ID]), int(e[S.SAMPLE_INDEX])) for e in episodes) == [
      ("q-1", 0), ("q-1", 1), ("q-2", 0)]
  assert len({_text(e[S.EPISODE_ID]) for e in episodes}) == 3


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)
