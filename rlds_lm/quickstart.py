"""The quickstart: the whole loop at toy scale, on CPU (``rlds-lm quickstart``).

1. **Data.** Every arithmetic problem ``"a+b="`` / ``"a-b="`` with operands below 20
   (800), a quarter held out for evaluation; the train split's reference answers are
   published as a TFDS dataset (``datasets/arith_reference/1.0.0``).
2. **Teacher.** A 4-layer decoder, 96 wide, trained on those answers (SFT on the
   published dataset through the distill trainer's input pipeline).
3. **Student.** The smaller ``tiny`` decoder, given only a short SFT warm start: the
   weak starting point that distillation should improve.
4. **On-policy distillation** (:mod:`rlds_lm.trainers.loop`), ``iterations`` times: the
   current student completes every train prompt; the teacher annotates each completion
   with its top-k per token; the exact-answer reward scores it; every completion is
   recorded as an RLDS episode (Riegeli log, ``onpolicy/iter_<i>/generations``) and
   published as a TFDS dataset (``datasets/onpolicy_iter<i>/1.0.0``); then the student is distilled on that
   dataset (top-k KD: the teacher's distribution on the student's own samples, GKD with
   lambda = 1 and the forward KL).
5. **Evaluation and report.** Greedy test accuracy of the teacher, of the student
   before and after each iteration; ``report.md`` with the table and three plots
   (accuracy per iteration, divergence per step, reward per iteration) and
   ``quickstart.json`` with every number.

Everything is a function of the seed: a second run writes the same datasets (by
content) and the same checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

REPORT = "report.md"
OUTPUTS = ("datasets", "teacher", "student_sft", "onpolicy", "report.md", "quickstart.json",
           "accuracy.png", "divergence.png", "reward.png")


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
  """Sizes of a quickstart run. The defaults take about 3 minutes on 2 CPU cores."""

  max_operand: int = 20  # operands in [0, max_operand): 2 * max_operand^2 problems
  test_fraction: float = 0.25
  teacher_width: int = 96
  teacher_steps: int = 2000
  teacher_lr: float = 5e-3
  student_steps: int = 150  # SFT warm start of the student
  student_lr: float = 5e-3
  batch_size: int = 32
  iterations: int = 8
  samples: int = 2  # completions per train prompt and iteration
  steps_per_iteration: int = 100
  distill_lr: float = 3e-3
  top_k: int = 8  # teacher top-k stored with each completion
  seed: int = 0

  def __post_init__(self):
    for name in ("max_operand", "teacher_steps", "student_steps", "batch_size",
                 "iterations", "samples", "steps_per_iteration", "top_k"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
    if not 0 < self.test_fraction < 1:
      raise ValueError(f"test_fraction must be in (0, 1), found {self.test_fraction}")


# A run of a minute or so, for tests and a first look.
SMALL = QuickstartConfig(max_operand=8, teacher_width=64, teacher_steps=300,
                         student_steps=30, iterations=2, samples=1, steps_per_iteration=20,
                         batch_size=16)
SIZES = {"default": QuickstartConfig(), "small": SMALL}

MAX_LENGTH = 16  # BOS + "19-19=" + answer + EOS fits


def _progress(message: str) -> None:
  print(f"[rlds-lm] {message}", flush=True)


def _clear(workdir: str, overwrite: bool) -> None:
  existing = [name for name in OUTPUTS if os.path.exists(os.path.join(workdir, name))]
  if existing and not overwrite:
    raise FileExistsError(f"{workdir} holds an earlier quickstart ({', '.join(existing)}); "
                          f"pass --overwrite to replace it")
  for name in existing:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


def _sft(workdir: str, dataset: str, start: str, steps: int, lr: float,
         config: QuickstartConfig, eval_fn, label: str) -> dict[str, Any]:
  """SFT (sequence NLL) on a published dataset, with progress lines."""
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top

  every = max(1, steps // 4)

  def progress(done: int, values: Mapping[str, float]) -> None:
    if "loss" in values:
      _progress(f"    {label}: step {done}/{steps}, loss {values['loss']:.3f}")

  return distill.train(distill.DistillConfig(
      datasets={dataset: 1.0}, workdir=workdir, student=start, loss="seqkd", steps=steps,
      batch_size=config.batch_size, max_length=MAX_LENGTH,
      max_new_tokens=toy.ANSWER_TOKENS, seed=config.seed, log_every=every,
      checkpoint_every=steps, eos_id=toy.EOS,
      optim=common.OptimConfig(learning_rate=lr, warmup_steps=max(1, steps // 20))),
      eval_fn, progress=progress)


def _reward_fn(problems: Sequence[Any]) -> Callable[[int, np.ndarray], dict[str, float]]:
  """Exact-answer correctness of a completion (answer bytes, then EOS)."""
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  tokenizer = ByteTokenizer()

  def reward(prompt_index: int, tokens: np.ndarray) -> dict[str, float]:
    ended = len(tokens) > 0 and int(tokens[-1]) == toy.EOS
    text = tokenizer.decode(tokens)
    return {toy.REWARD_CORRECT: float(ended and toy.check_answer(problems[prompt_index],
                                                                 text) > 0)}

  return reward


def run(workdir: str, config: QuickstartConfig = QuickstartConfig(), *,
        overwrite: bool = False) -> dict[str, Any]:
  """Runs the whole quickstart into ``workdir``; returns what ``quickstart.json`` holds."""
  from rlds_lm import inspect_data  # pylint: disable=g-import-not-at-top
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as model_config  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import loop  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  _clear(workdir, overwrite)
  data_dir = os.path.join(workdir, "datasets")
  timings = {}

  # 1. Data.
  train, test = toy.split_problems(config.max_operand, config.test_fraction, config.seed)
  eval_fn = toy.make_eval_fn(test)
  _progress(f"1/5 data: {len(train)} train and {len(test)} test arithmetic problems; "
            f"publishing the reference answers to {data_dir}")
  reference = toy.publish_references(data_dir, train,
                                     lineage={"command": "rlds-lm quickstart",
                                              "seed": config.seed})
  timings["data_s"] = time.perf_counter() - started

  # 2. Teacher.
  t0 = time.perf_counter()
  teacher_model = toy.decoder_config(config.teacher_width, "teacher")
  init_dir = os.path.join(workdir, "teacher", "init")
  ckpt_lib.save(init_dir, teacher_model, gemma.init_params(teacher_model, config.seed),
                overwrite=True)
  _progress(f"2/5 teacher: {model_config.count_params(teacher_model):,} parameters, "
            f"{config.teacher_steps} SFT steps on the reference answers")
  teacher = _sft(os.path.join(workdir, "teacher"), reference, init_dir,
                 config.teacher_steps, config.teacher_lr, config, eval_fn, "teacher")
  teacher_accuracy = teacher["eval"]["eval/accuracy"]
  _progress(f"    teacher test accuracy {teacher_accuracy:.3f}")
  timings["teacher_s"] = time.perf_counter() - t0

  # 3. Student.
  t0 = time.perf_counter()
  student_model = model_config.get_config("tiny")
  _progress(f"3/5 student: the tiny decoder, {model_config.count_params(student_model):,} "
            f"parameters, a {config.student_steps}-step SFT warm start")
  student = _sft(os.path.join(workdir, "student_sft"), reference, "tiny",
                 config.student_steps, config.student_lr, config, eval_fn, "student")
  student_accuracy = student["eval"]["eval/accuracy"]
  _progress(f"    student test accuracy {student_accuracy:.3f}")
  timings["student_s"] = time.perf_counter() - t0

  # 4. On-policy distillation: generate, annotate, score, record, publish, train.
  t0 = time.perf_counter()
  _progress(f"4/5 on-policy distillation: {config.iterations} iterations of "
            f"{len(train)} prompts x {config.samples} student samples, "
            f"{config.steps_per_iteration} top-k KD steps each")
  loop_result = loop.run(loop.LoopConfig(
      prompts=[(p.prompt_id, toy.prompt_tokens(p)) for p in train],
      teacher=teacher["student"], student=student["student"],
      workdir=os.path.join(workdir, "onpolicy"), iterations=config.iterations,
      samples=config.samples, steps_per_iteration=config.steps_per_iteration,
      batch_size=config.batch_size, max_length=MAX_LENGTH,
      max_new_tokens=toy.ANSWER_TOKENS, top_k=config.top_k, seed=config.seed,
      learning_rate=config.distill_lr, eos_id=toy.EOS, task=toy.ARITHMETIC,
      reward_fn=_reward_fn(train), reward_names=(toy.REWARD_CORRECT,), data_dir=data_dir),
      eval_fn, progress=lambda line: _progress("    " + line))
  timings["onpolicy_s"] = time.perf_counter() - t0

  # 5. Report.
  iterations = loop_result["iterations"]
  result = {
      "config": dataclasses.asdict(config),
      "problems": {"train": len(train), "test": len(test)},
      "teacher": {"accuracy": teacher_accuracy, "checkpoint": teacher["student"],
                  "params": model_config.count_params(teacher_model)},
      "student_sft": {"accuracy": student_accuracy, "checkpoint": student["student"],
                      "params": model_config.count_params(student_model)},
      "iterations": [{
          "iteration": it["iteration"] + 1, "episodes": it["recorded"],
          "dataset": it["dataset"], "reward": it["rewards"][toy.REWARD_CORRECT],
          "accuracy_before": it["eval_before"]["accuracy"],
          "accuracy": it["eval_after"]["eval/accuracy"], "loss": it["loss"],
          "divergence": common.metric_curve(it["train_dir"], "loss"),
          "student": it["student"]}
                     for it in iterations],
      "datasets": sorted([reference] + [it["dataset"] for it in iterations]),
      "final_student": loop_result["student"],
      "timings": timings,
  }
  _progress("5/5 report: plots and " + REPORT)
  result["plots"] = _plots(workdir, result)
  summary = inspect_data.summarize(iterations[-1]["dataset"], show=1)
  result["last_dataset_example"] = summary["examples"][0] if summary["examples"] else ""
  result["seconds"] = time.perf_counter() - started
  with open(os.path.join(workdir, "quickstart.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  with open(os.path.join(workdir, REPORT), "w", encoding="utf-8") as f:
    f.write(markdown(result))
  final = result["iterations"][-1]["accuracy"]
  _progress(f"done in {result['seconds']:.0f} s: student test accuracy {student_accuracy:.3f}"
            f" -> {final:.3f} after {config.iterations} on-policy iterations (teacher "
            f"{teacher_accuracy:.3f})")
  _progress(f"datasets:    {data_dir}")
  _progress(f"checkpoints: {os.path.join(workdir, 'teacher', 'student')} (teacher), "
            f"{loop_result['student']} (final student)")
  _progress(f"report:      {os.path.join(workdir, REPORT)}")
  return result


def _plots(workdir: str, result: Mapping[str, Any]) -> dict[str, str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  its = result["iterations"]
  xs = [0] + [it["iteration"] for it in its]
  paths = {}

  fig, ax = plt.subplots(figsize=(5.5, 3.2))
  ax.plot(xs, [result["student_sft"]["accuracy"]] + [it["accuracy"] for it in its],
          marker="o", label="student (greedy, test)")
  ax.axhline(result["teacher"]["accuracy"], color="gray", linestyle="--", label="teacher")
  ax.set_xlabel("on-policy iteration (0 = after SFT)")
  ax.set_ylabel("test accuracy")
  ax.set_xticks(xs)
  ax.grid(alpha=0.3)
  ax.legend()
  paths["accuracy"] = _save(fig, os.path.join(workdir, "accuracy.png"), plt)

  fig, ax = plt.subplots(figsize=(5.5, 3.2))
  offset = 0
  for it in its:
    steps = [offset + s for s, _ in it["divergence"]]
    ax.plot(steps, [v for _, v in it["divergence"]], marker=".",
            label=f"iteration {it['iteration']}")
    offset = steps[-1] if steps else offset
  ax.set_xlabel("distillation step (all iterations)")
  ax.set_ylabel("top-k KL(teacher || student)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  paths["divergence"] = _save(fig, os.path.join(workdir, "divergence.png"), plt)

  fig, ax = plt.subplots(figsize=(5.5, 3.2))
  ax.bar([it["iteration"] for it in its], [it["reward"] for it in its], color="tab:green")
  ax.set_xlabel("on-policy iteration")
  ax.set_ylabel("mean reward of the samples")
  ax.set_xticks([it["iteration"] for it in its])
  ax.grid(alpha=0.3, axis="y")
  paths["reward"] = _save(fig, os.path.join(workdir, "reward.png"), plt)
  return paths


def _save(fig, path: str, plt) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


REPRODUCTIONS = (  # (benchmark, what it tests)
    ("repro_gkd", "GKD: on-policy distillation where the student's own prefix matters"),
    ("repro_jbond", "BOND / J-BOND: Best-of-N distillation with a continuous reward"),
    ("repro_rlef", "RLEF: entailment-feedback RL with partly unfaithful references"),
)


def _source_root() -> str | None:
  """The source checkout this package runs from (docs/ and benchmarks/ beside it), if any."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return root if os.path.exists(os.path.join(root, "docs", "results.md")) else None


def _reproductions() -> list[str]:
  """The report's pointer to the papers' reproductions: docs/results.md, each script's
  command and, where its results JSON is present, each claim and whether it reproduced."""
  root = _source_root()
  results = (os.path.join(root, "docs", "results.md") if root else
             "docs/results.md in the rlds_lm source tree")
  lines = ["## What the trainers are for", "",
           "This run shows the loop; the papers' effects are tested by three reproductions, "
           f"each a script whose numbers, plots and claims are in [results.md]({results}):",
           ""]
  for name, about in REPRODUCTIONS:
    lines.append(f"- {about}: `python -m benchmarks.{name} --out docs/`")
    claims = []
    if root:
      try:
        with open(os.path.join(root, "benchmarks", "results", name + ".json"),
                  encoding="utf-8") as f:
          claims = json.load(f).get("claims", [])
      except (OSError, ValueError):
        claims = []
    for claim in claims:
      verdict = "reproduced" if claim.get("reproduced") else "not reproduced"
      lines.append(f"  - {claim.get('claim', '?')}: **{verdict}**")
  return lines + [""]


def markdown(result: Mapping[str, Any]) -> str:
  """The report: what ran, the table, the plots, where everything is."""
  config, its = result["config"], result["iterations"]
  rel = lambda path: os.path.basename(path)  # the plots sit next to the report
  lines = [
      "# rlds-lm quickstart report", "",
      f"{result['problems']['train']} train / {result['problems']['test']} test arithmetic "
      f"problems (operands < {config['max_operand']}). Teacher: "
      f"{result['teacher']['params']:,} parameters, {config['teacher_steps']} SFT steps. "
      f"Student: {result['student_sft']['params']:,} parameters, "
      f"{config['student_steps']} SFT steps, then {config['iterations']} on-policy "
      f"iterations of {config['samples']} samples per train prompt and "
      f"{config['steps_per_iteration']} top-k KD steps (k = {config['top_k']}). "
      f"Accuracy: greedy decoding of the test problems, exact answer then EOS. Reward: "
      f"the same check on the student's temperature-1 samples of the train prompts.", "",
      "| stage | test accuracy | mean reward of its samples | episodes | final KD loss |",
      "|---|---:|---:|---:|---:|",
      f"| teacher | {result['teacher']['accuracy']:.3f} | | | |",
      f"| student after SFT | {result['student_sft']['accuracy']:.3f} | | | |",
  ]
  for it in its:
    lines.append(f"| student after iteration {it['iteration']} | {it['accuracy']:.3f} | "
                 f"{it['reward']:.3f} | {it['episodes']} | {it['loss']:.4f} |")
  lines += [
      "", "The reward of iteration i is that of the samples the student wrote at its "
      "start (before its distillation steps). This run shows the loop working, not that "
      "on-policy distillation beats other methods: the student would also improve with "
      "more SFT steps; the reproductions below test what GKD, BOND and RLEF are for.", "",
      f"![accuracy per iteration]({rel(result['plots']['accuracy'])})",
      f"![divergence]({rel(result['plots']['divergence'])})",
      f"![reward per iteration]({rel(result['plots']['reward'])})", "",
      *_reproductions(), "## Where things are", "",
      "Published TFDS datasets (open with `tfds.builder_from_directory`, inspect with "
      "`rlds-lm inspect`):", ""]
  lines += [f"- `{path}`" for path in result["datasets"]]
  lines += [
      "", f"Teacher checkpoint: `{result['teacher']['checkpoint']}`; student after SFT: "
      f"`{result['student_sft']['checkpoint']}`; final student: "
      f"`{result['final_student']}`.", "",
      "An episode of the last iteration:", "", "```", result["last_dataset_example"],
      "```", "",
      f"Wall time {result['seconds']:.0f} s (" + ", ".join(
          f"{k.removesuffix('_s')} {v:.0f} s" for k, v in result["timings"].items()) + ").",
      ""]
  return "\n".join(lines)
