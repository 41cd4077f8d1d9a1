"""Each stage's PTransform on in-memory input: TestPipeline + assert_that, no files.

The setups come from the stages' own config builders (``build_config``) on their own
flag parsers, so these tests exercise the code the command lines run.
"""

from __future__ import annotations

import itertools

import apache_beam as beam
from apache_beam.testing import util as beam_util
from apache_beam.testing import test_pipeline
import pytest

from pipelines import dataset_io
from pipelines import dead_letters as DL
from pipelines import judge
from pipelines import scaffold
from pipelines import score
from pipelines import tasks
from pipelines.errors import PipelineError
from pipelines.errors import RecordError
from rlds_lm import schema as S
from rlds_lm import testing as T

REWARD = "r"
ROLLOUTS = S.SchemaConfig(vocab_size=259, reward_names=(REWARD,))


def _pipeline() -> test_pipeline.TestPipeline:
  # The local runner the stages use (a bare DirectRunner would first try Prism).
  return test_pipeline.TestPipeline(options=scaffold.pipeline_options([], workers=1))


def _rollout(seed: int, text: str | None = None) -> dict:
  episode = T.fake_rollout(ROLLOUTS, seed=seed)
  if text is not None:
    episode[S.STEPS][0][S.ACTION][S.ACT_TEXT] = text
  return episode


def _reward(episode: dict) -> float:
  return episode[S.STEPS][0][S.REWARDS][REWARD]


def test_safe_map_splits_outputs_from_dead_letters():
  def fn(n):
    if n % 3 == 0:
      raise RecordError("divisible", f"{n} is divisible by 3")
    return [n, -n]

  with _pipeline() as p:
    items = p | beam.Create([("train", n) for n in range(1, 7)])
    main, dead = DL.safe_map(items, "Map", "unit", fn, key_fn=lambda n: f"n{n}")
    beam_util.assert_that(main, beam_util.equal_to(
        [("train", m) for n in (1, 2, 4, 5) for m in (n, -n)]), label="Main")
    beam_util.assert_that(dead, beam_util.equal_to(
        [DL.DeadLetter("unit", f"n{n}", "divisible", f"{n} is divisible by 3", "train")
         for n in (3, 6)]), label="Dead")


def test_judge_transform_pairs_candidates_by_reward():
  group = sorted((_rollout(seed) for seed in range(4)), key=lambda e: e[S.EPISODE_ID])
  lone = _rollout(4)  # the only sample of prompt-1: nothing to compare it with
  assert {e[S.PROMPT_ID] for e in group} == {"prompt-0"} and lone[S.PROMPT_ID] == "prompt-1"
  args = judge.build_parser().parse_args([f"--reward={REWARD}", "--rollouts=in",
                                          "--output=out"])
  setup = judge.build_config(args, ROLLOUTS)
  assert setup.config.judge_kind == "reward_model" and setup.schema.kind == S.PREFERENCE
  expected = []
  for a, b in itertools.combinations(group, 2):
    ra, rb = _reward(a), _reward(b)
    choice = -1 if ra == rb else (0 if ra > rb else 1)
    expected.append(("train", (a[S.EPISODE_ID], b[S.EPISODE_ID]), choice))

  with _pipeline() as p:
    rollouts = p | beam.Create([("train", e) for e in group + [lone]])
    preferences, dead = rollouts | judge.Judge(setup)
    summary = preferences | beam.MapTuple(lambda split, pref: (
        split, tuple(pref[S.CANDIDATE_IDS]), int(pref[S.STEPS][0][S.ACTION][S.ACT_CHOICE])))
    beam_util.assert_that(summary, beam_util.equal_to(expected), label="Preferences")
    beam_util.assert_that(dead, beam_util.equal_to([DL.DeadLetter(
        "judge", "prompt-1", "too_few_candidates",
        "prompt prompt-1 has 1 rollout(s); a preference needs two", "train")]),
                          label="Dead")


def test_judge_config_refuses_a_reward_the_rollouts_lack():
  args = judge.build_parser().parse_args(["--reward=bleu", "--rollouts=in", "--output=o"])
  with pytest.raises(PipelineError, match="run pipelines.score first"):
    judge.build_config(args, ROLLOUTS)


def test_score_transform_scores_known_prompts_and_drops_the_rest():
  prompt = tasks.to_prompt({"question": "What is 2 + 2?", "answer": "4"})
  texts = ["The answer is 4.", "5"]
  known = [_rollout(seed, text) for seed, text in enumerate(texts)]
  for episode in known:
    episode[S.PROMPT_ID] = prompt.prompt_id
  unknown = _rollout(9)
  args = score.build_parser().parse_args(["--scorers=arithmetic", "--rollouts=in",
                                          "--output=out"])
  setup = score.build_config(args, ROLLOUTS)
  assert setup.names == (REWARD, "arithmetic") and setup.primary == "arithmetic"

  with _pipeline() as p:
    prompts = p | "Prompts" >> beam.Create([("train", prompt)])
    rollouts = p | "Rollouts" >> beam.Create([("test", e) for e in known + [unknown]])
    scored, dead = {"prompts": prompts, "rollouts": rollouts} | score.Score(setup)
    summary = scored | beam.MapTuple(lambda split, e: (
        split, e[S.EPISODE_ID], e[S.STEPS][0][S.REWARD],
        dict(e[S.STEPS][0][S.REWARDS])))
    beam_util.assert_that(summary, beam_util.equal_to([
        ("test", e[S.EPISODE_ID], value, {REWARD: _reward(e), "arithmetic": value})
        for e, value in zip(known, (1.0, 0.0))]), label="Scored")
    beam_util.assert_that(dead, beam_util.equal_to([DL.DeadLetter(
        "score", unknown[S.EPISODE_ID], "unknown_prompt",
        "prompt prompt-2 is not in the prompt source", "test")]), label="Dead")


def test_write_lines_writes_one_sorted_file(tmp_path):
  path = tmp_path / "lines.txt"
  with _pipeline() as p:
    written = p | beam.Create(["b", "c", "a"]) | dataset_io.WriteLines(str(path))
    beam_util.assert_that(written, beam_util.equal_to([str(path)]))
  assert path.read_text() == "a\nb\nc\n"
  with _pipeline() as p:
    _ = p | beam.Create([]) | dataset_io.WriteLines(str(tmp_path / "none.txt"))
  assert not (tmp_path / "none.txt").exists()
