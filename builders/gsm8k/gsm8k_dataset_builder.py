"""gsm8k: GSM8K grade-school math word problems, read from the official JSON-lines files.

A prompt source for distillation and RL from a correctness reward, with exactly the
features of ``builders/arithmetic`` (``prompt_id``, ``question``, ``answer``, ``steps``,
``num_steps``), so downstream code treats both alike; ``rlds_lm.tasks.arithmetic.check``
grades completions against ``answer``. Nothing is downloaded: the user places
``train.jsonl`` and ``test.jsonl`` in the manual directory (see
``MANUAL_DOWNLOAD_INSTRUCTIONS``). Examples keep file order and are keyed by
``prompt_id``; a question repeated within a split is kept once (its first occurrence).
"""

from __future__ import annotations

import textwrap

import numpy as np
import tensorflow_datasets as tfds

from . import parsing

SPLITS = ("train", "test")

_CITATION = """\
@article{cobbe2021gsm8k,
  title={Training Verifiers to Solve Math Word Problems},
  author={Cobbe, Karl and Kosaraju, Vineet and Bavarian, Mohammad and Chen, Mark and
          Jun, Heewoo and Kaiser, Lukasz and Plappert, Matthias and Tworek, Jerry and
          Hilton, Jacob and Nakano, Reiichiro and Hesse, Christopher and Schulman, John},
  journal={arXiv preprint arXiv:2110.14168},
  year={2021}
}
"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """GSM8K word problems with final answers and worked solutions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Place the official GSM8K files `train.jsonl` and `test.jsonl` (from
  https://github.com/openai/grade-school-math, folder grade_school_math/data/) directly
  in the manual directory, then pass it with `--manual_dir` (default:
  <data_dir>/downloads/manual/). Both files are required; other files there are ignored.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "prompt_id": tfds.features.Text(doc="content_id('gsm8k', question)"),
            "question": tfds.features.Text(doc="the word problem"),
            "answer": tfds.features.Text(
                doc="final answer after '####', decimal text, thousands commas removed"),
            "steps": tfds.features.Text(
                doc="worked solution lines, calculator annotations <<...>> removed"),
            "num_steps": tfds.features.Scalar(
                dtype=np.int32, doc="number of non-empty solution lines (lines of steps)"),
        }),
        supervised_keys=("question", "answer"),
        disable_shuffling=True,
        homepage="https://github.com/openai/grade-school-math",
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    paths = {split: manual_dir / f"{split}.jsonl" for split in SPLITS}
    missing = sorted(path.name for path in paths.values() if not path.exists())
    if missing:
      present = sorted(path.name for path in manual_dir.iterdir())
      raise FileNotFoundError(
          f"gsm8k: {', '.join(missing)} not found in the manual directory {manual_dir} "
          f"(it holds: {', '.join(present) or 'nothing'}).\n"
          f"{textwrap.dedent(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}")
    return {split: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path):
    with path.open("rb") as lines:
      for example in parsing.read_examples(lines, source=str(path)):
        yield example["prompt_id"], example
