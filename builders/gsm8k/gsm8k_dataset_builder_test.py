"""Tests for the gsm8k builder and its line parser."""

import json
import re

import pytest
import tensorflow_datasets as tfds

from builders.arithmetic import arithmetic_dataset_builder
from builders.gsm8k import gsm8k_dataset_builder
from builders.gsm8k import parsing
from rlds_lm.tasks import arithmetic as problems
from rlds_lm.schema import content_id

DUMMY = gsm8k_dataset_builder.Builder.code_path.parent / "dummy_data"
QUESTION = "Ann has 48 clips and sells half. How many clips does she sell?"


def _line(question=QUESTION, answer="She sells 48/2=<<48/2=24>>24 clips.\n#### 24"):
  return json.dumps({"question": question, "answer": answer})


class Gsm8kBuilderTest(tfds.testing.DatasetBuilderTestCase):
  """Builds from dummy_data/ used as the manual directory (fake files, real format)."""
  DATASET_CLASS = gsm8k_dataset_builder.Builder
  SPLITS = {"train": 4, "test": 2}  # train.jsonl repeats one question: 5 lines, 4 kept
  SKIP_CHECKSUMS = True  # nothing is downloaded

  def test_features_match_arithmetic(self):
    arithmetic = arithmetic_dataset_builder.Builder(config="tiny", data_dir=self.tmp_dir)
    self.assertEqual(self.builder.info.features.get_tensor_info(),
                     arithmetic.info.features.get_tensor_info())
    self.assertEqual(self.builder.info.supervised_keys, arithmetic.info.supervised_keys)

  def test_name_is_not_taken_by_a_tfds_builder(self):
    tfds.list_builders(with_community_datasets=False)  # imports all TFDS builders
    self.assertIs(tfds.builder_cls("gsm8k"), gsm8k_dataset_builder.Builder)


def _dummy_examples(split):
  with (DUMMY / f"{split}.jsonl").open("rb") as lines:
    return list(parsing.read_examples(lines, source=f"{split}.jsonl"))


def _evaluate(expression):
  assert re.fullmatch(r"[\d+\-*/(). ]+", expression), expression
  return eval(expression, {"__builtins__": {}})  # digits and operators only


def test_dummy_data_is_arithmetically_consistent():
  for split in gsm8k_dataset_builder.SPLITS:
    for line in (DUMMY / f"{split}.jsonl").read_text().splitlines():
      answer = json.loads(line)["answer"]
      results = []
      for expression, result in re.findall(r"<<([^=>]+)=([^>]+)>>", answer):
        assert _evaluate(expression) == float(result), (expression, result)
        results.append(result)
      assert parsing.parse_answer(answer)[0] == results[-1]


def test_dummy_examples():
  train = _dummy_examples("train")
  assert [ex["answer"] for ex in train] == ["12", "110", "1200", "9"]
  assert [ex["num_steps"] for ex in train] == [2, 2, 1, 4]
  assert train[0]["steps"] == ("The baker makes 24+18=42 muffins.\n"
                               "After selling 30, she has 42-30=12 muffins left.")
  assert train[2]["steps"] == "The school buys 25*48=1,200 pencils."
  for example in train + _dummy_examples("test"):
    assert example["prompt_id"] == content_id("gsm8k", example["question"])
    assert len(example["steps"].split("\n")) == example["num_steps"]
    assert "<<" not in example["steps"] and "####" not in example["steps"]
    assert problems.check(example["answer"], example["steps"])  # last number is the answer


def test_parse_answer():
  answer = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n\n"
            "  Natalia sold 48+24 = <<48+24=72>>72 clips altogether.  \n#### 72")
  assert parsing.parse_answer(answer) == (
      "72", "Natalia sold 48/2 = 24 clips in May.\n"
      "Natalia sold 48+24 = 72 clips altogether.", 2)
  assert parsing.parse_answer("It costs 1,000+234=<<1000+234=1234>>1,234.\n#### 1,234")[0] \
      == "1234"
  assert parsing.parse_answer("The change is 3-5=<<3-5=-2>>-2.\n#### -2")[0] == "-2"
  assert parsing.parse_answer("Half is 5/2=<<5/2=2.5>>2.5.\n####2.5\n")[0] == "2.5"
  assert parsing.parse_answer("#### 7") == ("7", "", 0)


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    (json.dumps({"question": QUESTION}), "'answer' is missing"),
    (json.dumps({"question": 3, "answer": "#### 3"}), "'question' is missing or not a str"),
    (_line(question="  "), "the question is empty"),
    (_line(answer="She sells 48/2=<<48/2=24>>24 clips."), "found none"),
    (_line(answer="#### 24\n#### 24"), "found 2"),
    (_line(answer="She sells 24 clips.\n#### twenty-four"), "is not a number: 'twenty-four'"),
    (_line(answer="She sells 24 clips.\n#### $24"), "is not a number: '$24'"),
    (_line(answer="She sells 24 clips.\n####"), "is not a number: ''"),
])
def test_malformed_line_names_file_and_line(line, message):
  lines = [_line(question="Ben has 2 cats and gets 1 more. How many cats?",
                 answer="2+1=<<2+1=3>>3\n#### 3"), "", line]
  with pytest.raises(ValueError, match=r"malformed line 3 of /data/train\.jsonl: .*") as e:
    list(parsing.read_examples(lines, source="/data/train.jsonl"))
  assert message in str(e.value)


def test_invalid_utf8_is_malformed():
  with pytest.raises(ValueError, match=r"malformed line 1 of t\.jsonl: .*utf-8"):
    list(parsing.read_examples([b'{"question": "\xff"}\n'], source="t.jsonl"))


def test_repeated_questions_keep_the_first_occurrence():
  lines = [_line(), _line(question="Other?", answer="1+1=<<1+1=2>>2\n#### 2"),
           _line(answer="Different solution 24.\n#### 25"), "\n", _line(" " + QUESTION)]
  examples = list(parsing.read_examples(lines, source="train.jsonl"))
  assert [ex["question"] for ex in examples] == [QUESTION, "Other?"]
  assert examples[0]["answer"] == "24"
  assert examples == list(parsing.read_examples(lines, source="train.jsonl"))


def _build(tmp_path, files):
  manual = tmp_path / "manual"
  manual.mkdir()
  for name, text in files.items():
    (manual / name).write_text(text)
  builder = gsm8k_dataset_builder.Builder(data_dir=tmp_path / "data")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def test_build_reports_malformed_line(tmp_path):
  good = _line() + "\n"
  with pytest.raises(ValueError, match=r"malformed line 2 of .*/manual/test\.jsonl: "
                                       r"expected exactly one '####'"):
    _build(tmp_path, {"train.jsonl": good, "test.jsonl": good + '{"question": "Q?", '
                      '"answer": "no marker"}\n'})


def test_build_requires_both_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"test\.jsonl not found in the manual "
                                              r"directory .*it holds: train\.jsonl"):
    _build(tmp_path, {"train.jsonl": _line() + "\n"})


def test_build_reads_back_from_directory(tmp_path):
  builder = _build(tmp_path, {
      "train.jsonl": _line() + "\n" + _line() + "\n",
      "test.jsonl": _line(question="Other?", answer="1+1=<<1+1=2>>2\n#### 2") + "\n"})
  reloaded = tfds.builder_from_directory(builder.data_dir)
  [train] = tfds.as_numpy(reloaded.as_dataset(split="train"))
  assert train["question"].decode() == QUESTION
  assert train["answer"] == b"24" and train["steps"] == b"She sells 48/2=24 clips."
  assert train["num_steps"] == 1
  assert train["prompt_id"].decode() == parsing.prompt_id(QUESTION)
  assert reloaded.info.splits["test"].num_examples == 1


if __name__ == "__main__":
  tfds.testing.test_main()
