"""The dataset index: a published dataset opened for training (schema, raw records,
content identity) and its trainable episodes with their decoded lengths (one pass over
the records, cached in memory and optionally on disk)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence

import numpy as np

from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm.trainers.data._contract import DataMismatchError

_SCAN_CHUNK = 1024  # records read per call while indexing a dataset
_OBS_TOKENS_KEY = "/".join((S.STEPS, S.OBSERVATION, S.OBS_TOKENS))
_ACT_TOKENS_KEY = "/".join((S.STEPS, S.ACTION, S.ACT_TOKENS))


def _decoded_length(obs: Sequence[bytes], act: Sequence[bytes]) -> int:
  """Tokens that RawSequenceDecoder writes before any cut: observation and action tokens
  turn by turn, up to and including the observation of the first turn without action."""
  total = 0
  for o, a in zip(obs, act):
    total += len(o) // 4
    if len(a) < 4:
      break
    total += len(a) // 4
  return total


def _scan(source) -> np.ndarray:
  """int64 [records]: decoded length of each episode, -1 for an invalid one."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  lengths = np.empty(len(source), np.int64)
  for start in range(0, len(source), _SCAN_CHUNK):
    stop = min(len(source), start + _SCAN_CHUNK)
    for i, raw in zip(range(start, stop), source.__getitems__(range(start, stop))):
      feature = tf_example_pb2.Example.FromString(raw).features.feature
      invalid = feature[S.INVALID].int64_list.value
      lengths[i] = -1 if (invalid and invalid[0]) else _decoded_length(
          feature[_OBS_TOKENS_KEY].bytes_list.value, feature[_ACT_TOKENS_KEY].bytes_list.value)
  return lengths


_INDEX_CACHE: dict[tuple[str, str, str], np.ndarray] = {}
_INDEX_LOCK = threading.Lock()


def _index(path: str, split: str, identity: str, source, cache_dir: str | None, *,
           known: np.ndarray | None = None) -> np.ndarray:
  """:func:`_scan` (or the ``known`` lengths, from a training view), cached in memory
  and, given ``cache_dir``, on disk by identity."""
  key = (os.path.realpath(path), split, identity)
  file = os.path.join(cache_dir, f"{identity}.npy") if cache_dir else None
  with _INDEX_LOCK:
    lengths = _INDEX_CACHE.get(key)
  if lengths is None and file and os.path.exists(file):
    lengths = np.load(file, allow_pickle=False)
    if lengths.shape != (len(source),):
      raise ValueError(f"{path}: index {file} holds {lengths.shape[0]} records, the split "
                       f"has {len(source)}; delete the stale file")
  if lengths is None:
    lengths = _scan(source) if known is None else np.array(known, np.int64)
  if file and not os.path.exists(file):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
      np.save(f, lengths, allow_pickle=False)
    os.replace(tmp, file)  # atomic: concurrent processes never read half a file
  with _INDEX_LOCK:
    _INDEX_CACHE[key] = lengths
  return lengths


class _Dataset:
  """A published dataset opened for training: schema, raw records, trainable episodes."""

  def __init__(self, path: str, split: str, *, training_view: bool = True):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.path = path
    builder = R.open_builder(path)
    self.schema = R.schema_config(builder)
    self.name = builder.info.full_name
    formats = [f.value for f in builder.info.alternative_file_formats]
    if builder.info.file_format:
      formats.append(builder.info.file_format.value)
    if P.ARRAY_RECORD not in formats:
      raise DataMismatchError(
          f"{path}: no {P.ARRAY_RECORD} files (formats {formats}); the trainers read records "
          f"by index. Add them with rlds_lm.publish.add_file_format(path, "
          f"{P.ARRAY_RECORD!r}).")
    if split.split("[")[0] not in builder.info.splits:
      raise DataMismatchError(f"{path}: no split {split!r}; it has "
                              f"{sorted(builder.info.splits.keys())}")
    self.source = builder.as_data_source(
        split, file_format=P.ARRAY_RECORD,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    # Content identity, not location: the same dataset copied elsewhere keeps its order.
    # (Not the lineage: it names paths, e.g. the Riegeli log a dataset was published
    # from, and would make the order depend on where the run happened.) The first and
    # last records stand in for the content, in canonical form (the stored bytes
    # depend on the process that published them).
    split_info = builder.info.splits[split.split("[")[0]]
    ends = [R.canonical_example(bytes(self.source[i]))
            for i in sorted({0, len(self.source) - 1}) if len(self.source)]
    self.identity = S.content_id({
        "name": self.name, "split": split, "records": len(self.source),
        "bytes": int(split_info.num_bytes), "schema": self.schema.to_json(),
        "ends": [hashlib.sha256(b).hexdigest() for b in ends]}, prefix="ds-")
    # The columnar copy of the split (None: decode the records); not part of the
    # identity: the batches are the same either way.
    self.view = R.open_training_view(builder, split) if training_view else None

  def __repr__(self) -> str:
    return f"{self.path} ({self.name})"
