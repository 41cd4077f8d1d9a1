"""Recording throughput of ``rlds_lm.recorder.Recorder`` (Riegeli backend).

What is timed, per teacher top-k width (0, 64, 256; vocabulary 32,000):

* ``Recorder``: construct on a fresh directory, ``record`` every episode (validation,
  de-duplication, envlogger encoding, one flush per episode), ``close``. In memory
  (tmpfs, where fsync is free: the CPU cost) for the default writer options, the
  default with ``flush_every=100`` (where the Recorder has that argument),
  ``uncompressed``, ``brotli:6`` and ``transpose,brotli:6,chunk_size:1M``; on disk for
  the default options with ``flush_every`` 1 and 100 (the fsync cost).
* Baselines, same run: the same bytes (every per-token array's buffer and every text of
  every step) written with plain ``open(path, "wb").write`` per buffer and ``close()``,
  in memory without fsync (``ratio`` = tokens/s / these raw tokens/s), and on disk with
  ``flush()`` + ``os.fsync`` after every episode.
* ``publish_log`` of the default-options log to a fresh TFDS data_dir (tfrecord +
  array_record), in episodes/s.
* ``validate_episode`` on the same episodes (the part of ``record`` that is validation),
  and ``logs.encode_episode`` on the validated episodes (the encoding part).
* The floor: envlogger's native writer alone (``RiegeliEpisodeWriter.write_encoded``),
  fed records encoded before the timing, one flush per episode, ``zstd:1`` and
  ``uncompressed``, in memory: what ``record`` would cost with no Python work.
* The Recorder's writer as it was before issue 15 (today's validation, then envlogger's
  own ``RiegeliBackendWriter`` with ``codec.encode``), in memory, for the speed-up of
  the writer (validation got faster too, which this row includes).
* ``Recorder(writer="process")`` (envlogger's writer in a writer process), in memory and
  on disk, its start-up and close in the time and its CPU time added (``RUSAGE_CHILDREN``);
  the start-up alone (a Recorder that records nothing); and a session of
  ``SESSION_PASSES`` times the episodes (new ids) with either writer.
* Issue 15's goals (``GOALS``) against the Recorder's and the floor's ratios.

Episodes are built before any timing. Tokens are action (generated) tokens.

    python -m benchmarks.record_throughput --out docs/
    python -m benchmarks.record_throughput --quick
"""

from __future__ import annotations

import inspect
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks import _common as C
from benchmarks import _episodes as E

NAME = "record_throughput"
VOCAB_SIZE = 32_000
TOP_KS = (0, 64, 256)
FLUSH_EVERY = 100  # the extra row that flushes (and fsyncs) every N-th episode only
MEMORY, DISK = "memory", "disk"  # where a row's files go: tmpfs (/dev/shm) or disk
WARMUP_EPISODES = 50  # episodes in a Recorder warm-up run
EXTRA_WRITER_OPTIONS = ("uncompressed", "brotli:6", "transpose,brotli:6,chunk_size:1M")
GOALS = {0: 0.05, 64: 0.3, 256: 0.3}  # issue 15 item 3: Recorder / raw write, in memory
INLINE, PROCESS = "inline", "process"  # Recorder(writer=...)
SESSION_PASSES = 4  # the long-session rows record every episode this many times


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


def _fresh_dir(root: str, prefix: str, counter: list[int]) -> str:
  counter[0] += 1
  return os.path.join(root, f"{prefix}-{counter[0]:03d}")


def _tmpfs_root(requested: str | None) -> tuple[str, bool]:
  """A scratch directory in memory (fsync is free there), or ("", False)."""
  candidates = [requested] if requested else ["/dev/shm"]
  for base in candidates:
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
      return tempfile.mkdtemp(prefix="rlds_lm_bench_record_", dir=base), True
  return "", False


def _cpu_time() -> float:
  """CPU time of this process (every thread) and of its children that have exited and
  been waited for (the Recorder's writer process, once ``close`` returned)."""
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return time.process_time() + children.ru_utime + children.ru_stime


def _measure(fn, *, repeats: int, **kwargs) -> dict[str, Any]:
  """``C.measure`` that also takes each timed run's CPU time (:func:`_cpu_time`: this
  process and the writer process it starts): on a shared machine it moves far less
  with the load than wall time does."""
  cpu: list[float] = []

  def timed():
    start = _cpu_time()
    result = fn()
    cpu.append(_cpu_time() - start)
    return result

  res = C.measure(timed, repeats=repeats, **kwargs)
  res["cpu_seconds"] = cpu[-repeats:]  # the timed runs (warm-ups may call fn too)
  res["cpu_median_s"] = statistics.median(res["cpu_seconds"])
  return res


def run(args) -> dict[str, Any]:
  _quiet()
  from rlds_lm import _compat  # pylint: disable=g-import-not-at-top
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
  has_flush_every = "flush_every" in inspect.signature(R.Recorder).parameters
  has_process = "writer" in inspect.signature(R.Recorder).parameters

  disk_root = args.workdir or tempfile.mkdtemp(prefix="rlds_lm_bench_record_")
  os.makedirs(disk_root, exist_ok=True)
  mem_root, have_tmpfs = _tmpfs_root(args.tmpfs)
  if not have_tmpfs:
    print("no tmpfs found: the 'memory' rows run on disk too", flush=True)
    mem_root = os.path.join(disk_root, "memory")
    os.makedirs(mem_root)
  roots = {MEMORY: mem_root, DISK: disk_root}

  # Recorder rows: (storage, writer_options, flush_every). In memory every writer
  # option (CPU cost: encoding, compression, validation); on disk the default options
  # with a durable flush per episode (the crash-safety cost: fsync latency).
  # The writer-process rows (writer="process") in memory and on disk.
  variants = [(MEMORY, default_options, 1, INLINE)]
  if has_process:
    variants.append((MEMORY, default_options, 1, PROCESS))
  if has_flush_every:
    variants.append((MEMORY, default_options, FLUSH_EVERY, INLINE))
  variants += [(MEMORY, o, 1, INLINE) for o in writer_options[1:]]
  variants.append((DISK, default_options, 1, INLINE))
  if has_process:
    variants.append((DISK, default_options, 1, PROCESS))
  if has_flush_every:
    variants.append((DISK, default_options, FLUSH_EVERY, INLINE))

  settings = {
      "episodes": num_episodes, "turns_per_episode": 1, "prompt_tokens": args.prompt_len,
      "action_tokens": args.action_len, "text_chars_per_token": 4,
      "vocab_size": VOCAB_SIZE, "top_ks": list(TOP_KS), "repeats": repeats,
      "raw_repeats": max(repeats, 5), "publish_repeats": publish_repeats,
      "warmup_runs": 1, "warmup_episodes": WARMUP_EPISODES,
      "publish_warmup": "one per process",
      "default_writer_options": default_options, "writer_options": list(writer_options),
      "recorder_variants": [{"storage": st, "writer_options": o, "flush_every": f,
                             "writer": w} for st, o, f, w in variants],
      "reward_names": [E.REWARD_NAME], "memory_dir": mem_root,
      "memory_is_tmpfs": have_tmpfs, "disk_dir": disk_root,
  }
  rows: list[dict[str, Any]] = []
  per_k: list[dict[str, Any]] = []
  counter = [0]
  startup: dict[str, Any] = {}
  try:
    if has_process:
      # The writer process's start-up alone: a Recorder that records nothing.
      config0 = S.SchemaConfig(vocab_size=VOCAB_SIZE, reward_names=(E.REWARD_NAME,))
      empty = [""]

      def empty_recorder():
        with R.Recorder(empty[0], config0, writer=PROCESS):
          pass

      def fresh_empty():
        if empty[0] and os.path.isdir(empty[0]):
          shutil.rmtree(empty[0])
        empty[0] = _fresh_dir(mem_root, "empty", counter)

      res = _measure(empty_recorder, repeats=repeats, warmup=1, setup=fresh_empty)
      shutil.rmtree(empty[0])
      startup = {"seconds": res["seconds"], "median_s": res["median_s"],
                 "cpu_seconds": res["cpu_seconds"], "cpu_median_s": res["cpu_median_s"]}
      print(f"writer process start-up + close: {res['median_s']:.3f} s wall, "
            f"{res['cpu_median_s']:.3f} s CPU", flush=True)
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

      def row_of(storage, writer, options, flush_every, res, du, raw_tps, raw_cpu_tps=0.0,
                 recorder_writer=None, passes=1):
        tps = passes * tokens / res["median_s"]
        cpu_tps = passes * tokens / res["cpu_median_s"] if res.get("cpu_median_s") else None
        return {
            "cpu_seconds": res.get("cpu_seconds"), "cpu_tokens_per_s": cpu_tps,
            "cpu_ratio_to_raw": (cpu_tps / raw_cpu_tps if cpu_tps and raw_cpu_tps
                                 else (1.0 if cpu_tps else None)),
            "top_k": k, "storage": storage, "writer": writer, "writer_options": options,
            "recorder_writer": recorder_writer, "flush_every": flush_every,
            "seconds": res["seconds"],
            "median_s": res["median_s"],
            "episodes_per_s": passes * num_episodes / res["median_s"],
            "tokens_per_s": tps, "ratio_to_raw": tps / raw_tps if raw_tps else 1.0,
            "bytes": du, "du_bytes_per_token": du["du_bytes"] / (passes * tokens),
            "apparent_bytes_per_token": du["apparent_bytes"] / (passes * tokens),
            "session_episodes": passes * num_episodes,
        }

      # Baselines: the same bytes through plain buffered file writes. In memory without
      # fsync (the reference of every ratio); on disk with a flush + fsync after every
      # episode (what a minimal crash-safe appender pays).
      raw_tps = raw_cpu_tps = 0.0
      for storage, sync in ((MEMORY, False), (DISK, True)):
        raw_path = os.path.join(roots[storage], f"raw-k{k}.bin")

        def raw_write(path=raw_path, sync=sync, buffers=buffers):
          with open(path, "wb") as f:
            for bufs in buffers:
              for b in bufs:
                f.write(b)
              if sync:
                f.flush()
                os.fsync(f.fileno())

        res = _measure(raw_write, repeats=settings["raw_repeats"], warmup=1)
        du = C.disk_usage_file(raw_path)
        os.remove(raw_path)
        row = row_of(storage, "raw file.write" + (" + fsync per episode" if sync else ""),
                     None, None, res, du, raw_tps, raw_cpu_tps)
        row["fsync_per_episode"] = sync
        raw_tps = raw_tps or row["tokens_per_s"]
        raw_cpu_tps = raw_cpu_tps or row["cpu_tokens_per_s"]
        rows.append(row)
        print(f"  [{storage}] raw write{' + fsync' if sync else ''}: "
              f"{C.fmt_rate(row['tokens_per_s'])} tok/s", flush=True)

      # Validation alone (the Recorder does exactly this per episode).
      val = C.measure(lambda episodes=episodes, config=config: [
          V.validate_episode(ep, config) for ep in episodes], repeats=repeats, warmup=1)

      default_log = ""
      current = [""]
      for storage, options, flush_every, where in variants:
        def record(options=options, flush_every=flush_every, config=config,
                   episodes=episodes, where=where):
          extra = {"flush_every": flush_every} if flush_every != 1 else {}
          if where != INLINE:
            extra["writer"] = where
          with R.Recorder(current[0], config, writer_options=options, **extra) as rec:
            for ep in episodes:
              rec.record(ep)
          return current[0]

        def fresh(storage=storage, k=k):
          if current[0] and os.path.isdir(current[0]):
            shutil.rmtree(current[0])
          current[0] = _fresh_dir(roots[storage], f"log-k{k}", counter)

        res = _measure(record, repeats=repeats, warmup=1, setup=fresh,
                        warmup_fn=lambda record=record: record(
                            episodes=episodes[:WARMUP_EPISODES]))
        du = C.disk_usage(res["result"])
        is_default = (storage == MEMORY and options == default_options and flush_every == 1
                      and where == INLINE)
        row = row_of(storage, "Recorder (riegeli)", options, flush_every, res, du,
                     raw_tps, raw_cpu_tps, recorder_writer=where)
        row["default_options"] = options == default_options
        print(f"  [{storage}] Recorder {options!r} writer={where} flush_every={flush_every}: "
              f"{C.fmt_rate(row['tokens_per_s'])} tok/s, ratio {row['ratio_to_raw']:.3g}, "
              f"{row['du_bytes_per_token']:.0f} B/token", flush=True)
        if is_default:  # kept for publish_log
          default_log = os.path.join(disk_root, f"kept-log-k{k}")
          shutil.move(current[0], default_log)
          current[0] = ""
          row["validation_share"] = val["median_s"] / res["median_s"]
          row["recorder_median_s"] = res["median_s"]
          row["publish_from_this_log"] = True
        rows.append(row)
        if current[0] and os.path.isdir(current[0]):
          shutil.rmtree(current[0])
        current[0] = ""

      # Long sessions: the episodes recorded SESSION_PASSES times (new ids), with either
      # writer, so that the writer process's start-up is spread over more episodes.
      if has_process:
        session = [dict(ep, **{S.EPISODE_ID: f"{ep[S.EPISODE_ID]}-{p}"})
                   for p in range(SESSION_PASSES) for ep in episodes]
        for where in (INLINE, PROCESS):
          def record_session(where=where, config=config, session=session):
            extra = {"writer": where} if where != INLINE else {}
            with R.Recorder(current[0], config, **extra) as rec:
              for ep in session:
                rec.record(ep)
            return current[0]

          def fresh_session(k=k):
            if current[0] and os.path.isdir(current[0]):
              shutil.rmtree(current[0])
            current[0] = _fresh_dir(roots[MEMORY], f"session-k{k}", counter)

          res = _measure(record_session, repeats=repeats, warmup=1, setup=fresh_session,
                         warmup_fn=lambda record_session=record_session: record_session(
                             session=session[:WARMUP_EPISODES]))
          row = row_of(MEMORY, "Recorder (riegeli)", default_options, 1, res,
                       C.disk_usage(res["result"]), raw_tps, raw_cpu_tps,
                       recorder_writer=where, passes=SESSION_PASSES)
          row["default_options"] = True
          row["session"] = True
          rows.append(row)
          shutil.rmtree(current[0])
          current[0] = ""
          print(f"  [memory] Recorder writer={where}, {len(session)}-episode session: "
                f"{C.fmt_rate(row['tokens_per_s'])} tok/s, ratio {row['ratio_to_raw']:.3g}",
                flush=True)

      # The floor: envlogger's native writer alone, fed the records of every episode
      # encoded before the timing (what is left of `record` with no Python work), one
      # flush per episode as the Recorder does.
      normalised = [V.validate_episode(ep, config) for ep in episodes]
      encode = C.measure(lambda normalised=normalised: [
          logs.encode_episode(ep) for ep in normalised], repeats=repeats, warmup=1)
      encoded = encode["result"]
      for options in (default_options, "uncompressed"):
        def native(options=options, encoded=encoded, config=config):
          writer = logs.RiegeliEpisodeWriter(current[0], config, writer_options=options)
          for records, metadata in encoded:
            writer.write_encoded(records, metadata)
          writer.close()
          return current[0]

        def fresh_native(k=k):
          if current[0] and os.path.isdir(current[0]):
            shutil.rmtree(current[0])
          current[0] = _fresh_dir(roots[MEMORY], f"native-k{k}", counter)

        res = _measure(native, repeats=repeats, warmup=1, setup=fresh_native)
        row = row_of(MEMORY, "envlogger writer alone (records encoded beforehand)",
                     options, 1, res, C.disk_usage(res["result"]), raw_tps, raw_cpu_tps)
        row["floor"] = True
        row["default_options"] = options == default_options
        rows.append(row)
        shutil.rmtree(current[0])
        current[0] = ""
        print(f"  [memory] envlogger writer alone {options!r}: "
              f"{C.fmt_rate(row['tokens_per_s'])} tok/s, ratio {row['ratio_to_raw']:.3g}",
              flush=True)

      # The Recorder's writer as it was before issue 15, in the same run: validation
      # (today's), then envlogger's own RiegeliBackendWriter (codec.encode builds each
      # message in Python), one flush per episode.
      def before(config=config, episodes=episodes):
        _compat.patch_numpy_for_envlogger()
        from envlogger import step_data  # pylint: disable=g-import-not-at-top
        from envlogger.backends import riegeli_backend_writer  # pylint: disable=g-import-not-at-top

        os.makedirs(current[0])
        writer = riegeli_backend_writer.RiegeliBackendWriter(
            current[0], max_episodes_per_file=100_000, writer_options=default_options,
            flush_scheduler=lambda _: False, metadata={logs.SCHEMA_KEY: config.to_json()})
        for ep in episodes:
          ep = V.validate_episode(ep, config)
          for j, triple in enumerate(logs.episode_to_log_steps(ep)):
            writer.record_step(step_data.StepData(*triple), is_new_episode=(j == 0))
          writer.set_episode_metadata(
              logs._encode_tree({f: v for f, v in ep.items() if f != S.STEPS}))  # pylint: disable=protected-access
          writer._data_writer.flush()  # pylint: disable=protected-access
        writer.close()
        return current[0]

      def fresh_before(k=k):
        if current[0] and os.path.isdir(current[0]):
          shutil.rmtree(current[0])
        current[0] = _fresh_dir(roots[MEMORY], f"before-k{k}", counter)

      res = _measure(before, repeats=repeats, warmup=1, setup=fresh_before)
      row = row_of(MEMORY, "validation + the writer before issue 15 (RiegeliBackendWriter, "
                   "codec.encode)",
                   default_options, 1, res, C.disk_usage(res["result"]), raw_tps, raw_cpu_tps)
      row["before"] = True
      rows.append(row)
      shutil.rmtree(current[0])
      current[0] = ""
      print(f"  [memory] writer as before: {C.fmt_rate(row['tokens_per_s'])} tok/s, "
            f"ratio {row['ratio_to_raw']:.3g}", flush=True)

      # publish_log of the default-options log, to a data_dir on disk.
      def publish(default_log=default_log, k=k):
        return R.publish_log(default_log, data_dir=current[0], name=f"bench_k{k}")

      def fresh_pub(k=k):
        if current[0] and os.path.isdir(current[0]):
          shutil.rmtree(current[0])
        current[0] = _fresh_dir(disk_root, f"pub-k{k}", counter)

      # The warm-up publish (imports, TFDS/Beam set-up) runs once per process.
      pub = C.measure(publish, repeats=publish_repeats, warmup=1 if k == TOP_KS[0] else 0,
                      setup=fresh_pub)
      pub_du = C.disk_usage(pub["result"])
      pub_formats = C.disk_usage_by_format(pub["result"])
      shutil.rmtree(current[0])
      current[0] = ""
      shutil.rmtree(default_log)
      for row in rows:
        if row["top_k"] == k and row.get("publish_from_this_log"):
          row["publish_episodes_per_s"] = num_episodes / pub["median_s"]
      per_k.append({
          "top_k": k, "episodes": num_episodes, "action_tokens": tokens,
          "build_s": build_s, "raw_bytes": raw_bytes,
          "raw_bytes_per_token": raw_bytes / tokens,
          "validate_seconds": val["seconds"], "validate_median_s": val["median_s"],
          "validate_tokens_per_s": tokens / val["median_s"],
          "validate_episodes_per_s": num_episodes / val["median_s"],
          "encode_seconds": encode["seconds"], "encode_median_s": encode["median_s"],
          "encode_tokens_per_s": tokens / encode["median_s"],
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
    if not args.keep:
      if not args.workdir:
        shutil.rmtree(disk_root, ignore_errors=True)
      if have_tmpfs:
        shutil.rmtree(mem_root, ignore_errors=True)

  return {
      "benchmark": NAME, "quick": bool(args.quick), "machine": C.machine_info(),
      "settings": settings, "rows": rows, "per_top_k": per_k,
      "process_startup": startup,
  }


def _speedup(row: dict[str, Any], before: dict[str, Any]) -> str:
  wall = row["tokens_per_s"] / before["tokens_per_s"]
  if row.get("cpu_tokens_per_s") and before.get("cpu_tokens_per_s"):
    return f"{wall:.2f}x / {row['cpu_tokens_per_s'] / before['cpu_tokens_per_s']:.2f}x"
  return f"{wall:.2f}x / —"


def _robust_ratio(row: dict[str, Any]) -> float:
  cpu = row.get("cpu_ratio_to_raw")
  return cpu if cpu is not None else row["ratio_to_raw"]


def _cpu_ratio(row: dict[str, Any]) -> str:
  ratio = row.get("cpu_ratio_to_raw")
  return f"{ratio:.3g}" if ratio is not None else "—"


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
      f"one warm-up run ({s['warmup_episodes']} episodes). Tokens are action tokens. "
      f"Machine: {C.machine_line(data['machine'])}.",
      "",
      "Rows marked *memory* write to a tmpfs (`/dev/shm`), where fsync costs nothing: "
      "they measure the CPU cost (envlogger encoding, compression, validation) and are "
      "stable from run to run. Rows marked *disk* write to the machine's disk, where "
      "the Recorder's per-episode flush fsyncs each of its 4 shard files (`flush_every="
      f"{FLUSH_EVERY}`: every {FLUSH_EVERY}th episode): they measure the crash-safety "
      "cost, which is the disk's fsync latency at the time of the run and varied by "
      "more than 10x between runs on this shared machine. "
      "`raw` writes the same per-token arrays and texts with plain `file.write`, in "
      "memory without fsync (the reference: `ratio` is tokens/s over its tokens/s at "
      "the same top-k) and on disk with a flush + fsync after every episode. "
      "`ratio, CPU time` is the same ratio with this process's CPU time "
      "(`time.process_time`) in place of wall time: on this shared machine it moves "
      "far less with the load than the wall-time ratio, which favours whichever side "
      "ran while the others paused. "
      "Bytes/token is allocated space (`du`) of the log directory over action tokens. "
      "Spread is the slowest over the fastest timed run. `publish_log` (tfrecord + "
      "array_record, from the memory default-options log to a data_dir on disk) is "
      f"timed separately: median of {s['publish_repeats']} runs (one warm-up publish "
      "per process). The `envlogger writer alone` rows feed envlogger's native writer "
      "(the one the Recorder uses) the records of every episode, validated and encoded "
      "(`rlds_lm.logs.encode_episode`) before the timing, with the Recorder's flush per "
      "episode: the floor of `Recorder.record` on this log format. The `validation + "
      "the writer before issue 15` row validates each episode (with today's "
      "`validate_episode`, whose scalar checks also got faster) and writes it through "
      "envlogger's own `RiegeliBackendWriter` (messages built by `codec.encode`), as "
      "`record` did before: the same log, byte for byte once published. "
      "The `writer=\"process\"` rows record through a writer process fed by a pipe "
      "(`rlds_lm.logs.ProcessEpisodeWriter`; the recording process validates and "
      "encodes, the writer process writes, and flushes once the pipe has stayed empty "
      "for 5 ms): "
      "each timed run starts it and ends when `close()` has waited for it, so its "
      "start-up and its lag are in the time, and its CPU time (`resource.getrusage("
      "RUSAGE_CHILDREN)`, counted once it has exited) is added to the recording "
      "process's in `ratio, CPU time`. The `session` rows record every episode "
      f"{SESSION_PASSES} times (new ids) in one Recorder, inline and with the writer "
      "process, for the cost once the start-up is spread over more episodes.",
      "",
  ]
  startup = data.get("process_startup") or {}
  if startup:
    lines += [f"The writer process's start-up and shut-down alone (a `writer=\"process\"` "
              f"Recorder that records nothing, median of {len(startup['seconds'])}): "
              f"{startup['median_s']:.3f} s wall, {startup['cpu_median_s']:.3f} s CPU "
              "(both processes): paid once per Recorder, inside every "
              "`writer=\"process\"` row below.", ""]
  if not s.get("memory_is_tmpfs", True):
    lines += ["**No tmpfs was found: the memory rows ran on disk.**", ""]
  table = []
  for r in data["rows"]:
    if r["writer_options"] is None:
      writer = "raw `file.write`" + (" + fsync per episode" if r.get("fsync_per_episode")
                                     else "")
    elif r.get("before"):
      writer = (f"validation + the writer before issue 15 (envlogger's "
                f"`RiegeliBackendWriter`, `codec.encode`) `{r['writer_options']}`")
    elif r.get("floor"):
      writer = f"envlogger writer alone, records encoded beforehand `{r['writer_options']}`"
    else:
      writer = f"Recorder `{r['writer_options']}`" + (" (default)" if r.get(
          "default_options") else "")
      if r.get("recorder_writer") == PROCESS:
        writer += ", `writer=\"process\"`"
      if r.get("session"):
        writer += f", one {r['session_episodes']:,}-episode session"
      if r.get("flush_every", 1) != 1:
        writer += f", `flush_every={r['flush_every']}`"
    pub = r.get("publish_episodes_per_s")
    table.append([
        r["top_k"], r.get("storage", "disk"), writer, f"{r['episodes_per_s']:,.0f}",
        C.fmt_rate(r["tokens_per_s"]), f"{r['ratio_to_raw']:.3g}", _cpu_ratio(r),
        f"{r['du_bytes_per_token']:.0f}", f"{pub:,.0f}" if pub else "—",
        C.spread(r["seconds"]),
    ])
  lines.append(C.markdown_table(
      ["teacher top-k", "storage", "writer", "episodes/s", "tokens/s", "ratio to raw",
       "ratio, CPU time", "bytes/token", "publish_log episodes/s", "spread"], table,
      ["r", "l", "l", "r", "r", "r", "r", "r", "r", "r"]))
  lines += ["", "Validation (`rlds_lm.validate.validate_episode`, part of every "
            "`Recorder.record`) and the published dataset:", ""]
  table = []
  default_rows = {r["top_k"]: r for r in data["rows"] if "validation_share" in r}
  for p in data["per_top_k"]:
    row = default_rows.get(p["top_k"], {})
    share = row.get("validation_share")
    encode_share = (p["encode_median_s"] / row["recorder_median_s"]
                    if "encode_median_s" in p and "recorder_median_s" in row else None)
    fmts = p["published_bytes_per_token_by_format"]
    table.append([
        p["top_k"], C.fmt_rate(p["validate_tokens_per_s"]),
        f"{p['validate_episodes_per_s']:,.0f}",
        f"{100 * share:.0f} %" if share is not None else "—",
        f"{100 * encode_share:.0f} %" if encode_share is not None else "—",
        f"{p['publish_episodes_per_s']:,.0f}", C.fmt_rate(p["publish_tokens_per_s"]),
        " + ".join(f"{v:.0f} ({k})" for k, v in sorted(fmts.items())),
    ])
  lines.append(C.markdown_table(
      ["teacher top-k", "validate tokens/s", "validate episodes/s",
       f"validation share of Recorder `{default}` time (memory)",
       "encoding share (`logs.encode_episode`)", "publish_log episodes/s",
       "publish_log tokens/s", "published bytes/token"], table))
  floors = {(r["top_k"], r["writer_options"]): r for r in data["rows"] if r.get("floor")}
  befores = {r["top_k"]: r for r in data["rows"] if r.get("before")}
  processes = {r["top_k"]: r for r in data["rows"] if r.get("recorder_writer") == PROCESS
               and r.get("storage") == MEMORY and not r.get("session")}
  sessions = {(r["top_k"], r["recorder_writer"]): r for r in data["rows"]
              if r.get("session")}
  if floors:
    lines += ["", "Issue 15's goals (Recorder, default options, in memory; inline with "
              "one flush per episode, or with the writer process, whose ratios count the "
              "CPU time of both processes), as ratios to raw `file.write` measured in this "
              "run, next to the "
              "floor: envlogger's native writer alone, given the records already encoded "
              "(no validation, no encoding, no Python per field), which no Recorder on "
              "envlogger's writer can beat in one process:", ""]
    table = []
    for k, goal in sorted(GOALS.items()):
      rec = default_rows.get(k)
      if rec is None:
        continue
      floor = floors.get((k, default))
      floor_unc = floors.get((k, "uncompressed"))
      ratio = rec["ratio_to_raw"]
      before = befores.get(k)
      proc = processes.get(k)
      long_rows = [sessions.get((k, w)) for w in (INLINE, PROCESS)]
      candidates = [r for r in [rec, proc] + long_rows if r]
      table.append([
          k, f"{ratio:.3g}", _cpu_ratio(rec),
          f"{proc['ratio_to_raw']:.3g} / {_cpu_ratio(proc)}" if proc else "—",
          *[f"{r['ratio_to_raw']:.3g} / {_cpu_ratio(r)}" if r else "—" for r in long_rows],
          _speedup(rec, before) if before else "—",
          f"{floor['ratio_to_raw']:.3g} / {_cpu_ratio(floor)}" if floor else "—",
          f"{floor_unc['ratio_to_raw']:.3g} / {_cpu_ratio(floor_unc)}" if floor_unc
          else "—", f">= {goal:g}",
          ("yes" if max(r["ratio_to_raw"] for r in candidates) >= goal else "no")
          + " / " + ("—" if rec.get("cpu_ratio_to_raw") is None
                     else "yes" if max(r.get("cpu_ratio_to_raw") or 0
                                       for r in candidates) >= goal
                     else "no"),
      ])
    lines.append(C.markdown_table(
        ["teacher top-k", f"Recorder `{default}` ratio", "same, CPU time",
         "same, `writer=\"process\"` (wall / CPU, both processes)",
         f"{SESSION_PASSES}x longer session, inline (wall / CPU)",
         f"{SESSION_PASSES}x longer session, `writer=\"process\"` (wall / CPU)",
         "speed-up over validation + the writer before issue 15 (wall / CPU)",
         f"floor `{default}` (wall / CPU)", "floor `uncompressed` (wall / CPU)", "goal",
         "met (wall / CPU), any of these Recorder rows"], table,
        ["r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l"]))
    below = [str(k) for k, goal in sorted(GOALS.items()) if (k, default) in floors
             and _robust_ratio(floors[(k, default)]) < goal]
    if below:
      lines += ["", f"At top-k {', '.join(below)} the floor itself is below the goal "
                "(by CPU time where measured, else wall time): "
                "envlogger's writer (parsing each record into a C++ message, Riegeli "
                f"serialization, `{default}` compression, one chunk per file per flush) "
                "costs more than the goal allows even with no Python work at all, so no "
                "Recorder that writes envlogger's log format from one process reaches it "
                "here. Everything above the floor is validation and encoding (shares in "
                "the table above)."]
  lines += _process_summary(data)
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def _process_summary(data: dict[str, Any]) -> list[str]:
  """The writer process against the inline writer, per storage, from this run's rows."""
  def rate(k, storage, where, session=False):
    for r in data["rows"]:
      if (r["top_k"] == k and r.get("storage") == storage and r.get("recorder_writer") == where
          and r.get("writer_options") == data["settings"]["default_writer_options"]
          and r.get("flush_every", 1) == 1 and bool(r.get("session")) == session):
        return r
    return None

  parts = []
  for storage, session, what in ((DISK, False, "on disk (a flush fsyncs 4 files)"),
                                 (MEMORY, False, "in memory"),
                                 (MEMORY, True, f"in memory, {SESSION_PASSES}x longer "
                                  "sessions")):
    ratios = []
    for k in TOP_KS:
      proc, inline = rate(k, storage, PROCESS, session), rate(k, storage, INLINE, session)
      if proc and inline:
        wall = proc["tokens_per_s"] / inline["tokens_per_s"]
        cpu = (f"{proc['cpu_tokens_per_s'] / inline['cpu_tokens_per_s']:.2f}x"
               if proc.get("cpu_tokens_per_s") and inline.get("cpu_tokens_per_s") else "—")
        ratios.append(f"{wall:.2f}x / {cpu}")
    if ratios:
      parts.append(f"{what}: {', '.join(ratios)}")
  if not parts:
    return []
  return ["", "The writer process's rate over the inline writer's (wall / CPU time, "
          f"top-k {', '.join(str(k) for k in TOP_KS)}): " + "; ".join(parts) + ". "
          "Where each flush fsyncs, the writer process takes the fsyncs off the caller's "
          "path and batches them; in memory, it gains only where a second core is free "
          "for it (the CPU-time ratios count both processes: below 1x is the extra CPU "
          "time of the pipe and of the start-up, above 1x the flushes it batches)."]


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--episodes", type=int, default=500)
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--action-len", type=int, default=128)
  parser.add_argument("--tmpfs", default=None,
                      help="in-memory scratch for the 'memory' rows (default /dev/shm)")
  args = parser.parse_args(argv)
  return C.run_benchmark(NAME, args, run, markdown)


if __name__ == "__main__":
  sys.exit(main())
