"""Episode I/O of the pipeline stages: read a TFDS dataset's shards, write one.

Every stage reads TFDS datasets and writes one, so each intermediate result can be
opened with ``tfds.builder_from_directory`` and ``rlds-lm inspect``:

* :func:`open_input` resolves a dataset directory in the driver (:class:`DatasetInput`:
  its splits, shard files, features, schema and lineage);
* :class:`ReadRecords` reads the tfrecord shards in parallel (one Beam element per shard
  file) and decodes them to in-memory episodes or plain records; :func:`read_jsonl`
  reads a JSON-lines file;
* :class:`WriteEpisodes` validates and serialises episodes, routes each to a shard by a
  hash of its ``episode_id`` and writes each shard sorted by id. Shard contents therefore
  depend on the episodes only, never on worker count or bundle order: re-running a stage,
  with any number of workers, writes byte-identical shards. ``scaffold.finalize`` then
  writes ``dataset_info.json`` / ``features.json`` / ``metadata.json`` from per-shard
  counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from pipelines.dead_letters import DEAD
from pipelines.dead_letters import OK
from pipelines.dead_letters import TAGGED
from pipelines.dead_letters import TMP_DIR
from pipelines.dead_letters import DeadLetter
from pipelines.dead_letters import SplitTagged
from pipelines.dead_letters import count_dropped
from pipelines.dead_letters import counter
from pipelines.dead_letters import reason_of
from pipelines.errors import PipelineError
from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S

TRAIN = "train"


def absolute(path: str | os.PathLike[str]) -> str:
  """An absolute local path; URLs (``gs://…``) as they are."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


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
    split, path, piece, pieces = element
    for i, raw in enumerate(R.tfrecord_records(path)):
      if i % pieces != piece:  # another reader's record of this shard
        continue
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
    pieces = _readers_per_file(pbegin.pipeline.options, len(self._dataset.files))
    return (pbegin
            | "ShardFiles" >> beam.Create([(split, path, piece, pieces)
                                           for split, path in self._dataset.files
                                           for piece in range(pieces)])
            | "Reshuffle" >> beam.Reshuffle()
            | "Decode" >> beam.ParDo(_DecodeShard(self._dataset.features_json,
                                                  self._episodes)))


def _readers_per_file(options, num_files: int) -> int:
  """How many readers share each shard file: 1, except on Beam's DaskRunner.

  There every element of a ``Create`` stays in its bag partition, and ``Reshuffle``
  moves nothing, so the records of one shard file are all processed by the worker that
  read it. With ``--dask_npartitions=N`` and fewer than N files, each file is read by
  ``ceil(N / files)`` readers, each decoding every k-th record.
  """
  if options is None or num_files < 1:
    return 1
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  runner = options.view_as(pipeline_options.StandardOptions).runner
  if not isinstance(runner, str) or runner.rsplit(".", 1)[-1] != "DaskRunner":
    return 1
  npartitions = options.get_all_options(drop_default=True).get("npartitions") or 1
  return max(1, -(-int(npartitions) // num_files))


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
  """Validates and serialises an episode: (OK, ((split, shard), (episode_id, bytes))),
  or (DEAD, DeadLetter) when it does not validate."""

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
      yield DEAD, count_dropped(DeadLetter(self._stage, episode_id, reason_of(e),
                                           str(e)[:2000], split))
      return
    counter(self._stage, "written").inc()
    yield OK, ((split, shard_of(episode_id, self._num_shards)), (episode_id, raw))


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


class _WriteLines(beam.DoFn):
  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def process(self, element):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    _, lines = element
    with tf.io.gfile.GFile(self._path, "w") as f:
      f.write("".join(f"{line}\n" for line in sorted(lines)))
    yield self._path


class WriteLines(beam.PTransform):
  """Writes a PCollection of strings to one text file, sorted, one per line.

  Instead of ``beam.io.WriteToText``, which writes temporary files and renames them
  (and on Beam's DaskRunner leaves an empty file): all lines go to one worker, which
  writes the file. For small outputs only (dead letters, statistics). Nothing is
  written when the PCollection is empty.
  """

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, lines):
    return (lines
            | "Key" >> beam.Map(lambda line: (None, line))
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteLines(self._path)))


class WriteEpisodes(beam.PTransform):
  """Writes ``(split, episode)`` pairs as the tfrecord shards of a TFDS dataset.

  Invalid episodes become dead letters. Returns ``(shard_infos, dead_letters)``; call
  ``scaffold.finalize`` after the pipeline ran.
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
    encoded, dead = (pcoll
                     | "Encode" >> beam.ParDo(_Encode(self._stage, self._config.to_json(),
                                                      self._num_shards)
                                              ).with_output_types(TAGGED)
                     | "SplitEncoded" >> SplitTagged())
    # Every shard of every split gets a file, even an empty one.
    empty = pcoll.pipeline | "AllShards" >> beam.Create(
        [((split, i), None) for split in self._splits for i in range(self._num_shards)])
    infos = ((encoded, empty)
             | "Flatten" >> beam.Flatten()
             | "GroupByShard" >> beam.GroupByKey()
             | "WriteShards" >> beam.ParDo(_WriteShard(self._out_dir, self._name,
                                                       self._num_shards, self._stage)))
    return infos, dead

