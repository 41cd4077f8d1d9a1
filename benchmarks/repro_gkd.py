"""GKD reproduced where the student's own prefix matters: balanced brackets of length 4-24.

GKD (Agarwal et al., 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes") reports that a small student distilled on its own samples,
scored by the teacher with a generalized JSD(beta), beats students trained off-policy
(SFT on references, SeqKD on teacher samples, supervised KD on teacher distributions
over fixed sequences), and that the gain comes from the train / generation mismatch of
long outputs. This script tests that on a task built for it, with the project's own
pieces end to end:

1. Task: ``rlds_lm.tasks.dyck``, *write a balanced bracket string of length L* (prompt
   ``"L:"``), L in (4, 12, 24): many valid outputs, and each bracket must fit what the
   earlier ones left open (``--task digit_sum``: *write L digits whose sum is S*).
   Oracle: the exact uniform distribution over the valid strings.
2. Teacher: a decoder trained with ``topk_kd`` on the oracle's exact next-token
   distributions (a stochastic teacher, not one-hot), over exact samples and over
   completions of random prefixes (so that it knows how to finish atypical prefixes).
3. Data, all published rollout datasets: exact samples with the teacher's top-k
   (SFT / supervised KD / the off-policy rows of GKD) and teacher samples (SeqKD).
4. Student: a capacity-limited decoder, warm-started per seed by SFT *until* a target
   validation validity (``keep_when`` + ``stop_when_kept``), then every method from that
   checkpoint: SFT, SeqKD, supervised KD, GKD with lambda (``student_fraction``) in
   {0, 0.5, 1} and beta in {0, 0.5, 1} (the default size cuts this grid, see
   ``GKD_DEFAULT``). Equal steps, and equal compute (off-policy runs go
   ``compute_ratio`` times as many steps; the measured wall-time ratio is reported).
5. Metrics on temperature-1 samples of held-out prompt draws, per length: validity, and
   the teacher-scored per-token KL(student || teacher) on the student's own samples.
   Methods and betas are picked on validation prompts; test numbers are reported.

Results go to ``benchmarks/results/repro_gkd.json`` (with one line per claim under
``claims``) and, with ``--out DIR``, to the ``repro_gkd`` section of ``DIR/results.md``
and the plot ``DIR/repro_gkd.png``.

    python -m benchmarks.repro_gkd --out docs/      # about 10 minutes on 2 idle CPUs
    python -m benchmarks.repro_gkd --quick          # smoke run, about a minute
    python -m benchmarks.repro_gkd --size large     # the GPU setting
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks import _results as R
from rlds_lm import toy
from rlds_lm.tasks import digit_sum
from rlds_lm.tasks import dyck

NAME = "repro_gkd"
EOS = toy.EOS


# ======================================================================================
# The experiment: GKD on a task with an exact uniform oracle (Dyck strings, digit sums).
# ======================================================================================

ORACLE_SMOOTHING = 1e-3  # the oracle's exact rows are mixed with this much uniform mass


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A task with an exact uniform-over-valid-strings oracle (``rlds_lm.tasks``)."""

  name: str  # the task and its validity reward
  alphabet: str  # the characters a completion is written in
  problems: Callable[..., list[Any]]  # (count, lengths, seed) -> problems
  next_probs: Callable[[Any, str], np.ndarray | None]  # [len(alphabet) + 1], END last
  sample: Callable[..., str]  # (problem, rng, prefix) -> a uniform valid string
  description: str

  def outcome_ids(self) -> np.ndarray:
    """ByteTokenizer ids of the alphabet, then EOS: next_probs' outcomes as tokens."""
    return np.asarray([ord(c) + 3 for c in self.alphabet] + [EOS], np.int32)


TASK_SPECS = {
    "dyck": TaskSpec("dyck", dyck.ALPHABET, dyck.problems, dyck.next_probs, dyck.sample,
                     "*write a balanced bracket string of length L* (`rlds_lm.tasks.dyck`, "
                     "prompt `\"L:\"`, completion of `(` / `)`)"),
    "digit_sum": TaskSpec(
        "digit_sum", "0123456789", digit_sum.problems,
        lambda p, prefix: digit_sum.next_probs(p.length, p.total, prefix),
        lambda p, rng, prefix="": digit_sum.sample(p.length, p.total, rng, prefix),
        "*write L digits whose sum is S* (`rlds_lm.tasks.digit_sum`, prompt `\"L:S=\"`, "
        "S uniform in [L, 8L])"),
}


@dataclasses.dataclass(frozen=True)
class GkdSizes:
  """Everything that sets the digit-sum experiment's size."""

  task: str  # a key of TASK_SPECS
  lengths: tuple[int, ...]  # output lengths L (one run trains on all; metrics per L)
  oracle_rows: int  # oracle-annotated sequences (teacher training data)
  reference_rows: int  # exact uniform samples (SFT, supervised KD, GKD lambda < 1 data)
  teacher_rows: int  # teacher samples (SeqKD data)
  top_k: int  # stored teacher top-k of the reference dataset
  teacher_width: int
  teacher_layers: int
  teacher_steps: int
  teacher_batch: int
  teacher_lr: float
  student_width: int
  student_layers: int
  warm_target: float  # SFT until this mean validation validity (keep_when)
  warm_max_steps: int
  warm_eval_every: int
  warm_lr: float
  student_steps: int  # on-policy runs; off-policy runs go compute_ratio times as far
  compute_ratio: int
  student_batch: int
  student_lr: float
  eval_every: int
  val_prompts: int  # per length, every evaluation during training
  test_prompts: int  # per length, once at the end (and at the equal-steps point)
  seeds: tuple[int, ...]
  gkd: tuple[tuple[float, float], ...]  # (lambda, beta) of the GKD runs


GKD_DEFAULT = GkdSizes(
    task="dyck", lengths=(4, 12, 24), oracle_rows=3072, reference_rows=2048,
    teacher_rows=2048, top_k=4, teacher_width=64, teacher_layers=4, teacher_steps=500,
    teacher_batch=64, teacher_lr=3e-3, student_width=32, student_layers=2,
    warm_target=0.4, warm_max_steps=600, warm_eval_every=25, warm_lr=3e-3,
    student_steps=100, compute_ratio=3, student_batch=32, student_lr=1e-3, eval_every=25,
    val_prompts=64, test_prompts=256, seeds=(0, 1, 2),
    gkd=((0.0, 0.5), (0.5, 0.5), (1.0, 0.0), (1.0, 0.5), (1.0, 1.0)))
GKD_QUICK = GkdSizes(
    task="dyck", lengths=(4, 8), oracle_rows=128, reference_rows=64, teacher_rows=64, top_k=8,
    teacher_width=32, teacher_layers=2, teacher_steps=10, teacher_batch=16,
    teacher_lr=3e-3, student_width=16, student_layers=2, warm_target=0.0,
    warm_max_steps=10, warm_eval_every=5, warm_lr=3e-3, student_steps=4,
    compute_ratio=2, student_batch=8, student_lr=1e-3, eval_every=2, val_prompts=4,
    test_prompts=4, seeds=(0,), gkd=((0.0, 0.5), (1.0, 0.5)))
GKD_LARGE = dataclasses.replace(
    GKD_DEFAULT, lengths=(4, 12, 24, 48), oracle_rows=32768, reference_rows=16384,
    teacher_rows=16384, teacher_width=256, teacher_layers=6, teacher_steps=6000,
    teacher_batch=128, student_width=64, student_steps=1000, student_batch=64,
    eval_every=100, val_prompts=256, test_prompts=1024, seeds=(0, 1, 2, 3, 4),
    gkd=tuple((lam, beta) for lam in (0.0, 0.5, 1.0) for beta in (0.0, 0.5, 1.0)))


@dataclasses.dataclass(frozen=True)
class DsMethod:
  key: str
  label: str
  loss: str
  data: str  # "reference" (exact samples + teacher top-k) or "teacher" (teacher samples)
  beta: float = 0.5
  student_fraction: float = 0.0

  @property
  def on_policy(self) -> bool:
    return self.student_fraction > 0


def ds_methods(sizes: GkdSizes) -> list[DsMethod]:
  out = [DsMethod("sft", "SFT", "seqkd", "reference"),
         DsMethod("seqkd", "SeqKD", "seqkd", "teacher"),
         DsMethod("supervised_kd", "Supervised KD", "topk_kd", "reference")]
  out += [DsMethod(f"gkd_l{lam:g}_b{beta:g}", f"GKD lambda={lam:g} beta={beta:g}", "jsd",
                   "reference", beta=beta, student_fraction=lam) for lam, beta in sizes.gkd]
  return out


# --- data ----------------------------------------------------------------------------


def ds_prompt(problem) -> np.ndarray:
  """BOS + ``"{L}:{S}="``."""
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  return ByteTokenizer().encode(problem.question, add_bos=True)


def _completion_tokens(text: str) -> np.ndarray:
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  return ByteTokenizer().encode(text, add_eos=True)


def oracle_rows(spec: TaskSpec, problems, rng: np.random.Generator,
                perturbed: float = 0.5) -> list[tuple[Any, str]]:
  """(problem, completion): an exact uniform sample, or (with probability ``perturbed``)
  a prefix of i.i.d. uniform characters (as long as a valid string still starts with it)
  completed by the exact sampler, so that the teacher also learns the oracle's
  continuation after prefixes the uniform distribution rarely writes."""
  out = []
  for p in problems:
    prefix = ""
    if rng.random() < perturbed:
      for _ in range(int(rng.integers(1, p.length))):
        c = spec.alphabet[int(rng.integers(0, len(spec.alphabet)))]
        if spec.next_probs(p, prefix + c) is None:
          break
        prefix += c
    out.append((p, spec.sample(p, rng, prefix)))
  return out


def oracle_arrays(spec: TaskSpec, problem, completion: str) -> dict[str, np.ndarray]:
  """The oracle's teacher arrays (top-k over the alphabet and EOS, most likely first) for
  every token of ``completion`` + EOS; smoothed by ``ORACLE_SMOOTHING`` so every stored
  log-prob is finite."""
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  outcome_ids = spec.outcome_ids()
  tokens = _completion_tokens(completion)
  ids, logps, token_logp = [], [], []
  for t, token in enumerate(tokens):
    probs = spec.next_probs(problem, completion[:t])
    probs = (1 - ORACLE_SMOOTHING) * probs + ORACLE_SMOOTHING / len(probs)
    order = np.argsort(-probs, kind="stable")
    ids.append(outcome_ids[order])
    logps.append(np.log(probs[order]).astype(np.float32))
    token_logp.append(np.log(probs[list(outcome_ids).index(int(token))]))
  return {S.TEACHER_TOPK_IDS: np.asarray(ids, np.int32),
          S.TEACHER_TOPK_LOGPROBS: np.asarray(logps, np.float32),
          S.TEACHER_TOKEN_LOGPROB: np.asarray(token_logp, np.float32)}


def publish_rows(data_dir: str, name: str, rows, *, task: str, policy: str, top_k: int = 0,
                 teacher=None, policy_digest: str = "",
                 lineage: Mapping[str, Any] | None = None) -> str:
  """(problem, completion text[, teacher arrays]) rows as a published rollout dataset of
  their task (repeated prompts numbered by sample index)."""
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  schema = S.SchemaConfig(vocab_size=259, tokenizer="byte", teacher_top_k=top_k)
  episodes, seen = [], {}
  for row in rows:
    p, text = row[0], row[1]
    index = seen.get(p.prompt_id, 0)
    seen[p.prompt_id] = index + 1
    turn = S.Turn(S.observation(schema, ds_prompt(p), p.question),
                  action_tokens=_completion_tokens(text), action_text=text,
                  teacher=row[2] if len(row) > 2 else None, reward=1.0)
    episodes.append(S.rollout_episode(
        schema, [turn], prompt_id=p.prompt_id, sample_index=index, task=task,
        policy_name=policy, policy_digest=policy_digest))
  return P.publish({"train": episodes}, data_dir=data_dir, name=name, config=schema,
                   lineage={"benchmark": NAME, **dict(lineage or {})})


def annotate_rows(teacher_dir: str, rows, top_k: int):
  """rows + the teacher's top-k of every completion token (``teacher_scoring``)."""
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import teacher_scoring  # pylint: disable=g-import-not-at-top
  teacher = sampling.Policy.from_checkpoint(teacher_dir, eos_id=EOS, name="teacher")
  prompts = [ds_prompt(p) for p, _ in rows]
  sequences = [np.concatenate([q, _completion_tokens(t)]) for q, (_, t) in zip(prompts, rows)]
  out = []
  for start in range(0, len(rows), 512):
    chunk = slice(start, start + 512)
    out += teacher_scoring.annotate(teacher.config, teacher.params, sequences[chunk],
                                    [len(q) for q in prompts[chunk]], top_k=top_k)
  return [(p, t, a) for (p, t), a in zip(rows, out)], teacher.digest


def sample_rows(model, params, problems, seeds, max_new_tokens: int):
  """(problem, text, completion) of one temperature-1 sample per problem."""
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  from rlds_lm.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  tok = ByteTokenizer()
  out = []
  for start in range(0, len(problems), 512):
    chunk = problems[start:start + 512]
    completions = sampling.sample(
        model, params, [ds_prompt(p) for p in chunk], seeds[start:start + 512],
        sampling.SamplerConfig(temperature=1.0), max_new_tokens, eos_id=EOS).completions()
    out += [(p, tok.decode(c.tokens), c) for p, c in zip(chunk, completions)]
  return out


def ds_valid(problem, text: str, completion) -> bool:
  """The sample is valid (the reward named by the problem's task gives it 1.0), then EOS."""
  from rlds_lm import tasks  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  reward = tasks.get_reward(tasks.detect_task(problem.as_record()))
  return (completion.stop_reason == sampling.STOP_EOS
          and reward(problem.as_record(), [text]).values[0] == 1.0)


# --- evaluation ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _kl_fn(student_config, teacher_config):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top

  @jax.jit
  def kl(student_params, teacher_params, tokens, valid, mask):
    ls = common.sequence_logprobs(student_config, student_params, tokens, valid)[:, :-1]
    lt = common.sequence_logprobs(teacher_config, teacher_params, tokens, valid)[:, :-1]
    per_token = jnp.sum(jnp.exp(ls) * (ls - lt), axis=-1)  # KL(student || teacher)
    return jnp.sum(per_token * mask, axis=-1), jnp.sum(mask, axis=-1)

  return kl


def teacher_kl(model, params, teacher_model, teacher_params, rows) -> np.ndarray:
  """float [n]: per row, the mean over its completion tokens of KL(student || teacher)
  of the next-token distributions, on the row's own (student) sample."""
  prompts = [ds_prompt(p) for p, _, _ in rows]
  seqs = [np.concatenate([q, c.tokens]) for q, (_, _, c) in zip(prompts, rows)]
  width = 8 * -(-max(len(s) for s in seqs) // 8)
  tokens = np.zeros((len(seqs), width), np.int32)
  valid = np.zeros((len(seqs), width), bool)
  mask = np.zeros((len(seqs), width - 1), np.float32)
  for i, (q, s) in enumerate(zip(prompts, seqs)):
    tokens[i, :len(s)], valid[i, :len(s)] = s, True
    mask[i, len(q) - 1:len(s) - 1] = 1.0  # positions whose next token is a completion one
  total, count = _kl_fn(model, teacher_model)(params, teacher_params, tokens, valid, mask)
  return np.asarray(total) / np.maximum(np.asarray(count), 1.0)


def first_error(spec: TaskSpec, problem, text: str, completion) -> float | None:
  """Where an invalid sample first leaves the valid strings, as a fraction of L: the
  first character no valid string continues with, or the end (EOS or the token budget)
  where more characters were needed; None for a valid sample."""
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  for t in range(len(text)):
    if spec.next_probs(problem, text[:t + 1]) is None:
      return t / problem.length
  if len(text) == problem.length and completion.stop_reason == sampling.STOP_EOS:
    return None
  return min(len(text), problem.length) / problem.length


def make_ds_eval_fn(spec: TaskSpec, problems_by_length: Mapping[int, Sequence[Any]],
                    teacher_dir: str, seed: int, max_new_tokens: int,
                    timer: list[float] | None = None):
  """``(model, params) -> {"valid", "kl", "valid_L<L>", "kl_L<L>"}``: one temperature-1
  sample per prompt (fixed seeds: every evaluation sees the same draws' randomness);
  validity rate and teacher-scored per-token KL(student || teacher) on those samples,
  per length and their mean over lengths, and where the invalid samples first went wrong
  (:func:`first_error`, mean fraction of L). ``timer[0]`` accumulates its seconds."""
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  teacher = ckpt_lib.restore(teacher_dir)
  flat = [p for length in sorted(problems_by_length) for p in problems_by_length[length]]
  seeds = [S.content_seed("eval", seed, i) for i in range(len(flat))]

  def eval_fn(model, params) -> dict[str, float]:
    t0 = time.perf_counter()
    rows = sample_rows(model, params, flat, seeds, max_new_tokens)
    valid = np.asarray([ds_valid(*r) for r in rows], float)
    errors = [first_error(spec, *r) for r in rows]
    kl = teacher_kl(model, params, teacher.config, teacher.params, rows)
    lengths = np.asarray([p.length for p in flat])
    out = {}
    for length in sorted(problems_by_length):
      out[f"valid_L{length}"] = float(valid[lengths == length].mean())
      out[f"kl_L{length}"] = float(kl[lengths == length].mean())
      at = [e for e, n in zip(errors, lengths) if n == length and e is not None]
      out[f"error_at_L{length}"] = float(np.mean(at)) if at else float("nan")
    out["valid"] = float(np.mean([out[f"valid_L{n}"] for n in problems_by_length]))
    out["kl"] = float(np.mean([out[f"kl_L{n}"] for n in problems_by_length]))
    if timer is not None:
      timer[0] += time.perf_counter() - t0
    return out

  return eval_fn


def eval_problems(sizes: GkdSizes, count: int, seed: int) -> dict[int, list[Any]]:
  spec = TASK_SPECS[sizes.task]
  return {n: spec.problems(count, (n,), seed=seed + n) for n in sizes.lengths}


# --- training ------------------------------------------------------------------------


def _ds_config(sizes: GkdSizes, *, steps: int, lr: float, eval_every: int,
               constant: bool = True, **kwargs: Any):
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  longest = max(sizes.lengths)
  return distill.DistillConfig(
      steps=steps, max_length=8 * -(-(len(f"{longest}:{9 * longest}=") + longest + 2) // 8),
      max_new_tokens=longest + 1, temperature=1.0, record_generations=False,
      optim=common.OptimConfig(learning_rate=lr, warmup_steps=min(20, max(1, steps // 10)),
                               final_fraction=1.0 if constant else 0.1),
      log_every=eval_every, checkpoint_every=steps, eval_every=eval_every, eos_id=EOS,
      **kwargs)


def steady_seconds(points: Sequence[Sequence[float]]) -> list[list[float]]:
  """[[step, seconds]] of a run with its start-up removed: the first interval (which
  also compiled the steps and opened the dataset) is charged at the rate of the second,
  so that a run's seconds measure what its steps cost, not a fixed overhead."""
  if len(points) < 2:
    return [list(p) for p in points]
  (s1, t1), (s2, t2) = points[0], points[1]
  rate = (t2 - t1) / max(s2 - s1, 1)
  return [[s, t - t1 + s1 * rate] for s, t in points]


def _timed_progress(timer: list[float]):
  """progress callback: [(step, seconds so far)], evaluation time excluded."""
  start, points = time.perf_counter(), []

  def progress(step, logged):
    del logged
    points.append([step, time.perf_counter() - start - timer[0]])

  return progress, points


def ds_train_teacher(work: str, oracle: str, sizes: GkdSizes) -> dict[str, Any]:
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  model = toy.decoder_config(sizes.teacher_width, "teacher", sizes.teacher_layers)
  init_dir = os.path.join(work, "teacher_init")
  ckpt_lib.save(init_dir, model, gemma.init_params(model, seed=0), overwrite=True)
  workdir = os.path.join(work, "teacher")
  result = distill.train(_ds_config(
      sizes, datasets={oracle: 1.0}, workdir=workdir, student=init_dir, loss="topk_kd",
      steps=sizes.teacher_steps, batch_size=sizes.teacher_batch, lr=sizes.teacher_lr,
      eval_every=max(1, sizes.teacher_steps // 10), constant=False, seed=0))
  return {"checkpoint": result["student"], "digest": result["student_digest"],
          "params": mc.count_params(model), "config": model.to_dict(),
          "seconds": result["seconds"], "loss_curve": common_curve(workdir, "loss"),
          "final_loss": result["metrics"].get("loss")}


def common_curve(workdir: str, key: str) -> list[list[float]]:
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  return common.metric_curve(workdir, key)


def ds_warm_start(work: str, seed: int, reference: str, sizes: GkdSizes,
                  val_fn) -> dict[str, Any]:
  """SFT of the capacity-limited student from ``seed`` until its mean validation validity
  reaches ``warm_target`` (``keep_when`` + ``stop_when_kept``), at most warm_max_steps."""
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  model = toy.decoder_config(sizes.student_width, "student", sizes.student_layers)
  init_dir = os.path.join(work, f"student_init_seed{seed}")
  ckpt_lib.save(init_dir, model, gemma.init_params(model, seed=seed), overwrite=True)
  workdir = os.path.join(work, "runs", f"warm_start_seed{seed}")
  result = distill.train(_ds_config(
      sizes, datasets={reference: 1.0}, workdir=workdir, student=init_dir, loss="seqkd",
      steps=sizes.warm_max_steps, batch_size=sizes.student_batch, lr=sizes.warm_lr,
      eval_every=sizes.warm_eval_every, keep_when=f"valid>={sizes.warm_target}",
      stop_when_kept=True, seed=seed), val_fn)
  kept = result["kept"]
  return {"method": "warm_start", "seed": seed, "checkpoint": result["student"],
          "reached": kept is not None,
          "steps": kept["step"] if kept else sizes.warm_max_steps,
          "eval": result["eval"], "curve": common_curve(workdir, "eval/valid"),
          "seconds": result["seconds"]}


def ds_train_student(work: str, method: DsMethod, seed: int, datasets: Mapping[str, str],
                     start: str, teacher_dir: str, sizes: GkdSizes, val_fn, timer,
                     test_fn) -> dict[str, Any]:
  """``method`` from the warm start: on-policy runs ``student_steps``, off-policy runs
  ``compute_ratio`` times as many (a constant learning rate after the warm-up, so their
  first ``student_steps`` are the equal-steps comparison); test metrics at the
  equal-steps point (kept by ``keep_when`` on the step count) and at the end."""
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(work, "runs", f"{method.key}_seed{seed}")
  steps = sizes.student_steps * (1 if method.on_policy else sizes.compute_ratio)
  timer[0] = 0.0
  progress, points = _timed_progress(timer)
  equal, evals = {}, [0]
  snapshots = {}  # step -> (model, params) of an off-policy run: the equal-compute pick

  def val_and_mark(model, params):
    out = val_fn(model, params)
    evals[0] += 1  # periodic evaluations run at every eval_every steps
    if not method.on_policy:
      import jax  # pylint: disable=g-import-not-at-top
      snapshots[evals[0] * sizes.eval_every] = (model, jax.device_get(params))
    if evals[0] * sizes.eval_every == sizes.student_steps and not method.on_policy:
      t0 = time.perf_counter()
      equal.update(test_fn(model, params))  # the equal-steps point of a longer run
      timer[0] += time.perf_counter() - t0
    return out

  result = distill.train(_ds_config(
      sizes, datasets={datasets[method.data]: 1.0}, workdir=workdir, student=start,
      teacher=teacher_dir if method.loss == "jsd" or method.on_policy else "",
      loss=method.loss, beta=method.beta, student_fraction=method.student_fraction,
      steps=steps, batch_size=sizes.student_batch, lr=sizes.student_lr,
      eval_every=sizes.eval_every, seed=seed), val_and_mark, progress=progress)
  steady = steady_seconds(points)
  train_seconds = steady[-1][1] if steady else result["seconds"]
  final_test = test_fn(*R.restore(result["student"]))
  return {"method": method.key, "seed": seed, "steps": steps,
          "val": {k: common_curve(workdir, f"eval/{k}")
                  for k in ("valid", "kl", *(f"valid_L{n}" for n in sizes.lengths),
                            *(f"kl_L{n}" for n in sizes.lengths))},
          "seconds_curve": points, "train_seconds_curve": steady,
          "train_seconds": train_seconds,
          "seconds": result["seconds"],
          "test_equal_steps": final_test if method.on_policy else equal,
          "test_final": final_test, "snapshots": snapshots}


def equal_compute(run: dict[str, Any], seconds: float, test_fn) -> None:
  """Adds to an off-policy ``run`` its test metrics at the evaluation step whose training
  seconds (evaluation excluded) are closest to ``seconds`` (an on-policy run's), from the
  parameters kept at every evaluation; drops the kept parameters."""
  snapshots = run.pop("snapshots")
  points = [(int(step), t) for step, t in run["train_seconds_curve"] if int(step) in snapshots]
  step = min(points, key=lambda p: abs(p[1] - seconds))[0]
  run["equal_compute"] = {"step": step, "target_seconds": seconds,
                          "seconds": dict(points)[step],
                          "reached": max(t for _, t in points) >= seconds}
  run["test_equal_compute"] = (run["test_final"] if step == run["steps"] else
                               test_fn(*snapshots[step]))


def _is_on(sizes: GkdSizes, key: str) -> bool:
  return any(m.key == key and m.student_fraction == 1.0 for m in ds_methods(sizes))



def ds_teacher_quality(teacher_dir: str, problems_by_length, seed: int,
                       max_new_tokens: int) -> dict[str, float]:
  """The teacher's own temperature-1 validity per length (it is the target: a student
  cannot be expected to beat it)."""
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  teacher = ckpt_lib.restore(teacher_dir)
  out = {}
  for length, problems in sorted(problems_by_length.items()):
    seeds = [S.content_seed("teacher-eval", seed, length, i) for i in range(len(problems))]
    rows = sample_rows(teacher.config, teacher.params, problems, seeds, max_new_tokens)
    out[f"valid_L{length}"] = float(np.mean([ds_valid(*r) for r in rows]))
  return out


def ds_run(args) -> dict[str, Any]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  sizes = {"quick": GKD_QUICK, "default": GKD_DEFAULT, "large": GKD_LARGE}[
      "quick" if args.quick else args.size]
  overrides = {k: getattr(args, k) for k in ("student_steps", "teacher_steps")
               if getattr(args, k)}
  if args.seeds:
    overrides["seeds"] = tuple(range(args.seeds))
  if args.task:
    overrides["task"] = args.task
  sizes = dataclasses.replace(sizes, **overrides)
  spec = TASK_SPECS[sizes.task]
  if sizes.student_steps % sizes.eval_every:
    raise ValueError(f"student_steps ({sizes.student_steps}) must be a multiple of "
                     f"eval_every ({sizes.eval_every})")
  max_new = max(sizes.lengths) + 1
  timings: dict[str, float] = {}
  rng = np.random.default_rng(0)
  with C.scratch_dir(args, NAME) as work:
    data_dir = os.path.join(work, "data")
    # 1. The oracle's data (exact distributions at every token) and the teacher.
    t0 = time.perf_counter()
    rows = oracle_rows(spec, spec.problems(sizes.oracle_rows, sizes.lengths, seed=1), rng)
    oracle = publish_rows(data_dir, f"{spec.name}_oracle",
                          [(p, t, oracle_arrays(spec, p, t)) for p, t in rows],
                          task=spec.name, policy="oracle", top_k=len(spec.alphabet) + 1,
                          lineage={"kind": "oracle distributions"})
    timings["publish_oracle_s"] = time.perf_counter() - t0
    teacher = ds_train_teacher(work, oracle, sizes)
    val = eval_problems(sizes, sizes.val_prompts, seed=100)
    test = eval_problems(sizes, sizes.test_prompts, seed=200)
    teacher["test"] = ds_teacher_quality(teacher["checkpoint"], test, 7, max_new)
    print(f"teacher: {teacher['seconds']:.0f} s, test validity {teacher['test']}",
          flush=True)
    # 2. The reference data (exact samples + the teacher's top-k) and teacher samples.
    t0 = time.perf_counter()
    ref_rows = [(p, spec.sample(p, rng)) for p in
                spec.problems(sizes.reference_rows, sizes.lengths, seed=2)]
    annotated, digest = annotate_rows(teacher["checkpoint"], ref_rows, sizes.top_k)
    reference = publish_rows(data_dir, f"{spec.name}_reference", annotated,
                             task=spec.name, policy="oracle",
                             top_k=sizes.top_k, lineage={"kind": "exact samples",
                                                          "teacher_digest": digest})
    restored = R.restore(teacher["checkpoint"])
    ts_problems = spec.problems(sizes.teacher_rows, sizes.lengths, seed=3)
    ts = sample_rows(*restored, ts_problems,
                     [S.content_seed("teacher-sample", digest, i)
                      for i in range(len(ts_problems))], max_new)
    teacher["sample_validity"] = float(np.mean([ds_valid(*r) for r in ts]))
    samples = publish_rows(data_dir, f"{spec.name}_teacher_samples",
                           [(p, t) for p, t, c in ts if c.stop_reason == "eos"],
                           task=spec.name, policy="teacher", policy_digest=digest,
                           lineage={"kind": "teacher samples", "teacher_digest": digest})
    timings["publish_datasets_s"] = time.perf_counter() - t0
    datasets = {"reference": reference, "teacher": samples}
    # 3. Per seed: the warm start, then every method from it.
    timer = [0.0]
    val_fn = make_ds_eval_fn(spec, val, teacher["checkpoint"], 1, max_new, timer)
    test_fn = make_ds_eval_fn(spec, test, teacher["checkpoint"], 2, max_new)
    runs, warm = [], []
    for seed in sizes.seeds:
      start = ds_warm_start(work, seed, reference, sizes, val_fn)
      start["test"] = test_fn(*R.restore(start["checkpoint"]))
      print(f"warm start seed {seed}: {start['steps']} steps, val validity "
            f"{start['eval'].get('eval/valid', float('nan')):.3f}, test "
            f"{start['test']['valid']:.3f}, {start['seconds']:.0f} s", flush=True)
      warm.append({k: v for k, v in start.items() if k != "checkpoint"})
      for method in ds_methods(sizes):
        r = ds_train_student(work, method, seed, datasets, start["checkpoint"],
                             teacher["checkpoint"], sizes, val_fn, timer, test_fn)
        print(f"{method.key} seed {seed}: test validity (equal steps) "
              f"{r['test_equal_steps'].get('valid', float('nan')):.3f}, (end) "
              f"{r['test_final']['valid']:.3f}, {r['train_seconds']:.0f} s training, "
              f"{r['seconds']:.0f} s", flush=True)
        runs.append(r)
      # Equal compute: each off-policy run at the step where it has trained as long as
      # this seed's on-policy (lambda = 1) runs did on average.
      seed_runs = [r for r in runs if r["seed"] == seed]
      on_seconds = [r["train_seconds"] for r in seed_runs if _is_on(sizes, r["method"])]
      for r in seed_runs:
        if r.get("snapshots") and on_seconds:
          equal_compute(r, float(np.mean(on_seconds)), test_fn)
          print(f"{r['method']} seed {seed}: equal compute at step "
                f"{r['equal_compute']['step']}, test validity "
                f"{r['test_equal_compute']['valid']:.3f}", flush=True)
        r.pop("snapshots", None)
  student = toy.decoder_config(sizes.student_width, "student", sizes.student_layers)
  data = {
      "benchmark": NAME, "quick": args.quick, "size": "quick" if args.quick else args.size,
      "machine": C.machine_info(), "sizes": dataclasses.asdict(sizes),
      "prompts": {"val_per_length": sizes.val_prompts,
                  "test_per_length": sizes.test_prompts},
      "student": {"params": mc.count_params(student), "config": student.to_dict()},
      "teacher": {k: v for k, v in teacher.items() if k != "checkpoint"},
      "methods": [dataclasses.asdict(m) for m in ds_methods(sizes)],
      "warm_start": warm, "runs": runs, "timings": timings,
  }
  data["claims"] = claims(data)
  return data


# --- analysis ------------------------------------------------------------------------


def _runs(data, key: str) -> list[dict[str, Any]]:
  return sorted((r for r in data["runs"] if r["method"] == key), key=lambda r: r["seed"])


def _val_at(run: Mapping[str, Any], metric: str, step: int) -> float:
  points = dict((int(s), v) for s, v in run["val"][metric])
  return points[step]


def pick_on_validation(data, keys: Sequence[str], when: str = "steps") -> str:
  """The method among ``keys`` with the best mean validation validity (over seeds) at
  the equal-steps point (``when="steps"``) or at each run's equal-compute step
  (``"compute"``): the choice the test numbers are then reported for."""
  def step(run) -> int:
    if when == "compute" and "equal_compute" in run:
      return run["equal_compute"]["step"]
    return data["sizes"]["student_steps"]

  score = {k: float(np.mean([_val_at(r, "valid", step(r)) for r in _runs(data, k)]))
           for k in keys if _runs(data, k)}
  return max(score, key=score.get)


def _families(data) -> tuple[list[str], list[str], list[str]]:
  on = [m["key"] for m in data["methods"] if m["student_fraction"] == 1.0]
  mixed = [m["key"] for m in data["methods"] if 0 < m["student_fraction"] < 1]
  off = [m["key"] for m in data["methods"] if m["student_fraction"] == 0]
  return on, mixed, off


def _test(run, when: str, metric: str) -> float:
  """Test ``metric`` of a run at equal steps, at equal compute (off-policy runs: the
  step matched by training time; on-policy runs: their end) or at its end."""
  key = {"steps": "test_equal_steps", "compute": "test_equal_compute",
         "final": "test_final"}[when]
  return run.get(key, run["test_final"]).get(metric, np.nan)


def paired_gaps(data, a: str, b: str, when: str, metric: str) -> list[float]:
  """Per seed: test ``metric`` of method ``a`` minus method ``b`` (same warm start)."""
  ra, rb = {r["seed"]: r for r in _runs(data, a)}, {r["seed"]: r for r in _runs(data, b)}
  return [_test(ra[s], "final", metric) - _test(rb[s], when, metric)
          for s in sorted(set(ra) & set(rb))]


def claims(data) -> list[dict[str, Any]]:
  """One line per claim: the claim, what was measured, reproduced or not, the numbers."""
  lengths = data["sizes"]["lengths"]
  on, _, off = _families(data)
  if not on or not off:
    return []
  best_on = pick_on_validation(data, on)
  ratio = (np.mean([r["train_seconds"] for k in on for r in _runs(data, k)])
           / np.mean([r["train_seconds"] / data["sizes"]["compute_ratio"]
                      for k in off for r in _runs(data, k)]))
  out = []
  for when, label in (("steps", "equal steps"), ("compute", "equal compute")):
    best_off = pick_on_validation(data, off, when)
    gaps = {n: paired_gaps(data, best_on, best_off, when, f"valid_L{n}") for n in lengths}
    means = {n: float(np.mean(g)) for n, g in gaps.items()}
    wins = {n: int(sum(x > 0 for x in g)) for n, g in gaps.items()}
    seeds = len(next(iter(gaps.values())))
    overall = float(np.mean(list(means.values())))
    steps_note = ""
    if when == "compute":
      matched = [r.get("equal_compute", {}).get("step") for r in _runs(data, best_off)]
      short = sum(not r.get("equal_compute", {}).get("reached", True)
                  for r in _runs(data, best_off))
      steps_note = (f" ({best_off} at step " + " / ".join(str(m) for m in matched)
                    + f", matched by training seconds to {data['sizes']['student_steps']} "
                    f"on-policy steps; per step, on-policy runs took {ratio:.1f}x the "
                    f"wall time of off-policy ones"
                    + (f"; in {short} seed(s) the whole off-policy run took less time than "
                       f"the on-policy ones, so it is compared at its end" if short else "")
                    + ")")
    out.append({
        "claim": f"On-policy GKD (lambda = 1) samples valid strings more often than the "
                 f"best off-policy method, at {label}",
        "measured": f"{best_on} vs {best_off} (both picked on validation): test validity "
                    f"gap " + ", ".join(f"L={n}: {100 * means[n]:+.1f} points ({wins[n]}/"
                                        f"{seeds} seeds)" for n in lengths) + steps_note,
        "reproduced": bool(overall > 0 and wins[max(lengths)] == seeds),
        "on_policy": best_on, "off_policy": best_off, "gap_by_length": means,
        "seed_gaps_by_length": gaps, "wall_time_ratio_on_to_off_per_step": float(ratio)})
  steps = out[0]["gap_by_length"]
  ordered = [steps[n] for n in lengths]
  grows = all(b > a for a, b in zip(ordered, ordered[1:]))
  out.append({
      "claim": "The on-policy advantage grows with the output length",
      "measured": "equal-steps validity gap by length: " + ", ".join(
          f"L={n}: {100 * steps[n]:+.1f}" for n in lengths) + " points",
      "reproduced": bool(grows and ordered[-1] > 0), "gap_by_length": steps})
  best_off = out[0]["off_policy"]  # picked at equal steps
  kl = {n: paired_gaps(data, best_on, best_off, "steps", f"kl_L{n}") for n in lengths}
  kl_means = {n: float(np.mean(g)) for n, g in kl.items()}
  out.append({
      "claim": "On-policy GKD's own samples are closer to the teacher (lower per-token "
               "KL(student || teacher), teacher-scored on the student's samples)",
      "measured": f"{best_on} minus {best_off}, equal-steps KL by length: " + ", ".join(
          f"L={n}: {kl_means[n]:+.3f} nats" for n in lengths),
      "reproduced": bool(all(v < 0 for v in kl_means.values())),
      "kl_gap_by_length": kl_means, "seed_kl_gaps_by_length": kl})
  return out


# --- report --------------------------------------------------------------------------


def _pct(x: float) -> str:
  return f"{100 * x:.1f} %"


def method_rows(data) -> list[dict[str, Any]]:
  """Per method: test validity / KL per length (mean, min, max over seeds) at equal
  steps and at the end, and training seconds."""
  out = []
  for m in data["methods"]:
    runs = _runs(data, m["key"])
    if not runs:
      continue
    row = dict(m)
    for when in ("steps", "compute", "final"):
      for metric in ("valid", "kl", *(f"{k}_L{n}" for k in ("valid", "kl", "error_at")
                                       for n in data["sizes"]["lengths"])):
        vals = np.asarray([_test(r, when, metric) for r in runs], float)
        row[f"{when}/{metric}"] = ((np.nan,) * 3 if np.isnan(vals).all() else
                                   (float(np.nanmean(vals)), float(np.nanmin(vals)),
                                    float(np.nanmax(vals))))
    row["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
    row["compute_steps"] = [r.get("equal_compute", {}).get("step", r["steps"]) for r in runs]
    row["steps"] = runs[0]["steps"]
    out.append(row)
  return out


def ds_plot(data: dict[str, Any], path: str) -> str:
  """Test validity and teacher KL against the output length (equal steps), and the
  validation validity against training seconds (the equal-compute view)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lengths = data["sizes"]["lengths"]
  rows = method_rows(data)
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
  for r in rows:
    style = "-" if r["student_fraction"] == 1 else ":" if r["student_fraction"] else "--"
    for ax, metric in zip(axes[:2], ("valid", "kl")):
      stats = [r[f"steps/{metric}_L{n}"] for n in lengths]
      scale = 100 if metric == "valid" else 1
      mean = [scale * s[0] for s in stats]
      err = [[scale * (s[0] - s[1]) for s in stats], [scale * (s[2] - s[0]) for s in stats]]
      ax.errorbar(lengths, mean, yerr=err, fmt=style, marker="o", capsize=3,
                  linewidth=1.2, label=r["label"])
    curves = [run for run in _runs(data, r["key"])]
    xs = np.mean([[t for _, t in run["train_seconds_curve"]] for run in curves], axis=0)
    ys = np.mean([[v for _, v in run["val"]["valid"]][:len(xs)] for run in curves], axis=0)
    axes[2].plot(xs, 100 * ys, style, marker=".", linewidth=1.2, label=r["label"])
  teacher = data["teacher"]["test"]
  axes[0].plot(lengths, [100 * teacher[f"valid_L{n}"] for n in lengths], "k:",
               label="teacher")
  axes[0].set_ylabel("test validity of T=1 samples (%)")
  axes[1].set_ylabel("per-token KL(student || teacher), nats")
  for ax in axes[:2]:
    ax.set_xlabel(f"output length L (after {data['sizes']['student_steps']} steps)")
    ax.set_xticks(lengths)
  axes[2].set_xlabel("training seconds (start-up and evaluation excluded)")
  axes[2].set_ylabel("validation validity, mean over lengths (%)")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  seeds = len(data["sizes"]["seeds"])
  fig.suptitle(f"GKD on {data['sizes']['task']}: mean of {seeds} seed{'s' if seeds > 1 else ''} "
               f"(bars: seed min-max; solid: lambda = 1, dotted: 0.5, dashed: off-policy)",
               fontsize=10)
  return R.save_figure(fig, path)


def _cell(stats, scale: float = 100, digits: int = 1) -> str:
  mean, lo, hi = stats
  return f"{scale * mean:.{digits}f} ({scale * lo:.{digits}f}-{scale * hi:.{digits}f})"


def evidence(data: dict[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
  """The diagnostics behind the verdicts, in words, computed from the numbers."""
  lengths = data["sizes"]["lengths"]
  longest = max(lengths)
  by_key = {r["key"]: r for r in rows}
  cl = {i: c for i, c in enumerate(data["claims"])}
  if not cl:
    return ""
  on, off = by_key[cl[0]["on_policy"]], by_key[cl[0]["off_policy"]]
  off_c = by_key[cl[1]["off_policy"]]
  err = {r["label"]: r[f"steps/error_at_L{longest}"][0] for r in rows}
  on_err = [v for r, v in zip(rows, err.values()) if r["student_fraction"] == 1]
  off_err = [v for r, v in zip(rows, err.values()) if r["student_fraction"] == 0]
  parts = [
      f"Evidence. At equal steps the best on-policy run ({on['label']}) is "
      f"{_pct(on[f'steps/valid_L{longest}'][0])} valid at L={longest} against "
      f"{_pct(off[f'steps/valid_L{longest}'][0])} for the best off-policy one "
      f"({off['label']}); at the shorter lengths ("
      + ", ".join(f"L={n}: {_pct(on[f'steps/valid_L{n}'][0])} vs "
                  f"{_pct(off[f'steps/valid_L{n}'][0])}" for n in lengths if n != longest)
      + ("); the gap grows with L, as the paper's argument predicts" if cl[2]["reproduced"]
         else "); the gap does not grow steadily with L")
      + ", and the on-policy run is ahead in " + ", ".join(
          f"{sum(g > 0 for g in cl[0]['seed_gaps_by_length'][n])}/"
          f"{len(cl[0]['seed_gaps_by_length'][n])} seeds at L={n}" for n in lengths)
      + " (paired by warm start).",
      f"Where samples go wrong does not separate the families: at L={longest} the invalid "
      f"samples of on-policy runs first leave the valid strings at "
      f"{min(on_err):.2f}-{max(on_err):.2f} of the length, those of off-policy runs at "
      f"{min(off_err):.2f}-{max(off_err):.2f}." if on_err and off_err else "",
      f"At equal compute the on-policy step's cost decides: an on-policy step took "
      f"{cl[1]['wall_time_ratio_on_to_off_per_step']:.1f}x the wall time of an "
      f"off-policy one, and the cheap off-policy methods keep improving with more steps "
      f"({off_c['label']} reaches {_pct(off_c['compute/valid'][0])} mean validity at its "
      f"matched step against {_pct(on['compute/valid'][0])} for {on['label']}), which "
      f"suggests that at this size and budget the student is limited more by the number "
      f"of updates than by the mismatch between its own prefixes and the teacher's.",
  ]
  return " ".join(p for p in parts if p)


def ds_markdown(data: dict[str, Any]) -> str:
  data["claims"] = claims(data)  # from the runs, by this code (also for --render-only)
  sizes, teacher = data["sizes"], data["teacher"]
  lengths = sizes["lengths"]
  spec = TASK_SPECS[sizes["task"]]
  rows = method_rows(data)
  seeds = len(sizes["seeds"])
  warm = data["warm_start"]
  quick_note = ("\n**Quick smoke run (`--quick`): sizes far too small to learn; not "
                "representative.**\n" if data["quick"] else "")
  tc, sc = teacher["config"], data["student"]["config"]
  header = (["method", "steps"] + [f"valid L={n} (%)" for n in lengths]
            + [f"KL L={n}" for n in lengths]
            + ["valid, equal compute (%)", "valid at end (%)", "train s / run"])
  table = [["warm start (SFT until the target)", " / ".join(str(w["steps"]) for w in warm)]
           + [_cell((np.mean(v), np.min(v), np.max(v))) for v in
              ([w["test"][f"valid_L{n}"] for w in warm] for n in lengths)]
           + [_cell((np.mean(v), np.min(v), np.max(v)), 1, 3) for v in
              ([w["test"][f"kl_L{n}"] for w in warm] for n in lengths)] + ["", "", ""]]
  for r in rows:
    table.append([r["label"], f"{sizes['student_steps']} (of {r['steps']})"]
                 + [_cell(r[f"steps/valid_L{n}"]) for n in lengths]
                 + [_cell(r[f"steps/kl_L{n}"], 1, 3) for n in lengths]
                 + [_cell(r["compute/valid"]) + " at step " + " / ".join(
                     str(x) for x in r["compute_steps"]),
                    _cell(r["final/valid"]) + f" at step {r['steps']}",
                    f"{r['train_seconds']:.0f}"])
  claim_lines = [f"* **{c['claim']}**: {'reproduced' if c['reproduced'] else 'not reproduced'}."
                 f" Measured: {c['measured']}." for c in data["claims"]]
  lines = [
      f"## On-policy distillation where the student's own prefix matters (`{NAME}`)",
      quick_note,
      "A toy replication of GKD (Agarwal et al., 2024) on a task with many valid outputs "
      f"where later tokens must adapt to earlier ones: {spec.description}. "
      f"`python -m benchmarks.repro_gkd --out docs/` (`benchmarks/repro_gkd.py`; "
      "`--size large` for a GPU).", "",
      f"* Oracle: the uniform distribution over the valid strings, exact "
      f"(`{spec.name}.next_probs`, from the count of valid completions of every prefix). "
      f"Lengths L in {list(lengths)}, equally many prompts of each; one run trains on all "
      f"of them and every metric is reported per length.",
      f"* Teacher: {teacher['params'] / 1e6:.2f} M parameters (d_model {tc['d_model']}, "
      f"{tc['num_layers']} layers), trained with `topk_kd` on {sizes['oracle_rows']} "
      f"sequences annotated with the oracle's exact next-token distribution at every "
      f"token (half exact samples, half exact completions of random prefixes, so that it "
      f"also knows how to finish prefixes the uniform samples rarely write), "
      f"{sizes['teacher_steps']} steps, {teacher['seconds']:.0f} s. It is a stochastic, "
      f"not one-hot, teacher: its temperature-1 test validity is "
      + ", ".join(f"{_pct(teacher['test'][f'valid_L{n}'])} at L={n}" for n in lengths)
      + ".",
      f"* Data (all published rollout datasets): {sizes['reference_rows']} exact samples "
      f"with the teacher's top-{sizes['top_k']} (SFT, supervised KD, and the off-policy "
      f"rows of GKD lambda < 1) and {sizes['teacher_rows']} teacher samples (SeqKD).",
      f"* Student: capacity-limited, {data['student']['params'] / 1e6:.3f} M parameters "
      f"(d_model {sc['d_model']}, {sc['num_layers']} layers). Per seed it is trained by "
      f"SFT until its mean validation validity reaches {_pct(sizes['warm_target'])} "
      f"(`keep_when` + `stop_when_kept`, checked every {sizes['warm_eval_every']} steps; "
      f"reached after " + " / ".join(str(w["steps"]) for w in warm) + " steps), and every "
      f"method continues from that checkpoint with batch {sizes['student_batch']} and a "
      f"constant learning rate {sizes['student_lr']:g} after warm-up: on-policy runs "
      f"{sizes['student_steps']} steps, off-policy runs {sizes['compute_ratio']}x as "
      f"many (their first {sizes['student_steps']} steps are the equal-steps comparison; "
      f"for equal compute, each off-policy run is evaluated at its evaluation step whose "
      f"training seconds, start-up and evaluation excluded, are closest to the mean of "
      f"the same seed's lambda = 1 runs).",
      f"* Metrics: temperature-1 samples of {sizes['test_prompts']} test prompts per "
      f"length: validity (the `{spec.name}` reward, then EOS) and the per-token "
      f"KL(student || teacher) of the next-token distributions, teacher-scored on the "
      f"student's own samples. Choices between methods and betas are made on "
      f"{sizes['val_prompts']} validation prompts per length; test numbers are reported. "
      f"Mean over {seeds} seed{'s' if seeds > 1 else ''} (min-max in brackets).", "",
      C.markdown_table(header, table, align=["l"] + ["r"] * (len(header) - 1)), "",
      "Where the invalid samples first leave the valid strings (mean position as a "
      "fraction of L, at equal steps; 1.0 = the string was not finished in time): "
      + "; ".join(f"{r['label']}: " + ", ".join(
          f"L={n} {r[f'steps/error_at_L{n}'][0]:.2f}" for n in lengths) for r in rows)
      + ".", "",
      "Claims (one line each in `benchmarks/results/repro_gkd.json`):", "",
      *claim_lines, "", evidence(data, rows), "",
      f"![Validity and teacher KL against the output length; validation validity "
      f"against training time]({R.plot_name(data['quick'], NAME)})", "",
      "Caveats. The grid is cut to fit the 2-CPU budget: lambda = 1 runs beta in "
      "{0, 0.5, 1}, lambda = 0 and 0.5 run beta = 0.5 only (`--size large` runs the "
      "full 3 x 3 grid); one run trains on all lengths at once, so the length sweep is "
      "a per-length readout of the same students, not separate runs. Training seconds "
      "leave out each run's start-up (compilation, opening the dataset: the first "
      "evaluation interval is charged at the rate of the second) and were measured on a "
      "shared machine whose load moved during the run (footer), so the equal-compute "
      "match is approximate. The validation prompts pick the best "
      "off-policy method and the best lambda = 1 beta; the claims compare those two on "
      "the test draws, paired by seed (the same warm start).",
  ]
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--size", choices=("default", "large"), default="default",
                      help="default: the 2-CPU setting (~10 minutes); large: for a GPU")
  parser.add_argument("--student-steps", type=int, default=0, help="override the steps")
  parser.add_argument("--teacher-steps", type=int, default=0, help="override the steps")
  parser.add_argument("--seeds", type=int, default=0, help="override the seed count")
  parser.add_argument("--task", choices=sorted(TASK_SPECS), default="",
                      help="override the task (default: the size's)")
  args = parser.parse_args(argv)
  return R.results_main(NAME, args, ds_run, ds_markdown, ds_plot)


if __name__ == "__main__":
  sys.exit(main())
