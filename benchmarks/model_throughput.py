"""Sampling and teacher-scoring throughput of the JAX models (``rlds_lm.models``), CPU.

What is measured, on the same model in the same run:

* sampling: generated tokens/s of the KV-cache sampler (prefill once, then one token per
  step) against the reference sampler that recomputes the whole prefix at every step;
  no EOS, so every row generates exactly ``--new`` tokens; temperature 1.0;
* scoring: tokens/s of teacher-forced scoring (``sampling.score``: per-token log-probs)
  and of teacher annotation (``teacher_scoring.annotate``: the same forward pass plus
  top-k = 64 extraction inside jit, and top-64 + sampled-k = 64);
* compile time of the first call, separately (excluded from the rates).

Parameters are randomly initialised (throughput does not depend on the weights).

    python -m benchmarks.model_throughput --out docs/
    python -m benchmarks.model_throughput --quick
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks import _common as C

NAME = "model_throughput"


def run(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import teacher_scoring  # pylint: disable=g-import-not-at-top

  quick = args.quick
  config = mc.get_config("tiny" if quick else args.model)
  batch, prompt_len = (4, 16) if quick else (args.batch, args.prompt)
  new = 16 if quick else args.new
  score_batch, score_len = (4, 32) if quick else (args.score_batch, args.score_len)
  repeats = args.repeats or (1 if quick else 3)
  rng = np.random.default_rng(0)
  params = gemma.init_params(config, seed=0)
  prompts = [rng.integers(3, config.vocab_size, size=prompt_len).astype(np.int32)
             for _ in range(batch)]
  seeds = list(range(batch))
  sampler = sampling.SamplerConfig(temperature=1.0)
  rows = []

  def sample_fn(cached):
    def call():
      out = sampling.sample(config, params, prompts, seeds, sampler, new, eos_id=None,
                            cached=cached)
      return out
    return call

  for label, cached in (("KV cache", True), ("recompute prefix", False)):
    start = time.perf_counter()
    first = sample_fn(cached)()
    compile_s = time.perf_counter() - start
    m = C.measure(sample_fn(cached), repeats=repeats, warmup=0)
    tokens = int(np.asarray(first.lengths).sum())
    rows.append({"kind": "sample", "variant": label, "batch": batch, "prompt": prompt_len,
                 "new_tokens": new, "first_call_s": compile_s, "seconds": m["seconds"],
                 "median_s": m["median_s"], "tokens_per_s": tokens / m["median_s"]})
  a, b = (sample_fn(True)(), sample_fn(False)())
  same = bool(np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens)))

  sequences = [rng.integers(3, config.vocab_size, size=score_len).astype(np.int32)
               for _ in range(score_batch)]
  prompt_lengths = [score_len // 4] * score_batch
  scored_tokens = sum(len(s) - p for s, p in zip(sequences, prompt_lengths))
  variants = (
      ("log-probs only (score)", lambda: sampling.score(config, params, sequences,
                                                        prompt_lengths)),
      ("top-64 (annotate)", lambda: teacher_scoring.annotate(
          config, params, sequences, prompt_lengths, top_k=64)),
      ("top-64 + sampled-64 (annotate)", lambda: teacher_scoring.annotate(
          config, params, sequences, prompt_lengths, top_k=64, sampled=64,
          seeds=list(range(score_batch)))),
  )
  for label, fn in variants:
    start = time.perf_counter()
    fn()
    compile_s = time.perf_counter() - start
    m = C.measure(fn, repeats=repeats, warmup=0)
    rows.append({"kind": "score", "variant": label, "batch": score_batch,
                 "length": score_len, "first_call_s": compile_s, "seconds": m["seconds"],
                 "median_s": m["median_s"], "tokens_per_s": scored_tokens / m["median_s"]})
  return {
      "benchmark": NAME, "quick": quick, "machine": C.machine_info(),
      "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
      "model": config.name, "params": mc.count_params(config),
      "cached_equals_uncached": same, "rows": rows,
  }


def markdown(data: dict) -> str:
  rows = data["rows"]
  sample_rows = [r for r in rows if r["kind"] == "sample"]
  base = next(r for r in sample_rows if r["variant"] == "recompute prefix")["tokens_per_s"]
  score_base = next(r for r in rows if r["kind"] == "score")["tokens_per_s"]
  s = sample_rows[0]
  lines = [
      f"## Model throughput (`{NAME}`)",
      "",
      f"`python -m benchmarks.model_throughput --out docs/` — model `{data['model']}` "
      f"({data['params'] / 1e6:.1f} M parameters, random weights), JAX backend "
      f"`{data['jax_backend']}`. Sampling: batch {s['batch']}, prompt {s['prompt']} tokens, "
      f"{s['new_tokens']} new tokens per row (no EOS), temperature 1. Median of "
      f"{len(s['seconds'])} timed runs after the first (compiling) call. "
      f"{C.machine_line(data['machine'])}",
      "",
      C.markdown_table(
          ["sampler", "generated tokens/s", "ratio to recompute", "first call s"],
          [[r["variant"], C.fmt_rate(r["tokens_per_s"]), f"{r['tokens_per_s'] / base:.2f}",
            f"{r['first_call_s']:.1f}"] for r in sample_rows]),
      "",
      f"The two samplers produced identical tokens: {data['cached_equals_uncached']}.",
      "",
  ]
  score_rows = [r for r in rows if r["kind"] == "score"]
  r0 = score_rows[0]
  lines += [
      f"Teacher-forced scoring, batch {r0['batch']} x {r0['length']} tokens (the last "
      f"{r0['length'] - r0['length'] // 4} of each scored):",
      "",
      C.markdown_table(
          ["scoring", "scored tokens/s", "ratio to log-probs only", "first call s"],
          [[r["variant"], C.fmt_rate(r["tokens_per_s"]),
            f"{r['tokens_per_s'] / score_base:.2f}", f"{r['first_call_s']:.1f}"]
           for r in score_rows]),
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="small", help="named config (rlds_lm.models)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--score-batch", type=int, default=16)
  parser.add_argument("--score-len", type=int, default=128)
  args = parser.parse_args(argv)
  return C.run_benchmark(NAME, args, run, markdown)


if __name__ == "__main__":
  sys.exit(main())
