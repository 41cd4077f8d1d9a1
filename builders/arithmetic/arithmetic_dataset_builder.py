"""arithmetic: synthetic multi-step arithmetic word problems with exact answers.

A prompt source for distillation and RL from a correctness reward: each example has a
question, its exact integer answer and a worked solution. No downloads; examples are
generated deterministically from a per-split seed derived from the builder, config and
split names (see :mod:`rlds_lm.tasks.arithmetic`), and keyed by their content id.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from rlds_lm.tasks import arithmetic
from rlds_lm.tasks.arithmetic import check  # noqa: F401  (re-exported: the answer checker)


@dataclasses.dataclass
class ArithmeticConfig(tfds.core.BuilderConfig):
  """Problem difficulty and split sizes."""
  difficulty: arithmetic.Difficulty = dataclasses.field(default_factory=arithmetic.Difficulty)
  num_train: int = 0
  num_test: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic multi-step arithmetic word problems."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ArithmeticConfig(
          name="tiny", description="2-3 operations on operands up to 9; 8 train, 4 test.",
          difficulty=arithmetic.Difficulty(min_ops=2, max_ops=3, max_operand=9, max_factor=3),
          num_train=8, num_test=4),
      ArithmeticConfig(
          name="small", description="2-3 operations on operands up to 20; 2,000 / 200.",
          difficulty=arithmetic.Difficulty(min_ops=2, max_ops=3, max_operand=20, max_factor=5),
          num_train=2_000, num_test=200),
      ArithmeticConfig(
          name="default", description="2-4 operations on operands up to 50; 20,000 / 1,000.",
          difficulty=arithmetic.Difficulty(min_ops=2, max_ops=4, max_operand=50, max_factor=9),
          num_train=20_000, num_test=1_000),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "prompt_id": tfds.features.Text(doc="content_id of the question"),
            "question": tfds.features.Text(doc="the word problem"),
            "answer": tfds.features.Text(doc="exact answer, decimal text of an integer"),
            "steps": tfds.features.Text(doc="worked solution, one 'a op b=c' per line"),
            "num_steps": tfds.features.Scalar(dtype=np.int32, doc="number of operations"),
        }),
        supervised_keys=("question", "answer"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # synthetic: nothing to download
    config = self.builder_config
    # Test first, then train without any test question, so the splits never overlap.
    test = list(arithmetic.generate(self._seed("test"), config.num_test, config.difficulty))
    exclude = frozenset(p.question for p in test)
    return {
        "train": self._generate_examples(split="train", exclude=exclude),
        "test": self._generate_examples(split="test", exclude=frozenset()),
    }

  def _seed(self, split: str) -> str:
    config = self.builder_config
    return arithmetic.split_seed(self.name, str(self.version), config.name,
                               dataclasses.asdict(config.difficulty), split)

  def _generate_examples(self, split: str, exclude: frozenset[str]):
    config = self.builder_config
    count = config.num_train if split == "train" else config.num_test
    for problem in arithmetic.generate(self._seed(split), count, config.difficulty, exclude):
      yield problem.prompt_id, problem.as_example()
