"""A toy reproduction of BOND / J-BOND with a continuous reward, against REINFORCE.

BOND (Sessa et al., 2024, "BOND: Aligning LLMs with Best-of-N Distillation") trains a
policy to match Best-of-N sampling from a reference policy; J-BOND does so iteratively
against a slowly moving EMA anchor (Best-of-2 of the anchor at every step). The paper's
claims, tested here on the training prompts (reward against KL(policy || reference)):

(a) BOND with n = 4 reaches about the Best-of-4 reward at a KL near
    log 4 - 3/4 = 0.64;
(b) J-BOND's checkpoints lie on or near the Best-of-N frontier of the reference, and
    move along it as training goes on;
(c) REINFORCE with a KL penalty lies to the right of that frontier (less reward at equal
    KL).

The setting is built so that each claim can show if the implementation is right:

1. Task ``toy_number`` (``rlds_lm.tasks.toy_number``): the prompt is an 8-digit target,
   the policy writes a number, the reward ``toy_number_distance`` is
   ``-log10(1 + |x - target|)``: without ties (so BOND's quantiles and the Best-of-N KL
   ``log N - (N - 1) / N`` hold), with a wide spread across samples.
2. Reference: ``tiny`` SFT'd on noisy copies of random targets (each digit replaced
   with probability ``replace`` by a uniform digit), published as a rollout dataset. Its
   samples have real entropy (about 1.9 nats a digit) and rewards from about -8 to 0.
3. Best-of-N frontier of the reference for N = 1 .. 64: ``bon_samples`` reference
   samples per training prompt; the expected max of N of them is estimated without bias
   from their order statistics; KL is the analytic ``log N - (N - 1) / N``. Also the
   frontier of the KL-regularised optimum ``ref * exp(r / b) / Z`` (self-normalised
   importance weights on the same samples): the best any policy can do at its KL, and
   what REINFORCE's objective converges to.
4. Training (``bond.train``) from the reference on the training prompts: J-BOND (EMA
   anchor, eta in ``etas``), REINFORCE (KL weights ``kl_weights``) and non-iterative BOND
   (n = 4, Monte Carlo quantiles from ``quantile_samples`` reference samples per prompt
   and step), the same steps, prompts per step and optimizer. Every ``eval_every`` steps
   (and at step 0) the policy samples ``eval_samples`` completions per training prompt
   (temperature 1, the same seeds each time): mean reward, and KL(policy || reference)
   by Monte Carlo.

Results go to ``benchmarks/results/repro_jbond.json`` (one line per claim, with its
numbers) and, with ``--out DIR``, to the ``repro_jbond`` section of ``DIR/results.md``
and the plot ``DIR/repro_jbond.png``.

    python -m benchmarks.repro_jbond --out docs/      # about 5 minutes on 2 busy CPUs
    python -m benchmarks.repro_jbond --quick          # smoke run, about two minutes
    python -m benchmarks.repro_jbond --gpu --out docs/  # larger setting for a GPU
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks import _results as R

NAME = "repro_jbond"
REWARD_NAME = "toy_number_distance"
BOS, EOS = 1, 2  # ByteTokenizer's
MAX_N = 64  # the Best-of-N frontier's largest N
# Claim thresholds, fixed before any run: what "about", "near" and "to the right" mean.
BOND_REWARD_TOL = 0.15  # (a): |reward - BoN-4 reward| <= this share of BoN-4's gain
BOND_KL_TOL = 0.30  # (a): |KL - 0.636| <= this share of 0.636
NEAR_TOL = 0.10  # (b): reward >= frontier(KL) - this share of the BoN-64 gain
MIN_KL = 0.05  # checkpoints below this KL are too close to the reference to judge
# How the shared settings were chosen (docs/results.md repeats it).
TUNING_NOTE = (
    "The learning rate, the prompts per step and the batch-mean baseline of BOND / J-BOND "
    "were chosen on tuning runs with another seed (`--seed 1`: other targets, reference "
    "initialisation and sampling seeds; figures from their logs), not on the numbers "
    "reported here: at peak learning rate 1e-3 (no baseline, 60 steps) BOND and J-BOND "
    "stayed 0.3-0.85 below the frontier (BOND at KL 0.48-0.66 with at most +0.6 "
    "reward); at 3e-4 (no baseline, 120 steps) BOND stalled at KL 0.26; at 5e-4 with "
    "the baseline BOND settled at KL 0.56 (16 prompts a step) and 0.58 (32), 0.18 below "
    "the frontier, and J-BOND eta = 0.05 drifted to 0.6 below it by KL 1.6-2.0. A "
    "300-step BOND control on that seed settled where 150 steps did (KL 0.57 against "
    "0.56-0.58, reward 0.13 below the frontier at its KL, 83 % of Best-of-4's gain): twice "
    "the steps do not take it to Best-of-4. The claim thresholds were fixed before any run.")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that sets the experiment's size."""

  digits: int  # length of a target
  replace: float  # per-digit noise of the reference's SFT data
  prompts: int  # training prompts (the evaluation prompts too)
  sft_examples: int  # noisy copies the reference is SFT'd on
  warm_steps: int
  warm_batch: int
  warm_lr: float
  bon_samples: int  # reference samples per prompt for the frontier (>= MAX_N)
  steps: int  # steps of every trained policy
  prompts_per_step: int
  lr: float
  beta: float  # J-BOND / BOND forward-KL weight
  etas: tuple[float, ...]  # J-BOND anchor EMA rates
  kl_weights: tuple[float, ...]  # REINFORCE KL penalties
  bond_n: int
  quantile_samples: int
  eval_every: int
  eval_samples: int  # policy samples per prompt at each evaluation
  baseline: bool = True  # BOND / J-BOND: batch-mean baseline, as REINFORCE has
  seed: int = 0


FULL = Sizes(digits=8, replace=0.6, prompts=64, sft_examples=4096, warm_steps=300,
             warm_batch=64, warm_lr=3e-3, bon_samples=128, steps=150, prompts_per_step=16,
             lr=5e-4, beta=0.5, etas=(0.02, 0.05), kl_weights=(0.01, 0.05, 0.2),
             bond_n=4, quantile_samples=16, eval_every=15, eval_samples=8)
QUICK = Sizes(digits=4, replace=0.6, prompts=8, sft_examples=64, warm_steps=4,
              warm_batch=8, warm_lr=3e-3, bon_samples=MAX_N, steps=2, prompts_per_step=4,
              lr=1e-3, beta=0.5, etas=(0.05,), kl_weights=(0.05,), bond_n=4,
              quantile_samples=4, eval_every=1, eval_samples=2)
GPU = dataclasses.replace(FULL, prompts=256, sft_examples=16384, warm_steps=600,
                          bon_samples=256, steps=600, prompts_per_step=64, eval_every=50,
                          eval_samples=16)


@dataclasses.dataclass(frozen=True)
class Method:
  key: str
  label: str
  algorithm: str
  eta: float = 0.0
  kl_coef: float | None = None


def methods(sizes: Sizes) -> list[Method]:
  out = [Method(f"bond_n{sizes.bond_n}", f"BOND n={sizes.bond_n}", "bond")]
  out += [Method(f"jbond_eta{e:g}", f"J-BOND eta={e:g}", "jbond", eta=e) for e in sizes.etas]
  out += [Method(f"reinforce_kl{k:g}", f"REINFORCE kl={k:g}", "reinforce", kl_coef=k)
          for k in sizes.kl_weights]
  return out


# --------------------------------------------------------------------------------------
# Data: the reference's SFT data and the prompt dataset, both published.
# --------------------------------------------------------------------------------------


def _prompt_tokens(record: Mapping[str, Any]) -> np.ndarray:
  from rlds_lm import tasks  # pylint: disable=g-import-not-at-top
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  return ByteTokenizer().encode(tasks.get_reward(REWARD_NAME).prompt(record), add_bos=True)


def publish_sft_data(data_dir: str, sizes: Sizes, exclude: set[str]) -> str:
  """Noisy copies of random targets (none of the training prompts') as a rollout
  dataset: the reference's SFT data."""
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm.tasks import toy_number  # pylint: disable=g-import-not-at-top
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  tok = ByteTokenizer()
  schema = S.SchemaConfig(vocab_size=tok.vocab_size, tokenizer="byte")
  rng = np.random.default_rng([sizes.seed, 0x5F7])
  records = [r for r in toy_number.targets(sizes.sft_examples + len(exclude),
                                           seed=sizes.seed + 1000, digits=sizes.digits)
             if r["target"] not in exclude][:sizes.sft_examples]
  episodes = []
  for r in records:
    guess = toy_number.noisy_copy(r["target"], rng, sizes.replace)
    turn = S.Turn(S.observation(schema, _prompt_tokens(r), f"{r['target']}:"),
                  action_tokens=tok.encode(guess, add_eos=True), action_text=guess)
    episodes.append(S.rollout_episode(schema, [turn], prompt_id=r["prompt_id"],
                                      task=toy_number.TASK, policy_name="noisy_copy"))
  return P.publish({"train": episodes}, data_dir=data_dir, name="number_guesses",
                   config=schema, lineage={"benchmark": NAME, "replace": sizes.replace,
                                           "kind": "reference SFT data"})


def build_prompts(data_dir: str, records: Sequence[Mapping[str, str]]) -> str:
  """A TFDS prompt dataset (``prompt_id``, ``target``) for bond.train."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class NumberTargets(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The training prompts: one target each."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              "prompt_id": tfds.features.Text(), "target": tfds.features.Text()}),
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, r in enumerate(records):
        yield i, {"prompt_id": r["prompt_id"], "target": r["target"]}

  builder = NumberTargets(data_dir=data_dir)
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def train_reference(work: str, sft_data: str, sizes: Sizes) -> dict[str, Any]:
  """``tiny`` from ``sizes.seed``, SFT'd (sequence NLL) on the noisy copies."""
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(work, "reference")
  steps = sizes.warm_steps
  result = distill.train(distill.DistillConfig(
      datasets={sft_data: 1.0}, workdir=workdir, student="tiny", loss="seqkd", steps=steps,
      batch_size=sizes.warm_batch, max_length=2 * sizes.digits + 4,
      max_new_tokens=sizes.digits + 1, seed=sizes.seed,
      optim=common.OptimConfig(learning_rate=sizes.warm_lr, warmup_steps=max(1, steps // 20)),
      log_every=max(1, steps // 10), checkpoint_every=steps, eos_id=EOS))
  return {"checkpoint": result["student"], "seconds": result["seconds"],
          "loss": common.metric_curve(workdir, "loss")}


# --------------------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------------------


def sample_rewards(model, params, records, samples: int, seed: int, sizes: Sizes):
  """``samples`` temperature-1 completions per record: (prompts, completions, rewards
  [len(records), samples]), record-major."""
  from rlds_lm import tasks  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import rollouts  # pylint: disable=g-import-not-at-top
  prompts = [_prompt_tokens(r) for r in records for _ in range(samples)]
  seeds = [rollouts.prompt_seed(seed, 0, j, i) for j in range(len(records))
           for i in range(samples)]
  completions = sampling.sample(model, params, prompts, seeds,
                                sampling.SamplerConfig(temperature=1.0), sizes.digits + 1,
                                eos_id=EOS).completions()
  tok = ByteTokenizer()
  texts = [tok.decode(c.tokens) for c in completions]
  reward = tasks.get_reward(REWARD_NAME)
  rewards = np.concatenate([reward(r, texts[j * samples:(j + 1) * samples]).values
                            for j, r in enumerate(records)])
  return prompts, completions, rewards.reshape(len(records), samples).astype(np.float64)


def make_eval_fn(records, ref_params, sizes: Sizes, seed: int):
  """``(model, params) -> {reward, reward_se, kl, kl_se}`` on the training prompts.

  ``kl`` is the Monte Carlo KL(pi || ref): per sample, the sum over its tokens of the
  policy's sampling log-prob (temperature 1) minus the reference's teacher-forced one,
  averaged. The samples use the same seeds at every evaluation (common random numbers).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top

  def eval_fn(model, params) -> dict[str, float]:
    params = jax.device_get(params)
    prompts, completions, rewards = sample_rewards(model, params, records,
                                                   sizes.eval_samples, seed, sizes)
    scored = sampling.score(model, ref_params,
                            [np.concatenate([q, c.tokens]) for q, c in zip(prompts,
                                                                           completions)],
                            [len(q) for q in prompts])
    kl = np.asarray([np.sum(c.logprobs, dtype=np.float64) - np.sum(s.logprobs,
                                                                     dtype=np.float64)
                     for c, s in zip(completions, scored)])
    r = rewards.reshape(-1)
    return {"reward": float(r.mean()), "reward_se": float(r.std(ddof=1) / math.sqrt(len(r))),
            "kl": float(kl.mean()), "kl_se": float(kl.std(ddof=1) / math.sqrt(len(kl)))}

  return eval_fn


def bon_kl(n: float) -> float:
  """KL(BoN || ref) = log N - (N - 1) / N, exact for a reward without ties."""
  return math.log(n) - (n - 1.0) / n


def effective_n(kl: float) -> float:
  """The (continuous) N whose Best-of-N KL, log N - (N - 1) / N, is ``kl``."""
  grid = np.geomspace(1.0, 1e6, 20000)
  return float(np.interp(max(kl, 0.0), np.log(grid) - (grid - 1.0) / grid, grid))


def smoothed_target_kl(n: int, k: int, grid: int = 20000) -> float:
  """KL to the reference of BOND's backward target with Monte Carlo quantiles.

  With k reference samples the quantile estimate is (1 + c) / (k + 1), c ~ Binomial(k, p)
  for a sample of true quantile p; the backward term's fixed point weighs the reference
  by exp((n - 1) E[log estimate]) instead of n p^(n - 1). Its KL, by quadrature over p
  (uniform under the reference when there are no ties), against log n - (n - 1) / n.
  """
  p = (np.arange(grid) + 0.5) / grid
  c = np.arange(k + 1)
  log_pmf = (_log_comb(k, c)[None, :] + c[None, :] * np.log(p[:, None])
             + (k - c)[None, :] * np.log1p(-p[:, None]))
  expected = np.sum(np.exp(log_pmf) * np.log((1.0 + c) / (k + 1.0))[None, :], axis=1)
  w = np.exp((n - 1) * expected)
  g = w / w.mean()
  return float(np.mean(g * np.log(g)))


def best_of_n_rewards(rewards: np.ndarray, ns: Sequence[int]) -> np.ndarray:
  """[len(ns)]: E[max of N draws without replacement] of each row, averaged over rows.

  With a row's M rewards sorted ascending, the i-th smallest (1-based) is the max of N
  draws with probability C(i - 1, N - 1) / C(M, N): an unbiased estimate of Best-of-N's
  mean reward (for N <= M).
  """
  rows = np.sort(np.asarray(rewards, np.float64), axis=-1)
  m = rows.shape[-1]
  out = []
  for n in ns:
    if n > m:
      raise ValueError(f"Best-of-{n} needs at least {n} samples per prompt, found {m}")
    i = np.arange(1, m + 1)
    log_w = np.full(m, -np.inf)
    ok = i >= n
    log_w[ok] = (_log_comb(i[ok] - 1, n - 1) - _log_comb(m, n))
    out.append(float(np.mean(rows @ np.exp(log_w))))
  return np.asarray(out)


def _log_comb(a, b) -> np.ndarray:
  """log C(a, b), elementwise."""
  a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
  lgamma = np.vectorize(math.lgamma)
  return lgamma(a + 1.0) - lgamma(b + 1.0) - lgamma(a - b + 1.0)


def tilted_frontier(rewards: np.ndarray, temperatures: Sequence[float]) -> list[dict[str, float]]:
  """Reward and KL of ``ref * exp(r / b) / Z`` per temperature b, by self-normalised
  importance weights on each prompt's reference samples (KL capped at log M)."""
  out = []
  for b in temperatures:
    logits = np.asarray(rewards, np.float64) / b
    logits -= logits.max(axis=-1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=-1, keepdims=True)
    m = w.shape[-1]
    kl = np.sum(np.where(w > 0, w * np.log(np.maximum(w * m, 1e-300)), 0.0), axis=-1)
    out.append({"temperature": float(b), "reward": float(np.mean(np.sum(w * rewards, -1))),
                "kl": float(np.mean(kl))})
  return out


def product_control(sizes: Sizes, ns: Sequence[int] = (2, 4, 8, 16), targets: int = 200,
                    samples: int = 1024, seed: int = 0) -> list[dict[str, float]]:
  """A control for what a policy that writes each digit independently can reach.

  Simulated from the SFT data's law (each digit of the target replaced with probability
  ``replace`` by a uniform digit), not from the trained reference: for each N, the
  per-digit marginals of Best-of-N (per position and target digit), sampled as a product;
  its mean reward, and its exact KL to that law (a sum over digits).
  """
  rng = np.random.default_rng([seed, 0xC0])
  d, rep = sizes.digits, sizes.replace
  ref = np.full((10, 10), rep / 10) + (1 - rep) * np.eye(10)  # p(digit j | target i)
  place = 10 ** np.arange(d - 1, -1, -1)

  def draw(t, n):
    x = np.repeat(t[None], n, 0)
    return np.where(rng.random((n, d)) < rep, rng.integers(0, 10, (n, d)), x)

  def reward(x, t):
    return -np.log10(1.0 + np.abs(x @ place - t @ place))

  out = []
  for n in ns:
    counts = np.full((d, 10, 10), 1e-3)
    for _ in range(targets):
      t = rng.integers(0, 10, d)
      x = draw(t, samples * n).reshape(samples, n, d)
      best = x[np.arange(samples), np.argmax(reward(x.reshape(-1, d), t).reshape(samples, n),
                                             axis=1)]
      for k in range(d):
        np.add.at(counts[k, t[k]], best[:, k], 1.0)
    marginal = counts / counts.sum(-1, keepdims=True)
    kl = float(np.mean(np.sum(marginal * np.log(marginal / ref[None]), axis=-1).sum(0)))
    rewards = []
    for _ in range(targets):
      t = rng.integers(0, 10, d)
      x = np.stack([rng.choice(10, size=samples, p=marginal[k, t[k]]) for k in range(d)], 1)
      rewards.append(reward(x, t).mean())
    out.append({"n": int(n), "reward": float(np.mean(rewards)), "kl": kl})
  return out


def reference_stats(model, params, records, sizes: Sizes) -> dict[str, Any]:
  """The reference's samples on the training prompts: reward spread, format, frontier."""
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  _, completions, rewards = sample_rewards(model, params, records, sizes.bon_samples,
                                           sizes.seed + 1, sizes)
  tok = ByteTokenizer()
  texts = [tok.decode(c.tokens) for c in completions]
  well_formed = [len(t) == sizes.digits and t.isdigit() and c.tokens[-1:].tolist() == [EOS]
                 for t, c in zip(texts, completions)]
  targets = [r["target"] for r in records for _ in range(sizes.bon_samples)]
  digit_match = [np.mean([a == b for a, b in zip(t, target)]) if ok else 0.0
                 for t, target, ok in zip(texts, targets, well_formed)]
  ns = list(range(1, min(MAX_N, sizes.bon_samples) + 1))
  bon = best_of_n_rewards(rewards, ns)
  distinct = [len(set(row.tolist())) / len(row) for row in rewards]
  return {
      "samples_per_prompt": sizes.bon_samples,
      "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
      "reward_quantiles": {str(q): float(np.percentile(rewards, q)) for q in (10, 50, 90)},
      "well_formed": float(np.mean(well_formed)), "digit_match": float(np.mean(digit_match)),
      "distinct_rewards": float(np.mean(distinct)),
      "frontier": [{"n": n, "reward": float(r), "kl": bon_kl(n)} for n, r in zip(ns, bon)],
      "tilted": tilted_frontier(rewards, np.geomspace(0.15, 20.0, 24)[::-1]),
      "product": product_control(sizes, samples=64 if sizes.digits < 6 else 1024),
  }


# --------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------


def train_policy(work: str, method: Method, prompts: str, reference: str, sizes: Sizes,
                 eval_fn, start: Mapping[str, float]) -> dict[str, Any]:
  from rlds_lm.trainers import bond  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(work, "runs", method.key)
  config = bond.BondConfig(
      prompts=prompts, workdir=workdir, policy=reference, reward=REWARD_NAME,
      algorithm=method.algorithm, anchor_ema=method.eta, beta=sizes.beta,
      kl_coef=method.kl_coef, bond_n=sizes.bond_n, quantile_samples=sizes.quantile_samples,
      baseline=sizes.baseline,
      prompts_per_step=sizes.prompts_per_step, max_new_tokens=sizes.digits + 1,
      steps=sizes.steps, seed=sizes.seed,
      optim=common.OptimConfig(learning_rate=sizes.lr, warmup_steps=max(1, sizes.steps // 20)),
      log_every=max(1, sizes.eval_every), checkpoint_every=sizes.steps,
      eval_every=sizes.eval_every, eos_id=EOS)
  result = bond.train(config, eval_fn)
  curve = {0: {"step": 0, **start}}
  for key in ("reward", "reward_se", "kl", "kl_se"):
    for step, value in common.metric_curve(workdir, f"eval/{key}"):
      curve.setdefault(int(step), {"step": int(step)})[key] = value
  return {"key": method.key, "label": method.label, "algorithm": method.algorithm,
          "eta": method.eta, "kl_weight": config.kl_weight,
          "curve": [curve[s] for s in sorted(curve)],
          "train_reward": common.metric_curve(workdir, "reward"),
          "seconds": result["seconds"]}


def run(args) -> dict[str, Any]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.tasks import toy_number  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  base = QUICK if args.quick else GPU if args.gpu else FULL
  sizes = dataclasses.replace(base, **{f: getattr(args, f) for f in
                                       ("steps", "lr", "prompts_per_step", "warm_steps")
                                       if getattr(args, f)}, seed=args.seed)
  timings = {}
  with C.scratch_dir(args, NAME) as work:
    records = toy_number.targets(sizes.prompts, seed=sizes.seed, digits=sizes.digits)
    t0 = time.perf_counter()
    sft_data = publish_sft_data(os.path.join(work, "data"), sizes,
                                {r["target"] for r in records})
    prompts = build_prompts(os.path.join(work, "data"), records)
    timings["publish_s"] = time.perf_counter() - t0
    warm = train_reference(work, sft_data, sizes)
    ref = ckpt_lib.restore(warm["checkpoint"])
    t0 = time.perf_counter()
    stats = reference_stats(ref.config, ref.params, records, sizes)
    timings["best_of_n_s"] = time.perf_counter() - t0
    print(f"reference: {warm['seconds']:.0f} s SFT; reward {stats['reward_mean']:.2f} "
          f"+- {stats['reward_std']:.2f}, well-formed {stats['well_formed']:.3f}, digits "
          f"right {stats['digit_match']:.3f}; Best-of-4 "
          f"{stats['frontier'][min(3, len(stats['frontier']) - 1)]['reward']:.2f}",
          flush=True)
    eval_fn = make_eval_fn(records, ref.params, sizes, sizes.seed + 2)
    t0 = time.perf_counter()
    start = eval_fn(ref.config, ref.params)
    timings["eval_s"] = time.perf_counter() - t0
    print(f"reference eval: {start}", flush=True)
    runs = []
    for method in methods(sizes):
      r = train_policy(work, method, prompts, warm["checkpoint"], sizes, eval_fn, start)
      print(f"{method.label}: {r['curve'][-1]}, {r['seconds']:.0f} s", flush=True)
      runs.append(r)
  data = {
      "benchmark": NAME + "_gpu" if args.gpu else NAME, "quick": args.quick, "gpu": bool(args.gpu),
      "machine": C.machine_info(), "sizes": dataclasses.asdict(sizes),
      "policy": {"config": "tiny", "params": mc.count_params(mc.get_config("tiny"))},
      "reference": {"seconds": warm["seconds"], "sft_loss": warm["loss"], **start, **stats},
      "runs": runs, "timings": timings,
  }
  data["claims"] = claims(data)
  return data


# --------------------------------------------------------------------------------------
# Claims.
# --------------------------------------------------------------------------------------


def frontier_at(data: Mapping[str, Any], kl: float) -> float | None:
  """The Best-of-N reward at analytic KL ``kl`` (interpolated over N = 1 .. 64), None
  beyond the largest N."""
  rows = data["reference"]["frontier"]
  xs = [r["kl"] for r in rows]
  if not 0.0 <= kl <= xs[-1]:
    return None if kl > xs[-1] else rows[0]["reward"]
  return float(np.interp(kl, xs, [r["reward"] for r in rows]))


def frontier_kl_at(data: Mapping[str, Any], reward: float) -> float | None:
  """The analytic KL at which Best-of-N reaches ``reward`` (None beyond N = 64)."""
  rows = data["reference"]["frontier"]
  ys = [r["reward"] for r in rows]
  if reward > ys[-1]:
    return None
  return float(np.interp(reward, ys, [r["kl"] for r in rows]))


def _gaps(data, run) -> list[dict[str, float]]:
  """Per checkpoint past MIN_KL and inside the frontier: reward - frontier(KL)."""
  out = []
  for p in run["curve"]:
    at = frontier_at(data, p["kl"])
    if p["step"] > 0 and p["kl"] >= MIN_KL and at is not None:
      out.append({"step": p["step"], "kl": p["kl"], "reward": p["reward"],
                  "gap": p["reward"] - at})
  return out


def _bon(data, n: int) -> float:
  return data["reference"]["frontier"][n - 1]["reward"]


def claims(data: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One line per claim: what it says, what was measured, whether it reproduced."""
  sizes = data["sizes"]
  runs = {r["key"]: r for r in data["runs"]}
  frontier = data["reference"]["frontier"]
  r1 = frontier[0]["reward"]
  top = frontier[-1]
  span = top["reward"] - r1
  out = []

  # (a) BOND n = 4 reaches about the Best-of-4 reward at KL near 0.64.
  n = sizes["bond_n"]
  bond_run = runs.get(f"bond_n{n}")
  if bond_run is not None and len(frontier) >= n:
    last = bond_run["curve"][-1]
    target_r, target_kl = _bon(data, n), bon_kl(n)
    gain = target_r - r1
    ok = (abs(last["reward"] - target_r) <= BOND_REWARD_TOL * abs(gain)
          and abs(last["kl"] - target_kl) <= BOND_KL_TOL * target_kl)
    out.append({
        "claim": f"(a) BOND with n = {n} reaches about the Best-of-{n} reward at KL near "
                 f"{target_kl:.2f}",
        "measured": f"after {last['step']} steps: reward {last['reward']:.3f} +- "
                    f"{last['reward_se']:.3f}, KL {last['kl']:.3f} +- {last['kl_se']:.3f} "
                    f"(the KL of Best-of-{effective_n(last['kl']):.1f}; the frontier there "
                    f"scores {frontier_at(data, last['kl']):.3f}); Best-of-{n}: reward "
                    f"{target_r:.3f}, KL {target_kl:.3f}; reference {r1:.3f}",
        "reproduced": bool(ok), "reward": last["reward"], "kl": last["kl"],
        "bon_reward": target_r, "bon_kl": target_kl,
        "share_of_bon_gain": (last["reward"] - r1) / gain if gain else None,
        "criterion": f"|reward - BoN-{n}| <= {BOND_REWARD_TOL:g} x BoN-{n}'s gain over the "
                     f"reference and |KL - {target_kl:.3f}| <= {BOND_KL_TOL:g} x "
                     f"{target_kl:.3f}"})

  # (b) J-BOND's checkpoints lie on or near the frontier and move along it.
  jbond = [r for r in data["runs"] if r["algorithm"] == "jbond"]
  if jbond:
    per_run, ok = [], True
    for r in jbond:
      gaps = _gaps(data, r)
      last = r["curve"][-1]
      moved = (last["reward"] - r1 >= 10 * last["reward_se"] and last["kl"] >= bon_kl(2))
      near = bool(gaps) and min(g["gap"] for g in gaps) >= -NEAR_TOL * span
      ok = ok and moved and near
      per_run.append({"run": r["label"], "checkpoints": len(gaps),
                      "min_gap": min((g["gap"] for g in gaps), default=None),
                      "mean_gap": float(np.mean([g["gap"] for g in gaps])) if gaps else None,
                      "final_reward": last["reward"], "final_kl": last["kl"],
                      "moved": bool(moved), "near": bool(near)})
    out.append({
        "claim": "(b) J-BOND's checkpoints lie on or near the Best-of-N frontier and move "
                 "along it",
        "measured": "; ".join(
            f"{p['run']}: {p['checkpoints']} checkpoints, reward - frontier(KL) down to "
            f"{_fmt(p['min_gap'])} (mean {_fmt(p['mean_gap'])}; "
            f"{'within' if p['near'] else 'outside'} the tolerance), final reward "
            f"{p['final_reward']:.3f} at KL {p['final_kl']:.3f}" for p in per_run),
        "reproduced": bool(ok), "runs": per_run,
        "criterion": f"every checkpoint with KL >= {MIN_KL:g} has reward >= frontier(KL) - "
                     f"{NEAR_TOL:g} x (BoN-{top['n']} - reference) = frontier - "
                     f"{NEAR_TOL * span:.3f}, and the last one is >= 10 standard errors "
                     f"above the reference at KL >= {bon_kl(2):.3f} (Best-of-2's)"})

  # (c) REINFORCE lies to the right of the frontier.
  reinforce = [r for r in data["runs"] if r["algorithm"] == "reinforce"]
  if reinforce:
    per_run, ok = [], True
    for r in reinforce:
      gaps = _gaps(data, r)
      se = float(np.mean([p["reward_se"] for p in r["curve"]]))
      mean_gap = float(np.mean([g["gap"] for g in gaps])) if gaps else None
      right = mean_gap is not None and mean_gap < -2 * se
      ok = ok and right
      per_run.append({"run": r["label"], "checkpoints": len(gaps), "mean_gap": mean_gap,
                      "reward_se": se, "right": bool(right),
                      "final_reward": r["curve"][-1]["reward"],
                      "final_kl": r["curve"][-1]["kl"]})
    jbond_gaps = [g["gap"] for r in jbond for g in _gaps(data, r)]
    out.append({
        "claim": "(c) REINFORCE lies to the right of the Best-of-N frontier (less reward "
                 "at equal KL)",
        "measured": "; ".join(
            f"{p['run']}: mean reward - frontier(KL) {_fmt(p['mean_gap'])} over "
            f"{p['checkpoints']} checkpoints (2 SE = {2 * p['reward_se']:.3f}), final "
            f"reward {p['final_reward']:.3f} at KL {p['final_kl']:.3f}" for p in per_run)
            + (f"; J-BOND's mean gap {np.mean(jbond_gaps):+.3f}" if jbond_gaps else ""),
        "reproduced": bool(ok), "runs": per_run,
        "jbond_mean_gap": float(np.mean(jbond_gaps)) if jbond_gaps else None,
        "criterion": "for every KL weight, the mean of reward - frontier(KL) over its "
                     f"checkpoints with KL >= {MIN_KL:g} is below -2 standard errors of an "
                     "evaluation's mean reward"})
  return out


def _fmt(x: float | None) -> str:
  return "—" if x is None else f"{x:+.3f}"


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------


COLORS = {"bond": "tab:green", "jbond": ("tab:blue", "tab:purple"),
          "reinforce": ("tab:orange", "tab:red", "tab:brown")}


def _draw(ax, data: Mapping[str, Any]) -> None:
  """The frontier, the controls and every run's checkpoints on one axis."""
  ref = data["reference"]
  bon = ref["frontier"]
  ax.plot([r["kl"] for r in bon], [r["reward"] for r in bon], "k-", linewidth=1.6,
          label=f"Best-of-N of the reference, N = 1..{bon[-1]['n']} (analytic KL)")
  for r in bon:
    if r["n"] in (1, 2, 4, 8, 16, 32, 64):
      ax.plot(r["kl"], r["reward"], "ko", markersize=3)
      ax.annotate(f"N={r['n']}", (r["kl"], r["reward"]), fontsize=7, xytext=(3, -10),
                  textcoords="offset points")
  tilt = [t for t in ref["tilted"] if t["kl"] <= 1.05 * bon[-1]["kl"]]
  ax.plot([t["kl"] for t in tilt], [t["reward"] for t in tilt], ":", color="grey",
          linewidth=1.2, label="KL-regularised optimum ref·exp(r/b)/Z (same samples)")
  prod = ref.get("product", [])
  if prod:
    ax.plot([p["kl"] for p in prod], [p["reward"] for p in prod], "x--", color="grey",
            linewidth=0.8, markersize=4,
            label="per-digit product of BoN-N's marginals, N = 2, 4, 8, 16 (simulated)")
  used = {"jbond": 0, "reinforce": 0}
  for run in data["runs"]:
    color = COLORS[run["algorithm"]]
    if isinstance(color, tuple):
      color = color[used[run["algorithm"]] % len(color)]
      used[run["algorithm"]] += 1
    kl = [p["kl"] for p in run["curve"]]
    reward = [p["reward"] for p in run["curve"]]
    style = "-s" if run["algorithm"] != "bond" else "-D"
    ax.plot(kl, reward, style, color=color, markersize=3.5, linewidth=1.1,
            label=run["label"])
    ax.annotate(f"{run['curve'][-1]['step']}", (kl[-1], reward[-1]), fontsize=6,
                color=color, xytext=(3, 3), textcoords="offset points")


def plot(data: dict[str, Any], path: str) -> str:
  """Reward against KL(policy || reference): the Best-of-N frontier, the KL-regularised
  optimum, and the checkpoints of every run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.0))
  ref = data["reference"]
  bon = ref["frontier"]
  zoom_kl = 1.6
  for ax, zoom in zip(axes, (False, True)):
    _draw(ax, data)
    ax.set_xlabel("KL(policy || reference) (nats)")
    ax.grid(alpha=0.3)
    if zoom:
      ax.set_xlim(-0.05, zoom_kl)
      top = frontier_at(data, zoom_kl)
      ax.set_ylim(bon[0]["reward"] - 0.25, (bon[-1]["reward"] if top is None else top) + 0.4)
      ax.set_title(f"zoom: KL <= {zoom_kl:g} (BOND, J-BOND)", fontsize=9)
    else:
      ax.set_ylabel("mean reward on the training prompts, T = 1")
      ax.set_title("BOND / J-BOND / REINFORCE on toy_number (-log10(1 + |x - target|)), "
                   f"seed {data['sizes']['seed']}", fontsize=9)
      ax.legend(fontsize=7, loc="lower right")
  return R.save_figure(fig, path)


def outcome(data: Mapping[str, Any]) -> str:
  """The claims in words, from the numbers."""
  parts = []
  for c in data["claims"]:
    verdict = "reproduced" if c["reproduced"] else "not reproduced"
    parts.append(f"* **{c['claim']}: {verdict}.** Measured: {c['measured']}. "
                 f"Criterion (fixed before the runs): {c['criterion']}.")
  return "\n".join(parts)


def diagnosis(data: Mapping[str, Any]) -> str:
  """What the plot and the control curves say, claim by claim (most where one failed)."""
  notes = []
  by = {c["claim"][:3]: c for c in data["claims"]}
  ref = data["reference"]
  n, k = data["sizes"]["bond_n"], data["sizes"]["quantile_samples"]
  a = by.get("(a)")
  if a is not None:
    share = a.get("share_of_bon_gain")
    text = (f"BOND n={n} sits on the frontier (reward - frontier at its KL: "
            f"{a['reward'] - frontier_at(data, a['kl']):+.3f}) at the KL of "
            f"Best-of-{effective_n(a['kl']):.1f} ({a['kl']:.3f} against {a['bon_kl']:.3f}), "
            f"with {'—' if share is None else f'{100 * share:.0f} %'} of Best-of-{n}'s reward "
            f"gain.")
    if not a["reproduced"]:
      prod = {p["n"]: p for p in ref.get("product", [])}
      if n in prod:
        text += (f" Capacity should not be the obstacle: a policy writing each digit "
                 f"independently with Best-of-{n}'s per-digit marginals (simulated from the "
                 f"SFT data's law) reaches {prod[n]['reward']:.3f} at KL "
                 f"{prod[n]['kl']:.3f}, nearly "
                 f"Best-of-{n} itself ({a['bon_reward']:.3f} at {a['bon_kl']:.3f}).")
      text += (f" Nor is the quantile estimate: with k = {k} reference samples the Monte "
               f"Carlo quantiles make the backward target a slightly softer distribution, "
               f"of KL {smoothed_target_kl(n, k):.3f} instead of {a['bon_kl']:.3f} "
               f"(quadrature). Its curve is flat over the last half of the run (KL "
               f"{_kl_range(data, f'bond_n{n}')}) as the learning rate decays: why it "
               f"settles short of Best-of-{n} is not established here.")
    notes.append(text)
  b = by.get("(b)")
  if b is not None:
    for p, run in zip(b["runs"], [r for r in data["runs"] if r["algorithm"] == "jbond"]):
      if not p["moved"]:
        notes.append(f"{p['run']} did not move far enough in {data['sizes']['steps']} "
                     f"steps to judge (final KL {p['final_kl']:.3f}).")
      elif not p["near"]:
        tol = NEAR_TOL * (ref["frontier"][-1]["reward"] - ref["frontier"][0]["reward"])
        off = next(g for g in _gaps(data, run) if g["gap"] < -tol)
        notes.append(f"{p['run']} follows the frontier at first and drifts right of it as "
                     f"it moves: beyond the tolerance from step {off['step']} (KL "
                     f"{off['kl']:.2f}), worst {_fmt(p['min_gap'])}.")
      else:
        notes.append(f"{p['run']} stays within {abs(p['min_gap']):.2f} of the frontier "
                     f"up to KL {p['final_kl']:.2f}.")
  above = [t["reward"] - frontier_at(data, t["kl"]) for t in ref["tilted"]
           if t["kl"] >= MIN_KL and frontier_at(data, t["kl"]) is not None]
  reinforce = [r for r in data["runs"] if r["algorithm"] == "reinforce"]
  if reinforce:
    top_kl = ref["frontier"][-1]["kl"]
    past = [next((p["step"] for p in r["curve"] if p["kl"] > top_kl), None) for r in reinforce]
    weights = ", ".join(f"{r['kl_weight']:g}" for r in reinforce)
    final_kls = ", ".join(f"{r['curve'][-1]['kl']:.2f}" for r in reinforce)
    steps = ", ".join("—" if s is None else str(s) for s in past)
    text = (f"REINFORCE with KL weights {weights} ends at KLs {final_kls}; the runs pass "
            f"Best-of-{ref['frontier'][-1]['n']}'s KL ({top_kl:.2f}) by step {steps}, so "
            f"only their first checkpoints can be set against the frontier.")
    kls = [r["curve"][-1]["kl"] for r in reinforce]
    if len(kls) > 1 and max(kls) - min(kls) < 0.1 * max(kls):
      text += (f" The weights hardly matter here: against this reward's spread "
               f"({ref['reward_std']:.2f} across the reference's samples) even the largest "
               f"restrains little.")
    notes.append(text)
  if above:
    notes.append(
        f"The KL-regularised optimum (dotted), to which REINFORCE's objective E[r] - b KL "
        f"converges for b = its KL weight, lies {min(above):+.3f} to {max(above):+.3f} above "
        f"the Best-of-N frontier at equal KL on these samples: Best-of-N is not the best "
        f"trade-off, so REINFORCE ends right of the frontier only by optimising less well "
        f"than it could (one sample per prompt, a batch-mean baseline).")
  return " ".join(notes)


def _kl_range(data: Mapping[str, Any], key: str) -> str:
  """The KLs of a run's second half of checkpoints, as 'low-high'."""
  run = next(r for r in data["runs"] if r["key"] == key)
  kls = [p["kl"] for p in run["curve"][len(run["curve"]) // 2:]]
  return f"{min(kls):.2f}-{max(kls):.2f}"


def gpu_line(data: Mapping[str, Any]) -> str:
  """Where the GPU setting's results are, or that it has not been run."""
  if data.get("gpu"):
    return "This section is the `--gpu` setting's run."
  if os.path.exists(C.results_path(NAME + "_gpu", False)):
    return (f"The `--gpu` setting's run has its own section, `{NAME}_gpu`, below "
            f"(`benchmarks/results/{NAME}_gpu.json`).")
  return (f"GPU: the larger `--gpu` setting ({GPU.prompts} prompts, {GPU.steps} steps of "
          f"{GPU.prompts_per_step} prompts, {GPU.bon_samples} Best-of-N samples per prompt) "
          f"has not been run yet: no accelerator was available when this was written.")


def markdown(data: dict[str, Any]) -> str:
  data["claims"] = claims(data)  # the same as the JSON's, but from this code (--render-only)
  sizes, ref = data["sizes"], data["reference"]
  bon = {r["n"]: r for r in ref["frontier"]}
  table = []
  for n in (1, 2, 4, 8, 16, 64):
    if n in bon:
      label = "reference" if n == 1 else f"Best-of-{n} of the reference"
      table.append([label, f"{bon[n]['reward']:.3f}", f"{bon[n]['kl']:.3f} (analytic)", "—",
                    "—"])
  for run in data["runs"]:
    last = run["curve"][-1]
    at = frontier_at(data, last["kl"])
    table.append([f"{run['label']}, {last['step']} steps",
                  f"{last['reward']:.3f} +- {last['reward_se']:.3f}",
                  f"{last['kl']:.3f} +- {last['kl_se']:.3f}",
                  "beyond N = 64" if at is None else f"{last['reward'] - at:+.3f}",
                  f"{run['seconds']:.0f}"])
  quick_note = ("\n**Quick smoke run (`--quick`): sizes far too small to learn; not "
                "representative.**\n" if data["quick"] else "")
  gpu_note = "\n**GPU setting (`--gpu`).**\n" if data.get("gpu") else ""
  n_eval = sizes["prompts"] * sizes["eval_samples"]
  lines = [
      f"## BOND and J-BOND with a continuous reward (`{data['benchmark']}`)",
      quick_note + gpu_note,
      "A toy replication of BOND and J-BOND (Sessa et al., 2024, \"BOND: Aligning LLMs "
      "with Best-of-N Distillation\") against REINFORCE, judged by reward against "
      "KL(policy || reference) on the training prompts, with the Best-of-N frontier of the "
      f"reference as the yardstick. `python -m benchmarks.repro_jbond --out docs/` "
      f"(`benchmarks/repro_jbond.py`; `--gpu` for the larger setting).", "",
      f"* Task `toy_number` (`rlds_lm/tasks/toy_number.py`): the prompt is a target of "
      f"{sizes['digits']} digits and a colon; the reward `toy_number_distance` is "
      f"-log10(1 + |x - target|) for the number x the completion spells: 0 when exact, "
      f"about -k for an error of k digits, no ties between distinct distances. "
      f"{sizes['prompts']} training prompts (random targets), published as a TFDS prompt "
      f"dataset; every number below is measured on them.",
      f"* Reference: `tiny` ({data['policy']['params'] / 1e6:.2f} M parameters) SFT'd for "
      f"{sizes['warm_steps']} steps of batch {sizes['warm_batch']} on {sizes['sft_examples']} "
      f"noisy copies of other targets (each digit replaced with probability "
      f"{sizes['replace']:g} by a uniform digit; a published rollout dataset; "
      f"{ref['seconds']:.0f} s). Its temperature-1 samples: {100 * ref['well_formed']:.1f} % "
      f"well formed ({sizes['digits']} digits, EOS), {100 * ref['digit_match']:.1f} % of "
      f"digits right (the SFT data's rate is {100 * (1 - 0.9 * sizes['replace']):.0f} %), "
      f"reward {ref['reward_mean']:.2f} +- {ref['reward_std']:.2f} (10 / 50 / 90 % "
      f"quantiles {ref['reward_quantiles']['10']:.2f} / "
      f"{ref['reward_quantiles']['50']:.2f} / {ref['reward_quantiles']['90']:.2f}), "
      f"{100 * ref['distinct_rewards']:.1f} % distinct rewards among a prompt's "
      f"{ref['samples_per_prompt']} samples.",
      f"* Best-of-N frontier: {ref['samples_per_prompt']} reference samples per prompt; "
      f"E[max of N] estimated without bias from their order statistics for N = 1 .. "
      f"{max(bon)}; KL the analytic log N - (N - 1) / N. The dotted control curve is the "
      f"KL-regularised optimum ref·exp(r / b) / Z estimated by self-normalised importance "
      f"weights on the same samples.",
      f"* Training (`bond.train`), each {sizes['steps']} steps of {sizes['prompts_per_step']} "
      f"prompts, AdamW at peak learning rate {sizes['lr']:g}, seed {sizes['seed']}: BOND "
      f"(`algorithm=\"bond\"`, n = {sizes['bond_n']}, the reference as fixed anchor, "
      f"quantiles from {sizes['quantile_samples']} reference samples per prompt and step, "
      f"beta {sizes['beta']:g}); J-BOND (`algorithm=\"jbond\"`, beta {sizes['beta']:g}, "
      f"anchor EMA eta in {{{', '.join(f'{e:g}' for e in sizes['etas'])}}}), both with "
      f"{'a' if sizes.get('baseline', True) else 'no'} batch-mean baseline on the backward "
      f"term (`baseline=True`, as REINFORCE has one); REINFORCE "
      f"(`algorithm=\"reinforce\"`, batch-mean baseline, KL weight in "
      f"{{{', '.join(f'{k:g}' for k in sizes['kl_weights'])}}}).",
      f"* Evaluation every {sizes['eval_every']} steps and at step 0: {sizes['eval_samples']} "
      f"temperature-1 samples per training prompt ({n_eval} samples, the same seeds each "
      f"time): mean reward and Monte Carlo KL(policy || reference) (per sample, the sum "
      f"over tokens of log pi - log ref), +- one standard error.",
      "",
      C.markdown_table(["policy", "reward (T = 1)", "KL to reference (nats)",
                        "reward - frontier at that KL", "wall s"], table,
                       align=["l", "r", "l", "r", "r"]),
      "",
      outcome(data),
      "",
      diagnosis(data),
      "",
      f"![Reward against KL(policy || reference): the Best-of-N frontier, the "
      f"KL-regularised optimum, and the checkpoints of BOND, J-BOND and REINFORCE]"
      f"({R.plot_name(data['quick'], data['benchmark'])})",
      "",
      gpu_line(data),
      "",
      f"Caveats: toy scale, one seed, {sizes['prompts']} prompts; the Monte Carlo KL and "
      f"the rewards carry the standard errors shown, and consecutive checkpoints share "
      f"their sampling seeds, so their differences are less noisy than their levels. "
      f"{TUNING_NOTE}",
  ]
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--gpu", action="store_true",
                      help="the larger setting (more prompts, samples and steps) for a GPU")
  parser.add_argument("--seed", type=int, default=0,
                      help="targets, reference initialisation and sampling (tune on 1)")
  parser.add_argument("--steps", type=int, default=0, help="override the training steps")
  parser.add_argument("--warm-steps", type=int, default=0,
                      help="override the reference's SFT steps")
  parser.add_argument("--lr", type=float, default=0.0,
                      help="override the peak learning rate of every trained policy")
  parser.add_argument("--prompts-per-step", type=int, default=0,
                      help="override the prompts per step")
  args = parser.parse_args(argv)
  return R.results_main(NAME + "_gpu" if args.gpu else NAME, args, run, markdown, plot)


if __name__ == "__main__":
  sys.exit(main())
