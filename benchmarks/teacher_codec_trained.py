"""The teacher codecs on trained teachers' distributions (``teacher_codec``'s measurements
on real logits instead of ``zipf_logits``).

Two teachers, trained here from nothing on disk (no download):

* ``quickstart``: the quickstart's arithmetic teacher (byte vocabulary, V = 259), trained
  as ``rlds-lm quickstart`` trains it (``quickstart.QuickstartConfig``: d_model 96,
  4 layers, 2,000 SFT steps on the reference answers of the train problems), or loaded
  from ``--quickstart_dir`` (a quickstart workdir). Evaluated tokens: the teacher-forced
  distributions at the completion tokens (answer bytes + EOS) of the test problems, the
  positions where a dataset stores teacher top-k; fit tokens (for the tail prior): those
  of the train problems.
* ``text``: a SentencePiece BPE vocabulary of 8,192 pieces trained on the documentation
  text that ships with CPython (``pydoc_data.topics``: ~465 kB of English prose with code
  examples), and a decoder (d_model 128, 4 layers) trained by
  ``distill.train(loss="seqkd")`` on 64-token chunks of the training topics published as
  a rollout dataset. Evaluated tokens: every position of held-out chunks (topics never
  trained on); fit tokens: other held-out chunks.

Per teacher, as in ``teacher_codec``: bytes per token and KL(true || reconstruction) of
each codec at k = 16, 64, 128, 256, the widest top-k within 150 bytes/token, and the tail
priors (fitted on held-out tokens, smoothing picked on a validation split of them).

    python -m benchmarks.teacher_codec_trained --out docs/
    python -m benchmarks.teacher_codec_trained --quick
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks import teacher_codec as TC

NAME = "teacher_codec_trained"
TEXT_CHUNK = 64  # tokens per text episode (and per evaluated / fit chunk)
TEXT_HELD_OUT = 0.15  # fraction of the topics held out (evaluated and fit tokens)
TEXT_VALIDATION_CHUNKS = 32  # held-out chunks for the training loss curve only


@dataclasses.dataclass(frozen=True)
class Sizes:
  quickstart_steps: int = 2000
  quickstart_width: int = 96
  text_vocab: int = 8192
  text_width: int = 128
  text_steps: int = 200
  text_batch: int = 16
  eval_tokens: int = 256
  fit_tokens: int = 1024
  validation_tokens: int = 256


QUICK = Sizes(quickstart_steps=40, quickstart_width=32, text_vocab=1024, text_width=32,
              text_steps=20, text_batch=8, eval_tokens=64, fit_tokens=128,
              validation_tokens=64)


def _progress(message: str) -> None:
  print(message, flush=True)


def _train(workdir: str, dataset: str, model: Any, *, steps: int, batch_size: int,
           max_length: int, lr: float, seed: int, eos_id: int, eval_fn: Any = None,
           eval_every: int = 0) -> dict[str, Any]:
  """SFT (``distill.train(loss="seqkd")``) of a fresh ``model`` on a published dataset;
  returns ``distill.train``'s result (``"student"``: the final checkpoint)."""
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top

  init_dir = os.path.join(workdir, "init")
  ckpt_lib.save(init_dir, model, gemma.init_params(model, seed))
  every = max(1, steps // 4)

  def progress(done: int, values: dict[str, float]) -> None:
    if "loss" in values:
      _progress(f"    {model.name}: step {done}/{steps}, loss {values['loss']:.3f}")
    if "eval/nll" in values:
      _progress(f"    {model.name}: step {done}/{steps}, validation loss "
                f"{values['eval/nll']:.3f} nats/token")

  return distill.train(distill.DistillConfig(
      datasets={dataset: 1.0}, workdir=workdir, student=init_dir, loss="seqkd", steps=steps,
      batch_size=batch_size, max_length=max_length, seed=seed, log_every=every,
      checkpoint_every=steps, eos_id=eos_id, eval_every=eval_every,
      optim=common.OptimConfig(learning_rate=lr, warmup_steps=max(1, steps // 20))),
      eval_fn, progress=progress)


def _logits_at(model: Any, params: Any, sequences: list[np.ndarray],
               starts: list[int]) -> np.ndarray:
  """Teacher-forced float32 logits predicting ``sequence[starts[i]:]`` of each sequence,
  concatenated in order: [sum of (len - start), V]."""
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top

  out = []
  for lo in range(0, len(sequences), 64):
    batch = sequences[lo:lo + 64]
    width = max(len(s) for s in batch)
    tokens = np.zeros((len(batch), width), np.int32)
    for i, s in enumerate(batch):
      tokens[i, :len(s)] = s
    lengths = np.asarray([len(s) for s in batch], np.int32)
    logits = np.asarray(gemma.score_logits(model, params, tokens, lengths))
    for i, s in enumerate(batch):
      start = starts[lo + i]
      out.append(logits[i, start - 1:len(s) - 1])  # logits[t] predicts token t + 1
  return np.concatenate(out).astype(np.float32)


def _targets(sequences: list[np.ndarray], starts: list[int]) -> np.ndarray:
  return np.concatenate([s[start:] for s, start in zip(sequences, starts)]).astype(np.int32)


def quickstart_teacher(workdir: str, sizes: Sizes, quickstart_dir: str | None
                       ) -> dict[str, Any]:
  """The quickstart's teacher and its distributions at the test / train answer tokens."""
  from rlds_lm import quickstart  # pylint: disable=g-import-not-at-top
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top

  qc = quickstart.QuickstartConfig()
  train, test = toy.split_problems(qc.max_operand, qc.test_fraction, qc.seed)
  t0 = time.perf_counter()
  if quickstart_dir:
    path = os.path.join(quickstart_dir, "teacher", "student")
    origin = f"loaded from {path}"
    steps = None
  else:
    data_dir = os.path.join(workdir, "datasets")
    reference = toy.publish_references(data_dir, train,
                                       lineage={"command": "benchmarks." + NAME})
    model = toy.decoder_config(sizes.quickstart_width, "quickstart_teacher")
    _progress(f"[quickstart] training the teacher ({sizes.quickstart_steps} SFT steps)")
    path = _train(os.path.join(workdir, "quickstart_teacher"), reference, model,
                  steps=sizes.quickstart_steps, batch_size=qc.batch_size,
                  max_length=quickstart.MAX_LENGTH, lr=qc.teacher_lr, seed=qc.seed,
                  eos_id=toy.EOS)["student"]
    origin = "trained here"
    steps = sizes.quickstart_steps
  restored = ckpt_lib.restore(path)
  model, params = restored.config, restored.params

  def tokens_of(problems) -> tuple[list[np.ndarray], list[int]]:
    seqs = [np.concatenate([toy.prompt_tokens(p), toy.answer_tokens(p)]) for p in problems]
    return seqs, [len(toy.prompt_tokens(p)) for p in problems]

  def first(problems, n: int) -> tuple[np.ndarray, np.ndarray]:
    seqs, starts = tokens_of(problems)
    logits, targets = _logits_at(model, params, seqs, starts), _targets(seqs, starts)
    if len(targets) < n:
      raise ValueError(f"quickstart teacher: {len(targets)} answer tokens, need {n}")
    return logits[:n], targets[:n]

  logits, tokens = first(test, sizes.eval_tokens)
  fit_logits, _ = first(train, sizes.fit_tokens + sizes.validation_tokens)
  return {"name": "quickstart", "vocab_size": model.vocab_size, "logits": logits,
          "tokens": tokens, "fit_logits": fit_logits, "checkpoint": path,
          "params": gemma.count_params_of(params),
          "d_model": model.d_model, "num_layers": model.num_layers, "steps": steps,
          "origin": origin, "tokenizer": "byte", "train_s": time.perf_counter() - t0,
          "evaluated": f"answer tokens (answer bytes + EOS) of the first test problems "
                       f"({len(test)} test problems)",
          "fit": "answer tokens of the train problems"}


def _text_lines() -> tuple[list[str], list[str]]:
  """(train, held-out) non-empty lines of CPython's bundled docs, split by topic (every
  ``1 / TEXT_HELD_OUT``-th topic, sorted by name, is held out)."""
  import pydoc_data.topics  # pylint: disable=g-import-not-at-top

  train, held_out = [], []
  every = round(1 / TEXT_HELD_OUT)
  for i, name in enumerate(sorted(pydoc_data.topics.topics)):
    lines = [line.strip() for line in pydoc_data.topics.topics[name].split("\n")
             if line.strip()]
    (held_out if i % every == every - 1 else train).extend(lines)
  return train, held_out


def _chunks(tok: Any, lines: list[str]) -> list[np.ndarray]:
  """The lines' tokens, concatenated, cut into TEXT_CHUNK-token pieces."""
  ids = np.concatenate([tok.encode(line) for line in lines])
  n = len(ids) // TEXT_CHUNK
  return [ids[i * TEXT_CHUNK:(i + 1) * TEXT_CHUNK] for i in range(n)]


def text_teacher(workdir: str, sizes: Sizes) -> dict[str, Any]:
  """A SentencePiece text model and its distributions on held-out chunks."""
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  train_lines, held_lines = _text_lines()
  tok = tokenizers.train_sentencepiece(train_lines, os.path.join(workdir, "text_spm"),
                                       vocab_size=sizes.text_vocab)
  train_chunks, held_chunks = _chunks(tok, train_lines), _chunks(tok, held_lines)
  need = (sizes.eval_tokens + sizes.fit_tokens + sizes.validation_tokens) // TEXT_CHUNK
  if len(held_chunks) < need + TEXT_VALIDATION_CHUNKS:
    raise ValueError(f"text teacher: {len(held_chunks)} held-out chunks, need "
                     f"{need + TEXT_VALIDATION_CHUNKS}")
  _progress(f"[text] SentencePiece {tok.name}, V = {tok.vocab_size}: "
            f"{len(train_chunks)} train chunks, {len(held_chunks)} held-out chunks of "
            f"{TEXT_CHUNK} tokens")
  schema = S.SchemaConfig(vocab_size=tok.vocab_size, tokenizer=tok.name)
  episodes = []
  for i, chunk in enumerate(train_chunks):
    prompt = np.asarray([tok.bos_id], np.int32)
    turn = S.Turn(S.observation(schema, prompt, ""), action_tokens=chunk,
                  action_text=tok.decode(chunk))
    episodes.append(S.rollout_episode(schema, [turn], prompt_id=f"text-{i:05d}",
                                      task="text", policy_name="reference",
                                      lineage={"source": "pydoc_data.topics"}))
  dataset = P.publish({"train": episodes}, data_dir=os.path.join(workdir, "datasets"),
                      name="text_chunks", config=schema,
                      lineage={"command": "benchmarks." + NAME})
  model = dataclasses.replace(toy.decoder_config(sizes.text_width, "text_teacher"),
                              vocab_size=tok.vocab_size)
  # Validation chunks (held out, never evaluated or fitted on) give the loss curve that
  # the step count was chosen by: past ~2 epochs the held-out loss rises again.
  validation = [np.concatenate([[tok.bos_id], c]).astype(np.int32)
                for c in held_chunks[need:need + TEXT_VALIDATION_CHUNKS]]

  def eval_fn(config: Any, params: Any) -> dict[str, float]:
    logits = _logits_at(config, params, validation, [1] * len(validation))
    return {"nll": _nll(logits, _targets(validation, [1] * len(validation)))}

  _progress(f"[text] training the teacher ({sizes.text_steps} SFT steps)")
  path = _train(os.path.join(workdir, "text_teacher"), dataset, model,
                steps=sizes.text_steps, batch_size=sizes.text_batch,
                max_length=TEXT_CHUNK + 2, lr=3e-3, seed=0, eos_id=tok.eos_id,
                eval_fn=eval_fn, eval_every=max(1, sizes.text_steps // 5))["student"]
  curve = _eval_curve(os.path.join(workdir, "text_teacher"))
  restored = ckpt_lib.restore(path)
  model, params = restored.config, restored.params
  seqs = [np.concatenate([[tok.bos_id], c]).astype(np.int32) for c in held_chunks[:need]]
  logits = _logits_at(model, params, seqs, [1] * len(seqs))
  targets = _targets(seqs, [1] * len(seqs))
  n = sizes.eval_tokens
  nll = _nll(logits, targets)  # held-out loss of the teacher: how much it learned
  return {"name": "text", "vocab_size": model.vocab_size, "logits": logits[:n],
          "tokens": targets[:n], "fit_logits": logits[n:], "checkpoint": path,
          "params": gemma.count_params_of(params),
          "d_model": model.d_model, "num_layers": model.num_layers,
          "steps": sizes.text_steps, "origin": "trained here", "tokenizer": tok.name,
          "train_chunks": len(train_chunks), "held_out_nll": nll,
          "epochs": sizes.text_steps * sizes.text_batch / len(train_chunks),
          "validation_curve": curve,
          "unigram_nll": _unigram_nll(train_chunks, targets, tok.vocab_size),
          "train_s": time.perf_counter() - t0,
          "evaluated": f"every position of {n // TEXT_CHUNK} held-out {TEXT_CHUNK}-token "
                       "chunks (topics never trained on)",
          "fit": "other held-out chunks"}


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
  """Mean negative log-likelihood (nats/token) of ``targets`` under ``logits``."""
  lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  return float(-lp[np.arange(len(targets)), targets].mean())


def _eval_curve(workdir: str) -> list[list[float]]:
  """[(step, validation nll)] from a run's metrics.jsonl."""
  import json  # pylint: disable=g-import-not-at-top

  curve = []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if "eval/nll" in row:
        curve.append([int(row["step"]), float(row["eval/nll"])])
  return curve


def _unigram_nll(train_chunks: list[np.ndarray], targets: np.ndarray, vocab: int) -> float:
  """NLL of the held-out targets under the train chunks' add-one unigram: the baseline a
  teacher that learned nothing about context would reach."""
  counts = np.bincount(np.concatenate(train_chunks), minlength=vocab) + 1.0
  return float(-np.log(counts[targets] / counts.sum()).mean())


def study(teacher: dict[str, Any], repeats: int, chunk: int) -> dict[str, Any]:
  """``teacher_codec``'s rows, budget and tail-prior study for one trained teacher."""
  from rlds_lm import teacher as TT  # pylint: disable=g-import-not-at-top

  name, vocab_size = teacher["name"], teacher["vocab_size"]
  logits, tokens = teacher["logits"], teacher["tokens"]
  true_lp = np.asarray(TT.log_probs(logits))
  widest = TT.teacher_arrays(logits, tokens, top_k=min(max(TC.TOP_KS), vocab_size))
  stats = TC.distribution_stats(true_lp, widest)
  print(f"[{name}] {len(tokens)} tokens, V = {vocab_size}: mean entropy "
        f"{stats['entropy_nats_mean']:.2f} nats, top-1 {stats['top1_prob_mean']:.2f}",
        flush=True)
  rows = TC.codec_rows(name, widest, true_lp, TC._codecs(vocab_size), vocab_size, repeats)
  budget = TC.within_budget(widest, true_lp, vocab_size)
  fit_logits = teacher["fit_logits"]
  num_chunks = len(fit_logits) // chunk
  fit = TC._FitSample((fit_logits[c * chunk:(c + 1) * chunk] for c in range(num_chunks)),
                      num_chunks, teacher["validation_tokens"] // chunk, vocab_size,
                      max(TC.TOP_KS))
  base = next(r for r in rows if r["top_k"] == TC.GOAL_K and r["codec"] == TC.BASELINE)
  prior = TC._prior_study(layout=name, fit=fit, true_lp=true_lp, widest=widest,
                          num_tokens=len(tokens), codec=dict(TC._codecs(vocab_size))[TC.DEFAULT],
                          baseline_kl=base["kl_mean"], baseline_bytes=base["bytes_per_token"])
  goal_row = next(r for r in rows if r["top_k"] == TC.GOAL_K and r["codec"] == TC.DEFAULT)
  fits = [r for r in prior["rows"] if r["role"] != "baseline"
          and r["kl_mean"] <= base["kl_mean"]]
  best = min(fits, key=lambda r: r["total_bytes_per_token"]) if fits else None
  goal = {
      "met": bool(goal_row["bytes_per_token"] <= TC.GOAL_BYTES
                  and goal_row["kl_vs_baseline"] <= TC.KL_TOLERANCE),
      "default_bytes_per_token": goal_row["bytes_per_token"],
      "default_kl_vs_baseline": goal_row["kl_vs_baseline"],
      "baseline_bytes_per_token": base["bytes_per_token"], "baseline_kl": base["kl_mean"],
      "best_at_baseline_kl": None if best is None else {
          key: best[key] for key in ("prior", "top_k", "total_bytes_per_token",
                                     "kl_mean", "smoothing")},
  }
  goal["best_met"] = bool(best and best["total_bytes_per_token"] <= TC.GOAL_BYTES)
  info = {key: value for key, value in teacher.items()
          if key not in ("logits", "tokens", "fit_logits")}
  return {"teacher": info, "distribution": stats, "rows": rows, "prior_rows": prior["rows"],
          "within_goal_bytes": budget, "goal": goal,
          "smoothing_validation_kl": prior["smoothing_validation_kl"]}


def run(args) -> dict[str, Any]:
  sizes = C.sizes_from(args, QUICK, Sizes(), [f.name for f in dataclasses.fields(Sizes)])
  repeats = args.repeats or (1 if args.quick else 3)
  chunk = 32 if args.quick else 128
  teachers = []
  with C.scratch_dir(args, NAME) as workdir:
    makers = {"quickstart": lambda: quickstart_teacher(workdir, sizes, args.quickstart_dir),
              "text": lambda: text_teacher(workdir, sizes)}
    for name in args.teachers.split(","):
      if name not in makers:
        raise SystemExit(f"--teachers: unknown teacher {name!r}; expected some of "
                         f"{sorted(makers)}")
      teacher = makers[name]()
      teacher["validation_tokens"] = sizes.validation_tokens
      teachers.append(study(teacher, repeats, chunk))
  return {"benchmark": NAME, "quick": bool(args.quick), "machine": C.machine_info(),
          "settings": {"sizes": dataclasses.asdict(sizes), "repeats": repeats,
                       "fit_chunk": chunk, "top_ks": list(TC.TOP_KS),
                       "goal": {"k": TC.GOAL_K, "bytes_per_token": TC.GOAL_BYTES,
                                "kl_tolerance": TC.KL_TOLERANCE},
                       "smoothing_grid": list(TC.SMOOTHING_GRID),
                       "codecs": {label: TC.CODEC_DOCS[label] for label in TC.CODEC_DOCS}},
          "teachers": teachers}


def _synthetic_reference(quick: bool) -> dict[str, Any] | None:
  """teacher_codec's frequency-ordered row at k = GOAL_K (its saved JSON), if present."""
  try:
    data = C.load_json(TC.NAME, quick)
  except (OSError, ValueError, KeyError, SystemExit):
    return None
  layout = data["layouts"][0]["layout"]
  row = next((r for r in data["rows"] if r["layout"] == layout and r["top_k"] == TC.GOAL_K
              and r["codec"] == TC.DEFAULT), None)
  base = next((r for r in data["rows"] if r["layout"] == layout
               and r["top_k"] == TC.GOAL_K and r["codec"] == TC.BASELINE), None)
  if row is None or base is None:
    return None
  return {"layout": layout, "vocab_size": data["settings"]["vocab_size"],
          "entropy": data["layouts"][0]["distribution"]["entropy_nats_mean"],
          "bytes": row["bytes_per_token"], "baseline_bytes": base["bytes_per_token"],
          "kl_vs_baseline": row["kl_vs_baseline"], "kl": row["kl_mean"],
          "baseline_kl": base["kl_mean"],
          "tail_mass": data["layouts"][0]["distribution"]["tail_mass_mean"][str(TC.GOAL_K)]
          if str(TC.GOAL_K) in data["layouts"][0]["distribution"]["tail_mass_mean"]
          else data["layouts"][0]["distribution"]["tail_mass_mean"].get(TC.GOAL_K)}


def markdown(data: dict[str, Any]) -> str:
  s = data["settings"]
  k = s["goal"]["k"]
  lines = [f"## Teacher codecs on trained teachers (`{NAME}`)", ""]
  if data["quick"]:
    lines += ["**Quick run (`--quick`): small sizes, not representative.**", ""]
  lines += [
      f"`python -m benchmarks.{NAME} --out docs/` — the measurements of `teacher_codec` "
      "(above) on the distributions of teachers trained here instead of `zipf_logits`. "
      "Teachers: the quickstart's arithmetic teacher (byte vocabulary), and a text model "
      "with a SentencePiece BPE vocabulary trained on the documentation text that ships "
      "with CPython (`pydoc_data.topics`), by `distill.train(loss=\"seqkd\")` on 64-token "
      "chunks published as a rollout dataset (details in the script's docstring). KL, "
      "bytes and the tail priors as in `teacher_codec`; every k is capped at V. Median of "
      f"{s['repeats']} timed runs. Machine: {C.machine_line(data['machine'])}.", ""]
  summary = []
  for t in data["teachers"]:
    info, d, g = t["teacher"], t["distribution"], t["goal"]
    tail = {int(key): v for key, v in d["tail_mass_mean"].items()}
    best = g["best_at_baseline_kl"]
    summary.append([
        f"{info['name']} (trained)", f"{info['vocab_size']:,}",
        f"{d['entropy_nats_mean']:.2f}", f"{d['top1_prob_mean']:.2f}",
        f"{tail[k]:.2e}", f"{g['baseline_bytes_per_token']:.1f}",
        f"{g['default_bytes_per_token']:.1f}", f"{g['baseline_kl']:.5f}",
        f"{g['baseline_kl'] * (1 + g['default_kl_vs_baseline']):.5f}",
        TC._pct(g["default_kl_vs_baseline"]),
        "—" if best is None else
        f"{best['total_bytes_per_token']:.1f} (k = {best['top_k']}, "
        f"{best['prior'] or 'uniform'} tail)",
        "**met**" if g["met"] else "**not met**"])
  ref = _synthetic_reference(data["quick"])
  if ref is not None:
    summary.append([
        f"synthetic, {ref['layout']} (`teacher_codec`'s JSON)", f"{ref['vocab_size']:,}",
        f"{ref['entropy']:.2f}", "—", "—" if ref["tail_mass"] is None else
        f"{ref['tail_mass']:.2e}", f"{ref['baseline_bytes']:.1f}", f"{ref['bytes']:.1f}",
        f"{ref['baseline_kl']:.5f}", f"{ref['kl']:.5f}",
        TC._pct(ref["kl_vs_baseline"]), "see above", "see above"])
  lines += [
      f"Summary at k = {k}: the goal is at most {s['goal']['bytes_per_token']:.0f} "
      f"bytes/token for `{TC.DEFAULT}` with KL within {100 * s['goal']['kl_tolerance']:.0f}"
      f" % of `{TC.BASELINE}`'s at the same k; *fewest bytes at the baseline's KL* is the "
      "cheapest configuration (any k, uniform or prior tail, prior amortised) whose KL is "
      f"<= `{TC.BASELINE}` top-{k}'s.", "",
      C.markdown_table(
          ["teacher", "V", "entropy (nats)", "top-1 prob", f"tail mass outside top-{k}",
           f"`{TC.BASELINE}` bytes/token", f"`{TC.DEFAULT}` bytes/token",
           f"`{TC.BASELINE}` KL", f"`{TC.DEFAULT}` KL", f"KL vs `{TC.BASELINE}`",
           "fewest bytes/token at the baseline's KL", "goal"],
          summary, ["l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l", "l"]), ""]
  lines += [_findings(data), ""]
  for t in data["teachers"]:
    info = t["teacher"]
    about = [f"{info['params']:,} parameters (d_model {info['d_model']}, "
             f"{info['num_layers']} layers), {info['origin']}"]
    if info.get("steps"):
      about.append(f"{info['steps']} SFT steps")
    if "held_out_nll" in info:
      about.append(f"{info['epochs']:.1f} epochs of its {info['train_chunks']:,} train "
                   f"chunks; held-out loss {info['held_out_nll']:.2f} nats/token against "
                   f"{info['unigram_nll']:.2f} for the train unigram")
    if info.get("validation_curve"):
      about.append("validation loss by step (nats/token, held-out chunks used for "
                   "nothing else): " + ", ".join(
                       f"{v:.2f} ({int(step)})" for step, v in info["validation_curve"]))
    lines += [f"### {info['name'].capitalize()} teacher", "",
              "; ".join(about) + f". Evaluated: {info['evaluated']}; tail priors fitted on "
              f"{info['fit']}.", ""]
    table = []
    for r in t["rows"]:
      table.append([r["top_k"], f"`{r['codec']}`", f"{r['bytes_per_token']:.1f}",
                    f"{r['kl_mean']:.5f}", TC._pct(r["kl_vs_baseline"]),
                    C.fmt_rate(r["encode_tokens_per_s"]),
                    C.fmt_rate(r["decode_tokens_per_s"])])
    lines.append(C.markdown_table(
        ["k", "codec", "bytes/token", "KL (nats/token)", f"vs {TC.BASELINE}",
         "encode tokens/s", "decode tokens/s"], table, ["r", "l", "r", "r", "r", "r", "r"]))
    lines += ["", _breakdown(t["rows"])]
    prior_table = []
    for r in t["prior_rows"]:
      prior_table.append([
          r["top_k"], "uniform" if r["prior"] is None else f"prior: {r['prior']}",
          r["role"], f"{r['total_bytes_per_token']:.2f}", f"{r['kl_mean']:.5f}",
          TC._pct(r["kl_vs_baseline"]),
          "—" if r.get("smoothing") is None else f"{r['smoothing']:g}"])
    b = t["within_goal_bytes"]
    lines += ["", "Tail priors (`" + TC.DEFAULT + "`, against `" + TC.BASELINE
              + f"` top-{k} with a uniform tail):", "",
              C.markdown_table(["k", "tail", "row", "total bytes/token", "KL (nats/token)",
                                "vs baseline", "smoothing"], prior_table,
                               ["r", "l", "l", "r", "r", "r", "r"]),
              "", f"Within {s['goal']['bytes_per_token']:.0f} bytes/token: `{TC.DEFAULT}` "
              f"stores top-{b[TC.DEFAULT]['top_k']} (KL {b[TC.DEFAULT]['kl_mean']:.5f}), "
              f"`{TC.BASELINE}` top-{b[TC.BASELINE]['top_k']} (KL "
              f"{b[TC.BASELINE]['kl_mean']:.5f}).", ""]
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


_SECTIONS = (("topk_id_classes", "id symbols (entropy-coded)"),
             ("topk_id_bits", "id low bits (raw)"), ("topk_probs", "probabilities"),
             ("tail_mass", "tail mass"), ("token_logprob", "`token_logprob`"),
             ("header", "headers"))


def _breakdown(rows: list[dict[str, Any]]) -> str:
  """Where ``packed`` spends its bytes, per k (``PackedCodec.size_breakdown``)."""
  table = []
  for r in rows:
    by = r.get("bytes_per_token_by_section")
    if r["codec"] == TC.DEFAULT and by:
      table.append([r["top_k"]] + [f"{by.get(key, 0.0):.1f}" for key, _ in _SECTIONS]
                   + [f"{r['bytes_per_token']:.1f}"])
  return (f"Where `{TC.DEFAULT}` spends its bytes (bytes/token, from "
          "`PackedCodec.size_breakdown`):\n\n" + C.markdown_table(
              ["k"] + [label for _, label in _SECTIONS] + ["total"], table,
              ["r"] * (len(_SECTIONS) + 2)))


def _findings(data: dict[str, Any]) -> str:
  """The summary's reading, from the numbers."""
  s = data["settings"]
  k, budget = s["goal"]["k"], s["goal"]["bytes_per_token"]
  out = []
  for t in data["teachers"]:
    info, g = t["teacher"], t["goal"]
    name = f"the {info['name']} teacher"
    text = (f"For {name} (V = {info['vocab_size']:,}), `{TC.DEFAULT}` at k = {k} takes "
            f"{g['default_bytes_per_token']:.1f} bytes/token "
            f"({'within' if g['default_bytes_per_token'] <= budget else 'over'} "
            f"{budget:.0f}) at {TC._pct(g['default_kl_vs_baseline'])} KL against "
            f"`{TC.BASELINE}` ({g['baseline_bytes_per_token']:.1f} bytes/token): the goal is "
            f"{'met' if g['met'] else 'not met'}")
    if g["baseline_kl"] < 1e-3:
      text += (f". Its distributions are nearly one-hot (the baseline's KL is "
               f"{g['baseline_kl']:.1e} nats/token), so the relative criterion compares "
               "quantisation noise with almost nothing: the absolute KL that 128-level "
               f"log-probs add is {g['baseline_kl'] * g['default_kl_vs_baseline']:.1e} "
               "nats/token")
    best = g["best_at_baseline_kl"]
    if best is not None:
      text += (f"; the cheapest configuration with KL <= the baseline's is top-"
               f"{best['top_k']} with a {best['prior'] or 'uniform'} tail at "
               f"{best['total_bytes_per_token']:.1f} bytes/token")
    else:
      text += f"; no configuration up to k = {max(s['top_ks'])} reaches the baseline's KL"
    if "held_out_nll" in info:
      d = t["distribution"]
      tail = {int(key): v for key, v in d["tail_mass_mean"].items()}[k]
      text += (f". This teacher is small and trained on {info['train_chunks']:,} chunks "
               f"of {TEXT_CHUNK} tokens: its held-out loss is only "
               f"{info['unigram_nll'] - info['held_out_nll']:.2f} nats/token below the "
               f"train unigram's, so its distributions are flatter (entropy "
               f"{d['entropy_nats_mean']:.2f} nats, {100 * tail:.0f} % of the mass outside "
               f"the top-{k}) than a large teacher's; with that much mass in the tail, the "
               "tail's shape matters more than the top-k's width, which is why a "
               "dataset-level prior (close to the unigram) buys so much here, more than it "
               "would for a sharper teacher")
    out.append(text + ".")
  return " ".join(out)


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  for field in dataclasses.fields(Sizes):
    parser.add_argument(f"--{field.name}", type=int, default=None,
                        help=f"default {field.default} ({getattr(QUICK, field.name)} with "
                             "--quick)")
  parser.add_argument("--teachers", default="quickstart,text",
                      help="comma-separated: quickstart, text")
  parser.add_argument("--quickstart_dir", default=None,
                      help="a quickstart workdir whose teacher/student checkpoint to use "
                           "instead of training the quickstart teacher here")
  args = parser.parse_args(argv)
  return C.run_benchmark(NAME, args, run, markdown)


if __name__ == "__main__":
  sys.exit(main())
