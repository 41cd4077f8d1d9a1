"""Shared Beam machinery of the pipeline stages: options, episode I/O, dead letters.

Every stage reads TFDS datasets and writes one, so each intermediate result can be
opened with ``tfds.builder_from_directory`` and ``rlds-lm inspect``:

* :class:`ReadEpisodes` reads the tfrecord shards of a dataset directory in parallel
  (one Beam element per shard file) and decodes them to in-memory episodes.
* :class:`WriteEpisodes` validates and serialises episodes, routes each to a shard by a
  hash of its ``episode_id`` and writes each shard sorted by id. Shard contents therefore
  depend on the episodes only, never on worker count or bundle order: re-running a stage,
  with any number of workers, writes byte-identical shards. :func:`finalize` then writes
  ``dataset_info.json`` / ``features.json`` / ``metadata.json`` from per-shard counts.
* :class:`SafeMap` runs a per-record function; a record that raises goes to the
  ``dead_letter`` output with its stage, key and reason (and a Beam counter is
  incremented) while the rest of the pipeline goes on. :func:`finalize` stores the
  dead-letter records as JSON lines and a summary (``dead_letter_summary.json``) next to
  the dataset, and prints the summary.

Runner: ``--runner=DirectRunner --direct_running_mode=multi_processing`` unless the
caller passes other Beam flags (see :func:`pipeline_options` and docs/pipelines.md).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options import pipeline_options as beam_options

from pipelines.errors import PipelineError  # noqa: F401  (re-exported)
from pipelines.errors import RecordError  # noqa: F401  (re-exported)
from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S

DEAD_LETTER = "dead_letter"  # tag of the dead-letter output of SafeMap / stages
DEAD_LETTER_FILE = "dead_letter.jsonl"  # the dropped records, next to the dataset
DEAD_LETTER_SUMMARY = "dead_letter_summary.json"  # counts by stage and reason
STAGE_FILE = "rlds_lm_stage.json"  # what produced the dataset (stage, args, counts)
COUNTER_NAMESPACE = "rlds_lm"
DEFAULT_NUM_SHARDS = 4
DEFAULT_MAX_DROPPED_FRACTION = 0.5
TMP_DIR = "_rlds_lm_tmp"  # per-shard counts and dead letters, removed by finalize
TRAIN = "train"


# --------------------------------------------------------------------------------------
# Options and command lines.
# --------------------------------------------------------------------------------------


def add_common_flags(parser: argparse.ArgumentParser) -> None:
  """Flags every stage shares; unknown flags are passed to Beam."""
  parser.add_argument("--output", required=True,
                      help="output dataset directory (created; refused if it holds data "
                           "unless --overwrite)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the output directory if it exists")
  parser.add_argument("--num_shards", type=int, default=DEFAULT_NUM_SHARDS,
                      help="output shards per split (part of the output's identity: "
                           "the same value gives byte-identical files)")
  parser.add_argument("--workers", type=int, default=2,
                      help="DirectRunner worker processes (ignored by other runners)")
  parser.add_argument("--max_dropped_fraction", type=float,
                      default=DEFAULT_MAX_DROPPED_FRACTION,
                      help="fail the stage if more than this fraction of its input "
                           "went to the dead-letter output")


def pipeline_options(beam_args: Sequence[str], workers: int = 2
                     ) -> beam_options.PipelineOptions:
  """Beam options: the caller's flags; by default the local runner, multi-process.

  The default is ``FnApiRunner``, the batch engine of Beam's DirectRunner, in
  multi-processing mode with ``workers`` processes. It is named directly because
  ``--runner=DirectRunner`` (Beam 2.77) first tries the Prism runner, a binary downloaded
  at run time, and only falls back to FnApiRunner when that fails. With ``--runner``
  given, the flags are used as they are.
  """
  flags = list(beam_args)
  if not any(f.startswith("--runner") for f in flags):
    flags += ["--runner=FnApiRunner"]
    if not any(f.startswith("--default_sdk_harness_log_level") for f in flags):
      flags += ["--default_sdk_harness_log_level=ERROR"]
    if workers > 1:
      flags += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    else:
      flags += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
  return beam_options.PipelineOptions(flags, save_main_session=False)


def code_version() -> str:
  """The rlds_lm version plus the git commit of this checkout (when there is one)."""
  from rlds_lm import __version__  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True, timeout=10, check=True
                            ).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True
                           ).stdout.strip()
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
  except (OSError, subprocess.SubprocessError):
    return __version__


def config_digest(config: Mapping[str, Any]) -> str:
  """A short digest of a stage's configuration (the flags that change its output)."""
  text = json.dumps(config, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def progress(stage: str, message: str) -> None:
  print(f"[{stage}] {message}", flush=True)


def absolute(path: str | os.PathLike[str]) -> str:
  """An absolute local path; URLs (``gs://…``) as they are."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def quiet_logs() -> None:
  """Our progress lines only: Beam, absl and TFDS INFO chatter off (warnings stay)."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("apache_beam").setLevel(logging.ERROR)
  absl_logging.set_verbosity(absl_logging.ERROR)
  os.environ.setdefault("TQDM_DISABLE", "1")  # the array_record conversion's bars
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def prepare_output(path: str, overwrite: bool) -> str:
  """Creates the output directory; refuses a non-empty one unless ``overwrite``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  path = absolute(path)
  if tf.io.gfile.exists(path) and tf.io.gfile.listdir(path):
    if not overwrite:
      raise PipelineError(f"{path} is not empty; pass --overwrite to replace it")
    tf.io.gfile.rmtree(path)
  tf.io.gfile.makedirs(path)
  return path


# --------------------------------------------------------------------------------------
# Dead letters.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeadLetter:
  """A record that a stage could not process.

  Attributes:
    stage: the stage that dropped it.
    key: the record's key (episode_id, prompt_id or input position).
    reason: a short machine-readable reason (the counter name).
    detail: the error message.
    split: the split the record belonged to.
  """

  stage: str
  key: str
  reason: str
  detail: str
  split: str = ""

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)


def reason_of(error: BaseException) -> str:
  if isinstance(error, RecordError):
    return error.reason
  from rlds_lm import validate as V  # pylint: disable=g-import-not-at-top
  if isinstance(error, V.EpisodeValidationError):
    return "invalid_episode"
  return type(error).__name__


def counter(stage: str, name: str):
  return beam.metrics.Metrics.counter(f"{COUNTER_NAMESPACE}.{stage}", name)


class SafeMap(beam.DoFn):
  """Applies ``fn(item) -> iterable of outputs``; failures become dead letters.

  Elements are ``(split, item)`` pairs: ``fn`` gets the item, and each of its outputs
  is emitted as ``(split, output)``. An exception from one element sends a :class:`DeadLetter` to the ``dead_letter`` output
  (key from ``key_fn``) and increments the counters ``<stage>/dropped`` and
  ``<stage>/dead_letter.<reason>``; elements that succeed increment ``<stage>/ok``.

  ``setup_fn`` (optional) runs once per worker and its result is passed to ``fn`` as
  its first argument (models are loaded there).
  """

  def __init__(self, stage: str, fn: Callable[..., Iterable[Any]],
               key_fn: Callable[[Any], str], setup_fn: Callable[[], Any] | None = None):
    super().__init__()
    self._stage = stage
    self._fn = fn
    self._key_fn = key_fn
    self._setup_fn = setup_fn
    self._state = None

  def setup(self):
    if self._setup_fn is not None:
      self._state = self._setup_fn()

  def process(self, element):
    split, item = element
    try:
      args = (item,) if self._setup_fn is None else (self._state, item)
      outputs = list(self._fn(*args))
    except Exception as e:  # pylint: disable=broad-except
      reason = reason_of(e)
      detail = str(e) or "".join(traceback.format_exception_only(type(e), e)).strip()
      try:
        key = str(self._key_fn(item))
      except Exception:  # pylint: disable=broad-except
        key = "?"
      counter(self._stage, "dropped").inc()
      counter(self._stage, f"dead_letter.{reason}").inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER, DeadLetter(self._stage, key, reason, detail[:2000], split))
      return
    counter(self._stage, "ok").inc()
    for output in outputs:
      yield split, output


def safe_map(pcoll, label: str, stage: str, fn, key_fn, setup_fn=None):
  """``pcoll | SafeMap(...)``; returns ``(main, dead_letters)``."""
  result = pcoll | label >> beam.ParDo(SafeMap(stage, fn, key_fn, setup_fn)).with_outputs(
      DEAD_LETTER, main="main")
  return result.main, result[DEAD_LETTER]


# --------------------------------------------------------------------------------------
# Reading datasets.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetInput:
  """What a stage needs to know about an input dataset (resolved in the driver)."""

  path: str
  name: str
  version: str
  splits: tuple[str, ...]
  files: tuple[tuple[str, str], ...]  # (split, tfrecord shard path)
  features_json: str  # the dataset's features, to decode records on workers
  metadata: dict[str, Any]
  num_examples: dict[str, int]

  @property
  def schema(self) -> S.SchemaConfig:
    if P.METADATA_SCHEMA not in self.metadata:
      raise PipelineError(f"{self.path}: not an rlds_lm episode dataset (metadata.json "
                          f"has no {P.METADATA_SCHEMA!r})")
    return S.SchemaConfig.from_json(self.metadata[P.METADATA_SCHEMA])

  def upstream_lineage(self) -> dict[str, Any]:
    """The lineage stored with this input (what produced it)."""
    return json.loads(self.metadata.get(P.METADATA_LINEAGE, "{}") or "{}")

  def lineage(self) -> dict[str, Any]:
    return {"path": self.path, "name": self.name, "version": self.version,
            "splits": {s: self.num_examples[s] for s in self.splits}}


def open_input(path: str, splits: Sequence[str] | None = None) -> DatasetInput:
  """Resolves a TFDS dataset directory (``.../name/[config/]version``) for reading."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  path = absolute(path)
  try:
    builder = tfds.builder_from_directory(path)
  except Exception as e:  # pylint: disable=broad-except
    raise PipelineError(f"cannot open {path} as a TFDS dataset directory (the folder with "
                        f"dataset_info.json): {e}") from e
  available = tuple(builder.info.splits.keys())
  chosen = tuple(splits) if splits else tuple(sorted(available))
  missing = [s for s in chosen if s not in available]
  if missing:
    raise PipelineError(f"{path} has no split(s) {missing}; it has {sorted(available)}")
  if builder.info.file_format is not None and builder.info.file_format.value != P.TFRECORD:
    raise PipelineError(f"{path}: stages read tfrecord datasets, found "
                        f"{builder.info.file_format.value}")
  files = []
  for split in chosen:
    for filename in builder.info.splits[split].filenames:
      files.append((split, os.path.join(path, filename)))
  features = builder.info.features
  return DatasetInput(
      path=path, name=builder.name, version=str(builder.version), splits=chosen,
      files=tuple(files), features_json=json.dumps(features.to_json()),
      metadata=dict(builder.info.metadata or {}),
      num_examples={s: builder.info.splits[s].num_examples for s in available})


def _features_from_json(text: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.features.FeatureConnector.from_json(json.loads(text))


class _DecodeShard(beam.DoFn):
  """(split, shard path) -> (split, decoded record) for every record of the shard."""

  def __init__(self, features_json: str, episodes: bool):
    super().__init__()
    self._features_json = features_json
    self._episodes = episodes
    self._features = None

  def setup(self):
    self._features = _features_from_json(self._features_json)

  def process(self, element):
    from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
    split, path = element
    for raw in R.tfrecord_records(path):
      record = self._features.deserialize_example_np(raw)
      yield split, (R.materialize(record) if self._episodes else R.plain_record(record))


class ReadRecords(beam.PTransform):
  """Reads a dataset's shards in parallel: a PCollection of ``(split, record)``.

  ``episodes=True`` materialises rlds_lm episodes (``read.materialize``); otherwise
  records come back as plain Python dicts (strings, lists, numbers).
  """

  def __init__(self, dataset: DatasetInput, episodes: bool = True):
    super().__init__()
    self._dataset = dataset
    self._episodes = episodes

  def expand(self, pbegin):
    return (pbegin
            | "ShardFiles" >> beam.Create(list(self._dataset.files))
            | "Reshuffle" >> beam.Reshuffle()
            | "Decode" >> beam.ParDo(_DecodeShard(self._dataset.features_json,
                                                  self._episodes)))


def read_jsonl(pipeline, path: str, split: str = TRAIN):
  """``(split, (line_number, text))`` for every non-empty line of a JSON-lines file."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  with tf.io.gfile.GFile(path) as f:
    lines = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
  return pipeline | f"Read {os.path.basename(path)}" >> beam.Create(
      [(split, line) for line in lines])


# --------------------------------------------------------------------------------------
# Writing datasets.
# --------------------------------------------------------------------------------------


def shard_of(episode_id: str, num_shards: int) -> int:
  """The output shard of an episode: a hash of its id (independent of workers)."""
  digest = hashlib.sha256(episode_id.encode()).digest()
  return int.from_bytes(digest[:8], "little") % num_shards


class _Encode(beam.DoFn):
  """Validates and serialises an episode: ((split, shard), (episode_id, bytes))."""

  def __init__(self, stage: str, config_json: str, num_shards: int):
    super().__init__()
    self._stage = stage
    self._config_json = config_json
    self._num_shards = num_shards
    self._features = None
    self._config = None

  def setup(self):
    self._config = S.SchemaConfig.from_json(self._config_json)
    self._features = S.episode_features(self._config)

  def process(self, element):
    from rlds_lm import validate as V  # pylint: disable=g-import-not-at-top
    split, episode = element
    episode_id = str(episode.get(S.EPISODE_ID, "?"))
    try:
      episode = V.validate_episode(episode, self._config)
      # Canonical bytes make the shard files byte-identical for any number of workers.
      raw = R.canonical_example(self._features.serialize_example(episode))
    except Exception as e:  # pylint: disable=broad-except
      reason = reason_of(e)
      counter(self._stage, "dropped").inc()
      counter(self._stage, f"dead_letter.{reason}").inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER, DeadLetter(self._stage, episode_id, reason, str(e)[:2000], split))
      return
    counter(self._stage, "written").inc()
    yield (split, shard_of(episode_id, self._num_shards)), (episode_id, raw)


class _WriteShard(beam.DoFn):
  """Writes one shard file, records sorted by episode id, and its count file."""

  def __init__(self, out_dir: str, name: str, num_shards: int, stage: str):
    super().__init__()
    self._out_dir = out_dir
    self._name = name
    self._num_shards = num_shards
    self._stage = stage

  def process(self, element):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    (split, shard), values = element
    by_id: dict[str, bytes] = {}
    for value in values:
      if value is None:  # the marker that makes every shard exist
        continue
      episode_id, raw = value
      # The same id with the same bytes is an exact duplicate (an input read twice):
      # keep one. The same id with other content is a bug upstream: fail, don't pick.
      if episode_id in by_id:
        if by_id[episode_id] != raw:
          raise PipelineError(f"{self._stage}: two different episodes share the id "
                              f"{episode_id!r}")
        counter(self._stage, "duplicates_removed").inc()
      by_id[episode_id] = raw
    records = sorted(by_id.items())
    path = os.path.join(self._out_dir, shard_filename(self._name, split, shard,
                                                      self._num_shards))
    num_bytes = 0
    with tf.io.TFRecordWriter(path) as writer:
      for _, raw in records:
        writer.write(raw)
        num_bytes += len(raw)
    info = {"split": split, "shard": shard, "num_examples": len(records),
            "num_bytes": num_bytes}
    with tf.io.gfile.GFile(os.path.join(self._out_dir, TMP_DIR,
                                        f"shard-{split}-{shard:05d}.json"), "w") as f:
      f.write(json.dumps(info))
    yield info


def shard_filename(name: str, split: str, shard: int, num_shards: int) -> str:
  return f"{name}-{split}.{P.TFRECORD}-{shard:05d}-of-{num_shards:05d}"


class WriteEpisodes(beam.PTransform):
  """Writes ``(split, episode)`` pairs as the tfrecord shards of a TFDS dataset.

  Invalid episodes go to the ``dead_letter`` output. Returns ``(shard_infos,
  dead_letters)``; call :func:`finalize` after the pipeline ran.
  """

  def __init__(self, out_dir: str, name: str, config: S.SchemaConfig, splits: Sequence[str],
               num_shards: int, stage: str):
    super().__init__()
    if num_shards < 1:
      raise PipelineError(f"num_shards must be >= 1, found {num_shards}")
    self._out_dir = out_dir
    self._name = name
    self._config = config
    self._splits = tuple(splits)
    self._num_shards = num_shards
    self._stage = stage

  def expand(self, pcoll):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(os.path.join(self._out_dir, TMP_DIR))
    encoded = pcoll | "Encode" >> beam.ParDo(
        _Encode(self._stage, self._config.to_json(), self._num_shards)).with_outputs(
            DEAD_LETTER, main="main")
    # Every shard of every split gets a file, even an empty one.
    empty = pcoll.pipeline | "AllShards" >> beam.Create(
        [((split, i), None) for split in self._splits for i in range(self._num_shards)])
    infos = ((encoded.main, empty)
             | "Flatten" >> beam.Flatten()
             | "GroupByShard" >> beam.GroupByKey()
             | "WriteShards" >> beam.ParDo(_WriteShard(self._out_dir, self._name,
                                                       self._num_shards, self._stage)))
    return infos, encoded[DEAD_LETTER]


def write_dead_letters(pcolls: Sequence[Any], out_dir: str, label: str = "DeadLetters"):
  """Writes the dead letters of every PCollection in ``pcolls`` as JSON lines under the
  output's temporary folder (``finalize`` gathers them)."""
  return (tuple(pcolls)
          | f"{label}Flatten" >> beam.Flatten()
          | f"{label}Json" >> beam.Map(lambda d: d.to_json())
          | f"{label}Write" >> beam.io.WriteToText(
              os.path.join(out_dir, TMP_DIR, "dead_letter"), file_name_suffix=".jsonl"))


# --------------------------------------------------------------------------------------
# After the run.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageResult:
  """What a stage wrote: the dataset directory and counts."""

  path: str
  num_examples: dict[str, int]
  dropped: dict[str, int]  # reason -> count (this stage)
  seconds: float
  counters: dict[str, int]

  @property
  def total_examples(self) -> int:
    return sum(self.num_examples.values())

  @property
  def total_dropped(self) -> int:
    return sum(self.dropped.values())


def _metrics(result) -> dict[str, int]:
  from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=g-import-not-at-top
  out: dict[str, int] = collections.Counter()
  try:
    query = result.metrics().query(MetricsFilter())
  except Exception:  # pylint: disable=broad-except  (some runners report no metrics)
    return {}
  for c in query["counters"]:
    namespace = c.key.metric.namespace
    if not namespace.startswith(COUNTER_NAMESPACE):
      continue
    value = c.committed if c.committed is not None else c.attempted
    out[f"{namespace[len(COUNTER_NAMESPACE) + 1:]}/{c.key.metric.name}"] += value or 0
  return dict(sorted(out.items()))


def finalize(*, result, out_dir: str, name: str, config: S.SchemaConfig,
             splits: Sequence[str], stage: str, description: str,
             lineage: Mapping[str, Any], inputs_total: int, started: float,
             max_dropped_fraction: float, upstream: Sequence[DatasetInput] = (),
             stage_args: Mapping[str, Any] | None = None,
             extra_metadata: Mapping[str, str] | None = None) -> StageResult:
  """Waits for the pipeline, writes the TFDS metadata and the dead-letter summary.

  The summary accumulates: the dead letters of every upstream stage (read from each
  input's ``dead_letter_summary.json``) are listed next to this stage's own, so the
  published dataset says what was dropped on the whole way.

  Raises:
    PipelineError: when more than ``max_dropped_fraction`` of the input was dropped
      (the dataset is still written, for inspection).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  result.wait_until_finish()
  tmp = os.path.join(out_dir, TMP_DIR)
  shard_infos = []
  dead: list[dict[str, Any]] = []
  for filename in sorted(tf.io.gfile.listdir(tmp)):
    if filename.startswith("shard-") and filename.endswith(".json"):
      with tf.io.gfile.GFile(os.path.join(tmp, filename)) as f:
        shard_infos.append(json.loads(f.read()))
    elif filename.startswith("dead_letter") and filename.endswith(".jsonl"):
      with tf.io.gfile.GFile(os.path.join(tmp, filename)) as f:
        dead.extend(json.loads(line) for line in f if line.strip())
  dead.sort(key=lambda d: (d["stage"], d["split"], d["key"], d["reason"]))

  split_infos = []
  num_examples = {}
  for split in splits:
    infos = sorted((i for i in shard_infos if i["split"] == split), key=lambda i: i["shard"])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[i["num_examples"] for i in infos],
        num_bytes=sum(i["num_bytes"] for i in infos)))
    num_examples[split] = sum(i["num_examples"] for i in infos)
  metadata = {P.METADATA_SCHEMA: config.to_json(),
              P.METADATA_LINEAGE: json.dumps(dict(lineage), sort_keys=True)}
  metadata.update(extra_metadata or {})
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=S.episode_features(config), split_infos=split_infos,
      filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      check_data=False, description=description, homepage=P.HOMEPAGE, citation=P.CITATION,
      license=P.LICENSE, metadata=tfds.core.MetadataDict(metadata))

  dropped = dict(collections.Counter(d["reason"] for d in dead))
  counters = _metrics(result)
  seconds = time.perf_counter() - started
  summary = {"stages": [], "total_dropped": 0}
  for source in upstream:
    previous = _read_json(os.path.join(source.path, DEAD_LETTER_SUMMARY))
    for entry in (previous or {}).get("stages", []):
      if entry not in summary["stages"]:
        summary["stages"].append(entry)
  summary["stages"].append({
      "stage": stage, "output": out_dir, "inputs": inputs_total,
      "written": sum(num_examples.values()), "dropped": sum(dropped.values()),
      "by_reason": dict(sorted(dropped.items())),
      "examples": [{k: d[k] for k in ("key", "reason", "detail", "split")}
                   for d in dead[:5]]})
  summary["total_dropped"] = sum(s["dropped"] for s in summary["stages"])
  _write_json(os.path.join(out_dir, DEAD_LETTER_SUMMARY), summary)
  with tf.io.gfile.GFile(os.path.join(out_dir, DEAD_LETTER_FILE), "w") as f:
    for d in dead:
      f.write(json.dumps(d, sort_keys=True) + "\n")
  _write_json(os.path.join(out_dir, STAGE_FILE), {
      "stage": stage, "args": dict(stage_args or {}), "num_examples": num_examples,
      "dropped": dropped, "lineage": dict(lineage), "seconds": round(seconds, 3),
      "counters": counters})
  tf.io.gfile.rmtree(tmp)

  total = sum(num_examples.values())
  progress(stage, f"wrote {total} episodes ({', '.join(f'{s}: {n}' for s, n in num_examples.items())}) "
                  f"to {out_dir} in {seconds:.1f}s")
  if dead:
    progress(stage, f"dead letters: {len(dead)} record(s) dropped: " + ", ".join(
        f"{reason} x{n}" for reason, n in sorted(dropped.items()))
             + f" (details in {os.path.join(out_dir, DEAD_LETTER_FILE)})")
    for d in dead[:3]:
      progress(stage, f"  {d['reason']}: {d['key']}: {d['detail'][:160]}")
  else:
    progress(stage, "dead letters: none")
  if inputs_total and len(dead) > max_dropped_fraction * inputs_total:
    raise PipelineError(
        f"{stage}: {len(dead)} of {inputs_total} input records were dropped (more than "
        f"--max_dropped_fraction={max_dropped_fraction}); see "
        f"{os.path.join(out_dir, DEAD_LETTER_FILE)}")
  return StageResult(path=out_dir, num_examples=num_examples, dropped=dropped,
                     seconds=seconds, counters=counters)


def _read_json(path: str) -> Any:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


def _write_json(path: str, value: Any) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_dead_letter_summary(dataset_dir: str) -> dict[str, Any] | None:
  """The ``dead_letter_summary.json`` stored with a stage's output (or None)."""
  return _read_json(os.path.join(dataset_dir, DEAD_LETTER_SUMMARY))


def main_wrapper(stage: str, run: Callable[[Sequence[str] | None], Any],
                 argv: Sequence[str] | None = None) -> int:
  """Runs a stage's ``run(argv)``; known errors print one line and exit 2."""
  quiet_logs()
  try:
    run(argv)
  except (PipelineError, FileNotFoundError, ValueError) as e:
    print(f"pipelines.{stage}: error: {e}", file=sys.stderr)
    return 2
  return 0
