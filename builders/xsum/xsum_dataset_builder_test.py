"""Tests for the xsum builder (registered as xsum_jsonl) and its line parser."""

import json

import pytest
import tensorflow_datasets as tfds

from builders.grounded_summarization import grounded_summarization_dataset_builder
from builders.xsum import parsing
from builders.xsum import xsum_dataset_builder
from rlds_lm.schema import content_id

DUMMY = xsum_dataset_builder.Builder.code_path.parent / "dummy_data"
DOCUMENT = "The council approved the plan on Monday.\nWork starts in May."


def _line(document=DOCUMENT, summary="The plan was approved.", source_id="101"):
  return json.dumps({"document": document, "summary": summary, "id": source_id})


class XsumBuilderTest(tfds.testing.DatasetBuilderTestCase):
  """Builds from dummy_data/ used as the manual directory (fake files, real format)."""
  DATASET_CLASS = xsum_dataset_builder.Builder
  SPLITS = {"train": 3, "validation": 2, "test": 2}  # one empty train document skipped
  SKIP_CHECKSUMS = True  # nothing is downloaded

  def test_features_match_grounded_summarization(self):
    grounded = grounded_summarization_dataset_builder.Builder(config="tiny",
                                                              data_dir=self.tmp_dir)
    ours = self.builder.info.features.get_tensor_info()
    self.assertEqual(ours.pop("source_id"), tfds.features.Text().get_tensor_info())
    self.assertEqual(ours, grounded.info.features.get_tensor_info())

  def test_name_does_not_collide_with_the_tfds_xsum(self):
    # Importing all TFDS builders after ours must still register TFDS's own `xsum`.
    self.assertIn("xsum", tfds.list_builders(with_community_datasets=False))
    self.assertTrue(tfds.builder_cls("xsum").__module__.startswith("tensorflow_datasets."))
    self.assertIs(tfds.builder_cls("xsum_jsonl"), xsum_dataset_builder.Builder)


def test_dummy_examples():
  with (DUMMY / "train.jsonl").open("rb") as lines:
    train = list(parsing.read_examples(lines, source="train.jsonl"))
  assert [ex["source_id"] for ex in train] == ["30000001", "30000003", "30000004"]
  first = train[0]
  assert first["document"].startswith("A new footbridge over the River Tay")
  assert "cost \u00a34.2m.\nCouncil leader" in first["document"]
  assert first["reference_summaries"] == [
      "A \u00a34.2m footbridge across the River Tay has opened two years after work began."]
  assert "www.example.org/incidents" in train[1]["document"]
  assert "Farmers\u2019 groups" in train[2]["document"]
  for example in train:
    assert example["facts"] == []
    assert example["prompt_id"] == content_id("xsum", example["document"])


def test_parse_line():
  assert parsing.parse_line("  \n") is None
  assert parsing.parse_line(_line(document="  " + DOCUMENT + "\n", source_id=7)) == {
      "source_id": "7", "document": DOCUMENT, "summary": "The plan was approved."}
  reordered = '{"id":"5","summary":"S.","document":"D \\u00e9t\\u00e9 24\\/7."}'
  assert parsing.parse_line(reordered.encode()) == {
      "source_id": "5", "document": "D \u00e9t\u00e9 24/7.", "summary": "S."}


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ("42", "expected a JSON object, got int"),
    (json.dumps({"summary": "S.", "id": "1"}), "'document' is missing"),
    (json.dumps({"document": "D.", "summary": None, "id": "1"}), "'summary' is missing"),
    (json.dumps({"document": "D.", "summary": "S."}), "'id' is missing"),
    (_line(source_id=["1"]), "'id' is missing"),
    (_line(source_id=True), "'id' is missing"),
    (_line(source_id=" "), "the id is empty"),
])
def test_malformed_line_names_file_and_line(line, message):
  with pytest.raises(ValueError, match=r"malformed line 2 of /data/test\.jsonl: .*") as e:
    list(parsing.read_examples([_line(), line], source="/data/test.jsonl"))
  assert message in str(e.value)


def test_invalid_utf8_is_malformed():
  with pytest.raises(ValueError, match=r"malformed line 1 of t\.jsonl: .*utf-8"):
    list(parsing.read_examples([b'{"document": "\xff"}'], source="t.jsonl"))


def test_skips_empty_and_repeated_documents_and_logs_counts(monkeypatch):
  lines = [_line(document=""), _line(document=" \n "), _line(summary=""), "",
           _line(source_id="1"), _line(source_id="2", summary="Other."),
           _line(document="Another story.", source_id="3")]
  logged = []
  monkeypatch.setattr(parsing.logging, "info", lambda fmt, *args: logged.append((fmt, args)))
  examples = list(parsing.read_examples(lines, source="train.jsonl"))
  assert [ex["source_id"] for ex in examples] == ["1", "3"]
  assert examples[0]["reference_summaries"] == ["The plan was approved."]
  [(fmt, args)] = logged
  assert fmt % args == ("xsum: kept 2 record(s) of train.jsonl; skipped 2 with empty "
                        "document, 1 with empty summary, 1 with repeated document.")


def _build(tmp_path, files):
  manual = tmp_path / "manual"
  manual.mkdir()
  for name, text in files.items():
    (manual / name).write_text(text)
  builder = xsum_dataset_builder.Builder(data_dir=tmp_path / "data")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def test_absent_split_files_are_not_built(tmp_path):
  builder = _build(tmp_path, {"validation.jsonl": _line() + "\n"})
  reloaded = tfds.builder_from_directory(builder.data_dir)
  assert list(reloaded.info.splits) == ["validation"]
  [example] = tfds.as_numpy(reloaded.as_dataset(split="validation"))
  assert example["document"].decode() == DOCUMENT
  assert example["source_id"] == b"101"
  assert list(example["reference_summaries"]) == [b"The plan was approved."]
  assert example["facts"].shape == (0,)
  assert example["prompt_id"].decode() == parsing.prompt_id(DOCUMENT)


def test_no_split_file_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"none of train\.jsonl, validation\.jsonl, "
                                              r"test\.jsonl is in the manual directory .*"
                                              r"it holds: valid\.jsonl"):
    _build(tmp_path, {"valid.jsonl": _line() + "\n"})


def test_build_reports_malformed_line(tmp_path):
  with pytest.raises(ValueError, match=r"malformed line 3 of .*/manual/train\.jsonl: "
                                       r"invalid JSON"):
    _build(tmp_path, {"train.jsonl": _line() + "\n\n{oops\n"})


if __name__ == "__main__":
  tfds.testing.test_main()
