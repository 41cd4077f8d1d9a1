"""A toy reproduction of RLEF: summarisation RL with a learned entailment reward.

RLEF (reinforcement learning from entailment feedback; e.g. Roit et al., 2023, "Factually
Consistent Summarization via Reinforcement Learning with Textual Entailment Feedback")
tunes a supervised summariser with an NLI model's P(document entails summary) as the
reward and a KL penalty to the supervised policy, and reports more faithful summaries;
it also warns that the policy can game the learned scorer. This script replays that at
toy scale, on CPU, where the truth is known exactly:

1. Task: ``builders/grounded_summarization`` documents built with a custom config (few
   people / distractors, so that prompt + summary fit the policy's 512-token context);
   the train split's reference summaries (+ EOS) are published as rollout episodes.
2. Supervised policy: ``tiny`` (widened) SFT'd with ``distill.train(loss="seqkd")`` on
   them, prompt ``rlef.PROMPT_FORMAT``.
3. A learned NLI scorer (``rlds_lm.tasks.nli.train``, logistic regression on hashed
   features).
4. RLEF (``rlef.train``) from the supervised policy with ``reward="nli"`` and, as a
   control, ``reward="oracle"`` (``world.entailment``: the exact fraction of summary
   sentences stating a document fact), same steps; plus a kl_coef sweep for the NLI run.
5. Held-out evaluation (test documents, temperature-1 samples with fixed seeds) of the
   supervised and each tuned policy: oracle entailment, NLI score, Monte Carlo
   KL(policy || supervised), summary length and EOS rate.

Results go to ``benchmarks/results/repro_rlef.json`` and, with ``--out DIR``, to the
``repro_rlef`` section of ``DIR/results.md`` and the plot ``DIR/repro_rlef.png``.

    python -m benchmarks.repro_rlef --out docs/      # about 10 minutes on 2 CPUs
    python -m benchmarks.repro_rlef --quick          # smoke run, under a minute
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks import repro_gkd as G

NAME = "repro_rlef"
DOC_NAME = G.DOC_NAME
DOC_INTRO = G.DOC_INTRO
BOS, EOS = G.BOS, G.EOS
# How FULL was chosen (one timing probe, then this single full run).
TUNING_NOTE = (
    "The sizes were set to fit a 12-minute CPU budget after one probe run (40 SFT steps "
    "of batch 16, 3 RLEF steps at learning rate 3e-4): SFT cost about 1.5 s per step, so "
    "the batch went to 8, the width stayed at tiny's 64 and the RLEF steps to 20 per run; "
    "the probe's KL after 3 steps was small (about 0.1-0.15 nats per summary), so the RLEF "
    "learning rate went to 1e-3. kl_coef 0.05 is rlef's default and 0.01 the one sweep "
    "point that fit; nothing was tuned on the held-out numbers of this run.")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that sets the experiment's size."""

  num_train: int  # documents
  num_test: int
  num_people: tuple[int, int]
  num_distractors: tuple[int, int]
  width: int  # d_model of the widened ``tiny`` policy
  sft_steps: int
  sft_batch: int
  sft_lr: float
  nli_pairs: int
  nli_steps: int
  rl_steps: int
  prompts_per_step: int
  samples_per_prompt: int
  max_new_tokens: int
  rl_lr: float
  kl_coef: float  # the main NLI / oracle comparison
  sweep: tuple[float, ...]  # extra kl_coefs of the NLI run
  eval_docs: int
  eval_samples: int  # per held-out document
  seed: int = 0


FULL = Sizes(num_train=400, num_test=40, num_people=(2, 2), num_distractors=(1, 1),
             width=64, sft_steps=300, sft_batch=8, sft_lr=5e-3, nli_pairs=2000,
             nli_steps=300, rl_steps=20, prompts_per_step=4, samples_per_prompt=4,
             max_new_tokens=96, rl_lr=1e-3, kl_coef=0.05, sweep=(0.01,), eval_docs=16,
             eval_samples=4)
QUICK = Sizes(num_train=16, num_test=4, num_people=(2, 2), num_distractors=(1, 1),
              width=64, sft_steps=4, sft_batch=4, sft_lr=3e-3, nli_pairs=200,
              nli_steps=20, rl_steps=2, prompts_per_step=2, samples_per_prompt=2,
              max_new_tokens=24, rl_lr=3e-4, kl_coef=0.05, sweep=(), eval_docs=2,
              eval_samples=2)


# --------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------


def build_documents(data_dir: str, sizes: Sizes) -> str:
  """A grounded_summarization dataset with this experiment's document sizes."""
  from builders.grounded_summarization import grounded_summarization_dataset_builder as B  # pylint: disable=g-import-not-at-top
  config = B.GroundedSummarizationConfig(
      name="repro_rlef", description="repro_rlef: small documents for a tiny policy.",
      num_people=sizes.num_people, num_distractors=sizes.num_distractors,
      num_train=sizes.num_train, num_test=sizes.num_test)
  builder = B.Builder(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def prompt_tokens(document: str) -> np.ndarray:
  from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rlef  # pylint: disable=g-import-not-at-top
  return tokenizers.ByteTokenizer().encode(rlef.PROMPT_FORMAT.format(document=document),
                                           add_bos=True)


def summary_tokens(summary: str) -> np.ndarray:
  """The completion: a space (the prompt ends in "Summary:"), the summary, EOS."""
  from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.ByteTokenizer().encode(" " + summary, add_eos=True)


def publish_references(data_dir: str, records: Sequence[Mapping[str, Any]],
                       context: int) -> tuple[str, int, int]:
  """Every (document, reference summary) pair that fits ``context`` as an episode.

  Returns the dataset directory, the episodes kept and the longest one (tokens).
  """
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rlef  # pylint: disable=g-import-not-at-top
  schema = S.SchemaConfig(vocab_size=259, tokenizer="byte")
  episodes, longest = [], 0
  for record in records:
    prompt = prompt_tokens(record["document"])
    for summary in record["reference_summaries"]:
      action = summary_tokens(summary)
      if len(prompt) + len(action) > context:
        continue
      longest = max(longest, len(prompt) + len(action))
      turn = S.Turn(S.observation(schema, prompt, rlef.PROMPT_FORMAT.format(
          document=record["document"])), action_tokens=action, action_text=" " + summary,
                    reward=1.0)
      episodes.append(S.rollout_episode(schema, [turn], prompt_id=record["prompt_id"],
                                        task=rlef.TASK, policy_name="reference",
                                        lineage={"source": "grounded_summarization"}))
  path = P.publish({"train": episodes}, data_dir=data_dir, name="rlef_references",
                   config=schema, lineage={"benchmark": NAME, "kind": "reference summaries"})
  return path, len(episodes), longest


def policy_config(sizes: Sizes):
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  width = sizes.width
  return dataclasses.replace(mc.get_config(
      "tiny", d_model=width, num_heads=4, num_kv_heads=2, head_dim=width // 4,
      mlp_dim=2 * width), name="rlef_policy")


# --------------------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------------------


def make_eval_fn(records: Sequence[Mapping[str, Any]], classifier, ref_params,
                 sizes: Sizes):
  """``(model, params) -> metrics`` on held-out ``records``, the same seeds every call."""
  import jax  # pylint: disable=g-import-not-at-top
  from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rlef  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rollouts  # pylint: disable=g-import-not-at-top
  rows = [r for r in records for _ in range(sizes.eval_samples)]
  prompts = [prompt_tokens(r["document"]) for r in rows]
  seeds = [rollouts.prompt_seed(sizes.seed + 7, 0, j, i) for j in range(len(records))
           for i in range(sizes.eval_samples)]
  tok = tokenizers.ByteTokenizer()

  def eval_fn(model, params) -> dict[str, Any]:
    params = jax.device_get(params)
    completions = sampling.sample(model, params, prompts, seeds,
                                  sampling.SamplerConfig(temperature=1.0),
                                  sizes.max_new_tokens, eos_id=EOS).completions()
    texts = [tok.decode(c.tokens) for c in completions]
    oracle = rlef.oracle_scores([r["facts"] for r in rows], texts)
    nli = rlef.nli_scores(classifier, [r["document"] for r in rows], texts)
    scored = sampling.score(model, ref_params,
                            [np.concatenate([q, c.tokens]) for q, c in zip(prompts,
                                                                           completions)],
                            [len(q) for q in prompts])
    kl = np.asarray([np.sum(c.logprobs, dtype=np.float64) - np.sum(s.logprobs,
                                                                     dtype=np.float64)
                     for c, s in zip(completions, scored)])
    sentences = [len(world_sentences(t)) for t in texts]
    n = len(texts)
    return {"oracle": float(oracle.mean()),
            "oracle_se": float(oracle.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            "nli": float(nli.mean()), "kl": float(kl.mean()),
            "kl_se": float(kl.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            "length": float(np.mean([len(c.tokens) for c in completions])),
            "sentences": float(np.mean(sentences)),
            "eos": float(np.mean([c.stop_reason == sampling.STOP_EOS
                                  for c in completions])),
            "examples": texts[:3]}

  return eval_fn


def world_sentences(text: str) -> list[str]:
  from rlds_lm.tasks import summarization  # pylint: disable=g-import-not-at-top
  return summarization.sentences(text)


def reference_scores(records: Sequence[Mapping[str, Any]], classifier) -> dict[str, float]:
  """Oracle / NLI of the reference summaries themselves (the ceiling of the SFT data)."""
  from rlds_lm.trainers import rlef  # pylint: disable=g-import-not-at-top
  rows = [(r, s) for r in records for s in r["reference_summaries"]]
  texts = [" " + s for _, s in rows]
  oracle = rlef.oracle_scores([r["facts"] for r, _ in rows], texts)
  nli = rlef.nli_scores(classifier, [r["document"] for r, _ in rows], texts)
  return {"oracle": float(oracle.mean()), "nli": float(nli.mean()),
          "length": float(np.mean([len(t.encode()) + 1 for t in texts]))}


# --------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------


def train_sft(work: str, references: str, sizes: Sizes, context: int) -> dict[str, Any]:
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  model = policy_config(sizes)
  init_dir = os.path.join(work, "policy_init")
  ckpt_lib.save(init_dir, model, gemma.init_params(model, seed=sizes.seed), overwrite=True)
  workdir = os.path.join(work, "runs", "sft")
  steps = sizes.sft_steps
  result = distill.train(distill.DistillConfig(
      datasets={references: 1.0}, workdir=workdir, student=init_dir, loss="seqkd",
      steps=steps, batch_size=sizes.sft_batch, max_length=context, seed=sizes.seed,
      optim=common.OptimConfig(learning_rate=sizes.sft_lr,
                               warmup_steps=max(1, steps // 20)),
      log_every=max(1, steps // 20), checkpoint_every=steps, eos_id=EOS))
  return {"checkpoint": result["student"], "seconds": result["seconds"],
          "loss_curve": common.metric_curve(workdir, "loss")}


def train_rlef(work: str, prompts: str, policy: str, nli_dir: str, reward: str,
               kl_coef: float, sizes: Sizes, eval_fn) -> dict[str, Any]:
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rlef  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(work, "runs", f"rlef_{reward}_kl{kl_coef:g}")
  config = rlef.RlefConfig(
      prompts=prompts, workdir=workdir, policy=policy, reward=reward, nli_model=nli_dir,
      kl_coef=kl_coef, samples_per_prompt=sizes.samples_per_prompt,
      prompts_per_step=sizes.prompts_per_step, max_new_tokens=sizes.max_new_tokens,
      steps=sizes.rl_steps, seed=sizes.seed,
      optim=common.OptimConfig(learning_rate=sizes.rl_lr,
                               warmup_steps=max(1, sizes.rl_steps // 10)),
      checkpoint_every=sizes.rl_steps)
  result = rlef.train(config)
  curve = []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if "oracle" in row:
        curve.append({k: float(row[k]) for k in ("step", "reward", "oracle", "nli", "kl",
                                                  "length", "eos") if k in row})
  t0 = time.perf_counter()
  final = eval_fn(*G._restore(result["policy"]))  # pylint: disable=protected-access
  return {"reward": reward, "kl_coef": kl_coef, "final": final, "curve": curve,
          "prompts": result["prompts"], "seconds": result["seconds"],
          "eval_seconds": time.perf_counter() - t0}


def run(args) -> dict[str, Any]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from rlds_lm.tasks import nli  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rollouts  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  sizes = C.sizes_from(args, QUICK, FULL, ("sft_steps", "rl_steps"))
  if args.sweep is not None:
    sizes = dataclasses.replace(sizes, sweep=tuple(args.sweep))
  model = policy_config(sizes)
  context = model.max_seq_len
  timings = {}
  with C.scratch_dir(args, NAME) as work:
    t0 = time.perf_counter()
    prompts = build_documents(os.path.join(work, "data"), sizes)
    train_records = rollouts.load_prompt_records(prompts, "train")
    test_records = rollouts.load_prompt_records(prompts, "test")
    fits = [r for r in test_records
            if len(prompt_tokens(r["document"])) + sizes.max_new_tokens <= context]
    eval_records = fits[:sizes.eval_docs]
    references, episodes, longest = publish_references(os.path.join(work, "data"),
                                                       train_records, context)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    w, b, nli_report = nli.train(sizes.nli_pairs, sizes.seed, sizes.nli_steps)
    nli_dir = os.path.join(work, "nli")
    classifier = nli.NliClassifier(w, b, nli_report)
    classifier.save(nli_dir)
    timings["nli_s"] = time.perf_counter() - t0
    ceiling = reference_scores(eval_records, classifier)
    print(f"nli: {nli_report}; reference summaries: {ceiling}", flush=True)

    sft = train_sft(work, references, sizes, context)
    ref_model, ref_params = G._restore(sft["checkpoint"])  # pylint: disable=protected-access
    eval_fn = make_eval_fn(eval_records, classifier, ref_params, sizes)
    t0 = time.perf_counter()
    start = eval_fn(ref_model, ref_params)
    timings["eval_s"] = time.perf_counter() - t0
    print(f"sft: {sft['seconds']:.0f} s; eval {start}", flush=True)

    plan = [("nli", sizes.kl_coef), ("oracle", sizes.kl_coef)]
    plan += [("nli", k) for k in sizes.sweep if k != sizes.kl_coef]
    runs = []
    for reward, kl_coef in plan:
      r = train_rlef(work, prompts, sft["checkpoint"], nli_dir, reward, kl_coef, sizes,
                     eval_fn)
      print(f"rlef {reward} kl {kl_coef:g}: {r['final']}, {r['seconds']:.0f} s",
            flush=True)
      runs.append(r)
  return {
      "benchmark": NAME, "quick": args.quick, "machine": C.machine_info(),
      "sizes": dataclasses.asdict(sizes),
      "data": {"train_documents": len(train_records), "test_documents": len(test_records),
               "eval_documents": len(eval_records), "sft_episodes": episodes,
               "longest_sft_tokens": longest, "context": context},
      "policy": {"params": mc.count_params(model), "config": model.to_dict()},
      "nli": nli_report, "reference_summaries": ceiling,
      "sft": {k: v for k, v in sft.items() if k != "checkpoint"}, "start": start,
      "runs": runs, "timings": timings,
  }


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------


def _pct(x: float) -> str:
  return f"{100 * x:.1f} %"


def _printable(text: str) -> str:
  """``text`` with non-printable characters and backticks shown as ``?``."""
  return "".join(c if c.isprintable() and c != "`" else "?" for c in text.strip())


def _label(run: Mapping[str, Any]) -> str:
  return f"RLEF, reward={run['reward']}, kl_coef {run['kl_coef']:g}"


def _verdict(run: Mapping[str, Any], start: Mapping[str, Any]) -> str:
  """What one run did to the held-out numbers, in words."""
  f = run["final"]
  d_oracle, d_nli = f["oracle"] - start["oracle"], f["nli"] - start["nli"]
  noise = 2 * math.hypot(f["oracle_se"], start["oracle_se"])
  d_len = f["length"] - start["length"]
  text = (f"{_label(run)}: oracle {_pct(start['oracle'])} -> {_pct(f['oracle'])} "
          f"({100 * d_oracle:+.1f} points; two standard errors are {100 * noise:.1f}), NLI "
          f"{start['nli']:.3f} -> {f['nli']:.3f} ({d_nli:+.3f}), KL to the supervised "
          f"policy {f['kl']:.3f} +- {f['kl_se']:.3f} nats, length {start['length']:.0f} -> "
          f"{f['length']:.0f} tokens")
  gamed = []
  if d_nli > 0 and d_oracle <= noise / 2:
    gamed.append("the NLI score rose while the oracle did not follow")
  if run["reward"] == "nli" and d_len < -0.15 * start["length"]:
    gamed.append("summaries got more than 15 % shorter")
  if run["reward"] == "nli" and d_nli <= 0:
    text += ("; the optimised NLI score itself fell on the held-out documents, so RL moved "
             "the policy without raising its own reward" + (
                 " (summaries also got more than 15 % shorter)" if gamed else ""))
  elif run["reward"] == "nli":
    text += ("; signs of gaming the learned scorer: " + ", ".join(gamed) if gamed else
             "; no sign of gaming the learned scorer (NLI did not rise without the oracle, "
             "length held)")
  if abs(d_oracle) < noise:
    text += "; the oracle change is within noise"
  return text + "."


def outcome(data: Mapping[str, Any]) -> str:
  """The measured outcome in words, computed from the numbers."""
  start, ceiling = data["start"], data["reference_summaries"]
  parts = [f"The supervised policy's held-out samples are {_pct(start['oracle'])} entailed "
           f"(oracle; the reference summaries: {_pct(ceiling['oracle'])}), NLI score "
           f"{start['nli']:.3f} (references {ceiling['nli']:.3f}), "
           f"{start['length']:.0f} tokens long, and end with EOS "
           f"{_pct(start['eos'])} of the time."]
  parts += [_verdict(r, start) for r in data["runs"]]
  main = [r for r in data["runs"] if r["kl_coef"] == data["sizes"]["kl_coef"]]
  by = {r["reward"]: r["final"] for r in main}
  if "nli" in by and "oracle" in by:
    gap = by["nli"]["oracle"] - by["oracle"]["oracle"]
    where = (f"{abs(100 * gap):.1f} points {'above' if gap > 0 else 'below'}" if gap
             else "level with")
    parts.append(f"At the same kl_coef, the NLI-rewarded policy ends {where} the "
                 f"oracle-rewarded control on the oracle entailment rate.")
  nli_runs = sorted((r for r in data["runs"] if r["reward"] == "nli"),
                    key=lambda r: r["kl_coef"])
  if len(nli_runs) > 1:
    parts.append("KL sweep of the NLI run (kl_coef: held-out KL, oracle, NLI): " + "; ".join(
        f"{r['kl_coef']:g}: {r['final']['kl']:.3f} nats, {_pct(r['final']['oracle'])}, "
        f"{r['final']['nli']:.3f}" for r in nli_runs) + ".")
  for r in data["runs"]:
    curve = r["curve"]
    if not curve:
      continue
    k = max(1, min(5, len(curve) // 2))
    head = float(np.mean([p["nli"] for p in curve[:k]]))
    tail = float(np.mean([p["nli"] for p in curve[-k:]]))
    oracle_max = max(p["oracle"] for p in curve)
    text = (f"In training, {_label(r)} saw a batch NLI score of {head:.3f} over its first "
            f"{k} steps and {tail:.3f} over its last {k}, and a best batch oracle of "
            f"{_pct(oracle_max)}")
    oracle_mean = float(np.mean([p["oracle"] for p in curve]))
    text += f" (mean {_pct(oracle_mean)})"
    if r["reward"] == "oracle" and oracle_max == 0:
      text += (": every training sample of this control scored 0, so its leave-one-out "
               "advantages were all 0 and only the KL term moved it (a noisy "
               "score-function gradient, which Adam normalises to full-size steps); its KL "
               f"of {r['final']['kl']:.2f} nats is drift, not reward-seeking")
    parts.append(text + ".")
  if start["oracle"] == 0:
    batch_oracle = [p["oracle"] for r in data["runs"] for p in r["curve"]]
    parts.append(
        f"The supervised policy writes {start['sentences']:.1f} sentences per summary on "
        f"average, yet none of them on the {data['data']['eval_documents']} evaluation "
        f"documents states a document fact: the policy has learned the shape of a summary "
        f"but not to copy the document's facts, so the oracle gives almost no learning "
        f"signal (mean training-batch oracle over all runs "
        f"{_pct(float(np.mean(batch_oracle)) if batch_oracle else 0.0)}) and the learned "
        f"scorer rates its sentences low ({start['nli']:.3f}).")
  improved = [r for r in data["runs"] if r["reward"] == "nli" and
              r["final"]["oracle"] - start["oracle"] >
              2 * math.hypot(r["final"]["oracle_se"], start["oracle_se"])]
  if improved:
    parts.append("So at least one NLI-rewarded run raised the held-out oracle entailment "
                 "beyond two standard errors, RLEF's qualitative claim, at this toy scale.")
  else:
    parts.append("So this run does not reproduce RLEF's gain at this scale: no "
                 "NLI-rewarded run raised the held-out oracle entailment by two standard "
                 "errors; it shows the pipeline (SFT, learned and exact rewards, KL "
                 "control, gaming check) working end to end, not the paper's effect.")
  return " ".join(parts)


def plot(data: dict[str, Any], path: str) -> str:
  """Training-batch oracle and NLI against step, and KL against step, per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
  colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
  for run, color in zip(data["runs"], colors):
    steps = [p["step"] for p in run["curve"]]
    ax1.plot(steps, [100 * p["oracle"] for p in run["curve"]], "-", color=color,
             linewidth=1.2, label=f"{_label(run)}: oracle")
    ax1.plot(steps, [100 * p["nli"] for p in run["curve"]], "--", color=color,
             linewidth=1.0, label=f"{_label(run)}: NLI")
    ax2.plot(steps, [p["kl"] for p in run["curve"]], "-", color=color, linewidth=1.2,
             label=_label(run))
  ax1.set_xlabel("RLEF step")
  ax1.set_ylabel("training batch score (%)")
  ax1.set_title("oracle entailment (solid) and NLI (dashed)", fontsize=9)
  ax2.set_xlabel("RLEF step")
  ax2.set_ylabel("per-token KL(policy || supervised), k1 (nats)")
  ax2.set_title("KL to the supervised policy", fontsize=9)
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  ax1.legend(fontsize=6)
  ax2.legend(fontsize=6)
  fig.suptitle(f"Toy RLEF: grounded summarisation, tiny policy (d_model "
               f"{data['sizes']['width']}), 1 seed", fontsize=10)
  return G.save_figure(fig, path)


def markdown(data: dict[str, Any]) -> str:
  sizes, d, start = data["sizes"], data["data"], data["start"]
  ceiling = data["reference_summaries"]
  table = [["reference summaries", _pct(ceiling["oracle"]), f"{ceiling['nli']:.3f}", "—",
            f"{ceiling['length']:.0f}", "—", "—"],
           [f"supervised (SFT, {sizes['sft_steps']} steps)", _pct(start["oracle"]),
            f"{start['nli']:.3f}", "0 (itself)", f"{start['length']:.0f}",
            _pct(start["eos"]), f"{data['sft']['seconds']:.0f}"]]
  for run in data["runs"]:
    f = run["final"]
    table.append([f"{_label(run)}, {sizes['rl_steps']} steps",
                  f"{_pct(f['oracle'])} +- {100 * f['oracle_se']:.1f}", f"{f['nli']:.3f}",
                  f"{f['kl']:.3f} +- {f['kl_se']:.3f}", f"{f['length']:.0f}",
                  _pct(f["eos"]), f"{run['seconds']:.0f}"])
  quick_note = ("\n**Quick smoke run (`--quick`): sizes far too small to learn; not "
                "representative.**\n" if data["quick"] else "")
  n_eval = d["eval_documents"] * sizes["eval_samples"]
  examples = data["runs"][0]["final"]["examples"] if data["runs"] else []
  nli = data["nli"]
  lines = [
      f"## Entailment-feedback RL on grounded summarisation (`{NAME}`)", quick_note,
      "A toy replication of RLEF (Roit et al., 2023, \"Factually Consistent "
      "Summarization via Reinforcement Learning with Textual Entailment Feedback\"): a "
      "supervised summariser tuned by REINFORCE with a learned entailment scorer as the "
      "reward and a KL penalty to the supervised policy, with the exact entailment of a "
      "synthetic world as ground truth and as a control reward. "
      f"`python -m benchmarks.repro_rlef --out docs/` (`benchmarks/repro_rlef.py`).", "",
      f"* Data: `grounded_summarization` with a custom config ({sizes['num_people'][0]}-"
      f"{sizes['num_people'][1]} people, {sizes['num_distractors'][0]}-"
      f"{sizes['num_distractors'][1]} distractors per document) so that prompt + summary fit "
      f"the {d['context']}-token context: {d['train_documents']} train documents "
      f"({d['sft_episodes']} (document, reference summary) SFT episodes, longest "
      f"{d['longest_sft_tokens']} tokens) and {d['test_documents']} test documents, of which "
      f"{d['eval_documents']} are the held-out evaluation set.",
      f"* Supervised policy: `tiny` with d_model {sizes['width']} "
      f"({data['policy']['params'] / 1e6:.2f} M parameters), SFT'd from scratch "
      f"(`distill.train(loss=\"seqkd\")`) on prompt `rlef.PROMPT_FORMAT` -> \" \" + "
      f"reference summary + EOS, {sizes['sft_steps']} steps of batch {sizes['sft_batch']}, "
      f"peak learning rate {sizes['sft_lr']:g}. It is every RLEF run's start and KL "
      f"reference.",
      f"* Learned scorer: `rlds_lm.tasks.nli.train` ({nli['train_pairs']} pairs, "
      f"{nli['steps']} steps; held-out pair accuracy {_pct(nli['test_accuracy'])}). "
      f"Oracle: `world.entailment`, the fraction of summary sentences that state a document "
      f"fact (0 for an empty summary).",
      f"* RLEF (`rlef.train`): {sizes['rl_steps']} steps of {sizes['prompts_per_step']} train "
      f"documents x {sizes['samples_per_prompt']} samples (RLOO advantages, k1 KL penalty), "
      f"up to {sizes['max_new_tokens']} new tokens, AdamW peak learning rate "
      f"{sizes['rl_lr']:g}, seed {sizes['seed']}; reward=\"nli\" and the control "
      f"reward=\"oracle\" at kl_coef {sizes['kl_coef']:g}"
      + (", and reward=\"nli\" at kl_coef " + ", ".join(f"{k:g}" for k in sizes["sweep"])
         if sizes["sweep"] else "") + ".",
      f"* Held-out evaluation: {sizes['eval_samples']} temperature-1 samples per evaluation "
      f"document ({n_eval} summaries, the same seeds for every policy): mean oracle "
      f"(+- one standard error), mean NLI score, Monte Carlo KL(policy || supervised) "
      f"(per summary the sum over tokens of log pi - log pi_sft; +- one standard error), "
      f"mean length in tokens (EOS included) and the fraction that end with EOS.",
      "",
      C.markdown_table(["policy", "held-out oracle entailment", "held-out NLI",
                        "KL to supervised (nats / summary)", "length (tokens)", "ends with EOS",
                        "train s"], table,
                       align=["l", "r", "r", "r", "r", "r", "r"]),
      "",
      outcome(data),
      "",
      f"![Training-batch oracle and NLI scores, and KL to the supervised policy, against "
      f"step]({G.plot_name(data['quick'], NAME)})",
      "",
  ]
  if examples:
    lines += ["Held-out samples of the first RLEF run (" + _label(data["runs"][0]) + "):",
              ""] + [f"* `{_printable(e)[:200]}`" for e in examples] + [""]
  lines.append(
      f"Caveats: toy scale, one seed, {sizes['rl_steps']} RL steps on "
      f"{sizes['rl_steps'] * sizes['prompts_per_step'] * sizes['samples_per_prompt']} "
      f"samples in all; the held-out numbers rest on {n_eval} summaries (standard errors "
      f"shown), and the training curves on "
      f"{sizes['prompts_per_step'] * sizes['samples_per_prompt']} samples per step, so they are noisy. The policy is tiny "
      f"and SFT'd briefly from scratch on CPU: its summaries are only partly well-formed, "
      f"which bounds what RL can reach in a few steps. The NLI scorer is a bag-of-features "
      f"logistic regression trained on rendered (canonical-template) facts, far weaker "
      f"than the paper's T5 NLI model; its blind spots are exactly what a policy could "
      f"exploit. {TUNING_NOTE if not data['quick'] else ''}")
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--sft-steps", type=int, default=0, help="override the SFT steps")
  parser.add_argument("--rl-steps", type=int, default=0, help="override the RLEF steps")
  parser.add_argument("--sweep", type=float, nargs="*", default=None,
                      help="extra kl_coefs of the NLI run (none: no sweep)")
  args = parser.parse_args(argv)

  return G.results_main(NAME, args, run, markdown, plot)


if __name__ == "__main__":
  sys.exit(main())
