"""A toy reproduction of GKD: on-policy distillation against supervised KD, SeqKD and SFT.

GKD (Agarwal et al., 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes") reports that a small student distilled on its own samples,
scored by the teacher with a generalized JSD(beta), beats students trained off-policy on
reference answers (SFT), on teacher samples (SeqKD) or on teacher token distributions
over fixed sequences (supervised KD). This script replays that comparison at toy scale,
on CPU, with the project's own pieces end to end:

1. Task: ``rlds_lm.toy.arithmetic_problems`` (``"a+b="`` / ``"a-b="``, operands below
   ``max_operand``), every distinct problem, split into disjoint train / test sets.
   Prompt = BOS + question bytes, completion = answer bytes + EOS (byte tokenizer).
2. The train split's reference answers are published (``rlds_lm.publish``) as rollout
   episodes; a teacher (wider than ``tiny``) is trained on them with
   ``distill.train(loss="seqkd")`` (SFT) and saved as a checkpoint.
3. The teacher samples completions of the train prompts (temperature 1), and
   ``teacher_scoring.annotate`` adds its top-k per token; published as a second dataset.
4. Student: per seed, ``tiny`` is initialised from the seed and SFT'd for ``warm_steps``
   (the paper distils from SFT students too); from that checkpoint every method runs
   the same steps, batch and optimizer through ``distill.train``: SFT (seqkd on
   references), SeqKD (seqkd on teacher samples), supervised KD (topk_kd on the same
   teacher samples), and on-policy GKD (loss="jsd", a live teacher,
   ``student_fraction=1``) for several beta.
5. Metric: greedy test accuracy (exact answer, then EOS), logged every ``eval_every``
   steps through ``distill.train``'s ``eval_fn``.

Results go to ``benchmarks/results/repro_gkd.json`` and, with ``--out DIR``, to the
``repro_gkd`` section of ``DIR/results.md`` and the plot ``DIR/repro_gkd.png``.

    python -m benchmarks.repro_gkd --out docs/      # about 4-8 minutes on 2 CPUs
    python -m benchmarks.repro_gkd --quick          # smoke run, under a minute
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks import _common as C
from rlds_lm import toy

NAME = "repro_gkd"
DOC_NAME = "results.md"
DOC_INTRO = """\
# Results

Experiments run with rlds_lm's own trainers on data published as rollout datasets, as
opposed to the throughput measurements of [benchmarks.md](benchmarks.md). Each one is a
script in `benchmarks/` that writes its raw numbers to `benchmarks/results/<name>.json`
and regenerates its own section of this file between `<!-- begin: <name> -->` /
`<!-- end: <name> -->` markers (plots next to it); everything outside the markers is
written by hand. They are toy-scale, CPU-sized replications of published claims: they
check that the code paths behave as the papers describe, not that the claims hold at
scale.

"""

BOS, EOS = toy.BOS, toy.EOS
MAX_NEW_TOKENS = toy.ANSWER_TOKENS
prompt_tokens, answer_tokens = toy.prompt_tokens, toy.answer_tokens
is_correct, make_eval_fn = toy.is_correct, toy.make_eval_fn
MAX_LENGTH = 16  # BOS + "19-19=" + answer + EOS fits


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that sets the experiment's size."""

  max_operand: int  # operands in [0, max_operand)
  test_fraction: float  # share of the distinct problems held out for the test split
  teacher_steps: int
  teacher_batch: int
  teacher_lr: float
  teacher_samples: int  # teacher samples per train prompt (SeqKD / supervised KD data)
  top_k: int  # stored teacher top-k
  warm_steps: int  # SFT steps of the common student starting point
  warm_lr: float
  student_steps: int  # steps of every method from that starting point
  student_batch: int
  student_lr: float
  eval_every: int
  seeds: tuple[int, ...]
  betas: tuple[float, ...]
  teacher_width: int = 96  # d_model; 4 heads, MLP 4x, 4 layers


FULL = Sizes(max_operand=20, test_fraction=0.25, teacher_steps=1200, teacher_batch=32,
             teacher_lr=5e-3, teacher_samples=4, top_k=16, warm_steps=300, warm_lr=5e-3,
             student_steps=200, student_batch=32, student_lr=3e-3, eval_every=25,
             seeds=(0, 1), betas=(0.1, 0.5, 0.9))
QUICK = Sizes(max_operand=6, test_fraction=0.25, teacher_steps=10, teacher_batch=8,
              teacher_lr=3e-3, teacher_samples=1, top_k=8, warm_steps=5, warm_lr=3e-3,
              student_steps=5, student_batch=8, student_lr=3e-3, eval_every=5,
              seeds=(0,), betas=(0.5,), teacher_width=32)


@dataclasses.dataclass(frozen=True)
class Method:
  key: str
  label: str
  loss: str
  data: str  # "reference" or "teacher" (the published dataset it reads)
  beta: float = 0.5
  student_fraction: float = 0.0

  @property
  def on_policy(self) -> bool:
    return self.student_fraction > 0


def methods(sizes: Sizes) -> list[Method]:
  out = [Method("sft", "SFT (reference answers)", "seqkd", "reference"),
         Method("seqkd", "SeqKD (teacher samples)", "seqkd", "teacher"),
         Method("supervised_kd", "Supervised KD (teacher top-k on teacher samples)",
                "topk_kd", "teacher")]
  out += [Method(f"gkd_beta{beta:g}", f"On-policy GKD, JSD(beta={beta:g})", "jsd",
                 "reference", beta=beta, student_fraction=1.0) for beta in sizes.betas]
  return out


# --------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------


def split_problems(sizes: Sizes):
  """(train, test): every distinct problem, in the generator's (random) order."""
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  return toy.split_problems(sizes.max_operand, sizes.test_fraction)


def publish_references(data_dir: str, problems) -> str:
  """The train split with its reference answers as rollout episodes (SFT data)."""
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  return toy.publish_references(data_dir, problems,
                                lineage={"benchmark": NAME, "kind": "reference answers"})


def publish_teacher_samples(data_dir: str, problems, teacher_dir: str,
                            sizes: Sizes) -> tuple[str, float]:
  """Teacher samples (temperature 1) of the train prompts with the teacher's top-k.

  Returns the dataset directory and the fraction of samples that are correct.
  """
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import teacher_scoring  # pylint: disable=g-import-not-at-top
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top

  teacher = sampling.Policy.from_checkpoint(teacher_dir, eos_id=EOS, name="teacher")
  sampler = sampling.SamplerConfig(temperature=1.0)
  rows = [(p, i) for p in problems for i in range(sizes.teacher_samples)]
  prompts = [prompt_tokens(p) for p, _ in rows]
  seeds = [toy.sample_seed(p.prompt_id, i, teacher.digest) for p, i in rows]
  completions = teacher.sample(prompts, seeds, sampler, MAX_NEW_TOKENS)
  keep = [j for j, c in enumerate(completions) if len(c.tokens)]
  annotated = teacher_scoring.annotate(
      teacher.config, teacher.params,
      [np.concatenate([prompts[j], completions[j].tokens]) for j in keep],
      [len(prompts[j]) for j in keep], top_k=sizes.top_k)
  schema = S.SchemaConfig(vocab_size=259, tokenizer="byte", teacher_top_k=sizes.top_k)
  tok = ByteTokenizer()
  episodes, correct = [], []
  # Lineage names the teacher by digest, not by its (temporary) path: the dataset's
  # content identity, hence the data order of the runs reading it, must not depend on
  # the workdir.
  for j, arrays in zip(keep, annotated):
    (p, i), c = rows[j], completions[j]
    ok = is_correct(p, c)
    correct.append(ok)
    turn = S.Turn(S.observation(schema, prompts[j], p.question), action_tokens=c.tokens,
                  action_text=tok.decode(c.tokens), action_logprobs=c.logprobs,
                  teacher=arrays, reward=float(ok))
    episodes.append(S.rollout_episode(
        schema, [turn], prompt_id=p.prompt_id, task=toy.ARITHMETIC, sample_index=i,
        policy_name=teacher.name, policy_digest=teacher.digest, temperature=1.0,
        seed=seeds[j], lineage={"teacher_digest": teacher.digest}))
  path = P.publish({"train": episodes}, data_dir=data_dir, name="arith_teacher_samples",
                   config=schema, lineage={"benchmark": NAME, "kind": "teacher samples",
                                           "teacher_digest": teacher.digest})
  return path, float(np.mean(correct)) if correct else 0.0


# --------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------


def _curve(workdir: str) -> list[list[float]]:
  """[[step, accuracy], ...] from a run's metrics.jsonl (one point per step)."""
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  return common.metric_curve(workdir, "eval/accuracy")


def _distill_config(sizes: Sizes, **kwargs: Any):
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  steps, lr = kwargs.pop("steps"), kwargs.pop("lr")
  return distill.DistillConfig(
      steps=steps, max_length=MAX_LENGTH, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
      optim=common.OptimConfig(learning_rate=lr, warmup_steps=max(1, steps // 20)),
      log_every=max(1, sizes.eval_every), checkpoint_every=steps,
      eval_every=sizes.eval_every, eos_id=EOS, **kwargs)


def teacher_config(sizes: Sizes):
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  return toy.decoder_config(sizes.teacher_width, "teacher")


def train_teacher(work: str, reference: str, sizes: Sizes, eval_fn) -> dict[str, Any]:
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  model = teacher_config(sizes)
  init_dir = os.path.join(work, "teacher_init")
  ckpt_lib.save(init_dir, model, gemma.init_params(model, seed=0), overwrite=True)
  workdir = os.path.join(work, "teacher")
  result = distill.train(_distill_config(
      sizes, datasets={reference: 1.0}, workdir=workdir, student=init_dir, loss="seqkd",
      steps=sizes.teacher_steps, batch_size=sizes.teacher_batch, lr=sizes.teacher_lr,
      seed=0), eval_fn)
  return {"checkpoint": result["student"], "digest": result["student_digest"],
          "params": mc.count_params(model), "config": model.to_dict(),
          "accuracy": result["eval"]["eval/accuracy"], "curve": _curve(workdir),
          "seconds": result["seconds"], "steps": sizes.teacher_steps,
          "batch_size": sizes.teacher_batch, "learning_rate": sizes.teacher_lr}


def warm_start(work: str, seed: int, reference: str, sizes: Sizes,
               eval_fn) -> dict[str, Any]:
  """The common starting point of every method: ``tiny`` from ``seed``, SFT'd."""
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(work, "runs", f"warm_start_seed{seed}")
  result = distill.train(_distill_config(
      sizes, datasets={reference: 1.0}, workdir=workdir, student="tiny", loss="seqkd",
      steps=sizes.warm_steps, batch_size=sizes.student_batch, lr=sizes.warm_lr,
      seed=seed), eval_fn)
  return {"method": "warm_start", "seed": seed, "checkpoint": result["student"],
          "accuracy": result["eval"]["eval/accuracy"], "curve": _curve(workdir),
          "seconds": result["seconds"]}


def train_student(work: str, method: Method, seed: int, datasets: Mapping[str, str],
                  start: str, teacher_dir: str, sizes: Sizes, eval_fn) -> dict[str, Any]:
  """``method`` from the checkpoint ``start``, ``sizes.student_steps`` steps."""
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(work, "runs", f"{method.key}_seed{seed}")
  result = distill.train(_distill_config(
      sizes, datasets={datasets[method.data]: 1.0}, workdir=workdir, student=start,
      teacher=teacher_dir if method.loss == "jsd" or method.on_policy else "",
      loss=method.loss, beta=method.beta, student_fraction=method.student_fraction,
      steps=sizes.student_steps, batch_size=sizes.student_batch, lr=sizes.student_lr,
      seed=seed), eval_fn)
  return {"method": method.key, "seed": seed, "accuracy": result["eval"]["eval/accuracy"],
          "curve": _curve(workdir), "seconds": result["seconds"],
          "final_loss": result["metrics"].get("loss")}


def run(args) -> dict[str, Any]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  sizes = C.sizes_from(args, QUICK, FULL, ("student_steps", "teacher_steps"))
  if args.seeds:
    sizes = dataclasses.replace(sizes, seeds=tuple(range(args.seeds)))
  timings = {}
  with C.scratch_dir(args, NAME) as work:
    train, test = split_problems(sizes)
    eval_fn = make_eval_fn(test)
    t0 = time.perf_counter()
    reference = publish_references(os.path.join(work, "data"), train)
    timings["publish_reference_s"] = time.perf_counter() - t0
    teacher = train_teacher(work, reference, sizes, eval_fn)
    teacher["train_accuracy"] = make_eval_fn(train)(*_restore(teacher["checkpoint"]))[
        "accuracy"]
    print(f"teacher: test accuracy {teacher['accuracy']:.3f}, train "
          f"{teacher['train_accuracy']:.3f}, {teacher['seconds']:.0f} s", flush=True)
    t0 = time.perf_counter()
    samples, sample_accuracy = publish_teacher_samples(
        os.path.join(work, "data"), train, teacher["checkpoint"], sizes)
    timings["teacher_samples_s"] = time.perf_counter() - t0
    teacher["sample_accuracy"] = sample_accuracy
    datasets = {"reference": reference, "teacher": samples}
    runs, warm = [], []
    for seed in sizes.seeds:
      start = warm_start(work, seed, reference, sizes, eval_fn)
      print(f"warm start seed {seed}: accuracy {start['accuracy']:.3f}, "
            f"{start['seconds']:.0f} s", flush=True)
      warm.append({k: v for k, v in start.items() if k != "checkpoint"})
      for method in methods(sizes):
        r = train_student(work, method, seed, datasets, start["checkpoint"],
                          teacher["checkpoint"], sizes, eval_fn)
        r["curve"] = [[0, start["accuracy"]]] + r["curve"]
        print(f"{method.key} seed {seed}: accuracy {r['accuracy']:.3f}, "
              f"{r['seconds']:.0f} s", flush=True)
        runs.append(r)
  return {
      "benchmark": NAME, "quick": args.quick, "machine": C.machine_info(),
      "sizes": dataclasses.asdict(sizes),
      "problems": {"train": len(train), "test": len(test),
                   "max_operand": sizes.max_operand},
      "student": {"config": "tiny", "params": mc.count_params(mc.get_config("tiny"))},
      "teacher": {k: v for k, v in teacher.items() if k != "checkpoint"},
      "methods": [dataclasses.asdict(m) for m in methods(sizes)],
      "warm_start": warm, "runs": runs, "timings": timings,
  }


def _restore(path: str):
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  restored = ckpt_lib.restore(path)
  return restored.config, restored.params


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------

LAST_EVALS = 3  # the "last evaluations" column averages this many points per run


def _mean_curve(runs: Sequence[Mapping[str, Any]]) -> list[list[float]]:
  """Mean over runs at the steps every run evaluated."""
  curves = [dict((int(s), a) for s, a in r["curve"]) for r in runs]
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  return [[s, statistics.mean(c[s] for c in curves)] for s in steps]


def _summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  accs = [r["accuracy"] for r in runs]
  tails = [statistics.mean(a for _, a in r["curve"][-LAST_EVALS:]) for r in runs]
  return {"accuracies": accs, "mean": statistics.mean(accs), "min": min(accs),
          "max": max(accs), "last_evals_mean": statistics.mean(tails),
          "seconds": statistics.mean(r["seconds"] for r in runs),
          "curve": _mean_curve(runs)}


def summarise(data: dict[str, Any]) -> list[dict[str, Any]]:
  """Per method: accuracies over seeds, their mean / min / max, the mean of the last
  evaluations, mean wall seconds and the mean curve."""
  out = []
  for m in data["methods"]:
    runs = [r for r in data["runs"] if r["method"] == m["key"]]
    if runs:
      out.append({**m, **_summary(runs)})
  return out


def _pct(x: float) -> str:
  return f"{100 * x:.1f} %"


def _points(x: float) -> str:
  return f"{100 * x:+.1f} points"


def _short(row: Mapping[str, Any]) -> str:
  return row["label"].split(" (")[0]


def outcome(rows: Sequence[dict[str, Any]], teacher: Mapping[str, Any],
            start: Mapping[str, Any], seeds: int) -> str:
  """The measured outcome in words, computed from the numbers."""
  by_key = {r["key"]: r for r in rows}
  on = [r for r in rows if r["student_fraction"] > 0]
  off = [r for r in rows if r["student_fraction"] == 0]
  if not on or not off:
    return "Not enough methods ran to compare on- and off-policy distillation."
  ranking = sorted(rows, key=lambda r: -r["mean"])
  best_on, worst_on = ranking[[r in on for r in ranking].index(True)], min(
      on, key=lambda r: r["mean"])
  best_off = ranking[[r in off for r in ranking].index(True)]

  def separated(a, b) -> str:
    """How the seeds of ``a`` and ``b`` compare (only with several seeds)."""
    if seeds < 2:
      return ""
    if a["min"] > b["max"] or b["min"] > a["max"]:
      return "; every seed of the one is above every seed of the other"
    return "; their seed ranges overlap"

  seeds_word = f"mean of {seeds} seeds" if seeds > 1 else "1 seed"
  parts = [f"Measured ({seeds_word}, test accuracy after the last step; all methods "
           f"start from the same SFT checkpoint at {_pct(start['mean'])}): "
           + ", ".join(f"{_label(r)} {_pct(r['mean'])}" for r in ranking) + "."]
  skd = by_key.get("supervised_kd")
  if skd is not None:
    diff = best_on["mean"] - skd["mean"]
    verdict = "beats" if diff > 0 else "does not beat" if diff < 0 else "ties with"
    parts.append(f"On-policy GKD at its best beta ({best_on['beta']:g}) {verdict} "
                 f"supervised KD: {_pct(best_on['mean'])} against {_pct(skd['mean'])} "
                 f"({_points(diff)}{separated(best_on, skd)}).")
    if len(on) > 1:
      wins = sum(r["mean"] > skd["mean"] for r in on)
      parts.append(f"Across the beta sweep GKD ranges from {_pct(worst_on['mean'])} "
                   f"(beta = {worst_on['beta']:g}) to {_pct(best_on['mean'])}, and "
                   f"{wins} of {len(on)} beta values are above supervised KD (the best "
                   f"beta is picked on the test set, which flatters GKD).")
  others = [by_key[k] for k in ("seqkd", "sft") if k in by_key]
  if others:
    parts.append("The best GKD run against " + " and ".join(
        f"{_short(r)} ({_pct(r['mean'])}): {_points(best_on['mean'] - r['mean'])}"
        for r in others) + ".")
  lead = best_on["mean"] - best_off["mean"]
  if lead > 0:
    parts.append(f"So this run reproduces the paper's ordering: the best on-policy run is "
                 f"ahead of every off-policy method (of the best, {_short(best_off)}, by "
                 f"{100 * lead:.1f} points{separated(best_on, best_off)}).")
  elif lead < 0:
    parts.append(f"So this run does not reproduce the paper's ordering: the best "
                 f"off-policy method, {_short(best_off)}, is ahead of every on-policy run "
                 f"(of the best by {-100 * lead:.1f} points{separated(best_off, best_on)}).")
  else:
    parts.append(f"So the best on- and off-policy runs tie ({_short(best_off)}).")
  last = sorted(rows, key=lambda r: -r["last_evals_mean"])
  order = f"{_label(last[0])} ({_pct(last[0]['last_evals_mean'])})"
  for a, b in zip(last, last[1:]):
    sign = ">" if a["last_evals_mean"] > b["last_evals_mean"] else "="
    order += f" {sign} {_label(b)} ({_pct(b['last_evals_mean'])})"
  parts.append(f"Averaged over the last {LAST_EVALS} evaluations of each run (less noisy "
               f"than the last one alone) the order is {order}.")
  gap = teacher["accuracy"] - ranking[0]["mean"]
  parts.append(f"The teacher scores {_pct(teacher['accuracy'])}, "
               f"{abs(100 * gap):.1f} points {'above' if gap >= 0 else 'below'} the best "
               f"student.")
  return " ".join(parts)


def _label(row: Mapping[str, Any]) -> str:
  if row["loss"] == "jsd":
    return f"GKD beta={row['beta']:g}"
  return _short(row)


def plot(data: dict[str, Any], path: str) -> str:
  """Greedy test accuracy against the step: the warm start, then every method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = summarise(data)
  warm = _summary(data["warm_start"])
  offset = data["sizes"]["warm_steps"]
  fig, ax = plt.subplots(figsize=(7.5, 4.4))
  if warm["curve"]:
    steps, accs = zip(*warm["curve"])
    ax.plot(steps, [100 * a for a in accs], color="grey", marker=".", linewidth=1,
            label=f"SFT warm start ({_pct(warm['mean'])})")
  for r in rows:
    if r["curve"]:
      steps, accs = zip(*r["curve"])
      style = "-" if r["student_fraction"] > 0 else "--"
      ax.plot([offset + s for s in steps], [100 * a for a in accs], style, marker=".",
              linewidth=1.3, label=f"{_label(r)} ({_pct(r['mean'])})")
  ax.axhline(100 * data["teacher"]["accuracy"], color="black", linestyle=":",
             linewidth=1, label=f"teacher ({_pct(data['teacher']['accuracy'])})")
  ax.axvline(offset, color="grey", linewidth=0.6)
  top = max([data["teacher"]["accuracy"]] + [a for r in rows for _, a in r["curve"]])
  ax.set_ylim(0, min(100, 100 * top + 10))
  ax.set_xlabel("student step (methods branch from the warm start)")
  ax.set_ylabel("greedy test accuracy (%)")
  seeds = len(data["sizes"]["seeds"])
  ax.set_title(f"Toy GKD reproduction: a+b / a-b, tiny student, mean of {seeds} "
               f"seed{'s' if seeds > 1 else ''} (dashed: off-policy)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left")
  return save_figure(fig, path)


def plot_name(quick: bool, name: str = NAME) -> str:
  return f"{name}{'.quick' if quick else ''}.png"


def save_figure(fig, path: str) -> str:
  """Writes a results figure (PNG) and releases it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def results_main(name: str, args, run, markdown, plot) -> int:
  """The shared ``main`` body of the reproductions: run (or reload), plot next to
  docs/results.md, and regenerate the section ``name`` there."""

  def render(data: dict[str, Any]) -> str:
    if args.out:
      os.makedirs(args.out, exist_ok=True)
      path = plot(data, os.path.join(args.out, plot_name(data["quick"], name)))
      print(f"wrote {path}")
    return markdown(data)

  return C.run_benchmark(name, args, run, render, doc_name=DOC_NAME, intro=DOC_INTRO)


def markdown(data: dict[str, Any]) -> str:
  sizes, teacher, problems = data["sizes"], data["teacher"], data["problems"]
  rows = summarise(data)
  warm = _summary(data["warm_start"])
  seeds = len(sizes["seeds"])
  data_names = {"reference": "reference answers", "teacher": "teacher samples"}

  def accuracy_cell(summary) -> str:
    per_seed = " / ".join(_pct(a) for a in summary["accuracies"])
    return f"**{_pct(summary['mean'])}**" + (f" ({per_seed})" if seeds > 1 else "")

  table = [["SFT warm start (every method's starting point)", "`seqkd`",
            "reference answers", accuracy_cell(warm), _pct(warm["last_evals_mean"]),
            _pct(teacher["accuracy"]), sizes["warm_steps"], f"{warm['seconds']:.0f}"]]
  for r in rows:
    table.append([
        r["label"],
        f"`{r['loss']}`" + (f", beta {r['beta']:g}" if r["loss"] == "jsd" else ""),
        (f"student samples (lambda = {r['student_fraction']:g}), live teacher"
         if r["student_fraction"] > 0 else data_names[r["data"]]),
        accuracy_cell(r), _pct(r["last_evals_mean"]), _pct(teacher["accuracy"]),
        f"{sizes['warm_steps']} + {sizes['student_steps']}", f"{r['seconds']:.0f}"])
  quick_note = ("\n**Quick smoke run (`--quick`): sizes far too small to learn; not "
                "representative.**\n" if data["quick"] else "")
  tc = teacher["config"]
  on_s = [r["seconds"] for r in rows if r["student_fraction"] > 0]
  off_s = [r["seconds"] for r in rows if r["student_fraction"] == 0]
  cost = (f", so an on-policy run took {statistics.mean(on_s) / statistics.mean(off_s):.1f}x "
          f"the wall time of an off-policy one here" if on_s and off_s else "")
  lines = [
      f"## On-policy distillation on toy arithmetic (`{NAME}`)", quick_note,
      "A toy replication of GKD (Agarwal et al., 2024): a small student distilled on its "
      "own samples, scored by a live teacher with the generalized JSD(beta), against the "
      "same student trained on reference answers (SFT), on teacher samples (SeqKD) and "
      "on the teacher's top-k over those same samples (supervised KD). "
      f"`python -m benchmarks.repro_gkd --out docs/` (`benchmarks/repro_gkd.py`).", "",
      f"* Task: every distinct `a+b=` / `a-b=` problem with operands below "
      f"{problems['max_operand']} (`rlds_lm.toy.arithmetic_problems`), split into "
      f"{problems['train']} train and {problems['test']} disjoint test problems. Prompt = "
      f"BOS + question bytes, completion = answer bytes + EOS. All training data is "
      f"published rollout datasets read by `distill.train`.",
      f"* Teacher: {teacher['params'] / 1e6:.2f} M parameters (d_model {tc['d_model']}, "
      f"{tc['num_layers']} layers, MLP {tc['mlp_dim']}), trained by SFT "
      f"(`loss=\"seqkd\"` on the reference answers, {teacher['steps']} steps of batch "
      f"{teacher['batch_size']}, peak learning rate {teacher['learning_rate']:g}, "
      f"{teacher['seconds']:.0f} s): greedy accuracy {_pct(teacher['accuracy'])} on the "
      f"test split, {_pct(teacher['train_accuracy'])} on the train split. Its "
      f"{sizes['teacher_samples']} samples per train prompt (temperature 1, "
      f"{_pct(teacher['sample_accuracy'])} correct), with its top-{sizes['top_k']} per "
      f"token from `teacher_scoring.annotate`, are the SeqKD and supervised-KD data.",
      f"* Student: `tiny` ({data['student']['params'] / 1e6:.2f} M parameters). As in the "
      f"paper, distillation starts from an SFT student: per seed, `tiny` is initialised "
      f"from the seed and trained by SFT for {sizes['warm_steps']} steps (peak learning "
      f"rate {sizes['warm_lr']:g}); every method then continues from that checkpoint for "
      f"{sizes['student_steps']} steps of batch {sizes['student_batch']} (AdamW, peak "
      f"learning rate {sizes['student_lr']:g}, warm-up then cosine decay; the same data "
      f"order seed). On-policy GKD samples at most {MAX_NEW_TOKENS} tokens at temperature "
      f"1 from the current student at every step (`student_fraction` = 1), scores them "
      f"with the live teacher, and reads only the prompts of the reference dataset.",
      f"* Metric: greedy decoding of the {problems['test']} test prompts, correct when the "
      f"answer is exact and followed by EOS; evaluated every {sizes['eval_every']} steps "
      f"through `distill.train`'s `eval_fn`. "
      + (f"Mean over {seeds} seeds (per seed in brackets)." if seeds > 1 else
         "One seed only (the time budget allowed no more)."),
      "",
      C.markdown_table(["method", "loss", "student data", "test accuracy (final)",
                        f"mean of last {LAST_EVALS} evals", "teacher accuracy", "steps",
                        "wall s / run"], table,
                       align=["l", "l", "l", "r", "r", "r", "r", "r"]),
      "",
      outcome(rows, teacher, warm, seeds),
      "",
      f"![Greedy test accuracy against the step, per method]({plot_name(data['quick'])})",
      "",
      f"Caveats: {problems['test']} test problems make one problem worth "
      f"{100 / max(1, problems['test']):.1f} points, and the curves move by several "
      f"points between evaluations; {sizes['student_steps']} steps from the warm start "
      f"compare short runs, not converged students. Answers are 1 to 3 tokens before EOS, "
      f"so there is little room here for the train / generation mismatch (exposure bias) "
      f"that on-policy training targets in the paper's longer outputs. Wall seconds "
      f"include compilation and "
      f"the evaluations; an on-policy step also samples from the student, runs the "
      f"teacher twice (for the loss, and for the top-k that `distill` records with every "
      f"generation in `workdir/generations`) and writes one episode per row{cost}.",
  ]
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--student-steps", type=int, default=0, help="override the steps")
  parser.add_argument("--teacher-steps", type=int, default=0, help="override the steps")
  parser.add_argument("--seeds", type=int, default=0, help="override the seed count")
  args = parser.parse_args(argv)

  return results_main(NAME, args, run, markdown, plot)


if __name__ == "__main__":
  sys.exit(main())
