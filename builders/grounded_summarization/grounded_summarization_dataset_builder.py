"""grounded_summarization: documents from a synthetic world, their facts and summaries.

A prompt source for summarization RL with entailment rewards: every document is built
from a set of true facts (triples) plus distractor sentences, and comes with the facts
and 1-3 reference summaries that assert only supported facts (or, with
``unfaithful_references`` > 0, that fraction of them states one fact the document does
not support, the premise of RLEF).
``rlds_lm.tasks.summarization.entailment`` scores any summary exactly against the facts
(the world and its parser live in :mod:`rlds_lm.tasks.summarization`). No downloads;
examples are generated deterministically from a per-split seed derived from names, and
keyed by content.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from rlds_lm.schema import content_id
from rlds_lm.tasks import summarization as world


@dataclasses.dataclass
class GroundedSummarizationConfig(tfds.core.BuilderConfig):
  """Document size and split sizes."""
  num_people: tuple[int, int] = (2, 3)  # inclusive range per document
  num_distractors: tuple[int, int] = (1, 3)
  # Probability that a reference summary states one unsupported fact (0: all faithful).
  unfaithful_references: float = 0.0
  num_train: int = 0
  num_test: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic documents with their true facts and grounded reference summaries."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      GroundedSummarizationConfig(
          name="tiny", description="2 people, 1-2 distractors per document; 6 train, 3 test.",
          num_people=(2, 2), num_distractors=(1, 2), num_train=6, num_test=3),
      GroundedSummarizationConfig(
          name="small", description="2-3 people, 1-3 distractors; 2,000 train, 200 test.",
          num_people=(2, 3), num_distractors=(1, 3), num_train=2_000, num_test=200),
      GroundedSummarizationConfig(
          name="default", description="2-4 people, 2-5 distractors; 20,000 / 1,000.",
          num_people=(2, 4), num_distractors=(2, 5), num_train=20_000, num_test=1_000),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "prompt_id": tfds.features.Text(doc="content_id of the document"),
            "document": tfds.features.Text(doc="fact and distractor sentences"),
            "facts": tfds.features.Sequence(
                tfds.features.Text(), doc="true facts, one 'subject|relation|object' each"),
            "reference_summaries": tfds.features.Sequence(
                tfds.features.Text(),
                doc="1-3 summaries (true facts, bar unfaithful_references)"),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # synthetic: nothing to download
    test_ids = frozenset(ex["prompt_id"] for ex in self._examples("test", frozenset()))
    return {
        # Train skips any document that is also in test, so the splits never overlap.
        "train": self._generate_examples(split="train", exclude=test_ids),
        "test": self._generate_examples(split="test", exclude=frozenset()),
    }

  def _examples(self, split: str, exclude: frozenset[str]):
    config = self.builder_config
    seed = content_id("grounded_summarization-split", self.name, str(self.version),
                      config.name, list(config.num_people), list(config.num_distractors),
                      split)
    count = config.num_train if split == "train" else config.num_test
    seen = set(exclude)
    index = 0
    while count:
      example = world.make_example(seed, index, config.num_people, config.num_distractors,
                                   config.unfaithful_references)
      index += 1
      if example["prompt_id"] in seen:
        continue
      seen.add(example["prompt_id"])
      count -= 1
      yield example

  def _generate_examples(self, split: str, exclude: frozenset[str]):
    for example in self._examples(split, exclude):
      yield example["prompt_id"], example
