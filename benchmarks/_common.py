"""Shared helpers of the benchmarks: timing, machine info, results files, Markdown.

Every benchmark writes ``benchmarks/results/<name>.json`` (``<name>.quick.json`` for a
``--quick`` run, so a smoke run never overwrites the committed numbers) and, when given
``--out DIR``, regenerates its own section of ``DIR/benchmarks.md`` between the markers
``<!-- begin: <name> -->`` and ``<!-- end: <name> -->``, leaving the rest of the file as
it is.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
DOC_NAME = "benchmarks.md"

PACKAGES = ("numpy", "tensorflow-cpu", "tensorflow", "tensorflow-datasets", "envlogger",
            "riegeli", "dm-env", "grain", "array-record", "datasets", "pyarrow", "protobuf",
            "jax")

DOC_INTRO = """\
# Benchmarks

Reproducible measurements of the rlds_lm data path: recording episodes and reading
published datasets into padded training batches. Each benchmark is a script in
`benchmarks/` that writes its raw numbers (with machine info and package versions) to
`benchmarks/results/<name>.json` and regenerates its own section of this file between
`<!-- begin: <name> -->` / `<!-- end: <name> -->` markers. Everything outside the markers is
written by hand.

Run from the repository root, in the project's virtualenv (`datasets` comes with the
`bench` extra: `pip install -e .[bench]`):

```
python -m benchmarks.record_throughput --out docs/
python -m benchmarks.read_throughput --out docs/
python -m benchmarks.pipeline_throughput --out docs/
```

Add `--quick` for a small smoke run (seconds); a quick run writes
`benchmarks/results/<name>.quick.json` and marks its section as not representative.
Timings use `time.perf_counter`, one warm-up run, and the median of the repeats.

"""


def base_parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--out", default=None,
                      help="directory of benchmarks.md whose section is regenerated "
                           "(e.g. docs/); without it no Markdown is written")
  parser.add_argument("--quick", action="store_true",
                      help="a small run for smoke-testing (seconds); not representative")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed repeats per measurement (median reported)")
  parser.add_argument("--workdir", default=None,
                      help="scratch directory (default: a fresh temporary directory, "
                           "deleted at the end)")
  parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
  parser.add_argument("--render-only", action="store_true",
                      help="measure nothing: regenerate the Markdown section from the "
                           "saved results JSON")
  return parser


def sizes_from(args: argparse.Namespace, quick: Any, full: Any, fields: Sequence[str]) -> Any:
  """The ``quick`` or ``full`` sizes dataclass with the command line's overrides: each
  of ``fields`` that ``args`` gives (not None / 0) replaces the default."""
  given = {f: getattr(args, f) for f in fields if getattr(args, f)}
  return dataclasses.replace(quick if args.quick else full, **given)


@contextlib.contextmanager
def scratch_dir(args: argparse.Namespace, name: str):
  """``--workdir``, or a fresh directory on tmpfs (trainers that record every sample
  fsync an episode each, which on a shared disk costs more than the training), removed
  at the end unless ``--keep`` or ``--workdir``."""
  shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
  work = args.workdir or tempfile.mkdtemp(prefix=f"{name}_", dir=shm)
  os.makedirs(work, exist_ok=True)
  try:
    yield work
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(work, ignore_errors=True)


def spread(seconds: Sequence[float]) -> str:
  """Slowest over fastest timed run, e.g. '1.3x'."""
  return f"{max(seconds) / min(seconds):.1f}x" if seconds and min(seconds) > 0 else "—"


def load_json(name: str, quick: bool) -> dict[str, Any]:
  with open(results_path(name, quick), encoding="utf-8") as f:
    return json.load(f)


# --------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------


def measure(fn: Callable[[], Any], *, repeats: int, warmup: int = 1,
            setup: Callable[[], Any] | None = None,
            warmup_fn: Callable[[], Any] | None = None) -> dict[str, Any]:
  """Runs ``fn`` ``warmup`` + ``repeats`` times; returns the seconds of the timed runs.

  ``setup`` (untimed) runs before every call, e.g. to make a fresh output directory.
  ``warmup_fn`` (default ``fn``) is what the untimed warm-up runs call, e.g. the same
  work on fewer items. The garbage collector runs before each call and stays enabled;
  what is alive after that collection is then frozen (``gc.freeze``), so the next
  collection scans only what came since (a full collection of a heap with JAX and
  TensorFlow loaded costs about 0.4 s, more than many of the timed calls).
  """
  times = []
  result = None
  for i in range(warmup + repeats):
    if setup is not None:
      setup()
    gc.collect()
    gc.freeze()
    call = (warmup_fn or fn) if i < warmup else fn
    start = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - start
    if i >= warmup:
      times.append(elapsed)
  return {"seconds": times, "median_s": statistics.median(times), "result": result}


# --------------------------------------------------------------------------------------
# Machine and environment.
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _git_commit() -> str:
  try:
    out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True, timeout=10)
    dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain",
                            "--untracked-files=no", "--", "rlds_lm"], check=True,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty(rlds_lm)" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def git_commit() -> str:
  """HEAD of the repository, with '+dirty(rlds_lm)' if rlds_lm/ has uncommitted edits."""
  return _git_commit()


def commit_line(info: dict[str, Any]) -> str:
  start, end = info.get("git_commit_start"), info.get("git_commit")
  if not end:
    return ""
  if start and start != end:
    return f"rlds_lm at commit `{start[:12]}` at the start, `{end[:12]}` at the end."
  return f"rlds_lm at commit `{end[:12]}`" + (" with uncommitted edits" if "dirty" in end
                                               else "") + "."


def machine_info() -> dict[str, Any]:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  try:
    mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
  except (ValueError, OSError):
    mem_gib = None
  return {
      "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else None,
      "cpu_model": _cpu_model(),
      "memory_gib": mem_gib,
      "platform": platform.platform(),
      "python": sys.version.split()[0],
      "python_implementation": platform.python_implementation(),
      "packages": versions,
      "git_commit": _git_commit(),
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def load_line(start: Sequence[float] | None, end: Sequence[float] | None,
              cpus: int | None = None) -> str:
  """'load average (1 min, N CPUs) 1.2 at start, 3.4 at end' or '' when unknown;
  ``cpus`` is the measuring machine's count (default: this machine's)."""
  if not start or not end:
    return ""
  return (f"Load average (1 min, {cpus or os.cpu_count()} CPUs): {start[0]:.1f} at the "
          f"start, {end[0]:.1f} at the end of the run.")


def machine_line(info: dict[str, Any]) -> str:
  pk = info["packages"]
  keys = [k for k in ("numpy", "tensorflow-cpu", "tensorflow", "tensorflow-datasets",
                      "envlogger", "grain", "array-record", "datasets", "pyarrow")
          if k in pk]
  return (f"{info['cpu_count']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB RAM, "
          f"Python {info['python']}, " + ", ".join(f"{k} {pk[k]}" for k in keys))


# --------------------------------------------------------------------------------------
# Sizes.
# --------------------------------------------------------------------------------------


def disk_usage(path: str) -> dict[str, int]:
  """Bytes under ``path``: allocated on disk (like ``du``) and apparent (file sizes)."""
  allocated = apparent = 0
  for root, _, files in os.walk(path):
    for name in files:
      st = os.stat(os.path.join(root, name))
      allocated += st.st_blocks * 512
      apparent += st.st_size
  return {"du_bytes": allocated, "apparent_bytes": apparent}


def disk_usage_file(path: str) -> dict[str, int]:
  st = os.stat(path)
  return {"du_bytes": st.st_blocks * 512, "apparent_bytes": st.st_size}


def disk_usage_by_format(dataset_dir: str) -> dict[str, int]:
  """Allocated bytes of a TFDS dataset's record files, by file format."""
  out: dict[str, int] = {}
  for root, _, files in os.walk(dataset_dir):
    for name in files:
      for fmt in ("array_record", "tfrecord"):
        if f".{fmt}-" in name:
          out[fmt] = out.get(fmt, 0) + os.stat(os.path.join(root, name)).st_blocks * 512
          break
  return out


# --------------------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------------------


def results_path(name: str, quick: bool) -> str:
  return os.path.join(RESULTS_DIR, f"{name}{'.quick' if quick else ''}.json")


def write_json(name: str, quick: bool, data: dict[str, Any]) -> str:
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = results_path(name, quick)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, sort_keys=False)
    f.write("\n")
  return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
  align = align or ["l"] + ["r"] * (len(header) - 1)
  rule = ["---:" if a == "r" else "---" for a in align]
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def update_markdown(out_dir: str, name: str, section: str, *, doc_name: str = DOC_NAME,
                    intro: str = DOC_INTRO) -> str:
  """Replaces (or appends) this benchmark's marked section of ``out_dir/<doc_name>``
  (default ``benchmarks.md``); a missing file starts with ``intro``."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, doc_name)
  begin, end = f"<!-- begin: {name} -->", f"<!-- end: {name} -->"
  block = f"{begin}\n{section.rstrip()}\n{end}\n"
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      text = f.read()
  else:
    text = intro
  if begin in text and end in text and text.index(begin) < text.index(end):
    head = text[:text.index(begin)]
    tail = text[text.index(end) + len(end):].lstrip("\n")
    text = head + block + ("\n" + tail if tail else "")
  else:
    text = text.rstrip("\n") + "\n\n" + block
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def fmt_rate(value: float) -> str:
  """1234567 -> '1.23 M', 45678 -> '45.7 k'."""
  if value is None:
    return "—"
  if value >= 1e6:
    return f"{value / 1e6:.2f} M"
  if value >= 1e3:
    return f"{value / 1e3:.1f} k"
  return f"{value:.0f}"


def fmt_float(value: float | None, digits: int = 3) -> str:
  if value is None:
    return "—"
  return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.{max(0, digits - 2)}f}"


def run_benchmark(name: str, args: argparse.Namespace,
                  run: Callable[[argparse.Namespace], dict[str, Any]],
                  markdown: Callable[[dict[str, Any]], str], *, doc_name: str = DOC_NAME,
                  intro: str = DOC_INTRO) -> int:
  """The shared ``main`` body: measure (or, with ``--render-only``, reload the JSON),
  record load average and commit at the start, write the JSON, print and (with
  ``--out``) regenerate this benchmark's section of ``doc_name`` (benchmarks.md)."""
  if getattr(args, "render_only", False):
    data = load_json(name, args.quick)
  else:
    start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    commit_start = git_commit()
    data = run(args)
    data["total_wall_s"] = time.perf_counter() - start
    data["machine"].setdefault("load_average_start", load_start)
    data["machine"].setdefault("git_commit_start", commit_start)
    print(f"wrote {write_json(name, args.quick, data)}")
  section = markdown(data)
  print(section)
  if args.out:
    print(f"updated {update_markdown(args.out, name, section, doc_name=doc_name, intro=intro)}")
  if "total_wall_s" in data:
    print(f"total {data['total_wall_s']:.0f} s")
  return 0


def run_footer(data: dict[str, Any]) -> list[str]:
  """Markdown lines saying the load average, wall time and commit of a run ([] if the
  load was not recorded)."""
  load = load_line(data["machine"].get("load_average_start"),
                   data["machine"].get("load_average"), data["machine"].get("cpu_count"))
  if not load:
    return []
  return ["", load + f" Wall time {data['total_wall_s']:.0f} s. " + commit_line(data["machine"])]
