"""Bad records go to the dead-letter output with their reason; the rest completes."""

from __future__ import annotations

import json
import os
import time

import apache_beam as beam
import numpy as np
import pytest

from pipelines import core
from pipelines import generate
from pipelines import publish
from pipelines import score
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import testing as T

from pipeline_testlib import MAX_NEW_TOKENS  # pylint: disable=g-bad-import-order

GOOD = [{"question": f"Ann has {n} apples. She gets 2 more. How many now?",
         "answer": str(n + 2)} for n in (3, 5, 7)]


def _write_jsonl(path, lines):
  with open(path, "w") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return os.fspath(path)


def _dead(path):
  with open(os.path.join(path, core.DEAD_LETTER_FILE)) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def bad_prompts(tmp_path_factory):
  root = tmp_path_factory.mktemp("dead")
  return _write_jsonl(root / "prompts.jsonl", [
      *GOOD,
      '{"question": "unterminated',  # bad_json
      {"question": "   ", "answer": "1"},  # empty_prompt
      {"question": "x" * 600, "answer": "1"},  # prompt_too_long (512-token context)
      {"title": "no task fields"},  # unknown_task
      "[1, 2]",  # bad_json (not an object)
  ])


@pytest.fixture(scope="module")
def generated(assets, bad_prompts, tmp_path_factory):
  out = os.fspath(tmp_path_factory.mktemp("dead_gen") / "rollouts")
  result = generate.run([f"--prompts={bad_prompts}", f"--policy={assets['policy']}",
                         "--num_samples=2", f"--max_new_tokens={MAX_NEW_TOKENS}",
                         f"--output={out}", "--workers=1", "--num_shards=2",
                         "--max_dropped_fraction=0.7"])
  return result


def test_generate_drops_bad_prompts_and_completes(generated):
  assert generated.num_examples == {"train": 2 * len(GOOD)}
  dead = _dead(generated.path)
  assert sorted(d["reason"] for d in dead) == sorted(
      ["bad_json", "bad_json", "empty_prompt", "prompt_too_long", "unknown_task"])
  assert all(d["stage"] == "generate" and d["detail"] for d in dead)
  too_long = [d for d in dead if d["reason"] == "prompt_too_long"][0]
  assert "504" in too_long["detail"]  # 512 context - 8 new tokens
  assert {d["key"] for d in dead if d["reason"] == "bad_json"} == {"line 4", "line 8"}
  assert {d["key"] for d in dead if d["reason"] == "unknown_task"} == {"line 7"}


def test_counters_and_stored_summary_agree_with_the_dead_letters(generated):
  dead = _dead(generated.path)
  assert generated.counters["generate/dropped"] == len(dead)
  for reason in {d["reason"] for d in dead}:
    assert generated.counters[f"generate/dead_letter.{reason}"] == sum(
        d["reason"] == reason for d in dead)
  summary = core.read_dead_letter_summary(generated.path)
  assert summary["total_dropped"] == len(dead)
  (stage,) = summary["stages"]
  assert stage["inputs"] == 8 and stage["written"] == 6 and stage["dropped"] == 5
  assert stage["by_reason"] == generated.dropped


def test_score_drops_unknown_prompts_and_publish_reports_every_stage(
    generated, tmp_path):
  # Score against a prompt source that lacks the first prompt.
  prompts = _write_jsonl(tmp_path / "fewer.jsonl", GOOD[1:])
  scored = score.run([f"--rollouts={generated.path}", f"--prompts={prompts}",
                      "--scorers=arithmetic", f"--output={tmp_path / 'scored'}",
                      "--workers=1", "--num_shards=1"])
  assert scored.total_examples == 4 and scored.dropped == {"unknown_prompt": 2}
  published = publish.run([f"--input={scored.path}", f"--data_dir={tmp_path / 'ds'}",
                           "--name=with_drops", "--workers=1", "--num_shards=1"])
  summary = core.read_dead_letter_summary(published.path)
  assert [(s["stage"], s["dropped"]) for s in summary["stages"]] == [
      ("generate", 5), ("score", 2), ("publish", 0)]
  card = open(os.path.join(published.path, publish.CARD_FILE)).read()
  assert "unknown_prompt x2" in card and "prompt_too_long x1" in card


def test_too_many_drops_fail_the_stage_but_keep_the_output(assets, bad_prompts,
                                                           tmp_path):
  out = tmp_path / "strict"
  with pytest.raises(core.PipelineError, match="5 of 8 input records were dropped"):
    generate.run([f"--prompts={bad_prompts}", f"--policy={assets['policy']}",
                  "--num_samples=1", "--max_new_tokens=4", f"--output={out}",
                  "--workers=1", "--num_shards=1", "--max_dropped_fraction=0.2"])
  assert len(_dead(out)) == 5  # kept for inspection


def test_invalid_episodes_are_dropped_at_write(tmp_path):
  config = S.SchemaConfig(vocab_size=259, reward_names=("r",))
  good = [T.fake_rollout(config, seed=i) for i in range(3)]
  bad = T.fake_rollout(config, seed=9)
  bad[S.STEPS][0][S.ACTION][S.ACT_TOKENS] = np.asarray([5, 300], np.int32)  # >= vocab
  out = core.prepare_output(os.fspath(tmp_path / "out"), overwrite=False)
  started = time.perf_counter()
  pipeline = beam.Pipeline(options=core.pipeline_options([], workers=1))
  episodes = pipeline | beam.Create([("train", e) for e in good + [bad]])
  _, dead = episodes | core.WriteEpisodes(out, "mixed", config, ["train"], 2, "unit")
  core.write_dead_letters([dead], out)
  result = core.finalize(result=pipeline.run(), out_dir=out, name="mixed", config=config,
                         splits=["train"], stage="unit", description="", lineage={},
                         inputs_total=4, started=started, max_dropped_fraction=0.5)
  assert result.num_examples == {"train": 3}
  (letter,) = _dead(out)
  assert letter["reason"] == "invalid_episode" and letter["key"] == bad[S.EPISODE_ID]
  assert "steps[0]/action/tokens" in letter["detail"]
  _, records = R.iter_records(out, "train")
  ids = sorted(R.materialize(r)[S.EPISODE_ID] for r in records)
  assert ids == sorted(e[S.EPISODE_ID] for e in good)


def test_bad_flags_fail_before_any_work(assets, tmp_path):
  with pytest.raises(core.PipelineError, match="not empty"):
    os.makedirs(tmp_path / "full")
    (tmp_path / "full" / "x").write_text("x")
    generate.run([f"--prompts={assets['arithmetic']}", f"--policy={assets['policy']}",
                  f"--output={tmp_path / 'full'}"])
  with pytest.raises(core.PipelineError, match="TFDS dataset directory"):
    generate.run([f"--prompts={tmp_path}", f"--policy={assets['policy']}",
                  f"--output={tmp_path / 'o1'}"])
  with pytest.raises(core.PipelineError, match="policy|checkpoint"):
    generate.run([f"--prompts={assets['arithmetic']}", f"--policy={tmp_path}",
                  f"--output={tmp_path / 'o2'}"])
  assert generate.main([f"--prompts={assets['arithmetic']}", f"--policy={tmp_path}",
                        f"--output={tmp_path / 'o3'}"]) == 2
