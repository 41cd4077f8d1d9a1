"""xsum: XSum BBC articles with one-sentence summaries, read from local JSON-lines files.

A prompt source for summarization RL, with the features of
``builders/grounded_summarization`` (``prompt_id``, ``document``, ``facts``,
``reference_summaries``) plus ``source_id``, the XSum id. ``facts`` is always empty:
XSum has no gold fact triples. Nothing is downloaded: the user places ``train.jsonl``,
``validation.jsonl`` and/or ``test.jsonl`` (the Hugging Face ``EdinburghNLP/xsum`` export)
in the manual directory; a split whose file is absent is not produced. Examples keep file
order and are keyed by ``prompt_id``; empty documents and repeated documents are skipped.

The registered name is ``xsum_jsonl``, not ``xsum``: TensorFlow Datasets ships its own
``xsum`` builder, and registering a second one under that name makes one of the two
imports fail (which one depends on import order).
"""

from __future__ import annotations

import textwrap

import tensorflow_datasets as tfds

from . import parsing

SPLITS = ("train", "validation", "test")

_CITATION = """\
@inproceedings{narayan2018xsum,
  title={Don't Give Me the Details, Just the Summary! Topic-Aware Convolutional Neural
         Networks for Extreme Summarization},
  author={Narayan, Shashi and Cohen, Shay B. and Lapata, Mirella},
  booktitle={Proceedings of the 2018 Conference on Empirical Methods in Natural Language
             Processing},
  year={2018}
}
"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """XSum documents with their reference summary."""

  name = "xsum_jsonl"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Place XSum as JSON-lines files `train.jsonl`, `validation.jsonl` and/or `test.jsonl`
  (one {"id": ..., "document": ..., "summary": ...} object per line) directly in the
  manual directory, then pass it with `--manual_dir` (default:
  <data_dir>/downloads/manual/). With the Hugging Face `datasets` library:
    ds = datasets.load_dataset("EdinburghNLP/xsum")
    for split in ds: ds[split].to_json(f"{manual_dir}/{split}.jsonl")
  A split whose file is absent is not built; at least one file is required.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "prompt_id": tfds.features.Text(doc="content_id('xsum', document)"),
            "document": tfds.features.Text(doc="the BBC article"),
            "facts": tfds.features.Sequence(
                tfds.features.Text(), doc="always empty: XSum has no gold fact triples"),
            "reference_summaries": tfds.features.Sequence(
                tfds.features.Text(), doc="the one XSum summary sentence"),
            "source_id": tfds.features.Text(doc="the XSum id (BBC article id)"),
        }),
        disable_shuffling=True,
        homepage="https://github.com/EdinburghNLP/XSum",
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    paths = {split: manual_dir / f"{split}.jsonl" for split in SPLITS}
    paths = {split: path for split, path in paths.items() if path.exists()}
    if not paths:
      present = sorted(path.name for path in manual_dir.iterdir())
      raise FileNotFoundError(
          f"xsum: none of {', '.join(f'{s}.jsonl' for s in SPLITS)} is in the manual "
          f"directory {manual_dir} (it holds: {', '.join(present) or 'nothing'}).\n"
          f"{textwrap.dedent(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}")
    return {split: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path):
    with path.open("rb") as lines:
      for example in parsing.read_examples(lines, source=str(path)):
        yield example["prompt_id"], example
