"""The on-policy loop through the data path: generate, annotate, record, publish, train.

Where ``distill`` with ``student_fraction`` > 0 generates inside the training step, this
loop is the version in which every generation goes through the product's own path and
is kept as a published dataset. Iteration ``i``:

1. **generate**: the current student completes every prompt ``samples`` times, all
   prompts in batched calls (central inference), seeds from (seed, iteration, prompt,
   sample);
2. **annotate and score**: the teacher scores each completion (top-k per token,
   ``teacher_scoring.annotate``); ``reward_fn``, when given, scores it on the task
   (for example exact-answer correctness);
3. **record**: every completion becomes a rollout episode with its behaviour log-probs,
   teacher top-k and rewards, written by :class:`rlds_lm.recorder.Recorder` to
   ``workdir/iter_<i>/generations`` (a crash-safe Riegeli log);
4. **publish**: the log becomes ``<data_dir>/onpolicy_iter<i>/1.0.0`` (TFDS, tfrecord
   + array_record; ``data_dir`` defaults to ``workdir/datasets``) with the iteration,
   student and teacher in its lineage;
5. **train**: ``distill.train`` (``topk_kd``) on that dataset, starting from the current
   student; its result is the next iteration's student.

Example::

    from rlds_lm.trainers import loop
    result = loop.run(loop.LoopConfig(
        prompts=[(prompt_id, tokens), ...], teacher="ckpt/teacher", student="ckpt/sft",
        workdir="runs/onpolicy", iterations=3, steps_per_iteration=50))
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import recorder as recorder_lib
from rlds_lm import schema as S
from rlds_lm.models import checkpoint as ckpt_lib
from rlds_lm.models import sampling
from rlds_lm.models import teacher_scoring
from rlds_lm.trainers import common
from rlds_lm.trainers import distill
from rlds_lm.trainers import rollouts


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """An on-policy loop; the defaults are a small CPU setting."""

  prompts: Sequence[tuple[str, Sequence[int]]]  # (prompt_id, prompt tokens incl. BOS)
  teacher: str  # teacher checkpoint directory
  student: str  # initial student checkpoint directory
  workdir: str
  iterations: int = 2
  samples: int = 2  # completions per prompt and iteration
  steps_per_iteration: int = 20
  batch_size: int = 16
  max_length: int = 64
  max_new_tokens: int = 8
  temperature: float = 1.0
  top_k: int = 8  # teacher top-k stored with each generation
  tokenizer: str = "byte"  # the tokenizer the recorded episodes name (schema metadata)
  seed: int = 0
  learning_rate: float = 1e-3
  eos_id: int = 2
  task: str = ""
  # (prompt index, completion tokens) -> {reward name: value}, one name per
  # ``reward_names`` (the first is the episode's primary reward); None: no rewards.
  reward_fn: Callable[[int, np.ndarray], Mapping[str, float]] | None = None
  reward_names: tuple[str, ...] = ()
  data_dir: str = ""  # where the datasets are published; default workdir/datasets

  def __post_init__(self):
    if not self.prompts:
      raise ValueError("LoopConfig.prompts is empty")
    if self.iterations < 1 or self.samples < 1:
      raise ValueError("iterations and samples must be >= 1")
    if (self.reward_fn is None) != (not self.reward_names):
      raise ValueError("reward_fn and reward_names go together")


def _generate(config: LoopConfig, iteration: int, student, teacher, log_dir: str
              ) -> tuple[int, dict[str, float]]:
  """Steps 1-3: sample, annotate, score, record. Returns the number of episodes
  recorded and the mean of each reward over them."""
  schema = S.SchemaConfig(vocab_size=student.config.vocab_size,
                          tokenizer=config.tokenizer,
                          teacher_top_k=config.top_k, reward_names=config.reward_names)
  prompts = [np.asarray(tokens, np.int32) for _, tokens in config.prompts]
  groups = rollouts.sample_group(
      student.config, student.params, prompts, list(range(len(prompts))), n=config.samples,
      seed=config.seed, step=iteration, sampler=sampling.SamplerConfig(config.temperature),
      max_new_tokens=config.max_new_tokens, eos_id=config.eos_id)
  rows = [(g, j) for g in groups for j in range(len(g.completions))
          if len(g.completions[j].tokens)]
  sequences = [np.concatenate([g.prompt_tokens, g.completions[j].tokens]) for g, j in rows]
  teacher_rows = teacher_scoring.annotate(
      teacher.config, teacher.params, sequences, [len(g.prompt_tokens) for g, _ in rows],
      top_k=config.top_k) if rows else []
  lineage = {"loop_iteration": iteration, "student_digest": student.digest,
             "teacher_digest": teacher.digest}
  count, totals = 0, dict.fromkeys(config.reward_names, 0.0)
  with recorder_lib.Recorder(log_dir, schema) as rec:
    for (group, j), arrays in zip(rows, teacher_rows):
      completion = group.completions[j]
      prompt_id = config.prompts[group.prompt_index][0]
      rewards = None
      if config.reward_fn is not None:
        rewards = {k: float(v) for k, v in config.reward_fn(group.prompt_index,
                                                            completion.tokens).items()}
        for name in config.reward_names:
          totals[name] += rewards[name]
      turn = S.Turn(S.observation(schema, group.prompt_tokens),
                    action_tokens=completion.tokens, action_logprobs=completion.logprobs,
                    teacher=arrays, rewards=rewards,
                    reward=rewards[config.reward_names[0]] if rewards else 0.0)
      rec.record(S.rollout_episode(
          schema, [turn], prompt_id=prompt_id, task=config.task, sample_index=j,
          policy_name=f"student@iter{iteration}", policy_digest=student.digest,
          seed=group.seeds[j], temperature=config.temperature, lineage=lineage))
      count += 1
  return count, {name: total / max(count, 1) for name, total in totals.items()}


def run(config: LoopConfig,
        eval_fn: Callable[[Any, Any], Mapping[str, float]] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs every iteration; returns per-iteration records (paths, counts, metrics).

  ``progress``, when given, receives a line at each stage of each iteration.
  """
  say = progress or (lambda _: None)
  started = time.perf_counter()
  os.makedirs(config.workdir, exist_ok=True)
  teacher = sampling.Policy.from_checkpoint(config.teacher, eos_id=config.eos_id)
  student_dir = os.path.abspath(config.student)
  history = []
  for iteration in range(config.iterations):
    iter_dir = os.path.join(config.workdir, f"iter_{iteration}")
    student = sampling.Policy.from_checkpoint(student_dir, eos_id=config.eos_id)
    if history:  # this student is the last iteration's, evaluated at its end
      before = {k.removeprefix("eval/"): v for k, v in history[-1]["eval_after"].items()}
    else:
      before = dict(eval_fn(student.config, student.params)) if eval_fn else {}
    log_dir = os.path.join(iter_dir, "generations")
    if os.path.exists(log_dir):  # a re-run of an interrupted iteration starts it afresh
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(iter_dir)
    say(f"iteration {iteration + 1}/{config.iterations}: the student completes "
        f"{len(config.prompts)} prompts x {config.samples}, the teacher annotates")
    recorded, rewards = _generate(config, iteration, student, teacher, log_dir)
    say(f"iteration {iteration + 1}/{config.iterations}: {recorded} episodes recorded"
        + "".join(f", mean {k} {v:.3f}" for k, v in rewards.items())
        + "; publishing and distilling")
    dataset = recorder_lib.publish_log(
        log_dir, data_dir=config.data_dir or os.path.join(config.workdir, "datasets"),
        name=f"onpolicy_iter{iteration}",
        description=f"On-policy generations of iteration {iteration}",
        lineage={"loop_iteration": iteration, "student": student_dir,
                 "teacher": os.path.abspath(config.teacher)})
    result = distill.train(distill.DistillConfig(
        datasets={dataset: 1.0}, workdir=os.path.join(iter_dir, "train"),
        student=student_dir, loss="topk_kd", steps=config.steps_per_iteration,
        batch_size=config.batch_size, max_length=config.max_length, seed=config.seed,
        log_every=max(1, config.steps_per_iteration // 4),
        checkpoint_every=config.steps_per_iteration,
        optim=common.OptimConfig(learning_rate=config.learning_rate, warmup_steps=2)),
        eval_fn=eval_fn)
    student_dir = result["student"]
    history.append({"iteration": iteration, "recorded": recorded, "dataset": dataset,
                    "student": student_dir, "student_digest": result["student_digest"],
                    "loss": result["metrics"].get("loss"), "eval_before": before,
                    "eval_after": result["eval"], "rewards": rewards,
                    "train_dir": os.path.join(iter_dir, "train")})
    say(f"iteration {iteration + 1}/{config.iterations}: distill loss "
        f"{result['metrics'].get('loss', float('nan')):.4f}"
        + "".join(f", {k} {v:.3f}" for k, v in result["eval"].items()))
  with open(os.path.join(config.workdir, "loop.json"), "w") as f:
    json.dump(history, f, indent=2, sort_keys=True, default=str)
  return {"iterations": history, "student": student_dir,
          "seconds": time.perf_counter() - started}


def final_digest(result: Mapping[str, Any]) -> str:
  """The digest of the loop's last student checkpoint."""
  return ckpt_lib.read_digest(result["student"])
