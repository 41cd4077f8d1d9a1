"""Scorers, the learned NLI classifier, the LLM judge and the Best-of-N statistics."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from pipelines import core
from pipelines import judge
from pipelines import score
from pipelines import scorers as SC
from pipelines import teacher
from rlds_lm import publish as P
from rlds_lm import schema as S
from rlds_lm import tasks
from rlds_lm import tokenizers
from rlds_lm.models import sampling
from rlds_lm.tasks import nli
from rlds_lm.tasks import summarization as world

from pipeline_testlib import by_id as _by_id  # pylint: disable=g-bad-import-order

HERE = os.path.dirname(os.path.abspath(__file__))


def _prompts(path: str) -> list[dict]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = []
  for split in ("train", "test"):
    for ex in tfds.builder_from_directory(path).as_dataset(split=split).as_numpy_iterator():
      out.append({"prompt_id": ex["prompt_id"].decode(), "document": ex["document"].decode(),
                  "facts": [f.decode() for f in ex["facts"]],
                  "reference_summaries": [s.decode() for s in ex["reference_summaries"]],
                  "split": split})
  return out


def _corrupt(summary: str) -> str:
  """Swaps the city in every lives_in sentence for one not stated for that person."""
  out = []
  for sentence in world.sentences(summary):
    triple = world.parse_sentence(sentence)
    if triple and triple[1] == "lives_in":
      other = next(c for c in world.CITIES if c != triple[2])
      sentence = world.render((triple[0], "lives_in", other))
    out.append(sentence)
  return " ".join(out)


@pytest.fixture(scope="module")
def summary_rollouts(assets, tmp_path_factory):
  """A rollout dataset whose completions are reference summaries and corrupted copies."""
  tok = tokenizers.ByteTokenizer()
  config = S.SchemaConfig(vocab_size=tok.vocab_size, tokenizer=tok.name)
  splits = {"train": [], "test": []}
  for p in _prompts(assets["summarization"]):
    prompt = tasks.to_prompt(p)
    prompt_tokens = tok.encode(prompt.text, add_bos=True)
    texts = [p["reference_summaries"][0], _corrupt(p["reference_summaries"][0]),
             "Nothing to report."]
    for i, text in enumerate(texts):
      turn = S.Turn(S.observation(config, prompt_tokens, prompt.text),
                    action_tokens=tok.encode(text), action_text=text)
      splits[p["split"]].append(S.rollout_episode(
          config, [turn], prompt_id=prompt.prompt_id, task=tasks.SUMMARIZATION,
          sample_index=i, policy_name="references"))
  data_dir = tmp_path_factory.mktemp("summary_rollouts")
  return P.publish(splits, data_dir=data_dir, name="summary_rollouts", config=config,
                   file_formats=(P.TFRECORD,))


def test_score_stage_with_oracle_learned_and_external_nli(summary_rollouts, assets,
                                                          tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(HERE)
  result = score.run([f"--rollouts={summary_rollouts}", f"--prompts={assets['summarization']}",
                      "--scorers=entailment,nli,external_nli", f"--nli_model={assets['nli']}",
                      "--external_nli=external_nli_for_tests:oracle_probabilities",
                      "--primary=nli", f"--output={tmp_path / 'scored'}", "--workers=1",
                      "--num_shards=2"])
  assert result.total_dropped == 0
  facts = {tasks.to_prompt(p).prompt_id: p["facts"] for p in _prompts(assets["summarization"])}
  episodes = _by_id(result.path)
  nli_by_index = {0: [], 1: [], 2: []}
  for episode in episodes.values():
    step = episode[S.STEPS][0]
    text = step[S.ACTION][S.ACT_TEXT]
    expected = world.entailment(facts[episode[S.PROMPT_ID]], text)["score"]
    assert step[S.REWARDS]["entailment"] == pytest.approx(expected)
    # The external adapter wraps the oracle's per-sentence judgement: same score here.
    assert step[S.REWARDS]["external_nli"] == pytest.approx(expected)
    assert 0.0 <= step[S.REWARDS]["nli"] <= 1.0
    assert step[S.REWARD] == step[S.REWARDS]["nli"]
    nli_by_index[episode[S.SAMPLE_INDEX]].append(step[S.REWARDS]["nli"])
  # References: fully entailed; corrupted copies: less; the learned model agrees on average.
  ref = [e for e in episodes.values() if e[S.SAMPLE_INDEX] == 0]
  assert all(e[S.STEPS][0][S.REWARDS]["entailment"] == 1.0 for e in ref)
  assert np.mean(nli_by_index[0]) > np.mean(nli_by_index[1]) > np.mean(nli_by_index[2])


def test_llm_judge_ranks_by_mean_logprob(summary_rollouts, assets, tmp_path):
  result = judge.run([f"--rollouts={summary_rollouts}", f"--judge_policy={assets['policy']}",
                      "--mode=ranked", f"--output={tmp_path / 'prefs'}", "--workers=1",
                      "--num_shards=1"])["preferences"]
  rollouts = _by_id(summary_rollouts)
  prefs = list(_by_id(result.path).values())
  # One ranked episode per prompt, except prompts whose document + summary exceed the
  # judge's 512-token context: those are dead letters.
  assert set(result.dropped) == {"too_long_for_judge"}
  assert result.total_examples + result.total_dropped == 9 and prefs
  model = sampling.Policy.from_checkpoint(assets["policy"], eos_id=2)
  pref = prefs[0]
  ids = list(pref[S.CANDIDATE_IDS])
  assert len(ids) == 3 and pref[S.JUDGE][S.JUDGE_KIND] == "llm"
  expected = []
  for i in ids:
    step = rollouts[i][S.STEPS][0]
    prompt = np.asarray(step[S.OBSERVATION][S.OBS_TOKENS])
    tokens = np.asarray(step[S.ACTION][S.ACT_TOKENS])
    expected.append(model.score([np.concatenate([prompt, tokens])], [len(prompt)])[0]
                    .logprobs.mean())
  action = pref[S.STEPS][0][S.ACTION]
  np.testing.assert_allclose(action[S.ACT_SCORES], expected, rtol=1e-4, atol=1e-4)
  assert list(action[S.ACT_RANKING]) == list(np.argsort(-np.asarray(expected),
                                                        kind="stable"))
  assert int(action[S.ACT_CHOICE]) == int(np.argmax(expected))


def test_judge_refuses_a_missing_reward(summary_rollouts, tmp_path):
  with pytest.raises(core.PipelineError, match="run pipelines.score first"):
    judge.run([f"--rollouts={summary_rollouts}", f"--output={tmp_path / 'p'}"])


def test_nli_classifier_is_good_but_imperfect(assets):
  model = nli.NliClassifier.load(assets["nli"])
  pairs = nli.training_pairs(400, seed=12345)  # a seed the model was not trained on
  probs = model.predict([p for p, _, _ in pairs], [h for _, h, _ in pairs])
  accuracy = np.mean((probs > 0.5) == np.asarray([label for _, _, label in pairs], bool))
  assert 0.8 < accuracy < 1.0
  assert model.meta["test_accuracy"] > 0.8


def test_nli_model_files_are_checked(assets, tmp_path):
  with pytest.raises(FileNotFoundError, match="pipelines.nli train"):
    nli.NliClassifier.load(os.fspath(tmp_path))
  with pytest.raises(core.PipelineError, match="--nli_model"):
    SC.ScorerSpec(("nli",))
  with pytest.raises(core.PipelineError, match="unknown scorer"):
    SC.ScorerSpec(("bleu",))
  with pytest.raises(core.PipelineError, match="cannot load"):
    SC.ScorerSpec(("external_nli",), external_nli="no_such_module:fn").describe()


def test_scorers_refuse_the_wrong_task():
  prompt = tasks.to_prompt({"question": "What is 2 + 2?", "answer": "4"})
  fns = SC.ScorerSpec(("arithmetic",)).load()
  values = SC.score_all(fns, prompt, ["The answer is 4.", "5", "four"])
  np.testing.assert_array_equal(values["arithmetic"], [1.0, 0.0, 0.0])
  with pytest.raises(core.RecordError) as e:
    SC.score_all(SC.ScorerSpec(("entailment",)).load(), prompt, ["x"])
  assert e.value.reason == "scorer_not_applicable"


def test_mc_quantiles_and_expected_best_of_against_brute_force():
  rng = np.random.default_rng(0)
  rewards = rng.integers(0, 4, size=7).astype(float)  # with ties
  q = judge.mc_quantiles(rewards)
  for i, r in enumerate(rewards):
    assert q[i] == sum(x <= r for x in rewards) / len(rewards)
  for k in (1, 2, 4):
    draws = rng.choice(rewards, size=(200_000, k)).max(axis=1)
    assert judge.expected_best_of(rewards, k) == pytest.approx(draws.mean(), abs=0.02)
  assert judge.expected_best_of(rewards, 1) == pytest.approx(rewards.mean())
  stats = judge.group_stats("p", [f"e{i}" for i in range(7)], rewards)
  assert stats["best_episode_id"] == f"e{int(np.argmax(rewards))}"
  assert sorted(stats["expected_best_of"]) == ["1", "2", "4"]


def test_teacher_contexts_of_a_multi_turn_episode():
  config = S.SchemaConfig(vocab_size=259)
  obs = [np.asarray([1, 5, 6]), np.asarray([7]), np.asarray([8, 9])]
  acts = [np.asarray([10, 11]), np.asarray([12, 13, 14])]
  turns = [S.Turn(S.observation(config, obs[i]), action_tokens=acts[i]) for i in range(2)]
  episode = S.rollout_episode(config, turns, S.observation(config, obs[2]), prompt_id="p")
  contexts = teacher.turn_contexts(episode)
  assert [c[0] for c in contexts] == [0, 1]
  np.testing.assert_array_equal(contexts[0][1], [1, 5, 6, 10, 11])
  assert contexts[0][2] == 3
  np.testing.assert_array_equal(contexts[1][1], [1, 5, 6, 10, 11, 7, 12, 13, 14])
  assert contexts[1][2] == 6


def test_stage_modules_have_a_command_line(assets, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  for stage in ("generate", "teacher", "score", "judge", "publish", "nli", "models"):
    done = subprocess.run([sys.executable, "-m", f"pipelines.{stage}", "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: python -m pipelines." in done.stdout
  done = subprocess.run([sys.executable, "-m", "pipelines.teacher", "--rollouts",
                         os.fspath(tmp_path), "--teacher", assets["teacher"], "--output",
                         os.fspath(tmp_path / "o")], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 2
  assert "pipelines.teacher: error: cannot open" in done.stderr
