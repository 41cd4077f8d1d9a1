"""Export to TRL-style JSONL and Hugging Face datasets, import back as RLDS episodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  with pytest.raises(I.InteropError, match=r"missing.jsonl:1: missing \['rejected'\]"):
    I.import_rows(missing, I.PREFERENCE, data_dir=os.fspath(tmp_path / "x"), name="x")
  duplicated = tmp_path / "dup.jsonl"
  duplicated.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", '
                        '"completion": "d"}\n{"prompt": "a", "completion": "b"}\n')
  with pytest.raises(I.InteropError, match=r"dup.jsonl:3: the same episode .* as .*dup.jsonl:1"):
    I.import_rows(duplicated, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "x"),
                  name="x")
  rows = I.export_rows(sources["single"], I.DISTILL)
  rows[3]["teacher_topk_ids"] = rows[3]["teacher_topk_ids"][:-1]  # one token short
  short = tmp_path / "short.jsonl"
  short.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(I.InteropError,
                     match=r"short.jsonl:4: column 'teacher_topk_ids': expected shape"):
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


# --------------------------------------------------------------------------------------
# TRL's row formats: import -> publish -> export gives the input rows back.
# --------------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "Be brief."}


def _user(text):
  return {"role": "user", "content": text}


def _assistant(text):
  return {"role": "assistant", "content": text}


TRL_ROWS = {
    "conversational prompt-completion": (I.PROMPT_COMPLETION, [
        {"prompt": [SYSTEM, _user("4-1=")], "completion": [_assistant("3")]},
        {"prompt": [_user("2+2=")], "completion": [_assistant("4")]},
        {"prompt": [SYSTEM, _user("1+1="), _assistant("2"), _user("and 2+2?")],
         "completion": [_assistant("4")]},
        {"prompt": [_user("a"), _assistant("b"), {"role": "tool", "content": "ok"},
                    _user("go on")], "completion": [_assistant("c\nd")]},
    ]),
    "standard prompt-completion": (I.PROMPT_COMPLETION, [
        {"prompt": "2+3=", "completion": "5"}, {"prompt": "1\n2", "completion": "3 "}]),
    "messages (language modelling)": (I.MESSAGES, [
        {"messages": [SYSTEM, _user("4-1="), _assistant("3")]},
        {"messages": [_user("hi"), _assistant("hello"), _user("2+2?"), _assistant("4")]},
    ]),
    "standard preference": (I.PREFERENCE, [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]),
    "implicit-prompt preference": (I.PREFERENCE, [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "2+2=4", "rejected": "2+2=5"}]),
    "conversational preference": (I.PREFERENCE, [
        {"prompt": [SYSTEM, _user("What color is the sky?")],
         "chosen": [_assistant("It is blue.")], "rejected": [_assistant("It is green.")]},
        {"prompt": [_user("2+2?")], "chosen": [_assistant("4")],
         "rejected": [_assistant("5")]}]),
    "conversational implicit-prompt preference": (I.PREFERENCE, [
        {"chosen": [_user("What color is the sky?"), _assistant("It is blue.")],
         "rejected": [_user("What color is the sky?"), _assistant("It is green.")]}]),
    "unpaired preference (KTO)": (I.UNPAIRED_PREFERENCE, [
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {"prompt": "The sky is", "completion": " green.", "label": False}]),
    "conversational unpaired preference": (I.UNPAIRED_PREFERENCE, [
        {"prompt": [_user("2+2?")], "completion": [_assistant("4")], "label": True},
        {"prompt": [_user("2+2?")], "completion": [_assistant("5")], "label": False}]),
}


def _canonical(rows, columns):
  return sorted(json.dumps({k: r[k] for k in columns}, sort_keys=True) for r in rows)


@pytest.mark.parametrize("case", sorted(TRL_ROWS))
def test_trl_formats_round_trip(case, tmp_path):
  fmt, rows = TRL_ROWS[case]
  source = tmp_path / "rows.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = I.import_rows(source, fmt, data_dir=os.fspath(tmp_path / "d"), name="trl")
  exported = I.export_rows(path, fmt)
  columns = sorted(rows[0])
  assert _canonical(exported, columns) == _canonical(rows, columns)
  # Our columns travel too: importing the export and exporting again is stable.
  again = tmp_path / "again.jsonl"
  I.export_jsonl(path, again, fmt)
  path2 = I.import_rows(again, fmt, data_dir=os.fspath(tmp_path / "d2"), name="trl")
  assert _canonical(I.export_rows(path2, fmt), columns) == _canonical(rows, columns)
  assert set(_episodes(path2)) == set(_episodes(path))  # the same episodes (content ids)


def test_conversational_roles_are_stored_apart_from_the_text(tmp_path):
  source = tmp_path / "chat.jsonl"
  source.write_text(json.dumps({"prompt": [SYSTEM, _user("4-1=")],
                                "completion": [_assistant("3")]}) + "\n")
  path = I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "d"),
                       name="chat")
  (episode,) = _episodes(path).values()
  obs = episode[S.STEPS][0][S.OBSERVATION]
  assert obs[S.OBS_ROLE] == "system" and obs[S.OBS_TEXT] == "Be brief.\n4-1="
  lineage = S.lineage_dict(episode)
  assert lineage["conversational"] and lineage["turn_messages"] == [[["system", 9],
                                                                     ["user", 4]]]
  (row,) = I.export_rows(path, I.MESSAGES)
  assert row["messages"] == [SYSTEM, _user("4-1="), _assistant("3")]


def test_unpaired_labels_are_a_named_reward(tmp_path):
  fmt, rows = TRL_ROWS["unpaired preference (KTO)"]
  source = tmp_path / "kto.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = I.import_rows(source, fmt, data_dir=os.fspath(tmp_path / "d"), name="kto")
  assert R.schema_config(R.open_builder(path)).reward_names == ("label",)
  by_completion = {r["completion"]: r for r in I.export_rows(path, I.PROMPT_COMPLETION)}
  assert by_completion[" blue."]["rewards"] == {"label": 1.0}
  assert by_completion[" green."]["reward"] == 0.0


def test_messages_rows_through_hugging_face_datasets(tmp_path):
  import datasets  # pylint: disable=g-import-not-at-top
  _, rows = TRL_ROWS["messages (language modelling)"]
  source = tmp_path / "hf_in"
  datasets.Dataset.from_list(rows).save_to_disk(os.fspath(source))
  path = I.import_rows(source, I.MESSAGES, data_dir=os.fspath(tmp_path / "d"), name="m")
  out = tmp_path / "hf_out"
  I.export_hf(path, out, I.MESSAGES)
  back = list(datasets.load_from_disk(os.fspath(out)))
  assert _canonical(back, ["messages"]) == _canonical(rows, ["messages"])


# --------------------------------------------------------------------------------------
# Hostile rows: every refusal names the file and line, and no traceback reaches the user.
# --------------------------------------------------------------------------------------

GOOD = json.dumps({"prompt": "2+3=", "completion": "5"})
GOOD_IDS = json.dumps({"prompt": "a", "completion": "b", "prompt_token_ids": [1, 100],
                       "completion_token_ids": [101, 2]})


def _row(**columns):
  return json.dumps({"prompt": "a", "completion": "b", **columns})


HOSTILE = {  # case: (format, the hostile line, what the message says[, the first line])
    "a list": (I.PROMPT_COMPLETION, "[1, 2]", "expected a JSON object"),
    "a string": (I.PROMPT_COMPLETION, '"row"', "expected a JSON object"),
    "null": (I.PROMPT_COMPLETION, "null", "expected a JSON object"),
    "a number": (I.PREFERENCE, "3.5", "expected a JSON object"),
    "not JSON": (I.PROMPT_COMPLETION, "{not json", "not JSON"),
    "nested past the parser": (I.PROMPT_COMPLETION, "[" * 100_000 + "]" * 100_000,
                               "nested too deeply"),
    "a nested prompt": (I.PROMPT_COMPLETION, json.dumps(
        {"prompt": [[[[[[["x"]]]]]]], "completion": "b"}), "prompt"),
    "nested policy": (I.PROMPT_COMPLETION, _row(policy={"name": {"a": {"b": [1]}}}),
                      "policy.name"),
    "a 5000-digit integer": (I.PROMPT_COMPLETION, '{"prompt": "a", "completion": "b", '
                             '"sample_index": ' + "9" * 5000 + "}", "more than 4300 digits"),
    "sample_index beyond int32": (I.PROMPT_COMPLETION, _row(sample_index=2**40),
                                  "sample_index"),
    "seed beyond int64": (I.PROMPT_COMPLETION, _row(sampler={"seed": 2**70}), "sampler.seed"),
    "a token id beyond int32": (I.PROMPT_COMPLETION, json.dumps(
        {"prompt": "a", "completion": "b", "prompt_token_ids": [1],
         "completion_token_ids": [2**40]}), "completion_token_ids", GOOD_IDS),
    "a negative token id": (I.PROMPT_COMPLETION, json.dumps(
        {"prompt": "a", "completion": "b", "prompt_token_ids": [-1],
         "completion_token_ids": [5]}), "prompt_token_ids", GOOD_IDS),
    "token ids as floats": (I.PROMPT_COMPLETION, json.dumps(
        {"prompt": "a", "completion": "b", "prompt_token_ids": [1.5],
         "completion_token_ids": [5]}), "prompt_token_ids", GOOD_IDS),
    "another tokenizer": (I.PROMPT_COMPLETION, _row(
        prompt_token_ids=[1], completion_token_ids=[5], tokenizer="../../x"), "tokenizer",
        GOOD_IDS),
    "token ids in some rows only": (I.PROMPT_COMPLETION, GOOD_IDS, "in every row or in none"),
    "rewards as a list": (I.PROMPT_COMPLETION, _row(rewards=[1.0, 2.0]), "rewards"),
    "a reward as text": (I.PROMPT_COMPLETION, _row(reward="high"), "reward"),
    "a NaN reward": (I.PROMPT_COMPLETION, '{"prompt": "a", "completion": "b", '
                     '"reward": NaN}', "finite"),
    "other reward names": (I.PROMPT_COMPLETION, _row(rewards={"x": 1.0}), "rewards"),
    "a policy as a string": (I.PROMPT_COMPLETION, _row(policy="gpt"), "policy"),
    "a sampler as a list": (I.PROMPT_COMPLETION, _row(sampler=[0.7]), "sampler"),
    "a temperature as text": (I.PROMPT_COMPLETION, _row(sampler={"temperature": "hot"}),
                              "temperature"),
    "a prompt id as a number": (I.PROMPT_COMPLETION, _row(prompt_id=7), "prompt_id"),
    "roles that do not exist": (I.PROMPT_COMPLETION, _row(roles=["wizard"]), "roles"),
    "a prompt as a number": (I.PROMPT_COMPLETION, json.dumps({"prompt": 3, "completion": "b"}),
                             "prompt"),
    "a missing completion": (I.PROMPT_COMPLETION, json.dumps({"prompt": "a"}), "missing"),
    "a string prompt, a list completion": (I.PROMPT_COMPLETION, json.dumps(
        {"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}),
        "both be strings or both"),
    "a message without content": (I.PROMPT_COMPLETION, json.dumps(
        {"prompt": [{"role": "user"}], "completion": [{"role": "assistant",
                                                       "content": "b"}]}), "content"),
    "an unknown role": (I.MESSAGES, json.dumps({"messages": [
        {"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]}),
        "role must be one of"),
    "no model turn at the end": (I.MESSAGES, json.dumps({"messages": [
        {"role": "user", "content": "a"}]}), "must end with an assistant"),
    "messages as a string": (I.MESSAGES, json.dumps({"messages": "hi"}), "messages"),
    "a lone surrogate": (I.PROMPT_COMPLETION, '{"prompt": "a", "completion": "\\ud800"}',
                         "not storable text"),
    "a label as text": (I.UNPAIRED_PREFERENCE, _row(label="yes"), "label"),
    "a missing label": (I.UNPAIRED_PREFERENCE, _row(), "missing"),
    "a two-message candidate": (I.PREFERENCE, json.dumps(
        {"prompt": [{"role": "user", "content": "a"}],
         "chosen": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
         "rejected": [{"role": "assistant", "content": "d"}]}), "one assistant message"),
    "mixed preference columns": (I.PREFERENCE, json.dumps(
        {"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}],
         "rejected": "c"}), "all be strings or all"),
    "a score as a list": (I.PREFERENCE, json.dumps(
        {"prompt": "a", "chosen": "b", "rejected": "c", "score_chosen": [1]}),
        "score_chosen"),
    "a judge as a string": (I.PREFERENCE, json.dumps(
        {"prompt": "a", "chosen": "b", "rejected": "c", "judge": "me"}), "judge"),
    "ragged teacher rows": (I.DISTILL, json.dumps(
        {"prompt": "a", "completion": "b", "prompt_token_ids": [1, 100],
         "completion_token_ids": [101, 2], "teacher_topk_ids": [[5, 6], [7]],
         "teacher_topk_logprobs": [[-1.0, -2.0], [-1.0, -2.0]],
         "teacher_token_logprobs": [-1.0, -1.0]}), "teacher_topk_ids"),
}
# The first line of each file: a good row of the format.
FIRST = {
    I.PROMPT_COMPLETION: GOOD, I.MESSAGES: json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
    I.PREFERENCE: json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}),
    I.UNPAIRED_PREFERENCE: _row(label=True),
    I.DISTILL: json.dumps({"prompt": "a", "completion": "b", "prompt_token_ids": [1, 100],
                           "completion_token_ids": [101, 2],
                           "teacher_topk_ids": [[5, 6], [7, 8]],
                           "teacher_topk_logprobs": [[-1.0, -2.0], [-1.0, -2.0]],
                           "teacher_token_logprobs": [-1.0, -1.0]}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rows_are_refused_naming_file_and_line(case, tmp_path, capsys):
  fmt, line, says, *first = HOSTILE[case]
  source = tmp_path / "hostile.jsonl"
  # A good row, a blank line (skipped, still counted), then the hostile one on line 3.
  source.write_text((first[0] if first else FIRST[fmt]) + "\n\n" + line + "\n")
  data_dir = tmp_path / "d"
  code = cli.main(["import", os.fspath(source), "--format", fmt, "--data_dir",
                   os.fspath(data_dir), "--name", "x"])
  err = capsys.readouterr().err
  assert code != 0
  assert f"{source}:3: " in err and says in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert not data_dir.exists()  # nothing published
  with pytest.raises(I.RowError, match=f"hostile.jsonl:3: ") as info:
    I.import_rows(source, fmt, data_dir=os.fspath(data_dir), name="x")
  assert info.value.where == f"{source}:3"


def test_hostile_row_through_the_real_command_line(tmp_path):
  source = tmp_path / "bad.jsonl"
  source.write_text(GOOD + "\n" + _row(rewards=[1, 2]) + "\n")
  done = subprocess.run([sys.executable, "-m", "rlds_lm.cli", "import", os.fspath(source),
                         "--format", "prompt_completion", "--data_dir",
                         os.fspath(tmp_path / "d"), "--name", "x"],
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=REPO))
  assert done.returncode != 0
  assert "Traceback" not in done.stderr, done.stderr
  assert f"{source}:2: column 'rewards': expected an object" in done.stderr


def test_rows_tokenised_here_do_not_claim_their_tokenizer(tmp_path):
  source = tmp_path / "spm_rows.jsonl"
  source.write_text(json.dumps({"prompt": "a", "completion": "b",
                                "tokenizer": "spm:0123456789abcdef",
                                "vocab_size": 32000}) + "\n")
  path = I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "d"),
                       name="t")
  config = R.schema_config(R.open_builder(path))
  assert config.tokenizer == "byte" and config.vocab_size == tokenizers.ByteTokenizer.vocab_size
  # With token ids, the rows' tokenizer is the dataset's (one for all rows).
  ids = dict(prompt_token_ids=[1, 100], completion_token_ids=[101, 2],
             tokenizer="spm:0123456789abcdef", vocab_size=32000)
  source.write_text(_row(**ids) + "\n")
  path = I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "e"),
                       name="t")
  assert R.schema_config(R.open_builder(path)).tokenizer == "spm:0123456789abcdef"
  source.write_text(_row(**{**ids, "tokenizer": "spm:../x"}) + "\n")
  with pytest.raises(I.RowError, match=r"spm_rows.jsonl:1: column 'tokenizer': expected"):
    I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "f"),
                  name="t")
  source.write_text(_row(**ids) + "\n" + _row(**{**ids, "tokenizer": "byte"}) + "\n")
  with pytest.raises(I.RowError, match=r"spm_rows.jsonl:2: column 'tokenizer'"):
    I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "f"),
                  name="t")


def test_rows_of_a_datasets_directory_are_named_by_index(tmp_path):
  import datasets  # pylint: disable=g-import-not-at-top
  source = tmp_path / "hf_rows"
  datasets.Dataset.from_list([
      {"prompt": "a", "completion": "b", "prompt_token_ids": [1, 100],
       "completion_token_ids": [101, 2]},
      {"prompt": "c", "completion": "d", "prompt_token_ids": [1, 100],
       "completion_token_ids": [101, 5000]}]).save_to_disk(os.fspath(source))
  with pytest.raises(I.RowError, match=r"hf_rows row 1: column 'completion_token_ids': "
                     r"expected token ids in \[0, 259\), found 5000"):
    I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "d"),
                  name="x")


def test_a_byte_order_mark_and_unreadable_bytes(tmp_path):
  source = tmp_path / "bom.jsonl"
  source.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n" + b'{"prompt": "\xff"}\n')
  with pytest.raises(I.RowError, match=r"bom.jsonl:2: not UTF-8"):
    I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "d"),
                  name="x")
  source.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
  assert I.import_rows(source, I.PROMPT_COMPLETION, data_dir=os.fspath(tmp_path / "d"),
                       name="x")
