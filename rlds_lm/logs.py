"""Riegeli episode logs through envlogger: the crash-safe recording format.

Layout on disk is envlogger's own (``DIR/metadata.riegeli`` plus one timestamped shard
directory per writer session), so ``envlogger.Reader(DIR)`` and
``tfds.rlds.rlds_base`` read it too. Conventions on top of envlogger's:

* dm_env order: log step 0 is ``restart(obs_0)`` with no action; log step ``j > 0``
  holds ``obs_j``, the reward and discount of the previous RLDS step, its action
  (``action``) and its step metadata (``custom_data``). RLDS step ``i`` is rebuilt from
  log steps ``i`` and ``i + 1`` (the RLDS/envlogger convention).
* Per-token numeric arrays are stored as raw little-endian bytes (their dtype and width
  come from the schema); envlogger's per-element proto encoding is about 10x slower
  (see STACK.md). Plain numpy arrays (as ``EnvLogger(LmEnv)`` writes) read back too.
* The episode metadata is written twice: with ``set_episode_metadata`` (envlogger's
  index, for upstream readers) and inside the last step's ``custom_data``, because
  envlogger writes an episode's index entry only when the next episode starts. Readers
  here rebuild episodes from the step stream alone, so every episode whose last step was
  flushed survives a SIGKILL; an episode without its LAST step (the one open at the
  kill) is skipped and counted.
* The dataset-level envlogger metadata holds the :class:`SchemaConfig` as JSON.
* Writing: :class:`RiegeliEpisodeWriter` serializes envlogger's ``Data`` messages
  itself (:func:`encode_episode`) and hands the bytes to envlogger's native writer;
  the files are the ones envlogger's ``RiegeliBackendWriter`` (``codec.encode``) writes,
  and the datasets published from them are byte-identical (tests/test_recorder_format.py),
  at a fraction of the Python cost. What remains is the native writer itself: the
  floor in docs/benchmarks.md. :class:`ProcessEpisodeWriter` runs that writer in a
  writer process fed through a pipe (``Recorder(writer="process")``), with the
  guarantees its docstring lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from rlds_lm import _compat
from rlds_lm import schema as S

SCHEMA_KEY = "rlds_lm_schema"  # dataset metadata key holding SchemaConfig JSON
EPISODE_METADATA_KEY = "rlds_lm_episode_metadata"  # in the last log step's custom_data
DEFAULT_WRITER_OPTIONS = "zstd:1"  # measured in benchmarks/record_throughput.py

# Quiet by default: envlogger's native (glog) INFO lines, e.g. the Riegeli writer's
# "Empty steps, nothing to do", are hidden by the package's `_compat.quiet()`
# (GLOG_minloglevel=1 unless the user set it, or RLDS_LM_VERBOSE / --verbose asks for
# everything); glog reads it when envlogger's extension modules load. Even then the
# writer never flushes with nothing new to write (RiegeliEpisodeWriter.flush), so the
# line shows only where envlogger itself flushes an empty shard: when a session opens
# its first shard and when it closes.


# --------------------------------------------------------------------------------------
# Encoding between canonical episodes and envlogger step data.
# --------------------------------------------------------------------------------------


def _encode_tree(tree: Mapping[str, Any], buffers: bool = False) -> dict[str, Any]:
  """Envlogger-encodable values of a tree of validated fields.

  ``buffers``: per-token arrays as byte views of the arrays instead of ``bytes`` copies
  (for :func:`_wire`, which writes them as the same ``bytes`` value).
  """
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out[key] = _encode_tree(value, buffers)
    elif isinstance(value, np.ndarray):
      if value.dtype == object:  # string vectors
        out[key] = [str(v) for v in value.tolist()]
      elif value.dtype == np.uint8 and value.ndim == 3:  # images: envlogger-native
        out[key] = value
      elif buffers:
        out[key] = memoryview(np.ascontiguousarray(value)).cast("B")
      else:
        out[key] = np.ascontiguousarray(value).tobytes()
    elif isinstance(value, bool):
      out[key] = np.bool_(value)
    elif isinstance(value, float):
      out[key] = np.float64(value)
    elif isinstance(value, int):
      out[key] = np.int64(value)
    else:
      out[key] = value
  return out


def _decode_leaf(spec: S.FieldSpec, value: Any) -> Any:
  if spec.is_string:
    if spec.shape:
      items = [] if value is None else list(value)
      return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in items],
                        dtype=object)
    if isinstance(value, np.ndarray):
      value = value.item()
    return value.decode() if isinstance(value, bytes) else ("" if value is None else value)
  dtype = np.dtype(spec.dtype)
  if isinstance(value, bytes):
    array = np.frombuffer(value, dtype=dtype)
    if len(spec.shape) == 2:
      array = array.reshape(-1, spec.shape[1])
    return array
  if value is None:  # envlogger stores empty containers as None
    shape = tuple(d if isinstance(d, int) else 0 for d in spec.shape)
    return np.zeros(shape, dtype)
  array = np.asarray(value)
  if not spec.shape:
    return array.astype(dtype).item() if spec.dtype != "bool" else bool(array)
  return array.astype(dtype, copy=False)


def _decode_tree(specs: Mapping[str, Any], value: Any) -> dict[str, Any]:
  value = value or {}
  out = {}
  for key, spec in specs.items():
    item = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(spec, S.FieldSpec):
      out[key] = _decode_leaf(spec, item)
    else:
      out[key] = _decode_tree(spec, item)
  return out


def episode_to_log_steps(episode: Mapping[str, Any],
                         buffers: bool = False) -> list[tuple[Any, Any, Any]]:
  """Converts a validated episode into ``(timestep, action, custom_data)`` triples.

  ``buffers`` as for :func:`_encode_tree`.
  """
  import dm_env  # pylint: disable=g-import-not-at-top

  steps = episode[S.STEPS]
  metadata = _encode_tree({k: v for k, v in episode.items() if k != S.STEPS}, buffers)
  out = []
  n = len(steps)
  for j in range(n):
    obs = _encode_tree(steps[j][S.OBSERVATION], buffers)
    if j == 0:
      out.append((dm_env.restart(obs), None, None))
      continue
    prev = steps[j - 1]
    step_type = dm_env.StepType.LAST if j == n - 1 else dm_env.StepType.MID
    timestep = dm_env.TimeStep(step_type, np.float64(prev[S.REWARD]),
                               np.float64(prev[S.DISCOUNT]), obs)
    custom = _encode_tree({k: v for k, v in prev.items() if k not in _CORE}, buffers)
    if j == n - 1:
      custom[EPISODE_METADATA_KEY] = metadata
    out.append((timestep, _encode_tree(prev[S.ACTION], buffers), custom))
  return out


_CORE = (S.OBSERVATION, S.ACTION, S.REWARD, S.DISCOUNT, S.IS_FIRST, S.IS_LAST,
         S.IS_TERMINAL)


def log_steps_to_episode(log_steps: list[Any], config: S.SchemaConfig,
                         episode_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Rebuilds a canonical episode from one episode's envlogger ``StepData`` list.

  Metadata fields that the log does not hold (for example from a bare
  ``EnvLogger(LmEnv)``) get the schema's empty values; a missing ``episode_id`` is
  derived from content.
  """
  specs = S.step_specs(config)
  meta_specs = S.episode_metadata_specs(config)
  n = len(log_steps)
  last_custom = log_steps[-1].custom_data or {}
  raw_meta = dict(episode_metadata or {})
  if isinstance(last_custom, Mapping) and EPISODE_METADATA_KEY in last_custom:
    raw_meta = dict(last_custom[EPISODE_METADATA_KEY] or {})
  episode = _decode_tree(meta_specs, raw_meta)
  meta_step_specs = {k: v for k, v in specs.items() if k not in _CORE}
  steps = []
  for i in range(n):
    obs = _decode_tree(specs[S.OBSERVATION], log_steps[i].timestep.observation)
    if i < n - 1:
      nxt = log_steps[i + 1]
      action = _decode_tree(specs[S.ACTION], nxt.action)
      custom = {k: v for k, v in (nxt.custom_data or {}).items() if k != EPISODE_METADATA_KEY}
      step_meta = _decode_tree(meta_step_specs, custom)
      reward = float(nxt.timestep.reward or 0.0)
      discount = float(1.0 if nxt.timestep.discount is None else nxt.timestep.discount)
    else:
      action = _decode_tree(specs[S.ACTION], None)
      if config.kind == S.PREFERENCE:
        action[S.ACT_CHOICE] = -1
      step_meta = _decode_tree(meta_step_specs, None)
      reward, discount = 0.0, 1.0
    if config.kind == S.ROLLOUT:
      _fill_token_defaults(action, step_meta)
    steps.append(S.build_step(
        observation=obs, action=action, reward=reward, discount=discount,
        is_first=(i == 0), is_last=(i == n - 1),
        is_terminal=(i == n - 1 and float(log_steps[-1].timestep.discount or 0.0) == 0.0),
        metadata=step_meta))
  episode[S.STEPS] = steps
  if not episode[S.EPISODE_ID]:
    episode[S.EPISODE_ID] = (S.rollout_episode_id(episode) if config.kind == S.ROLLOUT
                             else S.preference_episode_id(episode))
  return episode


def _fill_token_defaults(action: dict[str, Any], step_meta: dict[str, Any]) -> None:
  """Arrays a log may omit (e.g. an EnvLogger without logprobs) default to zeros."""
  length = action[S.ACT_TOKENS].shape[0]
  if action[S.ACT_THINKING_MASK].shape[0] != length and not action[S.ACT_THINKING_MASK].size:
    action[S.ACT_THINKING_MASK] = np.zeros(length, bool)
  for key in (S.ACTION_LOGPROBS, S.TOKEN_REWARDS):
    if step_meta[key].shape[0] != length and not step_meta[key].size:
      step_meta[key] = np.zeros(length, np.float32)


# --------------------------------------------------------------------------------------
# envlogger's `Data` protocol buffer, serialized directly.
#
# envlogger's `codec.encode` builds a `storage_pb2.Data` message node by node in Python,
# and its native writer serializes that message again in Python before parsing it in
# C++: together about 1.5-3x the cost of the native write itself (docs/benchmarks.md).
# `_wire` writes the same message's wire bytes in one pass; the per-token buffers are
# joined once, never copied per nesting level. The bytes decode to a message equal to
# `codec.encode(...)` (tests/test_recorder.py checks it on every episode kind).
# --------------------------------------------------------------------------------------

_SCALAR_DIM = -438  # envlogger's codec._SCALAR_DIM_SIZE: the shape of a scalar Datum


def _varint(value: int) -> bytes:
  if value < 0:
    value += 1 << 64  # int64: two's complement, ten bytes
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


_SMALL_VARINTS = [_varint(i) for i in range(1 << 14)]  # lengths under 16 KiB: a lookup


def _size(size: int) -> bytes:
  """A length prefix."""
  return _SMALL_VARINTS[size] if size < (1 << 14) else _varint(size)


# Datum.shape (1) { Shape.dim (2) { Dim.size (1): _SCALAR_DIM } }
_SCALAR_SHAPE = b"\x0a\x0d\x12\x0b\x08" + _varint(_SCALAR_DIM)
_F64 = struct.Struct("<d")
_TRUE = b"\x3a\x01\x01"  # Values.bool_values (7), packed: [True]
_FALSE = b"\x3a\x01\x00"


_SCALAR_HEADS: dict[int, bytes] = {}  # Values size -> the scalar Data's head


def _scalar_head(values_size: int) -> bytes:
  """Data.datum (1) { Datum.shape (scalar), Datum.values (2) (length prefix only) }."""
  head = _SCALAR_HEADS.get(values_size)
  if head is None:
    datum_size = len(_SCALAR_SHAPE) + 1 + len(_size(values_size)) + values_size
    head = b"\x0a" + _size(datum_size) + _SCALAR_SHAPE + b"\x12" + _size(values_size)
    if len(_SCALAR_HEADS) < 4096:
      _SCALAR_HEADS[values_size] = head
  return head


def _scalar(parts: list[Any], values_head: bytes, payload: Any = b"") -> int:
  """Appends a scalar `Data` (Data.datum (1)) whose `Datum.Values` is ``values_head``
  followed by ``payload``; returns its size."""
  head = _scalar_head(len(values_head) + len(payload)) + values_head
  parts.append(head)
  if len(payload):
    parts.append(payload)
  return len(head) + len(payload)


def _scalar_bytes(values_head: bytes) -> bytes:
  parts: list[Any] = []
  _scalar(parts, values_head)
  return parts[0]


# Whole scalar `Data` messages of a fixed size: constants, or a constant and 8 bytes.
_DATA_TRUE = _scalar_bytes(_TRUE)
_DATA_FALSE = _scalar_bytes(_FALSE)
_DATA_F64_HEAD = _scalar_bytes(b"\x12\x08" + bytes(8))[:-8]  # Values.double_values (2)


_KEY_HEADS: dict[str, bytes] = {}  # map key -> its serialized key field + value tag


def _wire(value: Any, parts: list[Any]) -> int:
  """Appends the wire bytes of ``codec.encode(value)`` to ``parts``; returns their size.

  Covers what the step layout holds (dicts with string keys, tuples, lists of strings,
  None, str, bytes and buffers, Python and numpy scalars); anything else (an image
  array) goes through envlogger's codec.
  """
  if value is None:
    return 0
  if type(value) is _Wired:  # already serialized
    parts.append(value.data)
    return len(value.data)
  if type(value) is _Tree:
    return _wire_tree(value.tree, parts)
  if isinstance(value, (bytes, memoryview)):  # Values.bytes_values (9)
    return _scalar(parts, b"\x4a" + _size(len(value)), value)
  if isinstance(value, dict):
    if not value:
      return 0
    body: list[Any] = []
    size = 0
    for key, item in value.items():
      if type(key) is not str:  # nothing appended to parts yet
        return _wire_codec(value, parts)
      head_at = len(body)
      body.append(b"")
      # The common leaves inline (as _wire writes them): a call per field costs more.
      kind = type(item)
      if kind is memoryview or kind is bytes:  # Values.bytes_values (9)
        values_head = b"\x4a" + _size(len(item))
        data = _scalar_head(len(values_head) + len(item)) + values_head
        body.append(data)
        n = len(data) + len(item)
        if len(item):
          body.append(item)
      elif kind is np.float64:
        data = _DATA_F64_HEAD + _F64.pack(item)
        body.append(data)
        n = len(data)
      elif kind is str:  # Values.string_values (8)
        text = item.encode("utf-8")
        values_head = b"\x42" + _size(len(text))
        data = _scalar_head(len(values_head) + len(text)) + values_head + text
        body.append(data)
        n = len(data)
      else:
        n = _wire(item, body)
      key_head = _KEY_HEADS.get(key)
      if key_head is None:
        key_bytes = key.encode("utf-8")
        key_head = b"\x0a" + _size(len(key_bytes)) + key_bytes + b"\x12"
        if len(_KEY_HEADS) < 10_000:  # field names: a few dozen
          _KEY_HEADS[key] = key_head
      # Dict.values (1): a map entry {key (1): str, value (2): Data}
      entry = key_head + _size(n)
      head = b"\x0a" + _size(len(entry) + n) + entry
      body[head_at] = head
      size += len(head) + n
    head = b"\x22" + _size(size)  # Data.dict (4)
    parts.append(head)
    parts.extend(body)
    return len(head) + size
  if isinstance(value, (tuple, list)):
    if not value:
      return 0
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
      return _wire_codec(value, parts)  # with codec's homogeneity check and error
    body = []
    size = 0
    for item in value:
      head_at = len(body)
      body.append(b"")
      n = _wire(item, body)
      head = b"\x0a" + _size(n)  # Array.values (1) / Tuple.values (1)
      body[head_at] = head
      size += len(head) + n
    # Data.array (2) for a list, Data.tuple (3) for a tuple (namedtuples too).
    head = (b"\x12" if isinstance(value, list) else b"\x1a") + _size(size)
    parts.append(head)
    parts.extend(body)
    return len(head) + size
  if isinstance(value, str):  # Values.string_values (8)
    data = value.encode("utf-8")
    return _scalar(parts, b"\x42" + _size(len(data)), data)
  if type(value) is np.float64:  # the common scalar first
    data = _DATA_F64_HEAD + _F64.pack(value)
    parts.append(data)
    return len(data)
  if isinstance(value, (bool, np.bool_)):
    data = _DATA_TRUE if value else _DATA_FALSE
    parts.append(data)
    return len(data)
  if isinstance(value, int):  # Values.bigint_values (10); dm_env.StepType too
    data = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    return _scalar(parts, b"\x52" + _size(len(data)) + data)
  if type(value) is np.int64:  # Values.int64_values (4), packed
    data = _varint(int(value))
    return _scalar(parts, b"\x22" + _size(len(data)) + data)
  return _wire_codec(value, parts)


def _wire_codec(value: Any, parts: list[Any]) -> int:
  from envlogger.converters import codec  # pylint: disable=g-import-not-at-top

  data = codec.encode(value).SerializeToString()
  parts.append(data)
  return len(data)


def _serialized(value: Any) -> bytes:
  """The wire bytes of ``codec.encode(value)``."""
  parts: list[Any] = []
  _wire(value, parts)
  return b"".join(parts)


class _Wired:
  """Wire bytes :func:`_wire` already wrote, written again as they are."""

  __slots__ = ("data",)

  def __init__(self, data: bytes):
    self.data = data


class _Tree:
  """A tree of validated fields that :func:`_wire` writes as it writes
  ``_encode_tree(tree, buffers=True)``, without building that copy (:func:`_wire_tree`)."""

  __slots__ = ("tree",)

  def __init__(self, tree: Mapping[str, Any]):
    self.tree = tree


def _wire_tree(tree: Mapping[str, Any], parts: list[Any]) -> int:
  """``_wire(_encode_tree(tree, buffers=True), parts)`` in one pass over ``tree``."""
  if not tree:
    return 0
  body: list[Any] = []
  size = 0
  for key, item in tree.items():
    if type(key) is not str:  # nothing appended to parts yet
      return _wire(_encode_tree(tree, True), parts)
    head_at = len(body)
    body.append(b"")
    kind = type(item)
    if kind is np.ndarray and item.dtype != object and not (
        item.dtype == np.uint8 and item.ndim == 3):
      view = memoryview(np.ascontiguousarray(item)).cast("B")
      values_head = b"\x4a" + _size(len(view))  # Values.bytes_values (9)
      data = _scalar_head(len(values_head) + len(view)) + values_head
      body.append(data)
      n = len(data) + len(view)
      if len(view):
        body.append(view)
    elif kind is float:  # as np.float64
      data = _DATA_F64_HEAD + _F64.pack(item)
      body.append(data)
      n = len(data)
    elif kind is str:  # Values.string_values (8)
      text = item.encode("utf-8")
      values_head = b"\x42" + _size(len(text))
      data = _scalar_head(len(values_head) + len(text)) + values_head + text
      body.append(data)
      n = len(data)
    elif kind is bool:  # as np.bool_
      data = _DATA_TRUE if item else _DATA_FALSE
      body.append(data)
      n = len(data)
    elif kind is int:  # as np.int64: Values.int64_values (4), packed
      data = _varint(item)
      n = _scalar(body, b"\x22" + _size(len(data)) + data)
    elif kind is dict:
      n = _wire_tree(item, body)
    elif kind is _Wired:
      body.append(item.data)
      n = len(item.data)
    else:  # anything else converted as _encode_tree converts it
      n = _wire(_encode_tree({key: item}, True)[key], body)
    key_head = _KEY_HEADS.get(key)
    if key_head is None:
      key_bytes = key.encode("utf-8")
      key_head = b"\x0a" + _size(len(key_bytes)) + key_bytes + b"\x12"
      if len(_KEY_HEADS) < 10_000:
        _KEY_HEADS[key] = key_head
    entry = key_head + _size(n)  # Dict.values (1): {key (1), value (2)}
    head = b"\x0a" + _size(len(entry) + n) + entry
    body[head_at] = head
    size += len(head) + n
  head = b"\x22" + _size(size)  # Data.dict (4)
  parts.append(head)
  parts.extend(body)
  return len(head) + size


def encode_episode(episode: Mapping[str, Any]) -> tuple[list[bytes], bytes]:
  """A validated episode as envlogger's writer stores it: the serialized ``Data`` of each
  log step (:func:`episode_to_log_steps`) and of the episode metadata (its index
  entry), equal to what ``codec.encode`` makes of them.

  Written straight from the validated fields (``_Tree``), in the layout
  :func:`episode_to_log_steps` builds, without building its steps.
  """
  import dm_env  # pylint: disable=g-import-not-at-top

  steps = episode[S.STEPS]
  # The metadata is serialized once: its index entry, and inside the last step.
  metadata = _serialized(_Tree({k: v for k, v in episode.items() if k != S.STEPS}))
  n = len(steps)
  # (timestep (step_type, reward, discount, observation), action, custom_data)
  records = [_serialized(((dm_env.StepType.FIRST, None, None,
                           _Tree(steps[0][S.OBSERVATION])), None, None))]
  for j in range(1, n):
    prev = steps[j - 1]
    custom = {k: v for k, v in prev.items() if k not in _CORE}
    step_type = dm_env.StepType.MID
    if j == n - 1:
      custom[EPISODE_METADATA_KEY] = _Wired(metadata)
      step_type = dm_env.StepType.LAST
    timestep = (step_type, np.float64(prev[S.REWARD]), np.float64(prev[S.DISCOUNT]),
                _Tree(steps[j][S.OBSERVATION]))
    records.append(_serialized((timestep, _Tree(prev[S.ACTION]), _Tree(custom))))
  return records, metadata


# --------------------------------------------------------------------------------------
# Writer and reader.
# --------------------------------------------------------------------------------------


class RiegeliEpisodeWriter:
  """Appends validated episodes to an envlogger Riegeli log.

  Each writer session opens a new shard directory, so reopening a log directory never
  overwrites what is there.

  Durability: envlogger's flush writes and fsyncs all four shard files (about 0.9 ms
  per flush here, most of the per-episode cost; see docs/benchmarks.md). With the
  default ``flush_every=1`` every episode is on disk when :meth:`write` returns, so a
  kill loses at most the episode being written. ``flush_every=N`` flushes after every
  N-th episode (and on close): N times fewer fsyncs, but a kill may also lose up to
  N - 1 closed, unflushed episodes; :meth:`flush` makes them durable at once.

  Episodes reach envlogger's native writer as serialized ``Data`` messages written by
  :func:`_wire` (equal to what envlogger's own ``RiegeliBackendWriter`` writes through
  ``codec.encode``, at a fraction of the Python cost).
  """

  def __init__(self, log_dir: str | os.PathLike[str], config: S.SchemaConfig, *,
               writer_options: str = DEFAULT_WRITER_OPTIONS,
               max_episodes_per_file: int = 100_000, flush_every: int = 1):
    if flush_every < 1:
      raise ValueError(f"flush_every: expected >= 1, found {flush_every}")
    self._flush_every = flush_every
    self._unflushed = 0
    _compat.patch_numpy_for_envlogger()
    from envlogger.backends.python import riegeli_dataset_writer  # pylint: disable=g-import-not-at-top
    from envlogger.converters import codec  # pylint: disable=g-import-not-at-top

    self.log_dir = os.fspath(log_dir)
    os.makedirs(self.log_dir, exist_ok=True)
    # envlogger's native writer, without its Python wrapper (RiegeliBackendWriter): the
    # wrapper encodes with codec.encode (see _wire) and logs, not raises, a failed init.
    self._writer = riegeli_dataset_writer.RiegeliDatasetWriter()
    self._writer.init(data_dir=self.log_dir,
                      metadata=codec.encode({SCHEMA_KEY: config.to_json()}),
                      max_episodes_per_shard=max_episodes_per_file,
                      writer_options=writer_options)
    if _SerializedData.DESCRIPTOR is None:
      from envlogger.proto import storage_pb2  # pylint: disable=g-import-not-at-top

      _SerializedData.DESCRIPTOR = storage_pb2.Data.DESCRIPTOR
    self._message = _SerializedData  # how serialized bytes reach the native writer
    self._closed = False

  def write(self, episode: Mapping[str, Any]) -> None:
    """Writes one validated episode (flushed to disk per ``flush_every``)."""
    self.write_encoded(*encode_episode(episode))

  def write_encoded(self, records: list[bytes], metadata: bytes) -> None:
    """Writes one episode as :func:`encode_episode` returned it."""
    for j, record in enumerate(records):
      self._add(record, is_new_episode=(j == 0))
    self._set_episode_metadata(metadata)
    self._unflushed += 1
    if self._unflushed >= self._flush_every:
      self.flush()

  def _add(self, data: bytes, is_new_episode: bool) -> None:
    try:
      ok = self._writer.add_step(self._message(data), is_new_episode)
    except TypeError:
      if self._message is _data_message:
        raise
      self._message = _data_message  # the binding wants a real message: parse once
      ok = self._writer.add_step(self._message(data), is_new_episode)
    if not ok:
      raise RuntimeError(f"{self.log_dir}: envlogger's Riegeli writer failed to add a step "
                         "(its log lines, shown with RLDS_LM_VERBOSE=1, say why)")

  def _set_episode_metadata(self, data: bytes) -> None:
    try:
      self._writer.set_episode_metadata(self._message(data))
    except TypeError:
      if self._message is _data_message:
        raise
      self._message = _data_message
      self._writer.set_episode_metadata(self._message(data))

  def flush(self) -> None:
    """Writes every episode written so far to disk; with nothing new since the last
    flush it makes no native call (and envlogger logs no "Empty steps")."""
    if self._unflushed and not self._closed:
      self._writer.flush()
    self._unflushed = 0

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._unflushed = 0
      self._writer.close()


# --------------------------------------------------------------------------------------
# The writer process: envlogger's writer off the caller's path.
# --------------------------------------------------------------------------------------

WRITER_LOCK = ".rlds_lm_writers.lock"  # held (shared) by every live writer process
DEFAULT_MAX_UNFLUSHED = 64  # the process writer's bound: see ProcessEpisodeWriter
FLUSH_DELAY = 0.005  # s: the writer process flushes once its pipe stays empty this long

# Frames from the recording process to its writer (all integers little-endian):
#   episode: b"E" seq:u64 records:u32 id_len:u32, then records + 1 sizes (u32), the
#            episode id (utf-8), each record's bytes, the metadata's bytes;
#   flush:   b"F" seq:u64 (answered with a durable ack once flushed);
#   close:   b"C" (the writer flushes, closes its files and exits).
# Frames back: b"D" seq:u64 (every episode up to seq is flushed, i.e. durable);
#              b"X" seq:u64 size:u32 message (writing episode seq failed; the writer exits).
_EPISODE_HEAD = struct.Struct("<cQII")
_SEQ = struct.Struct("<cQ")
_ERROR_HEAD = struct.Struct("<cQI")
_PIPE_SIZE = 1 << 20  # the pipe's kernel buffer, if the system allows (F_SETPIPE_SZ)
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not exported before Python 3.10


def wait_for_writers(log_dir: str | os.PathLike[str], timeout: float | None = None) -> bool:
  """Waits until no writer process is writing to ``log_dir``; False after ``timeout``
  seconds if one still is (``None``: wait as long as it takes).

  A :class:`ProcessEpisodeWriter`'s process outlives a recording process killed with
  SIGKILL for as long as it needs to write what the pipe held and close the files; a
  reader that must see everything (a test, a restart) waits here first. A live
  writer (a Recorder still open) holds the directory until it is closed.
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  path = os.path.join(os.fspath(log_dir), WRITER_LOCK)
  if not os.path.exists(path):
    return True
  deadline = None if timeout is None else time.monotonic() + timeout
  with open(path, "rb") as f:
    while True:
      try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline else 0))
      except BlockingIOError:
        if time.monotonic() >= deadline:
          return False
        time.sleep(0.01)
        continue
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
      return True


class ProcessEpisodeWriter:
  """:class:`RiegeliEpisodeWriter` in a writer process fed through a pipe.

  The recording process encodes each episode (:func:`encode_episode`) and writes its
  bytes into the pipe; the writer process (started once, with the writer) hands them to
  envlogger's native writer and flushes once the pipe has stayed empty for
  ``FLUSH_DELAY`` (5 ms), or after ``max_unflushed // 2`` episodes when it does not.
  The log is :class:`RiegeliEpisodeWriter`'s, in fewer and larger Riegeli chunks; the
  dataset published from it is the same, record for record.

  Guarantees:

  * When :meth:`write` returns, the episode's bytes are in the kernel's pipe: a SIGKILL
    of the recording process loses none of them. The writer process reads the pipe to
    its end, writes, flushes, closes the files and exits (it ignores SIGINT and SIGTERM,
    which reach a whole process group; it exits when the pipe closes).
    :func:`wait_for_writers` waits for it.
  * A SIGKILL of both processes (or a power cut) loses at most ``max_unflushed``
    episodes whose :meth:`write` had returned: :meth:`write` blocks while that many are
    not yet known to be flushed.
  * :meth:`flush` returns once every episode written before it is flushed to disk.
  * A failure in the writer process (or its death) raises ``RuntimeError`` on the next
    call, naming the first episode not known to be on disk.
  * :meth:`close` waits for the writer process to exit: none is left behind.

  The writer process sees the pipe close when every copy of its write end is closed: a
  recording process that forks children (``multiprocessing`` with ``fork``) shares it
  with them, and after a SIGKILL the writer then finishes only once they have exited.
  """

  def __init__(self, log_dir: str | os.PathLike[str], config: S.SchemaConfig, *,
               writer_options: str = DEFAULT_WRITER_OPTIONS,
               max_episodes_per_file: int = 100_000,
               max_unflushed: int = DEFAULT_MAX_UNFLUSHED):
    import fcntl  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top

    if max_unflushed < 1:
      raise ValueError(f"max_unflushed: expected >= 1, found {max_unflushed}")
    self.log_dir = os.fspath(log_dir)
    os.makedirs(self.log_dir, exist_ok=True)
    self._max_unflushed = max_unflushed
    # The writer lock: taken here, held by the writer process through the inherited
    # descriptor (flock belongs to the open file), so it is held from the first moment.
    lock = os.open(os.path.join(self.log_dir, WRITER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(lock, fcntl.LOCK_SH)
      package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      env = dict(os.environ)
      env["PYTHONPATH"] = os.pathsep.join(
          [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
      self._proc = subprocess.Popen(
          [sys.executable, "-c", "from rlds_lm import logs; logs._writer_process_main()",
           self.log_dir, writer_options, str(max_episodes_per_file),
           str(max(1, max_unflushed // 2)), config.to_json(), str(lock)],
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
          pass_fds=(lock,))
    finally:
      os.close(lock)
    self.pid = self._proc.pid
    self._out = self._proc.stdin.fileno()
    self._acks = self._proc.stdout.fileno()
    try:
      fcntl.fcntl(self._out, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
      pass  # the system's limit is lower: the default size works, with more blocking
    os.set_blocking(self._acks, False)
    self._ack_buffer = bytearray()
    self._seq = 0  # episodes handed to the writer process
    self._durable = 0  # every episode up to this one is flushed
    self._ids: dict[int, str] = {}  # seq -> episode id, for episodes not yet durable
    self._error: str | None = None
    self._closed = False

  def write(self, episode: Mapping[str, Any]) -> None:
    """Encodes one validated episode and hands it to the writer process."""
    records, metadata = encode_episode(episode)
    self.write_encoded(records, metadata, str(episode.get(S.EPISODE_ID, "")))

  def write_encoded(self, records: list[bytes], metadata: bytes,
                    episode_id: str = "") -> None:
    """Hands one episode, as :func:`encode_episode` returned it, to the writer process."""
    self._check()
    seq = self._seq + 1
    name = episode_id.encode("utf-8")
    head = _EPISODE_HEAD.pack(b"E", seq, len(records), len(name)) + struct.pack(
        f"<{len(records) + 1}I", *[len(r) for r in records], len(metadata)) + name
    self._send([head, *records, metadata])
    self._seq = seq
    self._ids[seq] = episode_id
    self._read_acks(block=False)
    while self._seq - self._durable >= self._max_unflushed and self._error is None:
      self._read_acks(block=True)
    self._check()

  def flush(self) -> None:
    """Returns once every episode written so far is flushed to disk."""
    self._check()
    if self._durable < self._seq:
      self._send([_SEQ.pack(b"F", self._seq)])
      while self._durable < self._seq and self._error is None:
        self._read_acks(block=True)
    self._check()

  def close(self) -> None:
    """Flushes, closes the files and waits for the writer process to exit."""
    if self._closed:
      return
    self._closed = True
    try:
      if self._error is None:
        self._send([b"C"])
    except RuntimeError:
      pass  # the error is reported below
    finally:
      self._proc.stdin.close()
    while self._read_acks(block=True):
      pass
    code = self._proc.wait()
    self._proc.stdout.close()
    if self._error is None and (code != 0 or self._durable < self._seq):
      self._fail(f"the writer process exited with code {code}")
    if self._error is not None:
      raise RuntimeError(self._error)

  def _send(self, parts: list[Any]) -> None:
    try:
      while parts:
        sent = os.writev(self._out, parts)
        while parts and sent >= len(parts[0]):
          sent -= len(parts[0])
          parts.pop(0)
        if sent:
          parts[0] = memoryview(parts[0])[sent:]
    except (BrokenPipeError, OSError) as err:
      self._read_acks(block=False)
      if self._error is None:
        self._fail(f"the writer process is gone ({err})")
      raise RuntimeError(self._error) from None

  def _check(self) -> None:
    if self._closed:
      raise RuntimeError(f"{self.log_dir}: the writer is closed")
    if self._error is not None:
      raise RuntimeError(self._error)

  def _fail(self, why: str, seq: int | None = None) -> None:
    lost = [s for s in sorted(self._ids) if seq is None or s >= seq]
    first = f"episode {self._ids[lost[0]]!r}" if lost and self._ids[lost[0]] else (
        f"episode #{lost[0]}" if lost else "no episode")
    self._error = (f"{self.log_dir}: {why}; {len(lost)} recorded episode(s) are not known "
                   f"to be on disk, from {first} on (pid {self.pid})")

  def _read_acks(self, block: bool) -> bool:
    """Reads the writer's answers; False once the writer process closed its end."""
    import select  # pylint: disable=g-import-not-at-top

    if block:
      select.select([self._acks], [], [])
    try:
      chunk = os.read(self._acks, 1 << 16)
    except BlockingIOError:
      return True
    if not chunk:
      if self._error is None and not self._closed:
        code = self._proc.poll()
        self._fail(f"the writer process exited (code {code}" +
                   (", a signal: its stderr may say why)" if code and code < 0 else ")"))
      return False
    buf = self._ack_buffer
    buf += chunk
    while buf:
      if buf[:1] == b"D" and len(buf) >= _SEQ.size:
        self._durable = max(self._durable, _SEQ.unpack_from(buf)[1])
        for s in [s for s in self._ids if s <= self._durable]:
          del self._ids[s]
        del buf[:_SEQ.size]
      elif buf[:1] == b"X" and len(buf) >= _ERROR_HEAD.size:
        _, seq, size = _ERROR_HEAD.unpack_from(buf)
        if len(buf) < _ERROR_HEAD.size + size:
          break
        message = bytes(buf[_ERROR_HEAD.size:_ERROR_HEAD.size + size]).decode("utf-8",
                                                                             "replace")
        del buf[:_ERROR_HEAD.size + size]
        self._fail(f"the writer process failed: {message}", seq)
      else:
        break
    return True

  def __del__(self):
    # Not closed (an exception in the caller): the writer still writes everything sent.
    proc = getattr(self, "_proc", None)
    if proc is not None and not self._closed:
      try:
        proc.stdin.close()
      except Exception:  # noqa: BLE001 - best effort at interpreter shutdown
        pass


def _writer_process_main() -> None:
  """The writer process of :class:`ProcessEpisodeWriter` (reads frames on stdin)."""
  import select  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pipe's end is the only stop
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  log_dir, options, per_file, flush_at, config_json, _ = sys.argv[1:7]
  flush_at = int(flush_at)
  fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()

  os.set_blocking(fd_out, False)
  owed = False  # a durable ack the full answer pipe refused, sent when the input is idle
  orphan = False  # the recording process is gone: nobody reads answers, keep writing

  def send(data: bytes) -> None:
    nonlocal orphan
    while data and not orphan:
      select.select([], [fd_out], [])
      try:
        data = data[os.write(fd_out, data):]
      except BlockingIOError:
        continue
      except BrokenPipeError:
        orphan = True

  def ack(block: bool) -> None:
    # Acks are cumulative, so one refused while the recording process is busy writing
    # (and not reading them: both pipes full) is sent later instead: no deadlock.
    nonlocal owed, orphan
    if orphan:
      return
    try:
      if block:
        send(_SEQ.pack(b"D", durable))
      else:
        os.write(fd_out, _SEQ.pack(b"D", durable))  # atomic: under PIPE_BUF
      owed = False
    except BlockingIOError:
      owed = True
    except BrokenPipeError:
      orphan = True

  seq = durable = 0
  try:
    writer = RiegeliEpisodeWriter(log_dir, S.SchemaConfig.from_json(config_json),
                                  writer_options=options,
                                  max_episodes_per_file=int(per_file),
                                  flush_every=1 << 62)
  except Exception as err:  # noqa: BLE001 - reported to the recording process
    message = f"cannot open the log: {type(err).__name__}: {err}".encode("utf-8")
    send(_ERROR_HEAD.pack(b"X", 1, len(message)) + message)
    sys.exit(1)

  def flush() -> None:
    nonlocal durable
    if durable < seq:
      writer.flush()
      durable = seq
      ack(block=False)

  buf = bytearray()
  pos = 0
  try:
    while True:
      kind = buf[pos:pos + 1]
      need = 0
      if kind == b"E" and len(buf) - pos >= _EPISODE_HEAD.size:
        _, frame_seq, count, id_len = _EPISODE_HEAD.unpack_from(buf, pos)
        sizes_at = pos + _EPISODE_HEAD.size
        need = _EPISODE_HEAD.size + 4 * (count + 1) + id_len
        if len(buf) - pos >= need:
          sizes = struct.unpack_from(f"<{count + 1}I", buf, sizes_at)
          need += sum(sizes)
        else:
          need += 1  # at least the sizes are missing
        if len(buf) - pos >= need:
          view = memoryview(buf)
          at = sizes_at + 4 * (count + 1) + id_len
          parts = []
          for size in sizes:
            parts.append(bytes(view[at:at + size]))
            at += size
          view.release()
          pos += need
          seq = frame_seq
          writer.write_encoded(parts[:-1], parts[-1])
          if seq - durable >= flush_at:
            flush()
          continue
      elif kind == b"F" and len(buf) - pos >= _SEQ.size:
        pos += _SEQ.size
        flush()
        ack(block=True)
        continue
      elif kind == b"C":
        break
      elif kind and kind not in (b"E", b"F"):
        raise ValueError(f"unknown frame {bytes(kind)!r}")
      # An incomplete frame: flush once the pipe has stayed empty for FLUSH_DELAY
      # (a flush per episode costs the writer more than the episode itself), then wait.
      if (durable < seq or owed) and not select.select([fd_in], [], [], FLUSH_DELAY)[0]:
        flush()
        if owed:
          ack(block=True)
      chunk = os.read(fd_in, max(_PIPE_SIZE, need))
      if not chunk:
        break  # the recording process is gone: what came in full is written
      del buf[:pos]
      pos = 0
      buf += chunk
    flush()
    writer.close()
    ack(block=True)  # the last word: everything up to seq is on disk
  except Exception as err:  # noqa: BLE001 - reported to the recording process
    message = f"{type(err).__name__}: {err}".encode("utf-8")
    try:
      send(_ERROR_HEAD.pack(b"X", max(durable + 1, 1), len(message)) + message)
    except OSError:
      pass
    sys.exit(1)


class _SerializedData:
  """Already serialized envlogger ``Data`` bytes, handed to the native writer as is.

  The writer's binding (pybind11_protobuf) takes a Python message by its descriptor
  and ``SerializeToString()``; this object answers both with the bytes :func:`_wire`
  wrote, so nothing is parsed or serialized again in Python. Where a binding refuses
  it (``TypeError``), the writer falls back to :func:`_data_message`.
  """

  __slots__ = ("_data",)
  DESCRIPTOR: Any = None  # storage_pb2.Data.DESCRIPTOR, set by the first writer

  def __init__(self, data: bytes):
    self._data = data

  def SerializeToString(self, **unused_options: Any) -> bytes:  # pylint: disable=invalid-name
    return self._data

  SerializePartialToString = SerializeToString  # pylint: disable=invalid-name


def _data_message(data: bytes):
  """A parsed ``storage_pb2.Data`` (the fallback of :class:`_SerializedData`)."""
  from envlogger.proto import storage_pb2  # pylint: disable=g-import-not-at-top

  return storage_pb2.Data.FromString(data)


@dataclasses.dataclass
class LogReadStats:
  """What a log read found: complete episodes and what was skipped, with reasons.

  A crash (SIGKILL) leaves at most one ``incomplete_episodes`` per writer session and
  nothing else; every other non-zero count means the files were damaged
  (:attr:`damaged`), and the episodes that survived intact were still read.
  """

  episodes: int = 0  # complete episodes read
  incomplete_episodes: int = 0  # open when the writer died (no LAST step)
  orphan_steps: int = 0  # steps before any FIRST step
  unreadable_steps: int = 0  # steps whose bytes could not be read or decoded (damage)
  damaged_episodes: int = 0  # episodes dropped: a step unreadable or not decodable
  # Episodes that envlogger's episode index lists (by episode_id) but that were not
  # read: for example past the end of a damaged step_offsets file, which holds the
  # only way to address steps. May overlap damaged_episodes.
  indexed_not_read: int = 0
  # Steps present in steps.riegeli that the step offsets do not reach (counted from
  # the Riegeli chunk headers), beyond the last chunk a crash can leave unindexed.
  unreachable_steps: int = 0
  # Shard directories envlogger cannot open (a file missing or damaged); their steps
  # are counted in unreachable_steps. The other shards are read.
  unopenable_shards: int = 0

  @property
  def damaged(self) -> bool:
    """Whether the log files were damaged (more than a crash would leave)."""
    return bool(self.unreadable_steps or self.damaged_episodes or self.orphan_steps
                or self.indexed_not_read or self.unreachable_steps
                or self.unopenable_shards)

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


def read_log_config(log_dir: str | os.PathLike[str]) -> S.SchemaConfig:
  """Reads the :class:`SchemaConfig` stored in a log directory."""
  path = os.path.join(os.fspath(log_dir), "metadata.riegeli")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{log_dir}: not an rlds_lm Riegeli log (no metadata.riegeli)")
  try:
    reader = _open_reader(log_dir)
  except ValueError:  # a damaged shard: the metadata from one that opens
    reader = None
    for shard in _shard_dirs(log_dir):
      with _one_shard(log_dir, shard) as alone:
        try:
          reader = _open_reader(alone)
        except ValueError:
          continue
        metadata = reader.metadata() or {}
        reader.close()
        break
    if reader is None:
      raise
  else:
    try:
      metadata = reader.metadata() or {}
    finally:
      reader.close()
  if SCHEMA_KEY not in metadata:
    raise ValueError(f"{log_dir}: the log metadata has no {SCHEMA_KEY!r}; pass the "
                     "SchemaConfig explicitly (e.g. for a bare EnvLogger log)")
  return S.SchemaConfig.from_json(metadata[SCHEMA_KEY])


def _open_reader(log_dir: str | os.PathLike[str]):
  _compat.patch_numpy_for_envlogger()
  from envlogger.backends import riegeli_backend_reader  # pylint: disable=g-import-not-at-top

  try:
    return riegeli_backend_reader.RiegeliBackendReader(os.fspath(log_dir))
  except RuntimeError as err:  # envlogger's reader opens every shard or none
    raise ValueError(
        f"{log_dir}: cannot open the Riegeli log: {str(err).rstrip('.')}. A file envlogger "
        "needs (metadata.riegeli, or a shard's steps.riegeli / step_offsets.riegeli) is "
        "missing or damaged beyond what read_log can skip") from err


def read_log(log_dir: str | os.PathLike[str], config: S.SchemaConfig | None = None,
             stats: LogReadStats | None = None) -> Iterator[dict[str, Any]]:
  """Yields every complete, intact episode of a Riegeli log, in write order.

  Episodes are rebuilt from the step stream: a FIRST step opens one, a LAST step closes
  it. What cannot be read is skipped and counted in ``stats`` (complete once the
  iterator is exhausted), never raised and never silently dropped:

  * an episode cut short by a crash (no LAST step): ``incomplete_episodes``;
  * a step whose bytes are damaged (e.g. a truncated ``steps.riegeli``):
    ``unreadable_steps``, and its episode is dropped (``damaged_episodes``); the
    episodes before and after it are read;
  * episodes the envlogger index lists that the step stream does not reach (e.g. a
    damaged ``step_offsets.riegeli``): ``indexed_not_read``; steps in
    ``steps.riegeli`` that no offset reaches: ``unreachable_steps`` (a crash between
    the flushes of the two files leaves one episode so: an ``incomplete_episodes``).
  * a shard directory envlogger cannot open at all (a file missing or damaged):
    ``unopenable_shards``; the other shards are read one by one.

  Nothing found in the log is executed or unpickled.
  """
  config = config or read_log_config(log_dir)
  stats = stats if stats is not None else LogReadStats()
  try:
    reader = _open_reader(log_dir)
  except ValueError:
    # envlogger opens every shard or none: open the shards one by one instead.
    shards = _shard_dirs(log_dir)
    readers = []
    for shard in shards:
      with _one_shard(log_dir, shard) as alone:
        try:
          _open_reader(alone).close()
          readers.append(shard)
        except ValueError:
          pass
    if not readers:  # nothing opens (e.g. a damaged metadata.riegeli): say so
      raise
    for shard in shards:
      with _one_shard(log_dir, shard) as alone:
        if shard not in readers:
          stats.unopenable_shards += 1
          steps = os.path.join(alone, shard, "steps.riegeli")
          if os.path.exists(steps):
            stats.unreachable_steps += sum(_riegeli_chunk_records(steps))
          continue
        yield from _read_with(_open_reader(alone), alone, config, stats)
    return
  yield from _read_with(reader, log_dir, config, stats)


def _shard_dirs(log_dir: str | os.PathLike[str]) -> list[str]:
  """The writer-session shard directories of a log, in write (name) order."""
  return sorted(e.name for e in os.scandir(os.fspath(log_dir)) if e.is_dir())


@contextlib.contextmanager
def _one_shard(log_dir: str | os.PathLike[str], shard: str) -> Iterator[str]:
  """A directory holding only ``shard`` of ``log_dir`` (symbolic links), as a log."""
  with tempfile.TemporaryDirectory(prefix="rlds_lm_shard_") as alone:
    os.symlink(os.path.abspath(os.path.join(os.fspath(log_dir), "metadata.riegeli")),
               os.path.join(alone, "metadata.riegeli"))
    os.symlink(os.path.abspath(os.path.join(os.fspath(log_dir), shard)),
               os.path.join(alone, shard))
    yield alone


def _read_with(reader, log_dir: str | os.PathLike[str], config: S.SchemaConfig,
               stats: LogReadStats) -> Iterator[dict[str, Any]]:
  """:func:`read_log`'s loop over one opened reader (closed at the end)."""
  import dm_env  # pylint: disable=g-import-not-at-top

  try:
    index_metadata = _index_metadata_by_first_step(reader)
    read_ids: set[str] = set()
    current: list[Any] = []
    damaged = False  # the open episode lost a step
    first_index = -1
    for index in range(reader._get_num_steps()):  # pylint: disable=protected-access
      step = _read_step(reader, index)
      if step is None:
        _reset_after_failure(reader)
        stats.unreadable_steps += 1
        current, damaged = [], True
        continue
      step_type = step.timestep.step_type
      if step_type == dm_env.StepType.FIRST:
        if damaged:
          stats.damaged_episodes += 1
        elif current:
          stats.incomplete_episodes += 1
        current, damaged, first_index = [step], False, index
        continue
      if damaged:
        if step_type == dm_env.StepType.LAST:
          stats.damaged_episodes += 1
          damaged = False
        continue
      if not current:
        stats.orphan_steps += 1
        continue
      current.append(step)
      if step_type == dm_env.StepType.LAST:
        try:
          episode = log_steps_to_episode(current, config, index_metadata.get(first_index))
        except Exception:  # noqa: BLE001 - readable bytes that decode to garbage
          stats.unreadable_steps += 1
          stats.damaged_episodes += 1
        else:
          stats.episodes += 1
          read_ids.add(episode[S.EPISODE_ID])
          yield episode
        current = []
    if damaged:
      stats.damaged_episodes += 1
    elif current:
      stats.incomplete_episodes += 1
    stats.indexed_not_read += len(_indexed_ids(index_metadata) - read_ids)
    total, crash_tails, crash_steps = _steps_in_files(log_dir)
    unreachable = total - reader._get_num_steps()  # pylint: disable=protected-access
    if unreachable > 0:
      stats.incomplete_episodes += crash_tails
      stats.unreachable_steps += max(0, unreachable - crash_steps)
  finally:
    reader.close()


# Riegeli/records layout (google/riegeli doc/riegeli_records_file_format.md): 64 KiB
# blocks, each starting with a 24-byte block header; chunks with a 40-byte header.
_BLOCK = 1 << 16
_BLOCK_HEADER = 24
_USABLE = _BLOCK - _BLOCK_HEADER
_CHUNK_HEADER = 40
_RECORD_CHUNKS = (0x72, 0x74)  # simple, transposed
_CHUNK_TYPES = (0x73, 0x6D, 0x70) + _RECORD_CHUNKS  # + signature, metadata, padding


def _chunk_end(begin: int, data_size: int, num_records: int) -> int:
  """Where a chunk starting at ``begin`` ends (the format's chunk_end formula)."""
  size = _CHUNK_HEADER + data_size
  overhead_blocks = (size + (begin + _USABLE - 1) % _BLOCK) // _USABLE
  with_block_headers = begin + size + overhead_blocks * _BLOCK_HEADER
  at_least = begin + num_records  # a record's position is chunk begin + its index
  remaining_in_block = _BLOCK - 1 - (at_least + _BLOCK - 1) % _BLOCK
  at_least += max(0, remaining_in_block - (_USABLE - 1))
  return max(with_block_headers, at_least)


def _riegeli_chunk_records(path: str) -> list[int]:
  """Records per complete record chunk of a Riegeli file, from the chunk headers only.

  Stops at the first chunk that is cut short or whose header makes no sense (the
  hashes are not checked here: the counts only detect steps the offsets miss).
  """
  counts: list[int] = []
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    begin = 0
    while begin < size:
      header = bytearray()
      pos = begin
      while len(header) < _CHUNK_HEADER:
        if pos % _BLOCK == 0:
          pos += _BLOCK_HEADER
        f.seek(pos)
        part = f.read(min(_CHUNK_HEADER - len(header), _BLOCK - pos % _BLOCK))
        if not part:
          return counts
        header += part
        pos += len(part)
      data_size = int.from_bytes(header[8:16], "little")
      chunk_type = header[24]
      num_records = int.from_bytes(header[25:32], "little")
      end = _chunk_end(begin, data_size, num_records)
      if chunk_type not in _CHUNK_TYPES or end > size:
        return counts
      if chunk_type in _RECORD_CHUNKS:
        counts.append(num_records)
      begin = end
  return counts


def _steps_in_files(log_dir: str | os.PathLike[str]) -> tuple[int, int, int]:
  """(steps in every steps.riegeli, shards whose offsets lack exactly the last steps
  chunk, the steps of those chunks): the last two are what a crash between the
  flushes of the two files leaves."""
  total = crash_tails = crash_steps = 0
  for entry in sorted(os.scandir(os.fspath(log_dir)), key=lambda e: e.name):
    steps = os.path.join(entry.path, "steps.riegeli")
    if not entry.is_dir() or not os.path.exists(steps):
      continue
    chunks = _riegeli_chunk_records(steps)
    total += sum(chunks)
    # One steps chunk and one offsets record (all its steps' positions) per flush.
    offsets = os.path.join(entry.path, "step_offsets.riegeli")
    flushes = sum(_riegeli_chunk_records(offsets)) if os.path.exists(offsets) else 0
    if chunks and len(chunks) - flushes == 1:
      crash_tails += 1
      crash_steps += chunks[-1]
  return total, crash_tails, crash_steps


def _read_step(reader, index: int):
  """The ``index``-th log step, or None where its bytes are missing or damaged."""
  try:
    return reader._get_nth_step(index)  # pylint: disable=protected-access
  except Exception:  # noqa: BLE001 - Riegeli gives None (TypeError), protobuf DecodeError
    return None


def _reset_after_failure(reader) -> None:
  """Riegeli's reader stays failed after a damaged chunk; a clone (it shares the step
  offsets, 10 us) reads the intact chunks after it."""
  failed = reader._reader  # pylint: disable=protected-access
  reader._reader = failed.clone()  # pylint: disable=protected-access
  failed.close()


def _indexed_ids(index_metadata: Mapping[int, Any]) -> set[str]:
  out = set()
  for metadata in index_metadata.values():
    episode_id = metadata.get(S.EPISODE_ID) if isinstance(metadata, Mapping) else None
    if isinstance(episode_id, np.ndarray):
      episode_id = episode_id.item()
    if isinstance(episode_id, bytes):
      episode_id = episode_id.decode("utf-8", "replace")
    if isinstance(episode_id, str) and episode_id:
      out.add(episode_id)
  return out


def _index_metadata_by_first_step(reader) -> dict[int, Any]:
  """Envlogger's indexed episode metadata, keyed by the episode's first step index."""
  out = {}
  try:
    metadata = reader.episode_metadata()
    for i in range(len(metadata)):
      info = reader._get_nth_episode_info(i)  # pylint: disable=protected-access
      out[int(info.start)] = metadata[i]
  except Exception:  # noqa: BLE001 - the index is optional: steps carry what we need
    return out
  return out
