"""Episodes/s of each pipeline stage: Beam with 1 and 2 workers against a plain loop.

One run builds the inputs once: the ``builders/arithmetic`` prompts (config ``small``,
split ``test``: 200 prompts) and two freshly initialised ``tiny`` checkpoints (policy
seed 0, teacher seed 1, ``pipelines.models.init_checkpoint``). It then runs the chain
generate (4 samples x 16 new tokens per prompt, temperature 1) -> teacher (top-k 8,
sampled-k 16) -> score (``arithmetic`` scorer) -> judge (pairwise over all pairs,
ranked by the ``arithmetic`` reward) and publishes the scored rollouts (tfrecord +
array_record). Every stage is measured three ways on the same input, which is the
output of the previous stage's Beam 1-worker run:

* Beam, 1 worker: ``python -m pipelines.<stage> ... --workers=1`` (FnApiRunner,
  ``in_memory``: one process);
* Beam, 2 workers: the same with ``--workers=2`` (FnApiRunner, ``multi_processing``: the
  driver plus 2 worker processes);
* plain loop: ``python -m benchmarks.pipeline_throughput --plain <stage> ...`` with the
  stage's own flags, the same work without Beam: it reads the input shards
  (``rlds_lm.read``), calls the stage's per-record functions
  (``generate.rollouts_for_prompt``, ``teacher.annotate_episode``, ``score.score_group``,
  ``judge.preferences_for_group``), validates (``rlds_lm.validate.validate_episode``),
  serialises (``schema.episode_features(config).serialize_example``, re-serialised
  deterministically as the stage does) and writes every episode to tfrecord shards with
  ``tf.io.TFRecordWriter`` (same shard of each id and order as the stage), then the
  TFDS metadata. For publish the plain loop is ``rlds_lm.publish.publish`` (tfrecord +
  array_record) plus the stage's statistics and dataset card.

Every measurement is a fresh subprocess, so each pays interpreter start, imports, model
load and JIT compilation once. Reported per run: the subprocess wall time (episodes/s =
episodes the stage wrote / wall seconds; ratios are of wall times), CPU seconds of the
process and the children it waited for (``os.wait4``), and the time inside the
process: for Beam the stage's own ``seconds`` from ``<output>/rlds_lm_stage.json`` (from
argument parsing to the dataset's metadata; for publish this excludes the array_record
copy and the card), for the plain loop the same span measured by the loop, split into
setup (TensorFlow import, opening the input, loading the model), the first record (JIT
compilation), the other records, reading, encoding and writing. Wall minus in-process
time is the start-up (interpreter, module imports). The plain loop imports apache_beam
too: the stage modules that hold the per-record functions import it.

The three outputs of every stage are checked against each other: the same (split,
episode id) keys and every decoded episode equal (``rlds_lm.testing.assert_episodes_equal``,
exact); for publish both the tfrecord shards and the array_record copy. The benchmark
fails if any differ. Whether the shard files are byte-identical is reported too.

``--quick`` (about a minute): the ``tiny`` arithmetic config (4 test prompts), 2 samples
x 8 new tokens; each stage's plain loop and Beam 1-worker run at the same time, and Beam
with 2 workers runs for the judge stage only. Not representative.

``--dask`` adds two more ways for every stage, in the same run and on the same inputs:
Beam's DaskRunner (``--runner=DaskRunner --dask_client_address=...``) against local
clusters of 1 and 2 worker processes (``pipelines.dask_cluster``, one thread each,
started once before the first stage and kept for the run); their outputs are checked
like the others, and a second table compares them with the local runner's 1 worker.

    python -m benchmarks.pipeline_throughput --out docs/
    python -m benchmarks.pipeline_throughput --quick
    python -m benchmarks.pipeline_throughput --dask --out docs/
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from benchmarks import _common as C

NAME = "pipeline_throughput"
STAGES = ("generate", "teacher", "score", "judge", "publish")
PLAIN, BEAM1, BEAM2 = "plain", "beam1", "beam2"
DASK1, DASK2 = "dask1", "dask2"  # Beam's DaskRunner on a local cluster (--dask)
MODES = (PLAIN, BEAM1, BEAM2)
DASK_MODES = (DASK1, DASK2)
MODE_LABELS = {PLAIN: "plain loop", BEAM1: "Beam 1 worker", BEAM2: "Beam 2 workers",
               DASK1: "Dask 1 worker", DASK2: "Dask 2 workers"}
MODE_WORKERS = {BEAM1: 1, BEAM2: 2, DASK1: 1, DASK2: 2}
_DASK_ADDRESSES: dict[str, str] = {}  # mode -> scheduler address, while run() runs
PUBLISH_NAME = "pipeline_bench"
PUBLISH_VERSION = "1.0.0"
NUM_SHARDS = 4
LOG_TAIL_LINES = 40
QUICK_BEAM2_STAGES = ("judge",)  # --quick runs Beam with 2 workers for these only


class VerificationError(AssertionError):
  """The outputs of the plain loop and of Beam differ."""


# --------------------------------------------------------------------------------------
# The plain loop (runs in its own process: ``--plain STAGE <the stage's flags>``).
# --------------------------------------------------------------------------------------


class _Clock:
  """Seconds since the start and per phase of the plain loop."""

  def __init__(self):
    self.started = time.perf_counter()
    self.phases: dict[str, float] = collections.defaultdict(float)

  def add(self, phase: str, seconds: float) -> None:
    self.phases[phase] += seconds

  def timed(self, phase: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    start = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      self.add(phase, time.perf_counter() - start)

  def iterate(self, items: Iterable[Any], phase: str = "read") -> Iterator[Any]:
    """``items``, with the time spent producing them added to ``phase``."""
    iterator = iter(items)
    while True:
      start = time.perf_counter()
      try:
        item = next(iterator)
      except StopIteration:
        self.add(phase, time.perf_counter() - start)
        return
      self.add(phase, time.perf_counter() - start)
      yield item

  def report(self) -> dict[str, Any]:
    return {"seconds": time.perf_counter() - self.started, "phases": dict(self.phases)}


class _Records:
  """Runs per-record functions, timing them and counting failures by reason.

  A record whose function raises is counted under its reason (as the stage's dead-letter
  output would) and skipped. The first call of the stage's per-record function (JIT
  compilation included) is timed apart from the others.
  """

  def __init__(self, clock: _Clock):
    self._clock = clock
    self.dropped: dict[str, int] = collections.Counter()
    self.calls = 0

  def record(self, fn: Callable[..., Iterable[Any]], *args, **kwargs) -> list[Any] | None:
    """The stage's per-record function: phases ``first_record`` / ``other_records``."""
    self.calls += 1
    return self._run("first_record" if self.calls == 1 else "other_records", fn, args,
                     kwargs)

  def convert(self, fn: Callable[..., Iterable[Any]], *args) -> list[Any] | None:
    """An input conversion (record -> prompt): phase ``read``."""
    return self._run("read", fn, args, {})

  def _run(self, phase: str, fn: Callable[..., Iterable[Any]], args: Sequence[Any],
           kwargs: Mapping[str, Any]) -> list[Any] | None:
    from pipelines import core  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    try:
      return list(fn(*args, **kwargs))
    except Exception as e:  # pylint: disable=broad-except
      self.dropped[core.reason_of(e)] += 1
      return None
    finally:
      self._clock.add(phase, time.perf_counter() - start)


class _ShardWriter:
  """Validates, serialises and writes episodes as TFDS tfrecord shards, without Beam.

  The same files as ``core.WriteEpisodes``: shard of an episode = ``core.shard_of`` of
  its id, records sorted by id, ``tf.train.Example`` re-serialised deterministically.
  """

  def __init__(self, clock: _Clock, records: _Records, out_dir: str, name: str, schema,
               splits: Sequence[str], num_shards: int):
    from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
    self._clock = clock
    self._records = records
    self._out_dir = out_dir
    self._name = name
    self._schema = schema
    self._splits = tuple(splits)
    self._num_shards = num_shards
    self._features = S.episode_features(schema)
    self._shards: dict[tuple[str, int], dict[str, bytes]] = {
        (split, i): {} for split in self._splits for i in range(num_shards)}

  def add(self, split: str, episode: Mapping[str, Any]) -> None:
    self._clock.timed("encode", self._add, split, episode)

  def _add(self, split: str, episode: Mapping[str, Any]) -> None:
    from pipelines import core  # pylint: disable=g-import-not-at-top
    from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
    from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
    from rlds_lm import validate as V  # pylint: disable=g-import-not-at-top
    episode_id = str(episode.get(S.EPISODE_ID, "?"))
    try:
      episode = V.validate_episode(episode, self._schema)
      raw = R.canonical_example(self._features.serialize_example(episode))
    except Exception as e:  # pylint: disable=broad-except
      self._records.dropped[core.reason_of(e)] += 1
      return
    shard = self._shards[(split, core.shard_of(episode_id, self._num_shards))]
    if shard.get(episode_id, raw) != raw:
      raise core.PipelineError(f"two different episodes share the id {episode_id!r}")
    shard[episode_id] = raw

  def close(self, description: str, lineage: Mapping[str, Any]) -> dict[str, int]:
    """Writes the shards and the metadata; returns episodes written per split."""
    return self._clock.timed("write", self._close, description, lineage)

  def _close(self, description: str, lineage: Mapping[str, Any]) -> dict[str, int]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    from pipelines import core  # pylint: disable=g-import-not-at-top
    from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
    split_infos = []
    written = {}
    for split in self._splits:
      lengths, num_bytes = [], 0
      for i in range(self._num_shards):
        records = self._shards[(split, i)]
        path = os.path.join(self._out_dir, core.shard_filename(self._name, split, i,
                                                               self._num_shards))
        with tf.io.TFRecordWriter(path) as writer:
          for episode_id in sorted(records):
            writer.write(records[episode_id])
            num_bytes += len(records[episode_id])
        lengths.append(len(records))
      split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths,
                                             num_bytes=num_bytes))
      written[split] = sum(lengths)
    tfds.folder_dataset.write_metadata(
        data_dir=self._out_dir, features=self._features, split_infos=split_infos,
        filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        check_data=False, description=description,
        metadata=tfds.core.MetadataDict({
            P.METADATA_SCHEMA: self._schema.to_json(),
            P.METADATA_LINEAGE: json.dumps(dict(lineage), sort_keys=True)}))
    return written


def _chosen_splits(builder, flag: str) -> tuple[str, ...]:
  return tuple(s for s in flag.split(",") if s) or tuple(sorted(builder.info.splits.keys()))


def _plain_value(value: Any) -> Any:
  """A decoded prompt field as a Python value (text as ``str``)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_plain_value(v) for v in value.tolist()] if value.ndim else _plain_value(
        value.item())
  if isinstance(value, np.generic):
    return value.item()
  return value


def _read_episodes(clock: _Clock, path: str, splits: Sequence[str]
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
  """``(split, episode)`` for every episode of the splits' tfrecord shards."""
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  def records():
    for split in splits:
      _, decoded = R.iter_records(path, split)
      for record in decoded:
        yield split, R.materialize(record)

  return clock.iterate(records())


def _plain_generate(argv: Sequence[str], clock: _Clock) -> dict[str, Any]:
  from pipelines import core  # pylint: disable=g-import-not-at-top
  from pipelines import generate  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import tasks  # pylint: disable=g-import-not-at-top

  args, _ = generate.build_parser().parse_known_args(argv)
  clock.started = time.perf_counter()
  if args.prompts.endswith(".jsonl"):
    raise core.PipelineError("the plain loop reads TFDS prompt datasets only")
  start = time.perf_counter()
  setup = generate.build_config(args)  # the stage's own setup
  policy_info = setup.policy_info
  out = core.prepare_output(args.output, args.overwrite)
  builder = R.open_builder(args.prompts)
  splits = _chosen_splits(builder, args.splits)
  state = setup.config.policy.load()
  clock.add("setup", time.perf_counter() - start)

  records = _Records(clock)
  writer = _ShardWriter(clock, records, out, "rollouts", setup.schema, splits,
                        args.num_shards)

  def prompts():
    for split in splits:
      _, decoded = R.iter_records(args.prompts, split)
      for record in decoded:
        yield split, {k: _plain_value(v) for k, v in record.items()}

  inputs = 0
  for split, record in clock.iterate(prompts()):
    inputs += 1
    prompt = records.convert(lambda r: [tasks.to_prompt(r, args.task)], record)
    if prompt is None:
      continue
    episodes = records.record(generate.rollouts_for_prompt, state, prompt[0],
                              config=setup.config, schema=setup.schema,
                              policy_info=policy_info, lineage=setup.episode_lineage)
    for episode in episodes or ():
      writer.add(split, episode)
  written = writer.close(f"Rollouts of {policy_info['name']} (plain loop)",
                         {"stage": generate.STAGE, "prompts": {"path": args.prompts},
                          "policy": policy_info, "config": setup.stage_config})
  return {"inputs": inputs, "written": written, "dropped": dict(records.dropped),
          "calls": records.calls}


def _plain_teacher(argv: Sequence[str], clock: _Clock) -> dict[str, Any]:
  from pipelines import core  # pylint: disable=g-import-not-at-top
  from pipelines import teacher  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  args, _ = teacher.build_parser().parse_known_args(argv)
  clock.started = time.perf_counter()
  start = time.perf_counter()
  builder = R.open_builder(args.rollouts)
  splits = _chosen_splits(builder, args.splits)
  setup = teacher.build_config(args, R.schema_config(builder))  # the stage's own setup
  info = setup.teacher_info
  out = core.prepare_output(args.output, args.overwrite)
  state = setup.config.teacher.load()
  clock.add("setup", time.perf_counter() - start)

  records = _Records(clock)
  writer = _ShardWriter(clock, records, out, "rollouts_teacher", setup.schema, splits,
                        args.num_shards)
  inputs = 0
  for split, episode in _read_episodes(clock, args.rollouts, splits):
    inputs += 1
    annotated = records.record(teacher.annotate_episode, state, episode,
                               config=setup.config, teacher_info=info, digest=setup.digest)
    for item in annotated or ():
      writer.add(split, item)
  written = writer.close(f"{builder.name} annotated by teacher {info['name']} (plain loop)",
                         {"stage": teacher.STAGE, "upstream": R.dataset_lineage(builder),
                          "teacher": info, "config": setup.stage_config})
  return {"inputs": inputs, "written": written, "dropped": dict(records.dropped),
          "calls": records.calls}


def _plain_score(argv: Sequence[str], clock: _Clock) -> dict[str, Any]:
  from pipelines import core  # pylint: disable=g-import-not-at-top
  from pipelines import score  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm import tasks  # pylint: disable=g-import-not-at-top

  args, _ = score.build_parser().parse_known_args(argv)
  clock.started = time.perf_counter()
  if not args.prompts:
    raise core.PipelineError("the plain loop needs --prompts")
  start = time.perf_counter()
  builder = R.open_builder(args.rollouts)
  splits = _chosen_splits(builder, args.splits)
  setup = score.build_config(args, R.schema_config(builder))  # the stage's own setup
  out = core.prepare_output(args.output, args.overwrite)
  fns = setup.spec.load()
  clock.add("setup", time.perf_counter() - start)

  records = _Records(clock)
  # The stage joins the rollouts with every prompt of the prompt source (all splits).
  prompts: dict[str, list[Any]] = collections.defaultdict(list)
  prompt_builder = R.open_builder(args.prompts)
  for split in sorted(prompt_builder.info.splits.keys()):
    _, decoded = R.iter_records(args.prompts, split)
    for record in clock.iterate(decoded):
      prompt = records.convert(lambda r: [tasks.to_prompt(r)],
                               {k: _plain_value(v) for k, v in record.items()})
      if prompt is not None:
        prompts[prompt[0].prompt_id].append(prompt[0])
  groups: dict[str, list[tuple[str, Any]]] = collections.defaultdict(list)
  inputs = 0
  for split, episode in _read_episodes(clock, args.rollouts, splits):
    inputs += 1
    groups[episode[S.PROMPT_ID]].append((split, episode))

  writer = _ShardWriter(clock, records, out, "rollouts_scored", setup.schema, splits,
                        args.num_shards)
  for prompt_id in sorted(groups):
    items = records.record(score.score_group, fns,
                           (prompt_id, {"prompts": prompts.get(prompt_id, []),
                                        "rollouts": groups[prompt_id]}),
                           names=setup.names, primary=setup.primary)
    for kind, item in items or ():
      if kind == "dead":
        records.dropped[item.reason] += 1
      else:
        writer.add(*item)
  written = writer.close(f"{builder.name} scored (plain loop)",
                         {"stage": score.STAGE, "upstream": R.dataset_lineage(builder),
                          "prompts": {"path": args.prompts},
                          "config": setup.stage_config})
  return {"inputs": inputs, "written": written, "dropped": dict(records.dropped),
          "calls": records.calls}


def _plain_judge(argv: Sequence[str], clock: _Clock) -> dict[str, Any]:
  from pipelines import core  # pylint: disable=g-import-not-at-top
  from pipelines import judge  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top

  args, _ = judge.build_parser().parse_known_args(argv)
  clock.started = time.perf_counter()
  if args.judge_policy or args.bon_output:
    raise core.PipelineError("the plain loop judges by --reward only, without --bon_output")
  start = time.perf_counter()
  builder = R.open_builder(args.rollouts)
  splits = _chosen_splits(builder, args.splits)
  setup = judge.build_config(args, R.schema_config(builder))  # the stage's own setup
  out = core.prepare_output(args.output, args.overwrite)
  clock.add("setup", time.perf_counter() - start)

  records = _Records(clock)
  groups: dict[tuple[str, str], list[Any]] = collections.defaultdict(list)
  inputs = 0
  for split, episode in _read_episodes(clock, args.rollouts, splits):
    inputs += 1
    groups[(split, episode[S.PROMPT_ID])].append(episode)
  writer = _ShardWriter(clock, records, out, "preferences", setup.schema, splits,
                        args.num_shards)
  for split, prompt_id in sorted(groups):
    preferences = records.record(judge.preferences_for_group, None,
                                 (prompt_id, groups[(split, prompt_id)]),
                                 config=setup.config, schema=setup.schema)
    for episode in preferences or ():
      writer.add(split, episode)
  written = writer.close(f"Preferences over {builder.name} by {setup.reward} (plain loop)",
                         {"stage": judge.STAGE, "upstream": R.dataset_lineage(builder),
                          "config": setup.stage_config})
  return {"inputs": inputs, "written": written, "dropped": dict(records.dropped),
          "calls": records.calls}


def _plain_publish(argv: Sequence[str], clock: _Clock) -> dict[str, Any]:
  from pipelines import publish  # pylint: disable=g-import-not-at-top
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  args, _ = publish.build_parser().parse_known_args(argv)
  clock.started = time.perf_counter()
  start = time.perf_counter()
  formats = publish.build_config(args).file_formats  # the stage's own checks
  # The stage imports TensorFlow here too (inside its timed span).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  builder = R.open_builder(args.input)
  splits = _chosen_splits(builder, args.splits)
  schema = R.schema_config(builder)
  clock.add("setup", time.perf_counter() - start)

  stats = publish.EpisodeStats()
  accumulator = stats.create_accumulator()
  by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in splits}
  for split, episode in _read_episodes(clock, args.input, splits):
    accumulator = stats.add_input(accumulator, (split, episode))
    by_split[split].append(episode)
  lineage = {"stage": publish.STAGE, "input": {"path": args.input},
             "upstream": R.dataset_lineage(builder), "name": args.name,
             "version": args.version}
  path = clock.timed("publish", P.publish, by_split, data_dir=args.data_dir,
                     name=args.name, config=schema, version=args.version,
                     description=args.description, lineage=lineage, file_formats=formats)
  card = publish.dataset_card(name=args.name, version=args.version,
                              description=args.description, schema=schema,
                              stats=json.loads(stats.extract_output(accumulator)),
                              lineage=lineage, dead_letters=None, path=path)
  with tf.io.gfile.GFile(os.path.join(path, publish.CARD_FILE), "w") as f:
    f.write(card)
  return {"inputs": sum(len(v) for v in by_split.values()),
          "written": {split: len(v) for split, v in by_split.items()}, "dropped": {},
          "calls": 0}


_PLAIN = {"generate": _plain_generate, "teacher": _plain_teacher, "score": _plain_score,
          "judge": _plain_judge, "publish": _plain_publish}


def plain_main(argv: Sequence[str]) -> int:
  """``--plain STAGE --report=PATH <stage flags>``: one stage as a plain loop."""
  parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME} --plain",
                                   allow_abbrev=False)
  parser.add_argument("stage", choices=STAGES)
  parser.add_argument("--report", required=True, help="JSON file for the timings")
  known, rest = parser.parse_known_args(argv)
  from pipelines import core  # pylint: disable=g-import-not-at-top
  core.quiet_logs()  # as the stages' main does (no progress bars either)
  clock = _Clock()
  result = _PLAIN[known.stage](rest, clock)
  report = {"stage": known.stage, **result, **clock.report()}
  with open(known.report, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"[plain {known.stage}] wrote {sum(result['written'].values())} episodes in "
        f"{report['seconds']:.1f}s; dropped {result['dropped'] or 'none'}", flush=True)
  return 0


# --------------------------------------------------------------------------------------
# Measuring: one subprocess per stage and mode.
# --------------------------------------------------------------------------------------


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def _run_process(cmd: Sequence[str], log_path: str) -> dict[str, Any]:
  """Runs ``cmd`` from the repository root: wall seconds, CPU seconds, load before.

  CPU seconds are user + system of the process and of the children it waited for (Beam's
  worker processes), from ``os.wait4`` on this process alone.
  """
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  with open(log_path, "w", encoding="utf-8") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=C.REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
      proc.kill()
      proc.wait()
      raise
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}; the end "
                       f"of {log_path}:\n{_tail(log_path)}")
  return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
          "load_1min_before": load}


def _stage_flags(stage: str, paths: Mapping[str, str], settings: Mapping[str, Any],
                 out: str) -> list[str]:
  """The stage's command-line flags (all modes), reading the previous stage's output."""
  common = [f"--num_shards={settings['num_shards']}"]
  if stage == "generate":
    return [f"--prompts={paths['prompts']}", f"--splits={settings['split']}",
            f"--policy={paths['policy_model']}", f"--num_samples={settings['num_samples']}",
            f"--max_new_tokens={settings['max_new_tokens']}", "--temperature=1.0",
            f"--output={out}", *common]
  if stage == "teacher":
    return [f"--rollouts={paths['generate']}", f"--teacher={paths['teacher_model']}",
            f"--top_k={settings['teacher_top_k']}",
            f"--sampled_k={settings['teacher_sampled_k']}", f"--output={out}", *common]
  if stage == "score":
    return [f"--rollouts={paths['teacher']}", f"--prompts={paths['prompts']}",
            "--scorers=arithmetic", f"--output={out}", *common]
  if stage == "judge":
    return [f"--rollouts={paths['score']}", "--reward=arithmetic", "--mode=pairwise",
            "--pairs=all", f"--output={out}", *common]
  if stage == "publish":
    return [f"--input={paths['score']}", f"--data_dir={out}", f"--name={PUBLISH_NAME}",
            f"--version={PUBLISH_VERSION}",
            "--description=pipeline_throughput benchmark output.", *common]
  raise ValueError(stage)


def _output_dir(stage: str, out: str) -> str:
  """The dataset directory a stage writes given its ``--output`` / ``--data_dir``."""
  return os.path.join(out, PUBLISH_NAME, PUBLISH_VERSION) if stage == "publish" else out


def _measure(stage: str, mode: str, flags: Sequence[str], out: str, logs: str,
             repeat: int) -> dict[str, Any]:
  shutil.rmtree(out, ignore_errors=True)
  tag = f"{stage}-{mode}-{repeat}"
  log_path = os.path.join(logs, f"{tag}.log")
  if mode == PLAIN:
    report = os.path.join(logs, f"{tag}.json")
    cmd = [sys.executable, "-m", f"benchmarks.{NAME}", "--plain", stage,
           f"--report={report}", *flags]
  elif mode in DASK_MODES:
    from pipelines import dask_cluster  # pylint: disable=g-import-not-at-top
    cmd = [sys.executable, "-m", f"pipelines.{stage}", *flags,
           *dask_cluster.dask_flags(_DASK_ADDRESSES[mode])]
  else:
    cmd = [sys.executable, "-m", f"pipelines.{stage}", *flags,
           f"--workers={MODE_WORKERS[mode]}"]
  run = _run_process(cmd, log_path)
  dataset = _output_dir(stage, out)
  if mode == PLAIN:
    with open(report, encoding="utf-8") as f:
      info = json.load(f)
    run.update(inproc_s=info["seconds"], phases=info["phases"], inputs=info["inputs"],
               written=info["written"], dropped=info["dropped"], calls=info["calls"])
  else:
    with open(os.path.join(dataset, "rlds_lm_stage.json"), encoding="utf-8") as f:
      info = json.load(f)
    run.update(inproc_s=info.get("seconds"), written=info["num_examples"],
               dropped=info.get("dropped", {}))
  run["episodes"] = sum(run["written"].values())
  print(f"  {stage:8s} {MODE_LABELS[mode]:15s} {run['wall_s']:6.1f} s wall, "
        f"{run['cpu_s']:6.1f} s CPU, "
        + (f"{run['inproc_s']:6.1f} s in-process" if run.get("inproc_s") is not None
           else "in-process time not recorded")
        + f", {run['episodes']} episodes (load {run['load_1min_before']:.2f})", flush=True)
  return run


# --------------------------------------------------------------------------------------
# Checking that the three outputs agree.
# --------------------------------------------------------------------------------------


def _decode_tfrecord(path: str) -> dict[tuple[str, str], dict[str, Any]]:
  """Every episode of a dataset's tfrecord shards, keyed by (split, episode id)."""
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  builder = R.open_builder(path)
  features = builder.info.features
  out: dict[tuple[str, str], dict[str, Any]] = {}
  for split in builder.info.splits:
    info = builder.info.splits[split]
    count = 0
    for filename in info.filenames:
      for raw in R.tfrecord_records(os.path.join(path, filename)):
        episode = R.materialize(features.deserialize_example_np(raw))
        key = (split, episode[S.EPISODE_ID])
        if key in out:
          raise VerificationError(f"{path}: episode {key} is written twice")
        out[key] = episode
        count += 1
    if count != info.num_examples:
      raise VerificationError(f"{path}: split {split} holds {count} tfrecord records, "
                              f"dataset_info.json says {info.num_examples}")
  return out


def _decode_array_record(path: str) -> dict[tuple[str, str], dict[str, Any]]:
  """Every episode of a published dataset's array_record copy (``rlds_lm.read``)."""
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  builder = R.open_builder(path)
  formats = [f.value for f in builder.info.alternative_file_formats]
  if "array_record" not in formats:
    raise VerificationError(f"{path} has no array_record copy (formats: {formats})")
  out = {}
  for split in builder.info.splits:
    count, records = R.iter_records(path, split)
    episodes = [R.materialize(r) for r in records]
    if len(episodes) != count:
      raise VerificationError(f"{path}: array_record split {split} yields "
                              f"{len(episodes)} of {count} records")
    out.update({(split, e[S.EPISODE_ID]): e for e in episodes})
  return out


def _compare(label: str, expected: Mapping[tuple[str, str], Any],
             actual: Mapping[tuple[str, str], Any]) -> None:
  from rlds_lm import testing as T  # pylint: disable=g-import-not-at-top
  missing = sorted(set(expected) - set(actual))
  extra = sorted(set(actual) - set(expected))
  if missing or extra:
    raise VerificationError(
        f"{label}: the episode ids differ: {len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(extra)} extra (e.g. {extra[:3]}), of {len(expected)}")
  for key in sorted(expected):
    try:
      T.assert_episodes_equal(actual[key], expected[key])
    except AssertionError as e:
      raise VerificationError(f"{label}: episode {key} differs: {e}") from e


def _shard_digests(path: str) -> list[str]:
  """SHA-256 of each tfrecord shard file, in file-name order."""
  out = []
  for name in sorted(os.listdir(path)):
    if ".tfrecord-" in name:
      with open(os.path.join(path, name), "rb") as f:
        out.append(hashlib.sha256(f.read()).hexdigest())
  return out


def _verify(stage: str, datasets: Mapping[str, str]) -> dict[str, Any]:
  """Checks that every Beam run wrote what the plain loop wrote; raises if not."""
  start = time.perf_counter()
  decoded = {mode: _decode_tfrecord(path) for mode, path in datasets.items()}
  reference = decoded[PLAIN]
  if not reference:
    raise VerificationError(f"{stage}: the plain loop wrote no episodes")
  beam = [mode for mode in (BEAM1, BEAM2, *DASK_MODES) if mode in datasets]
  for mode in beam:
    _compare(f"{stage}: {MODE_LABELS[mode]} vs plain loop (tfrecord)", reference,
             decoded[mode])
  formats = ["tfrecord"]
  if stage == "publish":
    for mode, path in datasets.items():
      _compare(f"{stage}: {MODE_LABELS[mode]} array_record vs plain loop tfrecord",
               reference, _decode_array_record(path))
    formats.append("array_record")
  digests = {mode: _shard_digests(path) for mode, path in datasets.items()}
  result = {
      "episodes": len(reference), "formats": formats, "compared": beam,
      "decoded_equal": True,
      "bytes_identical_1w_2w": (digests[BEAM1] == digests[BEAM2]
                                if BEAM1 in digests and BEAM2 in digests else None),
      "bytes_identical_plain_beam": all(digests[m] == digests[PLAIN] for m in beam),
      "seconds": time.perf_counter() - start,
  }
  print(f"  {stage:8s} verified: {len(reference)} episodes, equal in the outputs of the "
        f"{', '.join(MODE_LABELS[m] for m in (PLAIN, *beam))} "
        f"({' + '.join(formats)}); shard files byte-identical: plain = Beam "
        f"{result['bytes_identical_plain_beam']}, 1 = 2 workers "
        f"{result['bytes_identical_1w_2w']}", flush=True)
  return result


# --------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------


def _prepare_inputs(scratch: str, settings: dict[str, Any]) -> dict[str, str]:
  """Builds the prompt dataset and the two checkpoints (untimed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from builders.arithmetic import arithmetic_dataset_builder  # pylint: disable=g-import-not-at-top
  from pipelines import models  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  paths = {"policy_model": os.path.join(scratch, "policy_model"),
           "teacher_model": os.path.join(scratch, "teacher_model")}
  models.init_checkpoint(paths["policy_model"], settings["model"], seed=0)
  models.init_checkpoint(paths["teacher_model"], settings["model"], seed=1)
  builder = arithmetic_dataset_builder.Builder(config=settings["prompts_config"],
                                               data_dir=os.path.join(scratch, "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  paths["prompts"] = os.fspath(builder.data_dir)
  settings["num_prompts"] = builder.info.splits[settings["split"]].num_examples
  return paths


def _summarise_mode(runs: Sequence[Mapping[str, Any]], episodes: int) -> dict[str, Any]:
  """Median over the repeats of one stage and mode."""
  wall = statistics.median(r["wall_s"] for r in runs)
  if runs[-1]["episodes"] != episodes:
    raise VerificationError(f"a run reports {runs[-1]['episodes']} episodes written; its "
                            f"output holds {episodes}")
  out = {"runs": list(runs), "wall_s": wall, "episodes_per_s": episodes / wall,
         "cpu_s": statistics.median(r["cpu_s"] for r in runs),
         "inproc_s": _median_or_none(r.get("inproc_s") for r in runs),
         "dropped": runs[-1]["dropped"]}
  if "phases" in runs[-1]:
    out["calls"] = runs[-1]["calls"]
    out["phases"] = {key: statistics.median(r["phases"].get(key, 0.0) for r in runs)
                     for key in runs[-1]["phases"]}
  return out


def _ratio(row: Mapping[str, Any], numerator: str, denominator: str) -> float | None:
  if numerator not in row or denominator not in row:
    return None
  return row[numerator]["wall_s"] / row[denominator]["wall_s"]


def run(args) -> dict[str, Any]:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from pipelines import core  # pylint: disable=g-import-not-at-top
  core.quiet_logs()
  quick = bool(args.quick)
  repeats = args.repeats or 1
  modes = {stage: (MODES if not quick or stage in QUICK_BEAM2_STAGES else (PLAIN, BEAM1))
           + (DASK_MODES if args.dask else ()) for stage in STAGES}
  settings: dict[str, Any] = {
      "prompts_config": "tiny" if quick else args.prompts_config,
      "split": args.split, "model": "tiny",
      "num_samples": 2 if quick else args.num_samples,
      "max_new_tokens": 8 if quick else args.max_new_tokens,
      "teacher_top_k": 8, "teacher_sampled_k": 16, "num_shards": NUM_SHARDS,
      "repeats": repeats, "stages": list(STAGES), "modes": {k: list(v) for k, v in
                                                             modes.items()},
      "publish_input": "score", "stage_input": "the previous stage's Beam 1-worker output",
      # Quick runs the plain loop and Beam 1 worker of a stage at the same time (not
      # representative anyway) to stay under a minute and a half.
      "concurrent": quick,
      "order": ("per stage: plain loop and Beam 1 worker at the same time, then Beam 2 "
                "workers" if quick else
                "per stage: plain loop, Beam 1 worker, Beam 2 workers, one at a time"),
  }
  scratch = args.workdir or tempfile.mkdtemp(prefix="rlds_lm_bench_pipeline_")
  os.makedirs(scratch, exist_ok=True)
  settings["scratch_dir"] = scratch
  logs = os.path.join(scratch, "logs")
  os.makedirs(logs, exist_ok=True)
  rows: list[dict[str, Any]] = []
  clusters = contextlib.ExitStack()
  try:
    if args.dask:
      from pipelines import dask_cluster  # pylint: disable=g-import-not-at-top
      start = time.perf_counter()
      for mode in DASK_MODES:  # started once, untimed; idle while the others run
        cluster = clusters.enter_context(dask_cluster.LocalDaskCluster(MODE_WORKERS[mode]))
        _DASK_ADDRESSES[mode] = cluster.address
      settings["dask_start_s"] = time.perf_counter() - start
      settings["dask"] = ("DaskRunner on python -m pipelines.dask_cluster (localhost, "
                          "1 thread per worker process); both clusters started before "
                          "the first stage and kept for the whole run")
    start = time.perf_counter()
    paths = _prepare_inputs(scratch, settings)
    settings["prepare_s"] = time.perf_counter() - start
    print(f"inputs: {settings['num_prompts']} prompts (arithmetic/"
          f"{settings['prompts_config']}, {settings['split']}), {settings['model']} policy "
          f"and teacher, in {settings['prepare_s']:.1f} s; logs in {logs}", flush=True)
    for stage in STAGES:
      runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes[stage]}
      outs = {mode: os.path.join(scratch, f"{stage}-{mode}") for mode in modes[stage]}

      def measure(mode, repeat, stage=stage, outs=outs):
        flags = _stage_flags(stage, paths, settings, outs[mode])
        return _measure(stage, mode, flags, outs[mode], logs, repeat)

      for repeat in range(repeats):
        if settings["concurrent"]:
          with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {mode: pool.submit(measure, mode, repeat) for mode in (PLAIN, BEAM1)}
            for mode, future in futures.items():
              runs[mode].append(future.result())
        else:
          for mode in (PLAIN, BEAM1):
            runs[mode].append(measure(mode, repeat))
        if BEAM2 in runs:
          runs[BEAM2].append(measure(BEAM2, repeat))
        for mode in DASK_MODES:
          if mode in runs:
            runs[mode].append(measure(mode, repeat))
      datasets = {mode: _output_dir(stage, outs[mode]) for mode in runs}
      check = _verify(stage, datasets)
      paths[stage] = datasets[BEAM1]  # the next stages' input
      row: dict[str, Any] = {"stage": stage, "inputs": runs[PLAIN][-1]["inputs"],
                             "episodes": check["episodes"], "verification": check}
      for mode, mode_runs in runs.items():
        try:
          row[mode] = _summarise_mode(mode_runs, check["episodes"])
        except VerificationError as e:
          raise VerificationError(f"{stage}, {MODE_LABELS[mode]}: {e}") from e
      row["scaling_2w_vs_1w"] = _ratio(row, BEAM1, BEAM2)
      row["overhead_1w_vs_plain"] = _ratio(row, BEAM1, PLAIN)
      row["overhead_2w_vs_plain"] = _ratio(row, BEAM2, PLAIN)
      row["dask_scaling_2w_vs_1w"] = _ratio(row, DASK1, DASK2)
      row["dask_1w_vs_local_1w"] = _ratio(row, DASK1, BEAM1)
      rows.append(row)
  finally:
    clusters.close()
    _DASK_ADDRESSES.clear()
    if not args.keep and not args.workdir:
      shutil.rmtree(scratch, ignore_errors=True)
  return {"benchmark": NAME, "quick": quick, "machine": C.machine_info(),
          "settings": settings, "rows": rows}


def _median_or_none(values: Iterable[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------
# Markdown.
# --------------------------------------------------------------------------------------


def _cell(row: Mapping[str, Any], mode: str) -> str:
  if mode not in row:
    return "not run"
  r = row[mode]
  return f"{r['episodes_per_s']:,.1f} ep/s ({r['wall_s']:.1f} s)"


def _x(value: float | None) -> str:
  return "—" if value is None else f"{value:.2f}x"


def _seconds(value: float | None) -> str:
  return "—" if value is None else f"{value:.1f}"


def _startup(r: Mapping[str, Any] | None) -> float | None:
  if not r or r.get("inproc_s") is None:
    return None
  return r["wall_s"] - r["inproc_s"]


def _stage_list(stages: Sequence[str]) -> str:
  return ", ".join(stages) if stages else "none"


def _span(values: Sequence[float], fmt: str = "{:.2f}") -> str:
  """'1.2-3.4' (or '-0.5 to +1.2' for signed formats), one value when they agree."""
  lo, hi = fmt.format(min(values)), fmt.format(max(values))
  if lo == hi:
    return lo
  return f"{lo} to {hi}" if "+" in fmt else f"{lo}-{hi}"


def _summary(data: Mapping[str, Any]) -> str:
  """The paragraph on what dominates, computed from the measured numbers."""
  rows = data["rows"]
  plain = {r["stage"]: r[PLAIN] for r in rows}
  phases = {stage: p.get("phases", {}) for stage, p in plain.items()}
  startup = {stage: _startup(p) or 0.0 for stage, p in plain.items()}
  wall = sum(p["wall_s"] for p in plain.values())
  fixed = {stage: startup[stage] + phases[stage].get("setup", 0.0)
           + phases[stage].get("first_record", 0.0) for stage in plain}
  fixed_share = sum(fixed.values()) / wall
  fixed_heavy = [s for s in plain if fixed[s] > 0.5 * plain[s]["wall_s"]]
  record_heavy = [s for s in plain if s not in fixed_heavy]
  # Stages whose first record costs at least 0.5 s and more than twice an average
  # later one: the first call compiles.
  jit = [s for s in plain if phases[s].get("first_record", 0.0) >= 0.5
         and phases[s]["first_record"] > 2 * phases[s].get("other_records", 0.0)
         / max(1, plain[s].get("calls", 1) - 1)]
  sentences = [
      f"What dominates: over the {len(rows)} stages the plain loop takes {wall:.1f} s of "
      f"wall time: {sum(startup.values()):.1f} s ({sum(startup.values()) / wall:.0%}) "
      f"process start-up (interpreter and imports, {_span(list(startup.values()), '{:.1f}')}"
      f" s per stage), {sum(p.get('setup', 0.0) for p in phases.values()):.1f} s setup "
      f"(TensorFlow import, opening the input, loading the model) and "
      f"{sum(p.get('first_record', 0.0) for p in phases.values()):.1f} s in the first "
      f"record (JIT compilation; at least 0.5 s in: {_stage_list(jit)}). These fixed "
      f"costs are {fixed_share:.0%} of the total and the per-record work "
      f"{1 - fixed_share:.0%}; fixed costs are more than half of the stage's plain wall "
      f"time in {_stage_list(fixed_heavy)}, per-record work is the larger part in "
      f"{_stage_list(record_heavy)}."]
  for mode in (BEAM1, BEAM2):
    both = [r for r in rows if mode in r]
    if not both:
      continue
    ratios = [r[mode]["wall_s"] / r[PLAIN]["wall_s"] for r in both]
    extra = [r[mode]["wall_s"] - r[PLAIN]["wall_s"] for r in both]
    text = (f"{MODE_LABELS[mode]} takes {_span(ratios)}x the plain loop's wall time "
            f"({sum(extra) / len(extra):+.1f} s per stage on average over "
            f"{_stage_list([r['stage'] for r in both])})")
    inproc = [r[mode]["inproc_s"] - r[PLAIN]["inproc_s"] for r in both
              if r["stage"] != "publish" and r[mode].get("inproc_s") is not None]
    if inproc:
      text += (f"; inside the process (the stage's own seconds against the loop's, "
               f"publish left out) the difference is {_span(inproc, '{:+.1f}')} s")
    sentences.append(text + ".")
  scaled = [r for r in rows if r.get("scaling_2w_vs_1w") is not None]
  if scaled:
    faster = [r["stage"] for r in scaled if r["scaling_2w_vs_1w"] > 1.05]
    slower = [r["stage"] for r in scaled if r["scaling_2w_vs_1w"] < 0.95]
    cpu = [r[BEAM2]["cpu_s"] / r[BEAM1]["cpu_s"] for r in scaled if r[BEAM1]["cpu_s"]]
    startup2 = [r[BEAM2]["inproc_s"] - r[BEAM1]["inproc_s"] for r in scaled
                if r[BEAM2].get("inproc_s") is not None
                and r[BEAM1].get("inproc_s") is not None]
    text = (f"2 workers against 1 on this {data['machine'].get('cpu_count')}-CPU machine: "
            f"{_span([r['scaling_2w_vs_1w'] for r in scaled])}x the speed; faster "
            f"(> 1.05x) in {_stage_list(faster)}, slower (< 0.95x) in "
            f"{_stage_list(slower)}; {_span(cpu)}x the CPU seconds of 1 worker")
    if startup2:
      text += (f", and {_span(startup2, '{:+.1f}')} s inside the stage (the 2 worker "
               f"processes start Python and import the stage's modules anew, and every "
               f"element travels between the runner process and the workers)")
    sentences.append(text + ".")
  return " ".join(sentences)


def _dask_lines(data: Mapping[str, Any]) -> list[str]:
  """The DaskRunner table (``--dask``): 1 and 2 Dask workers against the local runner."""
  rows = [r for r in data["rows"] if DASK1 in r or DASK2 in r]
  if not rows:
    return []
  speedups = [r["dask_scaling_2w_vs_1w"] for r in rows
              if r.get("dask_scaling_2w_vs_1w") is not None]
  overheads = [r[DASK1]["wall_s"] - r[BEAM1]["wall_s"] for r in rows
               if DASK1 in r and BEAM1 in r]
  inproc = [r[DASK1]["inproc_s"] - r[BEAM1]["inproc_s"] for r in rows
            if DASK1 in r and BEAM1 in r and r[DASK1].get("inproc_s") is not None
            and r[BEAM1].get("inproc_s") is not None]
  text = (f"Beam's DaskRunner (`--dask`: `python -m pipelines.STAGE ... "
          f"--runner=DaskRunner --dask_client_address=...` against `python -m "
          f"pipelines.dask_cluster` on this machine, 1 and 2 worker processes of one "
          f"thread, started once before the first stage) in the same run, on the same "
          f"inputs; every output was checked equal to the plain loop's as above.")
  if speedups:
    text += (f" 2 Dask workers against 1: {_span(speedups)}x the speed (goal: 1.6x; this "
             f"machine has {data['machine'].get('cpu_count')} CPUs shared by the driver, "
             f"the scheduler and the workers).")
  if overheads:
    text += (f" Dask with 1 worker against the local runner with 1 worker: "
             f"{_span(overheads, '{:+.1f}')} s of wall time per stage")
    if inproc:
      text += f" ({_span(inproc, '{:+.1f}')} s of it inside the stage's own seconds)"
    text += (". What Dask adds: the driver ships the graph and the pickled DoFns to the "
             "scheduler, each worker unpickles them and loads the model in its own "
             "process, and every GroupByKey / Reshuffle moves the elements between "
             "processes through the scheduler. What it saves: the worker processes live "
             "for the whole run, so from the second stage on they have TensorFlow, JAX "
             "and the stage modules imported and JAX's compilation cache warm (policy "
             "and teacher share one architecture), where the local runner starts a "
             "fresh process for every stage and pays imports, model load and JIT "
             "compilation each time. "
             + ("The savings win here: Dask with 1 worker is faster in "
                f"{sum(o < 0 for o in overheads)} of {len(overheads)} stages."
                if sum(overheads) < 0 else
                "The added costs win here: Dask with 1 worker is slower in "
                f"{sum(o > 0 for o in overheads)} of {len(overheads)} stages."))
  return [
      C.markdown_table(
          ["stage", "episodes", "local 1 worker", "Dask 1 worker", "Dask 2 workers",
           "speed-up Dask 2 vs 1", "Dask 1 / local 1"],
          [[r["stage"], str(r["episodes"]), _cell(r, BEAM1), _cell(r, DASK1),
            _cell(r, DASK2), _x(r.get("dask_scaling_2w_vs_1w")),
            _x(r.get("dask_1w_vs_local_1w"))] for r in rows]),
      "",
      text,
      "",
  ]


def markdown(data: dict[str, Any]) -> str:
  s = data["settings"]
  rows = data["rows"]
  lines = [f"## Pipeline stage throughput (`{NAME}`)", ""]
  if data["quick"]:
    lines += ["**Quick run (`--quick`): small sizes, not representative "
              f"({s['order']}).**", ""]
  how = (f" (median of {s['repeats']} runs)" if s["repeats"] > 1 else " (one run each)")
  lines += [
      f"`python -m benchmarks.{NAME} --out docs/` — {s['num_prompts']} arithmetic prompts "
      f"(`builders/arithmetic` config `{s['prompts_config']}`, split `{s['split']}`), "
      f"model `{s['model']}` as policy and teacher (random weights). Chain: generate "
      f"({s['num_samples']} samples x {s['max_new_tokens']} new tokens per prompt) -> "
      f"teacher (top-k {s['teacher_top_k']}, sampled-k {s['teacher_sampled_k']}) -> score "
      f"(`arithmetic`) -> judge (pairwise, all pairs, reward `arithmetic`); publish takes "
      f"the scored rollouts (tfrecord + array_record); {s['num_shards']} output shards. "
      f"Each stage reads the previous stage's Beam 1-worker output and runs three ways, "
      f"each in a fresh subprocess (interpreter start, imports, model load and JIT "
      f"compilation included): the plain loop (`python -m benchmarks.{NAME} --plain "
      f"STAGE ...`: `rlds_lm.read` -> the stage's per-record function -> "
      f"`validate_episode` -> `serialize_example` -> `tf.io.TFRecordWriter`; for publish "
      f"`rlds_lm.publish.publish`), `python -m pipelines.STAGE --workers=1` (FnApiRunner "
      f"in memory, one process) and `--workers=2` (FnApiRunner multi-processing, 2 worker "
      f"processes). Episodes/s = episodes written / subprocess wall seconds{how}; the "
      f"ratios are of wall times (speed-up = 1-worker time / 2-worker time; Beam / plain "
      f"above 1 = Beam slower). Machine: {C.machine_line(data['machine'])}.",
      "",
      C.markdown_table(
          ["stage", "episodes in -> out", "plain loop", "Beam 1 worker", "Beam 2 workers",
           "speed-up 2 workers vs 1", "Beam 1 worker / plain", "Beam 2 workers / plain"],
          [[r["stage"], f"{r['inputs']} -> {r['episodes']}", _cell(r, PLAIN),
            _cell(r, BEAM1), _cell(r, BEAM2), _x(r.get("scaling_2w_vs_1w")),
            _x(r.get("overhead_1w_vs_plain")), _x(r.get("overhead_2w_vs_plain"))]
           for r in rows]),
      "",
      "Where the time goes, in seconds. In-process: the Beam stage's own `seconds` "
      "(`rlds_lm_stage.json`: from argument parsing to the dataset's metadata; for "
      "publish without the array_record copy and the card) and the same span in the "
      "plain loop; start-up = wall - in-process (interpreter, module imports); CPU = user "
      "+ system of the process and the children it waited for. Plain-loop phases: setup "
      "(TensorFlow import, opening the input, loading the model or scorer), first record "
      "(the first call of the per-record function: JIT compilation), other records, read "
      "(decoding the input), encode (validate + serialise), write (shards + metadata; for "
      "publish the `rlds_lm.publish.publish` call, which also validates, serialises and "
      "converts to array_record).",
      "",
      C.markdown_table(
          ["stage", "in-process plain / 1w / 2w", "start-up plain / 1w / 2w",
           "CPU plain / 1w / 2w", "plain: setup / first record / other records",
           "plain: read / encode / write"],
          [[r["stage"],
            " / ".join(_seconds(r[m].get("inproc_s") if m in r else None) for m in MODES),
            " / ".join(_seconds(_startup(r.get(m))) for m in MODES),
            " / ".join(_seconds(r[m]["cpu_s"] if m in r else None) for m in MODES),
            " / ".join(_seconds(r[PLAIN]["phases"].get(k, 0.0))
                       for k in ("setup", "first_record", "other_records")),
            " / ".join(_seconds(r[PLAIN]["phases"].get(k, 0.0) + (
                r[PLAIN]["phases"].get("publish", 0.0) if k == "write" else 0.0))
                       for k in ("read", "encode", "write"))]
           for r in rows]),
      "",
      _summary(data),
      "",
  ]
  lines += _dask_lines(data)
  same_1w_2w = [r["stage"] for r in rows if r["verification"]["bytes_identical_1w_2w"]]
  differ_1w_2w = [r["stage"] for r in rows
                  if r["verification"]["bytes_identical_1w_2w"] is False]
  identical = [r["stage"] for r in rows if r["verification"]["bytes_identical_plain_beam"]]
  lines.append(
      f"Checked in every stage: the Beam outputs hold the same (split, episode id) keys as "
      f"the plain loop's ("
      + ", ".join(f"{r['stage']} {r['episodes']}" for r in rows)
      + " episodes) and every decoded episode is equal "
      "(`rlds_lm.testing.assert_episodes_equal`, exact; for publish the array_record "
      "copies too); the benchmark fails otherwise. Shard files byte-identical with 1 and "
      f"2 workers: {_stage_list(same_1w_2w)}"
      + (f" (different bytes: {_stage_list(differ_1w_2w)})" if differ_1w_2w else "")
      + f"; identical to the plain loop's: {_stage_list(identical)} (the plain publish "
      "writes TFDS's own shard layout).")
  loads = [run["load_1min_before"] for r in rows for m in MODES if m in r
           for run in r[m]["runs"] if run.get("load_1min_before") is not None]
  footer = C.run_footer(data)
  if footer and loads:
    footer[-1] += (f" Load average (1 min) just before each measurement: "
                   f"{_span(loads)}.")
  lines += footer
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "--plain":
    return plain_main(argv[1:])
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--prompts_config", default="small",
                      help="builders/arithmetic config of the prompts")
  parser.add_argument("--split", default="test", help="split of the prompts to generate from")
  parser.add_argument("--num_samples", type=int, default=4, help="samples per prompt")
  parser.add_argument("--max_new_tokens", type=int, default=16)
  parser.add_argument("--dask", action="store_true",
                      help="also run every stage on Beam's DaskRunner against local "
                           "clusters of 1 and 2 worker processes (pipelines.dask_cluster)")
  args = parser.parse_args(argv)
  return C.run_benchmark(NAME, args, run, markdown)


if __name__ == "__main__":
  sys.exit(main())
