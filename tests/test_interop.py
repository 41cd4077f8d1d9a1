"""Export to TRL-style JSONL and Hugging Face datasets, import back as RLDS episodes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import AGENTIC, PREFERENCE, ROLLOUT, agentic, preferences
from rlds_lm import cli
from rlds_lm import interop as I
from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import tokenizers

TOP_K_ONLY = S.SchemaConfig(vocab_size=ROLLOUT.vocab_size, teacher_top_k=ROLLOUT.teacher_top_k,
                            reward_names=ROLLOUT.reward_names)


def _episodes(path):
  _, records = R.iter_records(path, "train")
  return {e[S.EPISODE_ID]: e for e in map(R.materialize, records)}


def _publish(tmp_path, name, config, episodes):
  return P.publish({"train": episodes}, data_dir=tmp_path / "src", name=name, config=config)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("interop")
  single = [T.fake_rollout(TOP_K_ONLY, seed=i, action_len=3 + i % 4) for i in range(8)]
  return {
      "single": _publish(root, "single", TOP_K_ONLY, single),
      "multi": _publish(root, "multi", AGENTIC, agentic()),
      "preference": _publish(root, "prefs", PREFERENCE, preferences()),
  }


def _tokens(steps, part, key):
  return [np.asarray(s[part][key]).tolist() for s in steps if not s[S.IS_LAST]]


def test_prompt_completion_jsonl_round_trip(sources, tmp_path):
  out = tmp_path / "sft.jsonl"
  assert I.export_jsonl(sources["single"], out, I.PROMPT_COMPLETION) == 8
  rows = [json.loads(line) for line in open(out, encoding="utf-8")]
  original = _episodes(sources["single"])
  for row in rows:  # TRL's standard prompt-completion columns, strings
    episode = original[row["episode_id"]]
    step = episode[S.STEPS][0]
    assert row["prompt"] == step[S.OBSERVATION][S.OBS_TEXT]
    assert row["completion"] == step[S.ACTION][S.ACT_TEXT]
    assert row["completion_token_ids"] == np.asarray(step[S.ACTION][S.ACT_TOKENS]).tolist()
    assert row["rewards"] == pytest.approx({k: float(v)
                                            for k, v in step[S.REWARDS].items()})
  path = I.import_rows(out, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "data"),
                       name="imported")
  imported = _episodes(path)
  assert set(imported) == set(original)  # content ids: same prompt, policy, tokens
  for episode_id, episode in imported.items():
    before, after = original[episode_id][S.STEPS][0], episode[S.STEPS][0]
    np.testing.assert_array_equal(after[S.ACTION][S.ACT_TOKENS],
                                  before[S.ACTION][S.ACT_TOKENS])
    np.testing.assert_array_equal(after[S.OBSERVATION][S.OBS_TOKENS],
                                  before[S.OBSERVATION][S.OBS_TOKENS])
    np.testing.assert_allclose(after[S.ACTION_LOGPROBS], before[S.ACTION_LOGPROBS])
    assert float(after[S.REWARD]) == pytest.approx(float(before[S.REWARD]))
    lineage = S.lineage_dict(episode)
    assert lineage["imported_from"] == os.fspath(out) and lineage["format"] == \
        I.PROMPT_COMPLETION
  assert R.dataset_lineage(R.open_builder(path))["imported_from"] == os.fspath(out)
  # Exporting the import gives the same rows.
  assert I.export_rows(path, I.PROMPT_COMPLETION) == I.export_rows(
      sources["single"], I.PROMPT_COMPLETION)


def test_distill_rows_through_hugging_face_datasets(sources, tmp_path):
  import datasets  # pylint: disable=g-import-not-at-top
  out = tmp_path / "hf_distill"
  assert I.export_hf(sources["single"], out, I.DISTILL) == 8
  loaded = datasets.load_from_disk(os.fspath(out))
  assert {"prompt", "completion", "teacher_topk_ids", "teacher_topk_logprobs"} <= set(
      loaded.column_names)
  original = _episodes(sources["single"])
  for row in loaded:
    teacher = original[row["episode_id"]][S.STEPS][0][S.TEACHER]
    assert row["teacher_topk_ids"] == np.asarray(teacher[S.TEACHER_TOPK_IDS]).tolist()
  imported = _episodes(I.import_rows(out, I.DISTILL, data_dir=os.fspath(tmp_path / "d"),
                                     name="distill_imported"))
  assert set(imported) == set(original)
  for episode_id, episode in imported.items():
    before = original[episode_id][S.STEPS][0][S.TEACHER]
    after = episode[S.STEPS][0][S.TEACHER]
    for key in (S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS, S.TEACHER_TOKEN_LOGPROB):
      np.testing.assert_allclose(np.asarray(after[key]), np.asarray(before[key]), rtol=1e-6)


def test_multi_turn_episodes_export_as_conversations(sources, tmp_path):
  rows = I.export_rows(sources["multi"], I.PROMPT_COMPLETION)
  original = _episodes(sources["multi"])
  for row in rows:
    steps = original[row["episode_id"]][S.STEPS]
    turns = [s for s in steps if not s[S.IS_LAST]]
    assert isinstance(row["prompt"], list) and len(row["prompt"]) == 2 * len(turns) - 1
    assert [m["role"] for m in row["prompt"]][1::2] == ["assistant"] * (len(turns) - 1)
    assert row["completion"] == [{"role": "assistant",
                                  "content": turns[-1][S.ACTION][S.ACT_TEXT]}]
  out = tmp_path / "multi.jsonl"
  I.export_jsonl(sources["multi"], out, I.PROMPT_COMPLETION)
  imported = _episodes(I.import_rows(out, I.PROMPT_COMPLETION,
                                     data_dir=os.fspath(tmp_path / "d"), name="multi"))
  assert set(imported) == set(original)
  for episode_id, episode in imported.items():
    before, after = original[episode_id][S.STEPS], episode[S.STEPS]
    assert _tokens(after, S.ACTION, S.ACT_TOKENS) == _tokens(before, S.ACTION, S.ACT_TOKENS)
    assert [s[S.OBSERVATION][S.OBS_ROLE] for s in after[:-1]] == [
        s[S.OBSERVATION][S.OBS_ROLE] for s in before[:-1]]
  two_turns = _publish(tmp_path, "two_turns", TOP_K_ONLY,
                       [T.fake_rollout(TOP_K_ONLY, seed=i, turns=2) for i in range(2)])
  with pytest.raises(I.InteropError, match="multi-turn"):
    I.export_rows(two_turns, I.DISTILL)


def test_preference_pairs_round_trip(sources, tmp_path):
  original = _episodes(sources["preference"])
  rows = I.export_rows(sources["preference"], I.PREFERENCE)
  # One row per (chosen, other candidate) pair.
  expected = sum(len(e[S.CANDIDATE_IDS]) - 1 for e in original.values()
                 if int(e[S.STEPS][0][S.ACTION][S.ACT_CHOICE]) >= 0)
  assert len(rows) == expected
  tokenizer = tokenizers.ByteTokenizer()
  for row in rows:
    assert row["chosen"] == tokenizer.decode(row["chosen_token_ids"])
    assert row["score_chosen"] >= row["score_rejected"]  # the fake judge picks the max
  out = tmp_path / "hf_prefs"
  I.export_hf(sources["preference"], out, I.PREFERENCE)
  path = I.import_rows(out, I.PREFERENCE, data_dir=os.fspath(tmp_path / "d"), name="prefs")
  imported = list(_episodes(path).values())
  assert len(imported) == len(rows)
  pairs = {(tuple(r["chosen_token_ids"]), tuple(r["rejected_token_ids"])) for r in rows}
  for episode in imported:
    obs = episode[S.STEPS][0][S.OBSERVATION]
    lengths = np.asarray(obs[S.OBS_CANDIDATE_LENGTHS])
    chosen, rejected = np.split(np.asarray(obs[S.OBS_CANDIDATE_TOKENS]), lengths[:1])
    assert (tuple(chosen.tolist()), tuple(rejected.tolist())) in pairs
    assert int(episode[S.STEPS][0][S.ACTION][S.ACT_CHOICE]) == 0
  def key(r):
    return (r["prompt_token_ids"], r["chosen_token_ids"], r["rejected_token_ids"],
            r["chosen_id"], r["rejected_id"], r["score_chosen"], r["score_rejected"])

  again = I.export_rows(path, I.PREFERENCE)
  assert sorted(map(key, again)) == sorted(map(key, rows))


def test_rows_made_elsewhere_are_tokenised(tmp_path):
  out = tmp_path / "trl.jsonl"
  out.write_text("\n".join(json.dumps(r) for r in [
      {"prompt": "2+3=", "completion": "5"},
      {"prompt": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "4-1="}],
       "completion": [{"role": "assistant", "content": "3"}]}]) + "\n")
  path = I.import_rows(out, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "d"),
                       name="trl")
  tokenizer = tokenizers.ByteTokenizer()
  texts = set()
  for episode in _episodes(path).values():
    step = episode[S.STEPS][0]
    texts.add((tokenizer.decode(step[S.OBSERVATION][S.OBS_TOKENS]),
               tokenizer.decode(step[S.ACTION][S.ACT_TOKENS])))
    assert int(np.asarray(step[S.ACTION][S.ACT_TOKENS])[-1]) == tokenizer.eos_id
  assert texts == {("2+3=", "5"), ("Be brief.\n4-1=", "3")}


def test_refusals_name_the_problem(sources, tmp_path):
  with pytest.raises(I.InteropError, match="holds rollout episodes.*needs preference"):
    I.export_rows(sources["single"], I.PREFERENCE)
  with pytest.raises(I.InteropError, match="format must be one of"):
    I.export_rows(sources["single"], "dpo")
  no_teacher = _publish(tmp_path, "plain", S.SchemaConfig(),
                        [T.fake_rollout(S.SchemaConfig())])
  with pytest.raises(I.InteropError, match="no teacher top-k"):
    I.export_rows(no_teacher, I.DISTILL)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
  with pytest.raises(I.InteropError, match=r"bad.jsonl:2: not JSON"):
    I.import_rows(bad, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "x"), name="x")
  missing = tmp_path / "missing.jsonl"
  missing.write_text('{"prompt": "a", "chosen": "b"}\n')
  with pytest.raises(I.InteropError, match=r"row 0: missing \['rejected'\]"):
    I.import_rows(missing, I.PREFERENCE, data_dir=os.fspath(tmp_path / "x"), name="x")
  duplicated = tmp_path / "dup.jsonl"
  duplicated.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", '
                        '"completion": "d"}\n{"prompt": "a", "completion": "b"}\n')
  with pytest.raises(I.InteropError, match=r"row 2 is the same episode .* as .*row 0"):
    I.import_rows(duplicated, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "x"),
                  name="x")
  rows = I.export_rows(sources["single"], I.DISTILL)
  rows[3]["teacher_topk_ids"] = rows[3]["teacher_topk_ids"][:-1]  # one token short
  short = tmp_path / "short.jsonl"
  short.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(I.InteropError, match=r"row 3: teacher topk_ids has shape"):
    I.import_rows(short, I.DISTILL, data_dir=os.fspath(tmp_path / "x"), name="x")
  assert not os.path.exists(tmp_path / "x")  # nothing published
  spm = _publish(tmp_path, "spm", S.SchemaConfig(tokenizer="spm:0123456789abcdef"),
                 [T.fake_rollout(S.SchemaConfig(tokenizer="spm:0123456789abcdef"))])
  with pytest.raises(I.InteropError, match="needs its SentencePiece model file"):
    I.export_rows(spm, I.PROMPT_COMPLETION)


def test_cli_export_and_import(sources, tmp_path, capsys):
  out = tmp_path / "cli.jsonl"
  assert cli.main(["export", sources["single"], "--format", "distill",
                   "--jsonl", os.fspath(out)]) == 0
  assert "8 distill rows" in capsys.readouterr().out
  assert cli.main(["import", os.fspath(out), "--format", "distill", "--data_dir",
                   os.fspath(tmp_path / "d"), "--name", "back"]) == 0
  printed = capsys.readouterr().out
  assert os.fspath(tmp_path / "d" / "back" / "1.0.0") in printed
  assert cli.main(["export", sources["preference"], "--format", "distill",
                   "--jsonl", os.fspath(out), "--overwrite"]) == 2
  assert "needs rollout episodes" in capsys.readouterr().err
