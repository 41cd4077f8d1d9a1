"""Tests for the arithmetic builder and its answer checker."""

import tensorflow_datasets as tfds

from builders.arithmetic import arithmetic_dataset_builder
from rlds_lm.tasks import arithmetic as problems


class ArithmeticBuilderTest(tfds.testing.DatasetBuilderTestCase):
  """Builds the `tiny` config (synthetic: dummy_data/ holds only a README)."""
  DATASET_CLASS = arithmetic_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["tiny"]
  SPLITS = {"train": 8, "test": 4}
  SKIP_CHECKSUMS = True  # nothing is downloaded

  def test_examples_are_exact_and_deterministic(self):
    builder = self._make_builder(config="tiny")
    first = list(builder._generate_examples(split="train", exclude=frozenset()))
    again = list(self._make_builder(config="tiny")._generate_examples(
        split="train", exclude=frozenset()))
    self.assertEqual(first, again)
    for key, example in first:
      self.assertEqual(key, example["prompt_id"])
      lines = example["steps"].split("\n")
      self.assertEqual(len(lines), example["num_steps"])
      self.assertTrue(2 <= example["num_steps"] <= 3)
      value = None
      for line in lines:  # each step is correct and chains onto the previous one
        expression, result = line.split("=")
        for op in "+-*/":
          if op in expression:
            a, b = (int(x) for x in expression.split(op))
            break
        if value is not None:
          self.assertEqual(a, value)
        exact = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        self.assertEqual(int(result), exact)
        if op == "/":
          self.assertEqual(a % b, 0)
        value = int(result)
      self.assertEqual(example["answer"], str(value))
      self.assertTrue(problems.check(example["answer"], example["steps"]))


def test_split_seeds_differ_and_are_stable():
  assert problems.split_seed("arithmetic", "tiny", "train") == problems.split_seed(
      "arithmetic", "tiny", "train")
  assert problems.split_seed("arithmetic", "tiny", "train") != problems.split_seed(
      "arithmetic", "tiny", "test")


def test_generate_is_distinct_and_respects_exclude():
  difficulty = problems.Difficulty(min_ops=2, max_ops=4, max_operand=9, max_factor=3)
  test = list(problems.generate("s-test", 50, difficulty))
  train = list(problems.generate("s-train", 200, difficulty,
                                 frozenset(p.question for p in test)))
  questions = [p.question for p in train]
  assert len(set(questions)) == 200
  assert not set(questions) & {p.question for p in test}
  assert all(2 <= p.num_steps <= 4 for p in train)
  assert all(int(p.answer) >= 0 for p in train)


def test_check():
  check = arithmetic_dataset_builder.check
  assert check("14", "3+4=7\n7*2=14")
  assert check("14", "She has 14 now.")
  assert check("14", "First 3+4=7, then 7*2=14. Answer: 14")
  assert check("14", "answer: 14, not 15")  # the number after the marker wins
  assert check("14", "#### 14")
  assert check("1234", "The answer is 1,234.")
  assert check("14", "14.0")
  assert check("-3", "so x = -3")
  assert check("3", "7-4 leaves 3")
  assert check("3", "7-3") and not check("-3", "7-3")  # subtraction, not a negative
  assert not check("14", "Answer: 15 (or maybe 14)")
  assert not check("14", "14.5")
  assert not check("14", "no number here")
  assert not check("14", "Answer: unknown")
  assert not check("14", "")


if __name__ == "__main__":
  tfds.testing.test_main()
