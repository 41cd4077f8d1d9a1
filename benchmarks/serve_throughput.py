"""Rollouts per second through ``rlds-lm serve`` over HTTP against the in-process backend.

The same model (random weights), prompts, seeds and sampler settings; episodes are built
by ``rlds_lm.backends.episodes.rollouts`` (tokens, behaviour log-probs, provenance) from
each backend, and the run checks that both gave the same episode ids. The server runs in
its own process on localhost (its model thread batches concurrent requests); the client
sends one request per sample, ``concurrency`` at a time. Each setting is timed after a
warm-up pass that compiles every batch shape it will see.

    python -m benchmarks.serve_throughput --out docs/
    python -m benchmarks.serve_throughput --quick
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

from benchmarks import _common as C

NAME = "serve_throughput"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Sizes:
  model: str = "tiny"
  prompts: int = 16
  samples: int = 4
  new_tokens: int = 32
  concurrency: tuple[int, ...] = (1, 8, 64)


QUICK = Sizes(prompts=4, samples=2, new_tokens=8, concurrency=(1, 8))
# The `small` model (17 M parameters): per-request HTTP overhead against a model whose
# forward passes cost something, as a served model's do.
FULL = Sizes(model="small", prompts=16, samples=4, new_tokens=32, concurrency=(1, 8, 64))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait(port: int, proc, timeout_s: float = 300) -> None:
  import requests  # pylint: disable=g-import-not-at-top
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"rlds-lm serve exited: {proc.stdout.read()[-2000:]}")
    try:
      if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
        return
    except requests.ConnectionError:
      time.sleep(0.3)
  raise RuntimeError("rlds-lm serve did not start")


def run(args) -> dict:
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
  from rlds_lm.backends import episodes  # pylint: disable=g-import-not-at-top
  from rlds_lm.backends import local  # pylint: disable=g-import-not-at-top
  from rlds_lm.backends import openai_compat  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import checkpoint  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top

  sizes = QUICK if args.quick else FULL
  tok = tokenizers.ByteTokenizer()
  config = S.SchemaConfig(vocab_size=tok.vocab_size)
  prompts = {f"p-{i}": f"{i} + {3 * i} = " for i in range(sizes.prompts)}
  sampler = sampling.SamplerConfig(temperature=1.0)
  kwargs = dict(tokenizer=tok, num_samples=sizes.samples, max_new_tokens=sizes.new_tokens,
                sampler=sampler)
  episodes_count = sizes.prompts * sizes.samples
  repeats = args.repeats or (1 if args.quick else 3)
  rows = []
  with C.scratch_dir(args, NAME) as work:
    path = os.path.join(work, "ckpt")
    model = mc.get_config(sizes.model)
    checkpoint.save(path, model, gemma.init_params(model, 0))
    inproc = local.LocalBackend.from_checkpoint(path, name="bench")

    def in_process():
      return list(episodes.rollouts(inproc, prompts, config, **kwargs))

    reference = in_process()  # warm-up: compiles
    m = C.measure(in_process, repeats=repeats, warmup=0)
    rows.append({"backend": "in-process", "concurrency": 0, "seconds": m["seconds"],
                 "median_s": m["median_s"], "episodes_per_s": episodes_count / m["median_s"]})
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "rlds_lm.cli", "serve", path, "--port",
                             str(port), "--name", "bench", "--max_batch", "256"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
      _wait(port, proc)
      endpoint = f"http://127.0.0.1:{port}/v1"
      same = True
      for concurrency in sizes.concurrency:
        client = openai_compat.OpenAIBackend(endpoint, "bench", tokenizer=tok,
                                             api_key_env="", max_concurrency=concurrency)

        def over_http(client=client):
          return list(episodes.rollouts(client, prompts, config, **kwargs))

        got = over_http()  # warm-up: the server compiles the batch shapes it sees
        same &= [e[S.EPISODE_ID] for e in got] == [e[S.EPISODE_ID] for e in reference]
        m = C.measure(over_http, repeats=repeats, warmup=0)
        rows.append({"backend": "HTTP (rlds-lm serve)", "concurrency": concurrency,
                     "seconds": m["seconds"], "median_s": m["median_s"],
                     "episodes_per_s": episodes_count / m["median_s"]})
    finally:
      proc.terminate()
      proc.wait(timeout=60)
  return {"benchmark": NAME, "quick": args.quick, "machine": C.machine_info(),
          "sizes": dataclasses.asdict(sizes), "same_episodes": same, "rows": rows}


def markdown(data: dict) -> str:
  rows = data["rows"]
  base = next(r for r in rows if r["backend"] == "in-process")["episodes_per_s"]
  best = max((r for r in rows if r["concurrency"]), key=lambda r: r["episodes_per_s"])
  s = data["sizes"]
  lines = [
      f"## Serving throughput (`{NAME}`)",
      "",
      f"`python -m benchmarks.serve_throughput --out docs/` — model `{s['model']}` (random "
      f"weights), {s['prompts']} prompts x {s['samples']} samples, {s['new_tokens']} new "
      f"tokens, temperature 1; rollout episodes built by `backends.episodes.rollouts` from "
      f"the in-process backend and from `rlds-lm serve` over HTTP on localhost (one request "
      f"per sample). Median of {len(rows[0]['seconds'])} timed runs after a warm-up run. "
      f"{C.machine_line(data['machine'])}",
      "",
      C.markdown_table(
          ["backend", "client concurrency", "episodes/s", "ratio to in-process"],
          [[r["backend"], r["concurrency"] or "—", f"{r['episodes_per_s']:.1f}",
            f"{r['episodes_per_s'] / base:.2f}"] for r in rows]),
      "",
      f"Best HTTP setting: concurrency {best['concurrency']}, "
      f"{best['episodes_per_s'] / base:.2f}x in-process (goal: 0.7x). Same episode ids "
      f"over HTTP and in process: {data['same_episodes']}.",
  ]
  return "\n".join(lines + C.run_footer(data))


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  args = parser.parse_args(argv)
  return C.run_benchmark(NAME, args, run, markdown)


if __name__ == "__main__":
  sys.exit(main())
