"""The training view: a columnar, pre-flattened copy of a split's per-token arrays.

Training reads every token of every episode many times; decoding the stored
``tf.train.Example`` of each episode on every read costs far more than the copy a batch
needs. The view is derived once from the published dataset (the RLDS/TFDS records stay
the source of truth) and lives next to it::

    <dataset>/training_view/<split>/
      view.json            format, lineage (source digest, schema), shapes, CRC-32 per file
      offsets.bin          int64 [N + 1]: episode i's tokens are [offsets[i], offsets[i+1])
      lengths.bin          int64 [N]: trainable length (see below), -1 for invalid episodes
      reward.bin           float32 [N]: sum of the step rewards
      rewards.bin          float32 [N, R]: named rewards (the schema's reward_names), summed
      tokens.bin           int32 [T]: observation and action tokens, turn by turn
      loss_mask.bin        bool [T]: True on action tokens
      <key>.bin            one per field of :func:`rlds_lm.schema.token_fields` (e.g.
                           behaviour_logprobs float32 [T], teacher_topk_ids int32 [T, K]),
                           0 on observation tokens

Each file is raw little-endian data, memory-mapped with its shape from ``view.json``. An
episode's arrays are exactly what :class:`rlds_lm.read.RawSequenceDecoder` writes before
its cut (every turn's observation then action tokens), so a padded sequence of length
``L`` is the first ``L`` tokens of the episode's slice, padded: batches built from the
view are bit-identical to the decoder's. ``lengths`` is the trainers' index (the tokens up
to and including the observation of the first turn without action).

**Lineage and staleness.** ``view.json`` records the digest of what the view was built
from (:func:`source_digest`: the split's shard file names, sizes, modification times and
a hash of their ends, its record counts and byte count from ``dataset_info.json``, the
schema; a ``stat`` and 128 KiB read per shard to recompute) and the view format. Opening compares the digest and the files' sizes (always) and their
CRC-32 (once per process and view); a stale view is rebuilt, a damaged one
(:class:`ViewError`) too. A dataset directory that cannot be written falls back to a
cache directory (``$RLDS_LM_VIEW_CACHE``, else ``~/.cache/rlds_lm/training_views``,
keyed by the digest); if neither can be written the readers use the decoder, saying so.

No TensorFlow: building parses the records with TFDS's copy of the ``Example`` proto,
reading needs NumPy alone (this module imports nothing heavier at import time, so Grain
worker processes start fast).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S

FORMAT = "rlds_lm.training_view/1"  # changing the layout changes this
VIEW_DIR = "training_view"  # next to dataset_info.json
VIEW_JSON = "view.json"
CACHE_ENV = "RLDS_LM_VIEW_CACHE"  # fallback directory when the dataset is read-only

OFFSETS = "offsets"  # int64 [N + 1]
LENGTHS = "lengths"  # int64 [N]: trainable length, -1 for an invalid episode
REWARD = S.SEQ_REWARD  # float32 [N]
REWARDS = S.SEQ_REWARDS  # float32 [N, R]
LOSS_MASK = S.SEQ_LOSS_MASK  # bool [T]

_CHUNK = 1024  # records read per call while building
_CRC_BLOCK = 1 << 24

log = logging.getLogger(__name__)


class ViewError(ValueError):
  """A training view's files are missing, truncated or do not match their checksums."""


def _key(*parts: str) -> str:
  return "/".join(parts)


_OBS = _key(S.STEPS, S.OBSERVATION, S.OBS_TOKENS)
_ACT = _key(S.STEPS, S.ACTION, S.ACT_TOKENS)
_STEP_REWARD = _key(S.STEPS, S.REWARD)


def view_fields(config: S.SchemaConfig) -> tuple[S.TokenField, ...]:
  """The per-token fields a view of ``config``'s dataset stores: every field of
  :func:`rlds_lm.schema.token_fields`, the action tokens first."""
  tokens = S.token_fields(S.SchemaConfig())[S.SEQ_TOKENS]
  by_key = {tokens.key: tokens}
  by_key.update((f.key, f) for f in S.token_fields(config).values())
  return tuple(by_key.values())


# --------------------------------------------------------------------------------------
# Lineage.
# --------------------------------------------------------------------------------------


_STAMP_BYTES = 1 << 16  # hashed at each end of a shard


def _shard_stamp(path: str) -> list[Any]:
  """Name, size, modification time and a hash of the first and last 64 KiB of a shard.

  array_record pads its files to whole blocks, so a rewritten shard often keeps its
  size; its modification time and its ends (the footer indexes every chunk) change.
  """
  if not os.path.exists(path):
    return [os.path.basename(path), -1]
  st = os.stat(path)
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    digest.update(f.read(_STAMP_BYTES))
    f.seek(max(0, st.st_size - _STAMP_BYTES))
    digest.update(f.read(_STAMP_BYTES))
  return [os.path.basename(path), st.st_size, st.st_mtime_ns, digest.hexdigest()[:16]]


def source_digest(builder, split: str) -> str:
  """What a view of ``split`` is derived from, cheap to recompute (a ``stat`` and 128 KiB
  read per shard): the array_record shards' names, sizes, modification times and ends,
  the split's record counts and bytes (``dataset_info.json``), the dataset's schema and
  the view format. Copying a dataset without keeping modification times (``cp -r``,
  not ``cp -a``) makes its view stale: it is rebuilt."""
  from rlds_lm import integrity  # pylint: disable=g-import-not-at-top
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  info = builder.info.splits[split]
  files = integrity.shard_files(builder, split, P.ARRAY_RECORD)
  return S.content_id({
      "format": FORMAT, "name": builder.info.full_name, "split": split,
      "shards": [_shard_stamp(f) for f in files],
      "shard_lengths": [int(n) for n in info.shard_lengths],
      "records": int(info.num_examples), "bytes": int(info.num_bytes),
      "schema": R.schema_config(builder).to_json()}, prefix="src-")


# --------------------------------------------------------------------------------------
# Building.
# --------------------------------------------------------------------------------------


class _Writer:
  """Appends raw bytes to one file, keeping its CRC-32 and size."""

  def __init__(self, path: str):
    self.file = open(path, "wb")  # pylint: disable=consider-using-with
    self.crc = 0
    self.size = 0

  def write(self, data) -> None:
    data = memoryview(data)
    if not data.nbytes:  # e.g. a [0, K] array; cast("B") refuses zeros in the shape
      return
    data = data.cast("B")
    self.file.write(data)
    self.crc = zlib.crc32(data, self.crc)
    self.size += data.nbytes

  def close(self) -> None:
    self.file.close()


def _build(builder, split: str, directory: str, digest: str) -> None:
  """Writes the view of ``split`` into the new directory ``directory``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  config = R.schema_config(builder)
  fields = view_fields(config)
  source = builder.as_data_source(split, file_format=P.ARRAY_RECORD,
                                  deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  n = len(source)
  columns = [(f.key, _key(S.STEPS, *f.path), f.dtype.itemsize * int(np.prod(f.trailing)))
             for f in fields]
  rewards = [_key(S.STEPS, S.REWARDS, name) for name in config.reward_names]
  writers = {f.key: _Writer(os.path.join(directory, f"{f.key}.bin")) for f in fields}
  writers[LOSS_MASK] = _Writer(os.path.join(directory, f"{LOSS_MASK}.bin"))
  offsets = np.zeros(n + 1, np.int64)
  lengths = np.zeros(n, np.int64)
  reward = np.zeros(n, np.float32)
  named = np.zeros((n, len(rewards)), np.float32)
  token_bytes = fields[0].dtype.itemsize
  try:
    for start in range(0, n, _CHUNK):
      stop = min(n, start + _CHUNK)
      for i, raw in zip(range(start, stop), source.__getitems__(range(start, stop))):
        feature = tf_example_pb2.Example.FromString(raw).features.feature
        per_field = [(writers[key], feature[name].bytes_list.value, width)
                     for key, name, width in columns[1:]]
        total = trainable = 0
        open_ = True  # the trainers' length stops at the first turn without action
        for t, (obs, act) in enumerate(zip(feature[_OBS].bytes_list.value,
                                           feature[_ACT].bytes_list.value)):
          m = len(obs) // token_bytes
          writers[S.SEQ_TOKENS].write(obs)
          writers[LOSS_MASK].write(bytes(m))
          for writer, _, width in per_field:
            writer.write(bytes(m * width))
          total += m
          a = len(act) // token_bytes
          if open_:
            trainable += m
            if a:
              trainable += a
            else:
              open_ = False
          if a:
            writers[S.SEQ_TOKENS].write(act)
            writers[LOSS_MASK].write(np.ones(a, bool))
            for writer, per_step, width in per_field:
              data = per_step[t][:a * width]
              if len(data) != a * width:
                raise ViewError(f"{builder.data_dir}: record {i}, step {t}: field "
                                f"{writer.file.name} holds {len(data)} bytes, expected "
                                f"{a * width} ({a} action tokens)")
              writer.write(data)
            total += a
        offsets[i + 1] = offsets[i] + total
        invalid = feature[S.INVALID].int64_list.value
        lengths[i] = -1 if (invalid and invalid[0]) else trainable
        reward[i] = np.float32(np.sum(np.asarray(feature[_STEP_REWARD].float_list.value,
                                                 np.float32)))
        for j, key in enumerate(rewards):
          named[i, j] = np.sum(np.asarray(feature[key].float_list.value, np.float32))
  finally:
    for writer in writers.values():
      writer.close()
  files = {}
  for name, array in ((OFFSETS, offsets), (LENGTHS, lengths), (REWARD, reward),
                      (REWARDS, named)):
    writer = _Writer(os.path.join(directory, f"{name}.bin"))
    writer.write(np.ascontiguousarray(array))
    writer.close()
    files[name] = {"dtype": array.dtype.str, "shape": list(array.shape),
                   "bytes": writer.size, "crc32": writer.crc}
  tokens = int(offsets[-1])
  for f in fields:
    w = writers[f.key]
    files[f.key] = {"dtype": f.dtype.str, "shape": [tokens, *f.trailing],
                    "bytes": w.size, "crc32": w.crc}
  w = writers[LOSS_MASK]
  files[LOSS_MASK] = {"dtype": np.dtype(bool).str, "shape": [tokens], "bytes": w.size,
                      "crc32": w.crc}
  meta = {
      "format": FORMAT, "source_digest": digest, "dataset": builder.info.full_name,
      "dataset_dir": os.fspath(builder.data_dir), "split": split,
      "schema": config.to_json(), "records": n, "tokens": tokens,
      "fields": [f.key for f in fields], "reward_names": list(config.reward_names),
      "files": files,
  }
  with open(os.path.join(directory, VIEW_JSON), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)


# --------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------

_VERIFIED: set[tuple[Any, ...]] = set()  # views whose checksums matched, with file stats
_VERIFIED_LOCK = threading.Lock()


class TrainingView:
  """A built view, memory-mapped (read-only). Picklable: a copy reopens the files.

  Args:
    directory: the view's directory (with ``view.json``).
    verify: check the files' CRC-32 (once per process); sizes are always checked.

  Raises:
    ViewError: a file is missing, has the wrong size, or fails its checksum.
  """

  def __init__(self, directory: str | os.PathLike[str], *, verify: bool = True):
    self.directory = os.fspath(directory)
    meta_path = os.path.join(self.directory, VIEW_JSON)
    try:
      with open(meta_path) as f:
        self.meta = json.load(f)
    except (OSError, ValueError) as e:
      raise ViewError(f"{meta_path}: cannot be read: {e}") from e
    if self.meta.get("format") != FORMAT:
      raise ViewError(f"{meta_path}: format {self.meta.get('format')!r}, expected "
                      f"{FORMAT!r}")
    self.arrays: dict[str, np.ndarray] = {}
    for name, spec in self.meta["files"].items():
      path = os.path.join(self.directory, f"{name}.bin")
      size = os.path.getsize(path) if os.path.exists(path) else None
      expected = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
      if size != spec["bytes"] or size != expected:
        raise ViewError(f"{path}: {'missing' if size is None else f'{size} bytes'}, "
                        f"expected {expected} (view of {self.meta['dataset']}, field "
                        f"{name!r})")
      # Plain ndarray views of the maps: slicing an np.memmap costs more than the copy.
      self.arrays[name] = (np.memmap(path, np.dtype(spec["dtype"]), "r",
                                     shape=tuple(spec["shape"])).view(np.ndarray)
                           if expected else np.zeros(spec["shape"], spec["dtype"]))
    if verify:
      self._verify(meta_path)
    self.offsets = self.arrays[OFFSETS]
    self.lengths = self.arrays[LENGTHS]
    if self.offsets[-1] != self.meta["tokens"] or np.any(np.diff(self.offsets) < 0):
      raise ViewError(f"{self.directory}: the episode offsets do not cover the "
                      f"{self.meta['tokens']} tokens in order")

  def _verify(self, meta_path: str) -> None:
    stats = [os.stat(os.path.join(self.directory, f"{name}.bin"))
             for name in sorted(self.meta["files"])]
    key = (os.path.realpath(meta_path), os.stat(meta_path).st_mtime_ns,
           tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in stats))
    with _VERIFIED_LOCK:
      if key in _VERIFIED:
        return
    for name, spec in self.meta["files"].items():
      path = os.path.join(self.directory, f"{name}.bin")
      crc = 0
      with open(path, "rb") as f:
        while block := f.read(_CRC_BLOCK):
          crc = zlib.crc32(block, crc)
      if crc != spec["crc32"]:
        raise ViewError(f"{path}: CRC-32 {crc:08x}, view.json says {spec['crc32']:08x} "
                        f"(view of {self.meta['dataset']}, field {name!r}): damaged")
    with _VERIFIED_LOCK:
      _VERIFIED.add(key)

  def windows(self, key: str, length: int) -> np.ndarray | None:
    """Column ``key`` as overlapping windows: ``[T - length + 1, length, ...]``, row ``s``
    the ``length`` tokens from token ``s`` (a read-only strided view, nothing copied);
    None when the column holds fewer than ``length`` tokens or no data (``[T, 0]``)."""
    cache = self.__dict__.setdefault("_windows", {})
    if (key, length) not in cache:
      column = self.arrays[key]
      total = column.shape[0]
      cache[key, length] = (None if total < length or not column.size or length < 1 else
                            np.lib.stride_tricks.as_strided(
                                column, (total - length + 1, length) + column.shape[1:],
                                (column.strides[0],) + column.strides, writeable=False))
    return cache[key, length]

  def __len__(self) -> int:
    return int(self.meta["records"])

  @property
  def source_digest(self) -> str:
    return self.meta["source_digest"]

  @property
  def reward_names(self) -> tuple[str, ...]:
    return tuple(self.meta["reward_names"])

  def __getstate__(self) -> dict[str, Any]:
    return {"directory": self.directory}

  def __setstate__(self, state: Mapping[str, Any]) -> None:
    self.__init__(state["directory"], verify=False)

  def __repr__(self) -> str:
    return f"TrainingView({self.directory!r})"


class ViewBatcher:
  """Record indices -> a padded batch, the same arrays as stacking
  :class:`rlds_lm.read.RawSequenceDecoder`'s outputs for those records.

  Each field is gathered for the whole batch at once: row ``r`` is window
  ``offsets[indices[r]]`` of :meth:`TrainingView.windows` (the ``L`` tokens from the
  record's first one, a strided view of the memory-mapped column: one fancy index per
  field copies every row), then the cells after each record's end are set to the padding
  (``pad_id`` for the tokens, 0 elsewhere). A record within ``L`` tokens of the column's
  end is copied by a slice. Pickles as the view's directory and the arguments.

  Args:
    view: the :class:`TrainingView`.
    max_length: ``L``; longer sequences are cut.
    pad_id: token id after the end.
    keys: the per-token keys to produce (``tokens`` first, as the decoder's fields).
    reward_names: named rewards to produce as ``rewards`` (in this order).
  """

  def __init__(self, view: TrainingView, max_length: int, *, pad_id: int = 0,
               keys: Sequence[str], reward_names: Sequence[str] = ()):
    self.view = view
    self.max_length = max_length
    self.pad_id = pad_id
    self.keys = tuple(keys)
    missing = [k for k in self.keys if k not in view.arrays]
    if missing:
      raise ViewError(f"{view.directory}: the view has no field {missing}")
    self.reward_names = tuple(reward_names)
    names = view.reward_names
    unknown = [n for n in self.reward_names if n not in names]
    if unknown:
      raise ViewError(f"{view.directory}: the view has no named reward {unknown}; it has "
                      f"{list(names)}")
    self._columns = [names.index(n) for n in self.reward_names]
    self._fields = (*self.keys, LOSS_MASK)

  def spec(self, rows: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of a batch of ``rows`` records, in key order."""
    arrays, length = self.view.arrays, self.max_length
    spec = {key: ((rows, length) + arrays[key].shape[1:], arrays[key].dtype)
            for key in self._fields}
    spec[REWARD] = ((rows,), np.dtype(np.float32))
    if self.reward_names:
      spec[REWARDS] = ((rows, len(self.reward_names)), np.dtype(np.float32))
    return dict(sorted(spec.items()))

  def __call__(self, indices, *,
               out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The batch of records ``indices``.

    Args:
      indices: record indices (the batch's rows, in order).
      out: optional arrays to write the batch into (e.g. a shared-memory slot), one per
        key of :meth:`spec` with at least ``len(indices)`` rows; their first rows are
        overwritten and returned.

    Returns:
      ``{key: array}`` in key order: ``[b, L]`` per-token fields (and ``[b, L, K]`` for
      the wide ones), ``reward`` ``[b]``, ``rewards`` ``[b, R]`` when asked for.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    b = indices.size
    view, arrays = self.view, self.view.arrays
    starts = view.offsets[indices]
    rows = Rows(view, starts, view.offsets[indices + 1] - starts, self.max_length)
    result = {}
    for key in self._fields:
      result[key] = rows.gather(key, self.pad_id if key == S.SEQ_TOKENS else 0,
                                None if out is None else out[key][:b])
    reward = arrays[REWARD][indices]
    if out is None:
      result[REWARD] = reward
    else:
      result[REWARD] = out[REWARD][:b]
      result[REWARD][...] = reward
    if self.reward_names:
      rewards = arrays[REWARDS][indices][:, self._columns]
      if out is None:
        result[REWARDS] = np.asarray(rewards, np.float32)
      else:
        result[REWARDS] = out[REWARDS][:b]
        result[REWARDS][...] = rewards
    return dict(sorted(result.items()))  # in key order, as Grain's batch of dicts


_ARANGES: dict[int, np.ndarray] = {}


def _arange(length: int) -> np.ndarray:
  """``np.arange(length)``, made once per length (read-only)."""
  out = _ARANGES.get(length)
  if out is None:
    out = _ARANGES[length] = np.arange(length)
    out.flags.writeable = False
  return out


class Rows:
  """Padded rows of a batch read from a view: row ``r`` is the first ``min(counts[r],
  length)`` tokens from token ``starts[r]``, then padding.

  :meth:`gather` copies a field for every row with one fancy index over
  :meth:`TrainingView.windows` (each row's window of ``length`` tokens), then sets the
  cells after each row's end to the padding; a row within ``length`` tokens of the
  column's end is copied by a slice. Shared by :class:`ViewBatcher` and the trainers'
  input pipeline; computed once per batch for all its fields.
  """

  def __init__(self, view: TrainingView, starts: np.ndarray, counts: np.ndarray,
               length: int):
    self.view, self.length = view, length
    self.starts = np.asarray(starts, np.int64)
    self.counts = np.minimum(np.asarray(counts, np.int64), length)
    last = int(view.offsets[-1]) - length  # the last window's first token
    # Rows whose window would run past the column's end read its last window and are
    # copied again by a slice (all rows when the column is shorter than the window).
    if self.starts.size and int(self.starts.max()) > last:
      self.late = np.flatnonzero(self.starts > last).tolist()
      self.clipped = np.minimum(self.starts, max(last, 0))
    else:
      self.late, self.clipped = [], self.starts
    self.keep = _arange(length) < self.counts[:, None]  # [b, L]: cells before the end
    self.padded = self.starts.size and int(self.counts.min()) < length
    self._pad = self._tail = None

  @property
  def pad(self) -> np.ndarray:
    """``[b, L]``: the padding cells."""
    if self._pad is None:
      self._pad = ~self.keep
    return self._pad

  @property
  def tail(self) -> np.ndarray:
    """Flat ``[b * L]`` indices of the padding cells."""
    if self._tail is None:
      self._tail = np.flatnonzero(self.pad)
    return self._tail

  def gather(self, key: str, fill, out: np.ndarray | None = None) -> np.ndarray:
    """Field ``key`` of every row, ``[b, length, ...]``, padded with ``fill``; written
    into ``out`` when given (no temporary for the wide fields)."""
    column = self.view.arrays[key]
    b, length = self.starts.size, self.length
    windows = self.view.windows(key, length)
    target = out
    if windows is None:  # no full window (short column) or an empty [T, 0] field
      if target is None:
        target = np.empty((b, length) + column.shape[1:], column.dtype)
      target.fill(fill)
      rows = range(b) if column.size else ()
    else:
      if target is None:
        target = windows[self.clipped]  # one fancy index: every row's window, copied
      elif column.ndim == 1:
        target[...] = windows[self.clipped]
      else:  # wide rows straight into the given arrays
        for r, s in enumerate(self.clipped.tolist()):
          target[r] = windows[s]
      rows = self.late
    for r in rows:
      s, n = int(self.starts[r]), int(self.counts[r])
      target[r, :n] = column[s:s + n]
      target[r, n:] = fill
    if self.padded and windows is not None:
      if column.ndim > 1:
        target.reshape((b * length,) + column.shape[1:])[self.tail] = fill
      elif column.dtype == bool:
        target &= self.keep
      elif fill == 0 and column.dtype.itemsize in (1, 2, 4, 8):
        # Zero the padding bit for bit (floats through their integer bits: a product
        # would turn -inf or NaN into NaN).
        bits = target.view(f"u{column.dtype.itemsize}")
        np.multiply(bits, self.keep, out=bits)
      else:
        np.putmask(target, self.pad, fill)
    return target


# --------------------------------------------------------------------------------------
# Opening (and building when missing or stale).
# --------------------------------------------------------------------------------------

_BUILD_LOCK = threading.Lock()


def default_cache_dir() -> str:
  """``$RLDS_LM_VIEW_CACHE``, else ``~/.cache/rlds_lm/training_views``."""
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "rlds_lm", "training_views")


def view_dir(dataset: str | os.PathLike[str], split: str) -> str:
  """Where the view of ``split`` lives next to the dataset."""
  return os.path.join(os.fspath(dataset), VIEW_DIR, split)


_OPEN: dict[str, tuple[tuple[Any, ...], TrainingView]] = {}  # directory -> (stats, view)


def _stats(directory: str, names) -> tuple[Any, ...]:
  """What identifies a view's files on disk: ``view.json``'s and each file's inode, size
  and modification time (a rebuild or an edit in place changes them)."""
  out = []
  for name in (VIEW_JSON, *(f"{n}.bin" for n in sorted(names))):
    try:
      st = os.stat(os.path.join(directory, name))
    except OSError:
      return ()
    out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
  return tuple(out)


def _open_current(directory: str, digest: str) -> TrainingView | None:
  """The view in ``directory`` if it is there, intact and built from ``digest``.

  A view opened before in this process whose files are unchanged (same inodes, sizes,
  modification times) is returned again: its maps are already faulted in (reopening
  the files maps them afresh, and every page touched costs a page fault again)."""
  if not os.path.exists(os.path.join(directory, VIEW_JSON)):
    return None
  key = os.path.realpath(directory)
  cached = _OPEN.get(key)
  if cached is not None and cached[1].source_digest == digest and cached[0] == _stats(
      directory, cached[1].meta["files"]):
    return cached[1]
  try:
    view = TrainingView(directory)
  except ViewError as e:
    log.warning("training view %s is damaged (%s); rebuilding it", directory, e)
    return None
  stats = _stats(directory, view.meta["files"])
  if stats:
    _OPEN[key] = (stats, view)
  if view.source_digest != digest:
    log.warning("training view %s is stale (built from %s, the dataset is now %s); "
                "rebuilding it", directory, view.source_digest, digest)
    return None
  return view


def _build_into(builder, split: str, directory: str, digest: str) -> TrainingView:
  parent = os.path.dirname(directory) or "."
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(directory)}.{os.getpid()}."
                     f"{threading.get_ident()}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    _build(builder, split, tmp, digest)
    old = None
    if os.path.exists(directory):
      old = f"{tmp}.old"
      os.replace(directory, old)
    os.replace(tmp, directory)  # a reader never sees half a view
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return TrainingView(directory)


def open_view(builder, split: str = "train", *, build: bool = True,
              cache_dir: str | os.PathLike[str] | None = None) -> TrainingView | None:
  """The current training view of ``split``, building (or rebuilding) it when missing,
  stale or damaged.

  Tries ``<dataset>/training_view/<split>/``, then ``cache_dir`` (default
  :func:`default_cache_dir`) under the source digest. Returns None, with a warning
  saying why, when the split cannot have a view (a sliced split such as
  ``train[:10%]``, no array_record files) or no view can be written or built; the
  readers then decode the records.

  Args:
    builder: the dataset, from :func:`rlds_lm.read.open_builder`.
    split: a split name.
    build: False: only open an existing current view.
    cache_dir: the fallback directory.
  """
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top

  dataset = os.fspath(builder.data_dir)
  formats = [f.value for f in builder.info.alternative_file_formats]
  if builder.info.file_format:
    formats.append(builder.info.file_format.value)
  if split not in builder.info.splits or P.ARRAY_RECORD not in formats:
    log.warning("%s: no training view for split %r (a view is built from the %s files "
                "of a whole split); decoding records instead", dataset, split,
                P.ARRAY_RECORD)
    return None
  digest = source_digest(builder, split)
  cache = os.path.join(os.fspath(cache_dir or default_cache_dir()), digest, split)
  with _BUILD_LOCK:
    for directory in (view_dir(dataset, split), cache):
      view = _open_current(directory, digest)
      if view is not None:
        return view
    if not build:
      return None
    problems = []
    for directory in (view_dir(dataset, split), cache):
      try:
        view = _build_into(builder, split, directory, digest)
      except OSError as e:  # read-only directory, disk full: try the next place
        problems.append(f"{directory}: {e}")
        continue
      except Exception as e:  # noqa: BLE001 - the records decide; the decoder reports them
        log.warning("%s: cannot build the training view of split %r (%s: %s); decoding "
                    "records instead", dataset, split, type(e).__name__, e)
        return None
      if problems:
        log.warning("%s: training view written to the cache %s (%s)", dataset, directory,
                    "; ".join(problems))
      return view
    log.warning("%s: no training view (cannot write: %s); decoding records instead",
                dataset, "; ".join(problems))
    return None
