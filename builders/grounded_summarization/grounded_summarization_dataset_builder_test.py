"""Tests for the grounded_summarization builder and its entailment oracle."""

import pytest
import tensorflow_datasets as tfds

from builders.grounded_summarization import grounded_summarization_dataset_builder
from rlds_lm.tasks import summarization as world

FACTS = ["Ada Costa|lives_in|Marlow", "Ada Costa|works_at|Helix Biotech",
         "Ada Costa|born_in_year|1971", "Helix Biotech|headquartered_in|Arden",
         "Ada Costa|founded|Helix Biotech"]


class GroundedSummarizationBuilderTest(tfds.testing.DatasetBuilderTestCase):
  """Builds the `tiny` config (synthetic: dummy_data/ holds only a README)."""
  DATASET_CLASS = grounded_summarization_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["tiny"]
  SPLITS = {"train": 6, "test": 3}
  SKIP_CHECKSUMS = True  # nothing is downloaded

  def test_examples_are_grounded_and_deterministic(self):
    first = list(self._make_builder(config="tiny")._generate_examples(
        split="train", exclude=frozenset()))
    again = list(self._make_builder(config="tiny")._generate_examples(
        split="train", exclude=frozenset()))
    self.assertEqual(first, again)
    for key, example in first:
      self.assertEqual(key, example["prompt_id"])
      facts = {world.from_line(line) for line in example["facts"]}
      # The document states exactly its facts; distractor sentences parse to nothing.
      parsed = world.facts_in(example["document"])
      self.assertEqual({t for t in parsed if t is not None}, facts)
      self.assertIn(None, parsed)
      self.assertTrue(1 <= len(example["reference_summaries"]) <= 3)
      for summary in example["reference_summaries"]:
        result = world.entailment(example["facts"], summary)
        self.assertEqual(result["score"], 1.0, summary)
        self.assertEqual(result["unsupported"] + result["unparsed"], [])


def test_unfaithful_references_state_one_fact_the_document_never_mentions(tmp_path):
  config = grounded_summarization_dataset_builder.GroundedSummarizationConfig(
      name="unfaithful", num_people=(1, 2), num_distractors=(0, 1), num_train=40,
      unfaithful_references=1.0)
  builder = grounded_summarization_dataset_builder.Builder(config=config,
                                                           data_dir=str(tmp_path))
  examples = [ex for _, ex in builder._generate_examples(split="train",
                                                         exclude=frozenset())]
  assert len(examples) == 40
  for example in examples:
    for summary in example["reference_summaries"]:
      result = world.entailment(example["facts"], summary)
      assert len(result["unsupported"]) == 1, summary
      assert result["unparsed"] == [] and len(result["supported"]) >= 1
      _, _, obj = result["unsupported"][0]
      assert obj not in example["document"], (summary, example["document"])


def test_unfaithful_fraction_keeps_the_documents_and_sets_the_rate():
  for index in range(5):  # 0 draws nothing more: the faithful stream is unchanged
    assert (world.make_example("s", index, (2, 3), (1, 3), unfaithful=0.0)
            == world.make_example("s", index, (2, 3), (1, 3)))
  summaries = unfaithful = 0
  for index in range(300):
    example = world.make_example("s", index, (1, 1), (0, 1), unfaithful=0.4)
    same_world = world.make_example("s", index, (1, 1), (0, 1))
    assert (example["document"], example["facts"]) == (same_world["document"],
                                                        same_world["facts"])
    for summary in example["reference_summaries"]:
      summaries += 1
      unfaithful += world.entailment(example["facts"], summary)["score"] < 1.0
  assert 0.33 < unfaithful / summaries < 0.47, (unfaithful, summaries)
  with pytest.raises(ValueError, match="unfaithful"):
    world.make_example("s", 0, (1, 1), (0, 1), unfaithful=1.5)


def test_every_template_round_trips():
  for line in FACTS:
    triple = world.from_line(line)
    for variant in range(len(world.TEMPLATES[triple[1]])):
      assert world.facts_in(world.render(triple, variant)) == [triple]


def test_true_summary_scores_one():
  summary = ("Ada Costa lives in Marlow. Ada Costa works at Helix Biotech.\n"
             "Helix Biotech was founded by Ada Costa.")
  result = world.entailment(FACTS, summary)
  assert result["score"] == 1.0
  assert len(result["supported"]) == 3
  assert result["unsupported"] == result["unparsed"] == result["contradicted"] == []


def test_wrong_city_is_unsupported_and_contradicted():
  result = world.entailment(FACTS, "Ada Costa lives in Arden. Ada Costa was born in 1971.")
  assert result["unsupported"] == [("Ada Costa", "lives_in", "Arden")]
  assert result["contradicted"] == [("Ada Costa", "lives_in", "Arden")]
  assert result["supported"] == [("Ada Costa", "born_in_year", "1971")]
  assert result["score"] == 0.5


def test_new_fact_is_unsupported_but_not_contradicted():
  result = world.entailment(FACTS, "Helix Biotech is headquartered in Arden. "
                                   "Bruno Sato works at Granite Bank.")
  assert result["unsupported"] == [("Bruno Sato", "works_at", "Granite Bank")]
  assert result["contradicted"] == []
  assert result["score"] == 0.5


def test_gibberish_is_unparsed():
  result = world.entailment(FACTS, "Blorp zzkk qua. lives in the of.")
  assert result["supported"] == result["unsupported"] == []
  assert len(result["unparsed"]) == 2
  assert result["score"] == 0.0
  assert world.facts_in("Ada Costa lives in Marlow and works at Helix Biotech.") == [None]
  assert world.entailment(FACTS, "")["score"] == 0.0


def test_facts_accepted_as_lines_text_or_triples():
  summary = "Ada Costa founded Helix Biotech."
  as_triples = [world.from_line(f) for f in FACTS]
  for facts in (FACTS, "\n".join(FACTS), as_triples, [f.encode() for f in FACTS]):
    assert world.entailment(facts, summary)["score"] == 1.0


if __name__ == "__main__":
  tfds.testing.test_main()
