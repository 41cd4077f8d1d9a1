"""A toy reproduction of RLEF: summarisation RL with a learned entailment reward.

RLEF (reinforcement learning from entailment feedback; Roit et al., 2023, "Factually
Consistent Summarization via Reinforcement Learning with Textual Entailment Feedback")
starts from a supervised summariser trained on references that are not all faithful
(XSum's references state facts their articles do not), tunes it with an NLI model's
P(document entails summary) as the reward and a KL penalty to the supervised policy,
and reports (a) more faithful summaries, traded against the distance from the supervised
policy by the KL weight, and (b) with a small KL weight, a policy that games the NLI
model: its score rises beyond the real faithfulness and summaries get shorter or more
extractive. This script replays that at toy scale, on CPU, where the truth is known:

1. Task: ``builders/grounded_summarization`` with a custom config: short documents (one
   person, at most one distractor) and ``unfaithful_references``: that fraction of the
   reference summaries states one fact the document never mentions (the premise). The
   train split's references (+ EOS) are published as rollout episodes; its test split is
   cut into validation documents (for tuning) and test documents (reported).
2. Supervised policy: a small byte-level model SFT'd with
   ``distill.train(loss="seqkd")`` on those references, prompt ``rlef.PROMPT_FORMAT``.
3. A learned NLI scorer (``rlds_lm.tasks.nli.train``, logistic regression on lexical
   features: it sees entity overlap, not relations).
4. RLEF (``rlef.train``) from the supervised policy with ``reward="nli"`` at each
   kl_coef of a sweep, and the control ``reward="oracle"`` (``world.entailment``, the
   exact fraction of summary sentences that state a document fact) at the middle one.
5. Held-out evaluation (temperature-1 samples with fixed seeds) of the supervised and
   each tuned policy: oracle entailment, NLI score, Monte Carlo KL(policy || supervised),
   length, the fraction of sentences copied verbatim from the document (extractiveness)
   and of sentences stating an unsupported fact; then one verdict per claim.

Results go to ``benchmarks/results/repro_rlef.json`` (``claims``: one
``{"claim", "measured", "reproduced"}`` per claim) and, with ``--out DIR``, to the
``repro_rlef`` section of ``DIR/results.md`` and the plot ``DIR/repro_rlef.png``.

    python -m benchmarks.repro_rlef --out docs/      # 8.5 min measured at load 2-3 on 2 CPUs
    python -m benchmarks.repro_rlef --quick          # smoke run, about a minute
    python -m benchmarks.repro_rlef --large          # the GPU setting (wider, longer)
    python -m benchmarks.repro_rlef --eval-split validation   # tuning: never the test set
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
from benchmarks import _results as R
from rlds_lm import toy

NAME = "repro_rlef"
BOS, EOS = toy.BOS, toy.EOS
# How FULL was chosen: probes evaluated on held-out documents of a probe config (the same
# world settings, other documents: validation), never on the reported test documents.
TUNING_NOTE = (
    "How the sizes were chosen (probes on a probe dataset of the same settings, whose "
    "held-out documents served as validation; never the test documents reported here; "
    "all on a machine shared with other jobs at load average 8-11 on 2 CPUs): an SFT "
    "probe of d_model 64, 300 steps of batch 16, reached 11.5 +- 2.3 % held-out oracle "
    "entailment (NLI 0.214, 39 % of samples ending with EOS within 80 tokens); d_model 128 "
    "learned faster per step (loss 0.102 against 0.134 at step 240) but cost about twice "
    "as much per step and did not fit the budget; so SFT went to 400 steps at d_model 64 "
    "and the summary budget to 96 tokens. One RL probe (NLI reward, kl_coef 0.03, "
    "learning rate 1e-3, 4 x 4 samples per step, 30 steps) drifted to 6-8 nats of KL "
    "within 10 steps while the held-out oracle fell (11.5 % -> 5.2 %), so the RL learning "
    "rate went to 3e-4; the samples per step were halved (2 documents x 4) to fit 100 "
    "steps per run and three runs into the budget, and the sweep to two kl_coefs "
    "(0.01, 0.1). That first default (400 SFT steps) ran once on the test documents "
    "(kept as `benchmarks/results/repro_rlef_sft400.json` and "
    "[repro_rlef_sft400.png](repro_rlef_sft400.png)): its supervised policy started at "
    "15.5 % oracle entailment, below the premise's 30 %; NLI-rewarded RL at kl_coef 0.01 "
    "raised that to 23.4 % (+8.0 points, two standard errors 6.1) at 4.1 nats, the NLI "
    "score rose 0.05 more than the oracle (two standard errors 0.046), and the policy "
    "stopped ending its summaries (EOS 31 % -> 5 %) instead of shortening them. The SFT "
    "steps were then raised on validation evidence alone: the same run with 700 SFT steps "
    "evaluated on the validation documents (`benchmarks/results/repro_rlef_validation.json`) "
    "started at 36.0 %, so the default became 700 steps, nothing else changed.")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that sets the experiment's size."""

  num_train: int  # documents whose references are the SFT data and the RL prompts
  num_validation: int  # held-out documents for tuning
  num_test: int  # held-out documents reported
  num_people: tuple[int, int]
  num_distractors: tuple[int, int]
  unfaithful: float  # fraction of reference summaries with one unsupported fact
  width: int  # d_model of the policy
  layers: int
  context: int  # the policy's max_seq_len
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
  sweep: tuple[float, ...]  # kl_coefs of the NLI-rewarded runs
  control_kl: float  # kl_coef of the oracle-rewarded control
  eval_docs: int
  eval_samples: int  # per held-out document
  seed: int = 0


FULL = Sizes(num_train=800, num_validation=24, num_test=24, num_people=(1, 1),
             num_distractors=(0, 1), unfaithful=0.4, width=64, layers=4, context=400,
             sft_steps=700, sft_batch=16, sft_lr=5e-3, nli_pairs=2000, nli_steps=300,
             rl_steps=100, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=96,
             rl_lr=3e-4, sweep=(0.01, 0.1), control_kl=0.01, eval_docs=24,
             eval_samples=4)
# The GPU setting: a wider, deeper policy trained longer, more RL samples and steps.
LARGE = dataclasses.replace(
    FULL, num_train=4000, num_validation=64, num_test=64, width=256, layers=6,
    sft_steps=3000, sft_batch=32, sft_lr=2e-3, rl_steps=400, prompts_per_step=16,
    sweep=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3), eval_docs=64, eval_samples=8,
    rl_lr=1e-4)
QUICK = Sizes(num_train=16, num_validation=2, num_test=2, num_people=(1, 1),
              num_distractors=(0, 1), unfaithful=0.4, width=32, layers=2, context=384,
              sft_steps=4, sft_batch=4, sft_lr=3e-3, nli_pairs=200, nli_steps=20,
              rl_steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=24,
              rl_lr=3e-4, sweep=(0.01, 0.1), control_kl=0.1, eval_docs=2, eval_samples=2)


# --------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------


def build_documents(data_dir: str, sizes: Sizes) -> str:
  """A grounded_summarization dataset with this experiment's documents and references.

  The test split holds the validation documents first, then the test documents.
  """
  from builders.grounded_summarization import grounded_summarization_dataset_builder as B  # pylint: disable=g-import-not-at-top
  config = B.GroundedSummarizationConfig(
      name="repro_rlef", description="repro_rlef: short documents, unfaithful references.",
      num_people=sizes.num_people, num_distractors=sizes.num_distractors,
      unfaithful_references=sizes.unfaithful, num_train=sizes.num_train,
      num_test=sizes.num_validation + sizes.num_test)
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
      "tiny", d_model=width, num_layers=sizes.layers, num_heads=4, num_kv_heads=2,
      head_dim=width // 4, mlp_dim=2 * width, max_seq_len=sizes.context),
                             name="rlef_policy")


# --------------------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------------------


def _se(values: Sequence[float]) -> float:
  values = np.asarray(values, np.float64)
  return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def summary_stats(document: str, facts: Sequence[str], text: str) -> dict[str, float]:
  """One summary's sentence counts: supported, unsupported (a parsed fact the document
  does not state), unparsed, and copied verbatim from the document (extractive)."""
  from rlds_lm.tasks import summarization as world  # pylint: disable=g-import-not-at-top
  result = world.entailment(facts, text)
  document_sentences = set(world.sentences(document))
  said = world.sentences(text)
  n = len(said)
  return {"sentences": float(n),
          "unsupported": len(result["unsupported"]) / n if n else 0.0,
          "unparsed": len(result["unparsed"]) / n if n else 0.0,
          "extractive": sum(s in document_sentences for s in said) / n if n else 0.0,
          "hallucinates": float(bool(result["unsupported"]))}


def make_eval_fn(records: Sequence[Mapping[str, Any]], classifier, ref_params,
                 sizes: Sizes):
  """``(model, params) -> metrics`` on held-out ``records``, the same seeds every call.

  Per summary: the oracle score, the NLI score (the optimised reward), their difference,
  KL(policy || supervised) (sum over tokens of log pi - log pi_sft), the length in tokens
  and :func:`summary_stats`; returned as means, most with one standard error.
  """
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
    oracle = rlef.oracle_scores([r["facts"] for r in rows], texts).astype(np.float64)
    nli = rlef.nli_scores(classifier, [r["document"] for r in rows],
                          texts).astype(np.float64)
    scored = sampling.score(model, ref_params,
                            [np.concatenate([q, c.tokens]) for q, c in zip(prompts,
                                                                           completions)],
                            [len(q) for q in prompts])
    kl = np.asarray([np.sum(c.logprobs, dtype=np.float64) - np.sum(s.logprobs,
                                                                     dtype=np.float64)
                     for c, s in zip(completions, scored)])
    length = np.asarray([len(c.tokens) for c in completions], np.float64)
    stats = [summary_stats(r["document"], r["facts"], t) for r, t in zip(rows, texts)]
    out = {}
    for key, values in (("oracle", oracle), ("nli", nli), ("gap", nli - oracle),
                        ("kl", kl), ("length", length)):
      out[key], out[f"{key}_se"] = float(values.mean()), _se(values)
    for key in ("sentences", "unsupported", "unparsed", "extractive", "hallucinates"):
      values = [s[key] for s in stats]
      out[key], out[f"{key}_se"] = float(np.mean(values)), _se(values)
    out["eos"] = float(np.mean([c.stop_reason == sampling.STOP_EOS for c in completions]))
    out["examples"] = texts[:4]
    return out

  return eval_fn


def reference_scores(records: Sequence[Mapping[str, Any]], classifier) -> dict[str, float]:
  """Oracle / NLI of the reference summaries themselves (what SFT imitates)."""
  from rlds_lm.trainers import rlef  # pylint: disable=g-import-not-at-top
  rows = [(r, s) for r in records for s in r["reference_summaries"]]
  texts = [" " + s for _, s in rows]
  oracle = rlef.oracle_scores([r["facts"] for r, _ in rows], texts)
  nli = rlef.nli_scores(classifier, [r["document"] for r, _ in rows], texts)
  stats = [summary_stats(r["document"], r["facts"], t) for (r, _), t in zip(rows, texts)]
  return {"oracle": float(oracle.mean()), "nli": float(nli.mean()),
          "length": float(np.mean([len(t.encode()) + 1 for t in texts])),
          "hallucinates": float(np.mean([s["hallucinates"] for s in stats])),
          "unsupported": float(np.mean([s["unsupported"] for s in stats])),
          "extractive": float(np.mean([s["extractive"] for s in stats])),
          "summaries": len(texts)}


def scorer_blind_spots(records: Sequence[Mapping[str, Any]], classifier
                       ) -> dict[str, float]:
  """Mean NLI score of three kinds of sentence on ``records``' documents: a document
  fact (canonical template), the same fact with an object the document never mentions
  (what the unfaithful references say), and a distractor sentence copied verbatim (not a
  fact; the oracle scores it 0). A learned reward that rates the third highly can be
  gamed by copying."""
  from rlds_lm.tasks import summarization as world  # pylint: disable=g-import-not-at-top
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  kinds = {"fact": [], "extrinsic": [], "copied_distractor": []}
  for record in records:
    document = record["document"]
    facts = [world.from_line(f) for f in record["facts"]]
    for fact in facts:
      kinds["fact"].append((document, world.render(fact)))
      kinds["extrinsic"].append((document, world.render(
          world.unsupported_variant(fact, document, rng))))
    for sentence in world.sentences(document):
      if world.parse_sentence(sentence) is None:
        kinds["copied_distractor"].append((document, sentence))
  return {k: float(np.mean(classifier.predict([d for d, _ in v], [h for _, h in v])))
          if v else float("nan") for k, v in kinds.items()}


# --------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------


def train_sft(work: str, references: str, sizes: Sizes) -> dict[str, Any]:
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
      steps=steps, batch_size=sizes.sft_batch, max_length=sizes.context, seed=sizes.seed,
      optim=common.OptimConfig(learning_rate=sizes.sft_lr,
                               warmup_steps=max(1, steps // 20)),
      log_every=max(1, steps // 20), checkpoint_every=steps, eos_id=EOS))
  return {"checkpoint": result["student"], "seconds": result["seconds"],
          "loss_curve": common.metric_curve(workdir, "loss")}


CURVE_KEYS = ("step", "reward", "oracle", "nli", "kl", "kl_sequence", "length", "eos")


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
      row = json.loads(line) if line.strip() else {}
      if "oracle" in row:
        curve.append({k: float(row[k]) for k in CURVE_KEYS if k in row})
  t0 = time.perf_counter()
  final = eval_fn(*R.restore(result["policy"]))
  return {"reward": reward, "kl_coef": kl_coef, "final": final, "curve": curve,
          "prompts": result["prompts"], "seconds": result["seconds"],
          "eval_seconds": time.perf_counter() - t0}


def run(args) -> dict[str, Any]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from rlds_lm.tasks import nli  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rollouts  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  base = LARGE if args.large else FULL
  sizes = C.sizes_from(args, QUICK, base, ("sft_steps", "rl_steps"))
  if args.sweep:
    sizes = dataclasses.replace(sizes, sweep=tuple(sorted(args.sweep)))
  if args.control_kl is not None:
    sizes = dataclasses.replace(sizes, control_kl=args.control_kl)
  model = policy_config(sizes)
  timings = {}
  with C.scratch_dir(args, NAME) as work:
    t0 = time.perf_counter()
    prompts = build_documents(os.path.join(work, "data"), sizes)
    train_records = rollouts.load_prompt_records(prompts, "train")
    held_out = rollouts.load_prompt_records(prompts, "test")
    splits = {"validation": held_out[:sizes.num_validation],
              "test": held_out[sizes.num_validation:]}
    fits = [r for r in splits[args.eval_split]
            if len(prompt_tokens(r["document"])) + sizes.max_new_tokens <= sizes.context]
    eval_records = fits[:sizes.eval_docs]
    references, episodes, longest = publish_references(os.path.join(work, "data"),
                                                       train_records, sizes.context)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    w, b, nli_report = nli.train(sizes.nli_pairs, sizes.seed, sizes.nli_steps)
    nli_dir = os.path.join(work, "nli")
    classifier = nli.NliClassifier(w, b, nli_report)
    classifier.save(nli_dir)
    timings["nli_s"] = time.perf_counter() - t0
    ceiling = reference_scores(train_records, classifier)
    blind_spots = scorer_blind_spots(eval_records, classifier)
    print(f"nli: {nli_report}; references: {ceiling}; scorer: {blind_spots}", flush=True)

    sft = train_sft(work, references, sizes)
    ref_model, ref_params = R.restore(sft["checkpoint"])
    eval_fn = make_eval_fn(eval_records, classifier, ref_params, sizes)
    t0 = time.perf_counter()
    start = eval_fn(ref_model, ref_params)
    timings["eval_s"] = time.perf_counter() - t0
    print(f"sft: {sft['seconds']:.0f} s; eval {start}", flush=True)

    plan = [("nli", k) for k in sizes.sweep] + [("oracle", sizes.control_kl)]
    runs = []
    for reward, kl_coef in plan:
      r = train_rlef(work, prompts, sft["checkpoint"], nli_dir, reward, kl_coef, sizes,
                     eval_fn)
      print(f"rlef {reward} kl {kl_coef:g}: {r['final']}, {r['seconds']:.0f} s",
            flush=True)
      runs.append(r)
  data = {
      "benchmark": getattr(args, "result_name", NAME), "quick": args.quick, "large": bool(args.large),
      "machine": C.machine_info(), "sizes": dataclasses.asdict(sizes),
      "eval_split": args.eval_split,
      "data": {"train_documents": len(train_records),
               "validation_documents": len(splits["validation"]),
               "test_documents": len(splits["test"]),
               "eval_documents": len(eval_records), "sft_episodes": episodes,
               "longest_sft_tokens": longest, "context": sizes.context},
      "policy": {"params": mc.count_params(model), "config": model.to_dict()},
      "nli": nli_report, "scorer_blind_spots": blind_spots,
      "reference_summaries": ceiling,
      "sft": {k: v for k, v in sft.items() if k != "checkpoint"}, "start": start,
      "runs": runs, "timings": timings,
  }
  data["claims"] = claims(data)
  return data


# --------------------------------------------------------------------------------------
# Claims: each a pure function of the measured numbers.
# --------------------------------------------------------------------------------------


def _pct(x: float) -> str:
  return f"{100 * x:.1f} %"


def _two_se(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> float:
  """Two standard errors of the difference of ``key`` between two evaluations."""
  return 2 * math.hypot(a.get(f"{key}_se", 0.0), b.get(f"{key}_se", 0.0))


def nli_runs(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  return sorted((r for r in data["runs"] if r["reward"] == "nli"),
                key=lambda r: r["kl_coef"])


def _slope(curve: Sequence[Mapping[str, float]], key: str) -> float:
  """Least-squares slope of a training-batch metric against the step (per 100 steps)."""
  if len(curve) < 2:
    return 0.0
  steps = np.asarray([p["step"] for p in curve], np.float64)
  values = np.asarray([p[key] for p in curve], np.float64)
  return float(100 * np.polyfit(steps, values, 1)[0])


def claims(data: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One ``{"claim", "measured", "reproduced", ...numbers}`` per claim tested."""
  start, runs = data["start"], nli_runs(data)
  out = []
  premise_ok = 0.3 <= start["oracle"] <= 0.7
  out.append({
      "claim": "premise: the supervised policy, trained on partly unfaithful references, "
               "starts between 30 % and 70 % held-out oracle entailment",
      "measured": f"supervised policy {_pct(start['oracle'])} (references "
                  f"{_pct(data['reference_summaries']['oracle'])}, "
                  f"{_pct(data['reference_summaries']['hallucinates'])} of them state an "
                  f"unsupported fact)",
      "reproduced": premise_ok, "oracle": start["oracle"]})
  if not runs:
    return out
  deltas = [{"kl_coef": r["kl_coef"],
             "d_oracle": r["final"]["oracle"] - start["oracle"],
             "two_se": _two_se(r["final"], start, "oracle"),
             "kl": r["final"]["kl"]} for r in runs]
  better = [d for d in deltas if d["d_oracle"] > d["two_se"]]
  out.append({
      "claim": "(a) RLEF with the learned NLI reward raises held-out oracle entailment "
               "above the supervised policy",
      "measured": "; ".join(f"kl_coef {d['kl_coef']:g}: {100 * d['d_oracle']:+.1f} points "
                            f"(2 SE {100 * d['two_se']:.1f})" for d in deltas),
      "reproduced": bool(better), "deltas": deltas})
  kls = [r["final"]["kl"] for r in runs]
  rewards = [r["final"]["nli"] for r in runs]
  oracles = [r["final"]["oracle"] for r in runs]
  monotone = all(a > b for a, b in zip(kls, kls[1:]))
  trade = len(runs) > 1 and monotone and rewards[0] > rewards[-1]
  out.append({
      "claim": "(a) with a visible KL trade-off: a smaller kl_coef moves the policy further "
               "from the supervised one (more KL) for more reward",
      "measured": "kl_coef: KL nats / NLI / oracle = " + "; ".join(
          f"{r['kl_coef']:g}: {r['final']['kl']:.2f} / {r['final']['nli']:.3f} / "
          f"{_pct(r['final']['oracle'])}" for r in runs),
      "reproduced": bool(trade), "kl": kls, "nli": rewards, "oracle": oracles,
      "kl_coefs": [r["kl_coef"] for r in runs]})
  small = runs[0]
  f = small["final"]
  d_gap = f["gap"] - start["gap"]
  gap_noise = _two_se(f, start, "gap")
  slope_nli, slope_oracle = _slope(small["curve"], "nli"), _slope(small["curve"], "oracle")
  out.append({
      "claim": f"(b) with a small kl_coef ({small['kl_coef']:g}) the learned NLI score "
               f"rises faster than the oracle (the scorer is gamed)",
      "measured": f"held-out NLI {start['nli']:.3f} -> {f['nli']:.3f}, oracle "
                  f"{start['oracle']:.3f} -> {f['oracle']:.3f}: NLI - oracle changed by "
                  f"{d_gap:+.3f} (2 SE {gap_noise:.3f}); training-batch slopes per 100 "
                  f"steps NLI {slope_nli:+.3f}, oracle {slope_oracle:+.3f}",
      "reproduced": bool(d_gap > gap_noise), "d_gap": d_gap, "two_se": gap_noise,
      "slope_nli": slope_nli, "slope_oracle": slope_oracle})
  d_len, len_noise = f["length"] - start["length"], _two_se(f, start, "length")
  d_ext, ext_noise = f["extractive"] - start["extractive"], _two_se(f, start, "extractive")
  out.append({
      "claim": f"(b) and, with that small kl_coef, summaries get shorter or more "
               f"extractive",
      "measured": f"length {start['length']:.1f} -> {f['length']:.1f} tokens "
                  f"({d_len:+.1f}, 2 SE {len_noise:.1f}); sentences copied verbatim from "
                  f"the document {_pct(start['extractive'])} -> {_pct(f['extractive'])} "
                  f"({100 * d_ext:+.1f} points, 2 SE {100 * ext_noise:.1f})",
      "reproduced": bool(-d_len > len_noise or d_ext > ext_noise), "d_length": d_len,
      "d_extractive": d_ext})
  control = [r for r in data["runs"] if r["reward"] == "oracle"]
  if control:
    c = control[0]["final"]
    d = c["oracle"] - start["oracle"]
    noise = _two_se(c, start, "oracle")
    out.append({
        "claim": f"control: optimising the exact oracle (kl_coef "
                 f"{control[0]['kl_coef']:g}) raises held-out oracle entailment",
        "measured": f"{_pct(start['oracle'])} -> {_pct(c['oracle'])} ({100 * d:+.1f} "
                    f"points, 2 SE {100 * noise:.1f}); KL {c['kl']:.2f} nats",
        "reproduced": bool(d > noise), "d_oracle": d, "two_se": noise})
  return out


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------


def _printable(text: str) -> str:
  """``text`` with non-printable characters and backticks shown as ``?``."""
  return "".join(c if c.isprintable() and c != "`" else "?" for c in text.strip())


def _label(run: Mapping[str, Any]) -> str:
  return f"reward={run['reward']}, kl_coef {run['kl_coef']:g}"


def _smooth(values: Sequence[float], k: int = 10) -> np.ndarray:
  values = np.asarray(values, np.float64)
  if len(values) < k:
    return values
  kernel = np.ones(k) / k
  head = [values[:i + 1].mean() for i in range(k - 1)]
  return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot(data: dict[str, Any], path: str) -> str:
  """Training-batch oracle / NLI, length and KL against step per run; held-out reward
  against held-out KL per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  (ax1, ax2), (ax3, ax4) = axes
  colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray")
  start = data["start"]
  for run, color in zip(data["runs"], colors):
    curve = run["curve"]
    steps = [p["step"] for p in curve]
    ax1.plot(steps, 100 * _smooth([p["oracle"] for p in curve]), "-", color=color,
             linewidth=1.3, label=f"{_label(run)}: oracle")
    ax1.plot(steps, 100 * _smooth([p["nli"] for p in curve]), "--", color=color,
             linewidth=1.0, label=f"{_label(run)}: NLI")
    ax3.plot(steps, _smooth([p["length"] for p in curve]), "-", color=color,
             linewidth=1.2, label=_label(run))
    ax4.plot(steps, _smooth([p.get("kl_sequence", p["kl"]) for p in curve]), "-",
             color=color, linewidth=1.2, label=_label(run))
    f = run["final"]
    ax2.errorbar([f["kl"]], [100 * f["oracle"]], xerr=[f["kl_se"]],
                 yerr=[100 * f["oracle_se"]], fmt="o", color=color, capsize=2,
                 label=f"{_label(run)}: oracle")
    ax2.plot([f["kl"]], [100 * f["nli"]], "s", mfc="none", color=color,
             label=f"{_label(run)}: NLI")
  runs = nli_runs(data)
  if runs:
    ax2.plot([0] + [r["final"]["kl"] for r in reversed(runs)],
             [100 * start["oracle"]] + [100 * r["final"]["oracle"] for r in reversed(runs)],
             "-", color="black", linewidth=0.8, alpha=0.5)
    ax2.plot([0] + [r["final"]["kl"] for r in reversed(runs)],
             [100 * start["nli"]] + [100 * r["final"]["nli"] for r in reversed(runs)],
             ":", color="black", linewidth=0.8, alpha=0.5)
  ax2.plot([0], [100 * start["oracle"]], "ko", label="supervised: oracle")
  ax2.plot([0], [100 * start["nli"]], "ks", mfc="none", label="supervised: NLI")
  ax1.set_title("training batches: oracle (solid) and NLI (dashed), 10-step mean",
                fontsize=9)
  ax1.set_ylabel("score (%)")
  ax2.set_title(f"held-out ({data.get('eval_split', 'test')}) score against "
                f"KL(policy || supervised)", fontsize=9)
  ax2.set_xlabel("KL (nats per summary)")
  ax2.set_ylabel("score (%): oracle (filled), NLI (open)")
  ax3.set_title("training batches: summary length (tokens), 10-step mean", fontsize=9)
  ax3.set_ylabel("tokens")
  ax4.set_title("training batches: KL to the supervised policy (nats per summary)",
                fontsize=9)
  ax4.set_ylabel("nats")
  for ax in (ax1, ax3, ax4):
    ax.set_xlabel("RLEF step")
  for ax in (ax1, ax2, ax3, ax4):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.suptitle(f"Toy RLEF: grounded summarisation with "
               f"{_pct(data['sizes']['unfaithful'])} unfaithful references; policy "
               f"d_model {data['sizes']['width']}, {data['sizes']['layers']} layers; 1 seed",
               fontsize=10)
  return R.save_figure(fig, path)


def _final_row(label: str, f: Mapping[str, Any], seconds: str) -> list[str]:
  return [label, f"{_pct(f['oracle'])} +- {100 * f['oracle_se']:.1f}",
          f"{f['nli']:.3f} +- {f['nli_se']:.3f}",
          f"{f['kl']:.2f} +- {f['kl_se']:.2f}" if "kl" in f else "—",
          f"{f['length']:.0f}", _pct(f["hallucinates"]), _pct(f["extractive"]),
          _pct(f["eos"]) if "eos" in f else "—", seconds]


def markdown(data: dict[str, Any]) -> str:
  sizes, d, start = data["sizes"], data["data"], data["start"]
  ceiling, nli, blind = data["reference_summaries"], data["nli"], data["scorer_blind_spots"]
  table = [[f"reference summaries (train, {ceiling['summaries']})",
            _pct(ceiling["oracle"]), f"{ceiling['nli']:.3f}", "—",
            f"{ceiling['length']:.0f}", _pct(ceiling["hallucinates"]),
            _pct(ceiling["extractive"]), "—", "—"],
           _final_row(f"supervised (SFT, {sizes['sft_steps']} steps)",
                      {**start, "kl": 0.0, "kl_se": 0.0}, f"{data['sft']['seconds']:.0f}")]
  for run in data["runs"]:
    table.append(_final_row(f"RLEF {_label(run)}, {sizes['rl_steps']} steps", run["final"],
                            f"{run['seconds']:.0f}"))
  quick_note = ("\n**Quick smoke run (`--quick`): sizes far too small to learn; not "
                "representative.**\n" if data["quick"] else "")
  large_note = "\n**Larger (GPU) setting (`--large`).**\n" if data.get("large") else ""
  n_eval = d["eval_documents"] * sizes["eval_samples"]
  split = data.get("eval_split", "test")
  claim_lines = [f"* {'**reproduced**' if c['reproduced'] else '**not reproduced**'}: "
                 f"{c['claim']}. Measured: {c['measured']}." for c in data["claims"]]
  lines = [
      f"## Entailment-feedback RL on grounded summarisation (`{data['benchmark']}`)",
      quick_note + large_note,
      "A toy replication of RLEF (Roit et al., 2023, \"Factually Consistent "
      "Summarization via Reinforcement Learning with Textual Entailment Feedback\") with "
      "the paper's premise: the supervised summariser learns from references of which a "
      "fraction state a fact the document does not support, then REINFORCE tunes it with "
      "a learned entailment scorer as the reward and a KL penalty to the supervised "
      "policy; the exact entailment of a synthetic world is the ground truth and a control "
      "reward. `python -m benchmarks.repro_rlef --out docs/` (`benchmarks/repro_rlef.py`; "
      "`--large` is the GPU setting).", "",
      f"* Data: `grounded_summarization` with a custom config ({sizes['num_people'][0]}-"
      f"{sizes['num_people'][1]} people, {sizes['num_distractors'][0]}-"
      f"{sizes['num_distractors'][1]} distractors per document, "
      f"`unfaithful_references={sizes['unfaithful']:g}`: that fraction of the reference "
      f"summaries has one fact replaced by one with an object the document never "
      f"mentions): {d['train_documents']} train documents ({d['sft_episodes']} SFT "
      f"episodes, longest {d['longest_sft_tokens']} tokens), "
      f"{d['validation_documents']} validation documents (tuning) and "
      f"{d['test_documents']} test documents; this run evaluates on "
      f"{d['eval_documents']} {split} documents.",
      f"* Supervised policy: d_model {sizes['width']}, {sizes['layers']} layers "
      f"({data['policy']['params'] / 1e6:.2f} M parameters, context {d['context']}), "
      f"SFT'd from scratch (`distill.train(loss=\"seqkd\")`) on prompt "
      f"`rlef.PROMPT_FORMAT` -> \" \" + reference summary + EOS, {sizes['sft_steps']} "
      f"steps of batch {sizes['sft_batch']}, peak learning rate {sizes['sft_lr']:g}. It is "
      f"every RLEF run's start and KL reference.",
      f"* Learned scorer: `rlds_lm.tasks.nli.train` ({nli['train_pairs']} pairs, "
      f"{nli['steps']} steps; held-out pair accuracy {_pct(nli['test_accuracy'])}). On the "
      f"evaluation documents it gives a document fact {blind['fact']:.3f}, the same fact "
      f"with an object the document never mentions {blind['extrinsic']:.3f}, and a "
      f"distractor sentence copied verbatim (not a fact) {blind['copied_distractor']:.3f}. "
      f"Oracle: `world.entailment`, the fraction of summary sentences that state a "
      f"document fact (0 for an empty summary).",
      f"* RLEF (`rlef.train`): {sizes['rl_steps']} steps of {sizes['prompts_per_step']} "
      f"train documents x {sizes['samples_per_prompt']} samples (RLOO advantages, k1 KL "
      f"penalty), up to {sizes['max_new_tokens']} new tokens, AdamW peak learning rate "
      f"{sizes['rl_lr']:g}, seed {sizes['seed']}; reward=\"nli\" at kl_coef "
      + ", ".join(f"{k:g}" for k in sizes["sweep"]) + f" and the control reward=\"oracle\" "
      f"at kl_coef {sizes['control_kl']:g}.",
      f"* Held-out evaluation: {sizes['eval_samples']} temperature-1 samples per {split} "
      f"document ({n_eval} summaries, the same seeds for every policy): mean oracle and "
      f"NLI (+- one standard error), Monte Carlo KL(policy || supervised) (per summary the "
      f"sum over tokens of log pi - log pi_sft), length in tokens (EOS included), the "
      f"fraction of summaries stating at least one unsupported fact, of sentences copied "
      f"verbatim from the document, and of summaries that end with EOS.",
      "",
      C.markdown_table(["policy", "oracle entailment", "NLI", "KL (nats)",
                        "length", "states an unsupported fact", "extractive sentences",
                        "ends with EOS", "train s"], table,
                       align=["l"] + ["r"] * 8),
      "",
      "Claims (each also a line of `benchmarks/results/repro_rlef.json`, `claims`):",
      "",
      *claim_lines,
      "",
      discussion(data),
      "",
      f"![Training-batch oracle and NLI, held-out score against KL, length and KL against "
      f"step]({R.plot_name(data['quick'], data['benchmark'])})",
      "",
  ]
  for run in data["runs"][:1] + [r for r in data["runs"] if r["reward"] == "oracle"]:
    lines += [f"Held-out samples of RLEF {_label(run)}:", ""] + [
        f"* `{_printable(e)[:200]}`" for e in run["final"]["examples"][:3]] + [""]
  lines.append(
      f"Caveats: toy scale, one seed; the held-out numbers rest on {n_eval} summaries "
      f"(standard errors shown) and the training curves on "
      f"{sizes['prompts_per_step'] * sizes['samples_per_prompt']} samples per step. The "
      f"NLI scorer is a bag-of-features logistic regression, far weaker than the paper's "
      f"T5 NLI model; its blind spots are what a policy can exploit. The `--large` "
      f"(GPU) setting has not been run: no GPU was lent to the session that wrote this. "
      f"{TUNING_NOTE if not data['quick'] else ''}")
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def discussion(data: Mapping[str, Any]) -> str:
  """What the numbers say beyond the claim lines, computed from them."""
  start = data["start"]
  parts = [f"The supervised policy's held-out summaries are {_pct(start['oracle'])} "
           f"entailed (oracle), {_pct(start['hallucinates'])} of them state an unsupported "
           f"fact and {_pct(start['unparsed'])} of their sentences parse to no fact "
           f"(malformed)."]
  for run in data["runs"]:
    f = run["final"]
    parts.append(
        f"{_label(run)}: oracle {_pct(f['oracle'])}, NLI {f['nli']:.3f}, KL "
        f"{f['kl']:.2f} nats, unsupported-fact summaries {_pct(start['hallucinates'])} -> "
        f"{_pct(f['hallucinates'])}, malformed sentences {_pct(start['unparsed'])} -> "
        f"{_pct(f['unparsed'])}, extractive sentences {_pct(start['extractive'])} -> "
        f"{_pct(f['extractive'])}, {start['sentences']:.2f} -> {f['sentences']:.2f} "
        f"sentences and {start['length']:.1f} -> {f['length']:.1f} tokens per summary, "
        f"ending with EOS {_pct(start['eos'])} -> {_pct(f['eos'])}.")
  runs = nli_runs(data)
  if runs:
    f = runs[0]["final"]
    n = data["data"]["eval_documents"] * data["sizes"]["eval_samples"]
    eos_noise = 2 * math.sqrt(start["eos"] * (1 - start["eos"]) / max(n, 1)) * math.sqrt(2)
    if (start["eos"] - f["eos"] > eos_noise
        and f["unparsed"] - start["unparsed"] > _two_se(f, start, "unparsed")):
      parts.append(
          f"With kl_coef {runs[0]['kl_coef']:g} the NLI-rewarded policy stopped ending its "
          f"summaries (EOS {_pct(start['eos'])} -> {_pct(f['eos'])}): they run to the "
          f"{data['sizes']['max_new_tokens']}-token limit and end in a cut-off sentence, "
          f"and malformed sentences rose ({_pct(start['unparsed'])} -> "
          f"{_pct(f['unparsed'])}). The learned scorer still rates such fragments (its "
          f"score is a mean over sentences of lexical overlap), the oracle counts them as "
          f"unsupported: a gaming of the scorer, but towards longer summaries, not the "
          f"paper's shorter ones.")
    gamed = [c for c in data.get("claims", ()) if c["claim"].startswith("(b) with")]
    if gamed and not gamed[0]["reproduced"]:
      blind = data["scorer_blind_spots"]
      parts.append(
          f"The scorer can be gamed (a distractor sentence copied verbatim scores "
          f"{blind['copied_distractor']:.3f}, a document fact {blind['fact']:.3f}, while the "
          f"oracle gives the copy 0), but in {data['sizes']['rl_steps']} steps at kl_coef "
          f"{runs[0]['kl_coef']:g} the policy did not find it: its extractive sentences "
          f"went {_pct(start['extractive'])} -> {_pct(f['extractive'])} and, in training, "
          f"NLI and oracle rose together (slopes per 100 steps "
          f"{gamed[0]['slope_nli']:+.3f} and {gamed[0]['slope_oracle']:+.3f}; plot, top "
          f"left). A smaller kl_coef or a longer run may reach it; not measured here.")
  control = [r for r in data["runs"] if r["reward"] == "oracle"]
  if runs and control:
    same = [r for r in runs if r["kl_coef"] == control[0]["kl_coef"]]
    if same:
      n, o = same[0]["final"], control[0]["final"]
      parts.append(
          f"At the same kl_coef the learned reward recovers "
          f"{(n['oracle'] - start['oracle']) / max(o['oracle'] - start['oracle'], 1e-9):.0%}"
          f" of the oracle control's gain in oracle entailment ({_pct(n['oracle'])} "
          f"against {_pct(o['oracle'])}), at {n['kl']:.2f} against {o['kl']:.2f} nats.")
  return " ".join(parts)


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--sft-steps", type=int, default=0, help="override the SFT steps")
  parser.add_argument("--rl-steps", type=int, default=0, help="override the RLEF steps")
  parser.add_argument("--sweep", type=float, nargs="*", default=None,
                      help="kl_coefs of the NLI-rewarded runs")
  parser.add_argument("--control-kl", type=float, default=None,
                      help="kl_coef of the oracle-rewarded control")
  parser.add_argument("--large", action="store_true",
                      help="the larger (GPU) setting; the JSON gets a _large suffix")
  parser.add_argument("--eval-split", choices=("test", "validation"), default="test",
                      help="held-out documents evaluated: validation for tuning, test for "
                           "the reported numbers")
  args = parser.parse_args(argv)
  # Tuning and GPU runs write their own JSON (and section, with --out), never the default.
  name = NAME + ("_large" if args.large else "") + (
      "_validation" if args.eval_split == "validation" else "")
  args.result_name = name
  return R.results_main(name, args, run, markdown, plot)


if __name__ == "__main__":
  sys.exit(main())
