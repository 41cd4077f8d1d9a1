"""The on-policy loop: every iteration's generations are recorded, published and trained on."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from pipelines import models
from rlds_lm import logs
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import tokenizers
from rlds_lm import toy
from rlds_lm.trainers import loop


def _config(tmp_path, workdir):
  tok = tokenizers.ByteTokenizer()
  problems = toy.arithmetic_problems(6, seed=0, max_operand=10)
  teacher, student = os.fspath(tmp_path / "teacher"), os.fspath(tmp_path / "student0")
  if not os.path.exists(teacher):
    models.init_checkpoint(teacher, "tiny", seed=1)
    models.init_checkpoint(student, "tiny", seed=0)
  return loop.LoopConfig(
      prompts=[(p.prompt_id, tok.encode(p.question, add_bos=True).tolist()) for p in problems],
      teacher=teacher, student=student, workdir=os.fspath(workdir), iterations=2,
      samples=2, steps_per_iteration=3, batch_size=4, max_length=24, max_new_tokens=6,
      task=toy.ARITHMETIC)


def test_each_iteration_records_publishes_and_trains(tmp_path):
  result = loop.run(_config(tmp_path, tmp_path / "run"))
  iterations = result["iterations"]
  assert [it["iteration"] for it in iterations] == [0, 1]
  digests = [it["student_digest"] for it in iterations]
  assert len(set(digests)) == 2  # each iteration trains a new student
  for it in iterations:
    log_dir = tmp_path / "run" / f"iter_{it['iteration']}" / "generations"
    episodes = list(logs.read_log(log_dir, logs.read_log_config(log_dir)))
    assert len(episodes) == it["recorded"] > 0
    builder = tfds.builder_from_directory(it["dataset"])
    assert builder.info.splits["train"].num_examples == it["recorded"]
    lineage = R.dataset_lineage(builder)
    assert lineage["loop_iteration"] == it["iteration"]
    episode = R.materialize(R.data_source(it["dataset"])[0])
    assert episode[S.POLICY][S.POLICY_NAME] == f"student@iter{it['iteration']}"
    assert episode[S.STEPS][0][S.TEACHER][S.TEACHER_TOPK_IDS].shape[1] == 8
  # Iteration 1 samples from iteration 0's student.
  second = R.materialize(R.data_source(iterations[1]["dataset"])[0])
  assert second[S.POLICY][S.POLICY_DIGEST] == digests[0]
  assert loop.final_digest(result) == digests[1]


def test_the_loop_is_deterministic(tmp_path):
  first = loop.run(_config(tmp_path, tmp_path / "a"))
  second = loop.run(_config(tmp_path, tmp_path / "b"))
  assert ([it["student_digest"] for it in first["iterations"]]
          == [it["student_digest"] for it in second["iterations"]])
