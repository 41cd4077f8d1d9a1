"""Recording throughput of ``rlds_lm.recorder.Recorder`` (Riegeli backend).

What is timed, per teacher top-k width (0, 64, 256; vocabulary 32,000):

* ``Recorder``: construct on a fresh directory, ``record`` every episode (validation,
  de-duplication, envlogger encoding, one flush per episode), ``close``. Rows for the
  default writer options and for ``uncompressed``, ``brotli:6`` and
  ``transpose,brotli:6,chunk_size:1M``.
* Baseline, same run: the same bytes (every per-token array's buffer and every text of
  every step) written with plain ``open(path, "wb").write`` per buffer and ``close()``
  (no fsync). ``ratio`` = Recorder tokens/s / raw tokens/s.
* ``publish_log`` of the default-options log to a fresh TFDS data_dir (tfrecord +
  array_record), in episodes/s.
* ``validate_episode`` on the same episodes (the part of ``record`` that is validation).

Episodes are built before any timing. Tokens are action (generated) tokens.

    python -m benchmarks.record_throughput --out docs/
    python -m benchmarks.record_throughput --quick
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from benchmarks import _common as C
from benchmarks import _episodes as E

NAME = "record_throughput"
VOCAB_SIZE = 32_000
TOP_KS = (0, 64, 256)
EXTRA_WRITER_OPTIONS = ("uncompressed", "brotli:6", "transpose,brotli:6,chunk_size:1M")


def _quiet() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


class _Dirs:
  """Hands out fresh subdirectories of a scratch root, numbered."""

  def __init__(self, root: str):
    self.root = root
    self.count = 0
    self.current = ""

  def fresh(self, prefix: str) -> str:
    self.count += 1
    self.current = os.path.join(self.root, f"{prefix}-{self.count:03d}")
    return self.current


def run(args) -> dict[str, Any]:
  _quiet()
  from rlds_lm import logs  # pylint: disable=g-import-not-at-top
  from rlds_lm import recorder as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm import validate as V  # pylint: disable=g-import-not-at-top

  num_episodes = 40 if args.quick else args.episodes
  repeats = args.repeats or (1 if args.quick else 3)
  publish_repeats = 1 if args.quick else 2
  default_options = logs.DEFAULT_WRITER_OPTIONS
  writer_options = (default_options,) + tuple(
      o for o in EXTRA_WRITER_OPTIONS if o != default_options)
  scratch = args.workdir or tempfile.mkdtemp(prefix="rlds_lm_bench_record_")
  os.makedirs(scratch, exist_ok=True)
  dirs = _Dirs(scratch)

  settings = {
      "episodes": num_episodes, "turns_per_episode": 1, "prompt_tokens": args.prompt_len,
      "action_tokens": args.action_len, "text_chars_per_token": 4,
      "vocab_size": VOCAB_SIZE, "top_ks": list(TOP_KS), "repeats": repeats,
      "publish_repeats": publish_repeats, "warmup_runs": 1,
      "default_writer_options": default_options, "writer_options": list(writer_options),
      "reward_names": [E.REWARD_NAME], "scratch_dir": scratch,
  }
  rows: list[dict[str, Any]] = []
  per_k: list[dict[str, Any]] = []
  try:
    for k in TOP_KS:
      config = S.SchemaConfig(vocab_size=VOCAB_SIZE, teacher_top_k=k,
                              reward_names=(E.REWARD_NAME,))
      t0 = time.perf_counter()
      episodes = E.make_rollouts(config, num_episodes, prompt_len=args.prompt_len,
                                 action_len=args.action_len, seed=1000 + k)
      build_s = time.perf_counter() - t0
      tokens = sum(E.action_tokens(ep) for ep in episodes)
      buffers = [E.episode_buffers(ep) for ep in episodes]
      raw_bytes = sum(len(b) for bufs in buffers for b in bufs)
      print(f"[top-k {k}] built {num_episodes} episodes, {tokens} action tokens, "
            f"{raw_bytes / tokens:.0f} raw bytes/token in {build_s:.1f} s", flush=True)

      # Baseline: the same bytes through plain buffered file writes.
      raw_path = os.path.join(scratch, f"raw-k{k}.bin")

      def raw_write(path=raw_path, buffers=buffers):
        with open(path, "wb") as f:
          for bufs in buffers:
            for b in bufs:
              f.write(b)

      raw = C.measure(raw_write, repeats=max(repeats, 5), warmup=1)
      raw_du = C.disk_usage_file(raw_path)
      os.remove(raw_path)
      raw_tps = tokens / raw["median_s"]
      rows.append({
          "top_k": k, "writer": "raw file.write", "writer_options": None,
          "seconds": raw["seconds"], "median_s": raw["median_s"],
          "episodes_per_s": num_episodes / raw["median_s"], "tokens_per_s": raw_tps,
          "ratio_to_raw": 1.0, "bytes": raw_du, "du_bytes_per_token":
          raw_du["du_bytes"] / tokens, "apparent_bytes_per_token":
          raw_du["apparent_bytes"] / tokens,
      })
      print(f"  raw write: {C.fmt_rate(raw_tps)} tok/s", flush=True)

      # Validation alone (the Recorder does exactly this per episode).
      val = C.measure(lambda episodes=episodes, config=config: [
          V.validate_episode(ep, config) for ep in episodes], repeats=repeats, warmup=1)

      default_log = ""
      for options in writer_options:
        def record(options=options, config=config, episodes=episodes):
          directory = dirs.current
          with R.Recorder(directory, config, writer_options=options) as rec:
            for ep in episodes:
              rec.record(ep)
          return directory

        def fresh(k=k):
          if dirs.current and os.path.isdir(dirs.current):
            shutil.rmtree(dirs.current)
          dirs.fresh(f"log-k{k}")

        res = C.measure(record, repeats=repeats, warmup=1, setup=fresh)
        log_dir = res["result"]
        du = C.disk_usage(log_dir)
        tps = tokens / res["median_s"]
        row = {
            "top_k": k, "writer": "Recorder (riegeli)", "writer_options": options,
            "default_options": options == default_options,
            "seconds": res["seconds"], "median_s": res["median_s"],
            "episodes_per_s": num_episodes / res["median_s"], "tokens_per_s": tps,
            "ratio_to_raw": tps / raw_tps, "bytes": du,
            "du_bytes_per_token": du["du_bytes"] / tokens,
            "apparent_bytes_per_token": du["apparent_bytes"] / tokens,
        }
        print(f"  Recorder {options!r}: {C.fmt_rate(tps)} tok/s, ratio "
              f"{row['ratio_to_raw']:.3f}, {row['du_bytes_per_token']:.0f} B/token",
              flush=True)
        if options == default_options:
          default_log = os.path.join(scratch, f"kept-log-k{k}")
          os.rename(log_dir, default_log)
          dirs.current = ""
          row["validation_share"] = val["median_s"] / res["median_s"]
        rows.append(row)
      if dirs.current and os.path.isdir(dirs.current):
        shutil.rmtree(dirs.current)
        dirs.current = ""

      # publish_log of the default-options log.
      def publish(default_log=default_log, k=k):
        return R.publish_log(default_log, data_dir=dirs.current, name=f"bench_k{k}")

      def fresh_pub(k=k):
        if dirs.current and os.path.isdir(dirs.current):
          shutil.rmtree(dirs.current)
        dirs.fresh(f"pub-k{k}")

      pub = C.measure(publish, repeats=publish_repeats, warmup=1, setup=fresh_pub)
      pub_du = C.disk_usage(pub["result"])
      pub_formats = C.disk_usage_by_format(pub["result"])
      shutil.rmtree(dirs.current)
      dirs.current = ""
      shutil.rmtree(default_log)
      for row in rows:
        if row["top_k"] == k and row.get("default_options"):
          row["publish_episodes_per_s"] = num_episodes / pub["median_s"]
      per_k.append({
          "top_k": k, "episodes": num_episodes, "action_tokens": tokens,
          "build_s": build_s, "raw_bytes": raw_bytes,
          "raw_bytes_per_token": raw_bytes / tokens,
          "validate_seconds": val["seconds"], "validate_median_s": val["median_s"],
          "validate_tokens_per_s": tokens / val["median_s"],
          "validate_episodes_per_s": num_episodes / val["median_s"],
          "publish_seconds": pub["seconds"], "publish_median_s": pub["median_s"],
          "publish_episodes_per_s": num_episodes / pub["median_s"],
          "publish_tokens_per_s": tokens / pub["median_s"],
          "published_bytes": pub_du,
          "published_du_bytes_per_token": pub_du["du_bytes"] / tokens,
          "published_bytes_per_token_by_format": {
              fmt: size / tokens for fmt, size in pub_formats.items()},
      })
      print(f"  validate: {C.fmt_rate(tokens / val['median_s'])} tok/s; publish_log: "
            f"{num_episodes / pub['median_s']:.0f} episodes/s", flush=True)
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(scratch, ignore_errors=True)

  return {
      "benchmark": NAME, "quick": bool(args.quick), "machine": C.machine_info(),
      "settings": settings, "rows": rows, "per_top_k": per_k,
  }


def markdown(data: dict[str, Any]) -> str:
  s = data["settings"]
  default = s["default_writer_options"]
  lines = [f"## Recording throughput (`{NAME}`)", ""]
  if data["quick"]:
    lines += ["**Quick run (`--quick`): small sizes, not representative.**", ""]
  lines += [
      f"`python -m benchmarks.{NAME} --out docs/` — {s['episodes']} single-turn rollout "
      f"episodes per row, {s['prompt_tokens']} prompt + {s['action_tokens']} action tokens "
      f"each, ~{s['text_chars_per_token']} text characters per token, vocabulary "
      f"{s['vocab_size']:,}, random payloads. Median of {s['repeats']} timed runs after "
      f"one warm-up. Tokens are action tokens. Machine: {C.machine_line(data['machine'])}.",
      "",
      "`raw` writes the same per-token arrays and texts with plain `file.write` (no "
      "fsync); `ratio` is Recorder tokens/s over raw tokens/s at the same top-k. "
      "Bytes/token is allocated disk space (`du`) of the log directory over action "
      "tokens. `publish_log` (tfrecord + array_record, from the default-options log) "
      f"is timed separately: median of {s['publish_repeats']} after one warm-up.",
      "",
  ]
  table = []
  for r in data["rows"]:
    if r["writer_options"] is None:
      writer = "raw `file.write`"
    else:
      writer = f"Recorder `{r['writer_options']}`" + (" (default)" if r.get(
          "default_options") else "")
    pub = r.get("publish_episodes_per_s")
    table.append([
        r["top_k"], writer, f"{r['episodes_per_s']:,.0f}", C.fmt_rate(r["tokens_per_s"]),
        f"{r['ratio_to_raw']:.3f}", f"{r['du_bytes_per_token']:.0f}",
        f"{pub:,.0f}" if pub else "—",
    ])
  lines.append(C.markdown_table(
      ["teacher top-k", "writer", "episodes/s", "tokens/s", "ratio to raw",
       "bytes/token on disk", "publish_log episodes/s"], table,
      ["r", "l", "r", "r", "r", "r", "r"]))
  lines += ["", "Validation (`rlds_lm.validate.validate_episode`, part of every "
            "`Recorder.record`) and the published dataset:", ""]
  table = []
  default_rows = {r["top_k"]: r for r in data["rows"] if r.get("default_options")}
  for p in data["per_top_k"]:
    share = default_rows.get(p["top_k"], {}).get("validation_share")
    fmts = p["published_bytes_per_token_by_format"]
    table.append([
        p["top_k"], C.fmt_rate(p["validate_tokens_per_s"]),
        f"{p['validate_episodes_per_s']:,.0f}",
        f"{100 * share:.0f} %" if share is not None else "—",
        f"{p['publish_episodes_per_s']:,.0f}", C.fmt_rate(p["publish_tokens_per_s"]),
        " + ".join(f"{v:.0f} ({k})" for k, v in sorted(fmts.items())),
    ])
  lines.append(C.markdown_table(
      ["teacher top-k", "validate tokens/s", "validate episodes/s",
       f"validation share of Recorder `{default}` time", "publish_log episodes/s",
       "publish_log tokens/s", "published bytes/token"], table))
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--episodes", type=int, default=500)
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--action-len", type=int, default=128)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  data = run(args)
  data["total_wall_s"] = time.perf_counter() - start
  path = C.write_json(NAME, args.quick, data)
  section = markdown(data)
  print(section)
  print(f"wrote {path}")
  if args.out:
    print(f"updated {C.update_markdown(args.out, NAME, section)}")
  print(f"total {data['total_wall_s']:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
