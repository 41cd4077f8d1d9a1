"""Reading published datasets without TensorFlow: random access, Grain, token view.

Everything here runs where only ``tensorflow-datasets``, ``array-record``, ``grain`` and
NumPy are installed (GPU/TPU hosts with JAX alone): no module imported here imports
TensorFlow. Opening a dataset reads JSON (``dataset_info.json``, ``features.json``,
``metadata.json``) and record files; nothing in the dataset directory is executed or
unpickled.

For tf.data and ``rlds.transformations`` see :mod:`rlds_lm.transforms`. Training batches
(:func:`grain_batches`) are gathered from the dataset's training view (:mod:`rlds_lm.view`)
when it has one; :mod:`rlds_lm.loading` loads them in worker processes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import integrity
from rlds_lm import publish as P
from rlds_lm import schema as S
from rlds_lm import view as V

# The columnar training view (rlds_lm.view) that grain_batches and the trainers read.
open_training_view = V.open_view
TrainingView = V.TrainingView


def open_builder(path: str | os.PathLike[str], *, check: bool = True):
  """``tfds.builder_from_directory`` on a published dataset directory, checked.

  With ``check`` (the default) the cheap integrity checks run first (schema files agree,
  shards present with the record counts ``dataset_info.json`` gives; see
  :mod:`rlds_lm.integrity`), and the builder's ``as_data_source`` returns sources whose
  read errors name the file and record.

  Raises:
    rlds_lm.integrity.IntegrityError: when the dataset's files are damaged or disagree.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder_from_directory(os.fspath(path))
  if check:
    integrity.check_on_open(builder)
    unchecked = builder.as_data_source

    def as_data_source(split=None, *args, **kwargs):
      source = unchecked(split, *args, **kwargs)
      return (integrity.checked_source(builder, split, source) if isinstance(split, str)
              else source)

    builder.as_data_source = as_data_source
  return builder


def schema_config(builder) -> S.SchemaConfig:
  """The :class:`SchemaConfig` stored with a published dataset."""
  metadata = builder.info.metadata or {}
  if P.METADATA_SCHEMA not in metadata:
    raise ValueError(f"{builder.data_dir}: not an rlds_lm dataset "
                     f"(metadata.json has no {P.METADATA_SCHEMA!r})")
  return S.SchemaConfig.from_json(metadata[P.METADATA_SCHEMA])


def dataset_lineage(builder) -> dict[str, Any]:
  metadata = builder.info.metadata or {}
  return json.loads(metadata.get(P.METADATA_LINEAGE, "{}"))


def data_source(path: str | os.PathLike[str], split: str = "train"):
  """Random-access source of episodes (array_record); items decode to numpy dicts."""
  return open_builder(path).as_data_source(split, file_format=P.ARRAY_RECORD)


def tfrecord_records(path: str | os.PathLike[str], *, expected: int | None = None):
  """Yields the records of a TFRecord file (pure Python, no TensorFlow), checked.

  A TFRecord is ``uint64 length, uint32 masked crc(length), data, uint32 masked
  crc(data)``, little-endian; both CRCs are verified, and with ``expected`` (the shard's
  count in ``dataset_info.json``) so is the record count
  (:func:`rlds_lm.integrity.tfrecord_records`). Local paths need no TensorFlow; URLs
  (``gs://...``) are read through ``tf.io.gfile``.

  Raises:
    rlds_lm.integrity.IntegrityError: naming the file, record and byte offset.
  """
  return integrity.tfrecord_records(path, expected=expected)


def canonical_example(raw: bytes) -> bytes:
  """A serialised tf.train.Example, re-serialised with its feature map in key order.

  TFDS (and ``tf.train.Example``) write the map in hash order, which differs between
  processes: the same episode gives the same bytes only after this (about 10 us).
  No TensorFlow: TFDS's copy of the proto.
  """
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  return tf_example_pb2.Example.FromString(raw).SerializeToString(deterministic=True)


def iter_records(path: str | os.PathLike[str], split: str = "train"):
  """``(count, iterator of decoded records)`` of a split, from array_record when the
  dataset has it, else from its tfrecord shards (pipeline stage outputs)."""
  builder = open_builder(path)
  formats = [builder.info.file_format.value if builder.info.file_format else P.TFRECORD]
  formats += [f.value for f in builder.info.alternative_file_formats]
  if split not in builder.info.splits:
    raise ValueError(f"{path} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits.keys())}")
  if P.ARRAY_RECORD in formats:
    source = builder.as_data_source(split, file_format=P.ARRAY_RECORD)
    return len(source), (source[i] for i in range(len(source)))
  features = builder.info.features
  files = [os.path.join(os.fspath(path), name)
           for name in builder.info.splits[split].filenames]
  count = builder.info.splits[split].num_examples
  lengths = builder.info.splits[split].shard_lengths
  return count, (features.deserialize_example_np(raw)
                 for name, length in zip(files, lengths)
                 for raw in tfrecord_records(name, expected=length))


def _to_python(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, Mapping):
    return {k: _to_python(v) for k, v in value.items()}
  if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
    return np.asarray([_to_python(v) for v in value.tolist()], dtype=object)
  return value


def plain_record(record: Mapping[str, Any]) -> dict[str, Any]:
  """A decoded non-episode record (a prompt, say) as plain Python values: ``str`` for
  text, lists for arrays and sequences, Python numbers for scalars."""
  return {k: _plain(v) for k, v in record.items()}


def _plain(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.ndarray):
    if value.dtype.kind in "OS":
      return [_plain(v) for v in value.tolist()]
    return value.tolist() if value.ndim else value.item()
  if isinstance(value, np.generic):
    return value.item()
  return value


def materialize(record: Mapping[str, Any]) -> dict[str, Any]:
  """Turns a decoded record (lazy steps, bytes strings) into a plain episode dict.

  The result has the canonical in-memory shape: a list of step dicts, ``str`` text.
  """
  episode = {k: _to_python(v) for k, v in record.items() if k != S.STEPS}
  episode[S.STEPS] = [_to_python(record[S.STEPS][i]) for i in range(len(record[S.STEPS]))]
  return episode


# --------------------------------------------------------------------------------------
# Token-level view.
# --------------------------------------------------------------------------------------

TOKEN_POSITION = "position"  # int32 []: index of this token in the whole sequence
TOKEN_PREV = "prev_token"  # int32 []: the token before it (-1 at the very start)
TOKEN_TURN = "turn"  # int32 []: index of the turn-level step it came from


def token_view(episode: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The token-level MDP of a turn-level rollout: one RLDS step per action token.

  The whole sequence is the concatenation, turn by turn, of observation tokens and
  action tokens. Token step ``j`` has observation ``{position, prev_token, turn}``
  (the state is the sequence before ``position``), action = the token id, reward =
  its per-token reward plus, on the last token of a turn, the turn's reward; the turn's
  discount sits on its last token (1.0 elsewhere).
  ``action_logprob``, ``thinking`` and (if present) the teacher row come along. A final
  step with the final observation and no valid action (action 0) closes the episode,
  as RLDS requires.
  """
  steps = episode[S.STEPS]
  out: list[dict[str, Any]] = []
  position = 0
  prev = -1
  n = len(steps)
  terminal = bool(steps[-1][S.IS_TERMINAL])
  for t, step in enumerate(steps[:-1]):
    obs_tokens = np.asarray(step[S.OBSERVATION][S.OBS_TOKENS])
    if obs_tokens.size:
      position += obs_tokens.size
      prev = int(obs_tokens[-1])
    tokens = np.asarray(step[S.ACTION][S.ACT_TOKENS])
    length = tokens.size
    token_rewards = np.asarray(step[S.TOKEN_REWARDS], np.float32)
    teacher = step.get(S.TEACHER)
    for j in range(length):
      reward = float(token_rewards[j])
      if j == length - 1:
        reward = float(np.float32(reward) + np.float32(step[S.REWARD]))
      token_step = {
          S.OBSERVATION: {TOKEN_POSITION: position, TOKEN_PREV: prev, TOKEN_TURN: t},
          S.ACTION: int(tokens[j]),
          S.REWARD: np.float32(reward),
          S.DISCOUNT: np.float32(step[S.DISCOUNT] if j == length - 1 else 1.0),
          S.IS_FIRST: not out,
          S.IS_LAST: False,
          S.IS_TERMINAL: False,
          "action_logprob": np.float32(step[S.ACTION_LOGPROBS][j]),
          "thinking": bool(step[S.ACTION][S.ACT_THINKING_MASK][j]),
      }
      if teacher is not None:
        token_step[S.TEACHER] = {k: np.asarray(v)[j] for k, v in teacher.items()}
      out.append(token_step)
      position += 1
      prev = int(tokens[j])
  final_tokens = np.asarray(steps[-1][S.OBSERVATION][S.OBS_TOKENS])
  if final_tokens.size:
    position += final_tokens.size
    prev = int(final_tokens[-1])
  final = {
      S.OBSERVATION: {TOKEN_POSITION: position, TOKEN_PREV: prev, TOKEN_TURN: n - 1},
      S.ACTION: 0, S.REWARD: np.float32(0.0), S.DISCOUNT: np.float32(1.0),
      S.IS_FIRST: not out, S.IS_LAST: True, S.IS_TERMINAL: terminal,
      "action_logprob": np.float32(0.0), "thinking": False,
  }
  if steps[0].get(S.TEACHER) is not None:
    final[S.TEACHER] = {k: np.zeros(np.asarray(v).shape[1:], np.asarray(v).dtype)
                        for k, v in steps[0][S.TEACHER].items()}
  out.append(final)
  return out


# --------------------------------------------------------------------------------------
# Training sequences and padded batches.
# --------------------------------------------------------------------------------------

# The sequence keys (schema.SEQ_*; the per-token ones are declared with their fields in
# schema.step_specs, see schema.token_fields).
SEQ_TOKENS = S.SEQ_TOKENS  # int32 [L]: prompt and completion tokens, padded with pad_id
SEQ_LOSS_MASK = S.SEQ_LOSS_MASK  # bool [L]: True on action (model) tokens
SEQ_LOGPROBS = S.SEQ_BEHAVIOUR_LOGPROBS  # float32 [L]: behaviour log-probs (0 off-action)
SEQ_TOPK_IDS = S.SEQ_TEACHER_TOPK_IDS  # int32 [L, K]
SEQ_TOPK_LOGPROBS = S.SEQ_TEACHER_TOPK_LOGPROBS  # float32 [L, K]
SEQ_REWARD = S.SEQ_REWARD  # float32 []: sum of step rewards
SEQ_REWARDS = S.SEQ_REWARDS  # float32 [R]: named rewards, each summed over the steps

# What a decoder produces unless told otherwise (with `teacher_top_k`, the top-k too).
_DEFAULT_KEYS = (S.SEQ_TOKENS, S.SEQ_BEHAVIOUR_LOGPROBS, S.SEQ_TEACHER_TOPK_IDS,
                 S.SEQ_TEACHER_TOPK_LOGPROBS)


def sequence_fields(fields: Iterable[S.TokenField] | None = None, *,
                    teacher_top_k: int = 0) -> tuple[S.TokenField, ...]:
  """The per-token fields a decoder writes: ``fields`` (values of
  :func:`rlds_lm.schema.token_fields`) with the action tokens first; by default the action
  tokens and behaviour log-probs, and the teacher top-k when ``teacher_top_k > 0``."""
  if fields is None:
    # Only the widths matter here: a schema storing a top-k of that width.
    table = S.token_fields(S.SchemaConfig(vocab_size=max(teacher_top_k, 1),
                                          teacher_top_k=teacher_top_k))
    fields = [table[key] for key in _DEFAULT_KEYS if key in table]
  elif teacher_top_k:
    raise ValueError("sequence_fields: pass teacher_top_k or fields, not both (the fields "
                     "carry their widths)")
  tokens = S.token_fields(S.SchemaConfig())[S.SEQ_TOKENS]
  by_key = {tokens.key: tokens}
  by_key.update((field.key, field) for field in fields)
  return tuple(by_key.values())


def _empty_sequence(fields: Sequence[S.TokenField], length: int,
                    pad_id: int) -> dict[str, np.ndarray]:
  out = {S.SEQ_TOKENS: np.full(length, pad_id, np.int32),
         S.SEQ_LOSS_MASK: np.zeros(length, bool)}
  for field in fields:
    if field.key != S.SEQ_TOKENS:
      out[field.key] = np.zeros((length,) + field.trailing, field.dtype)
  return out


def episode_to_sequence(record: Mapping[str, Any], max_length: int, *, pad_id: int = 0,
                        teacher_top_k: int = 0, fields: Iterable[S.TokenField] | None = None,
                        reward_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """Flattens one episode into fixed-length training arrays.

  Tokens are the concatenation, turn by turn, of observation and action tokens, cut at
  ``max_length``; each per-token field (:func:`sequence_fields` of ``fields`` and
  ``teacher_top_k``) is placed on its action tokens, 0 elsewhere. ``reward`` sums every
  step's reward (not cut), ``rewards`` each of ``reward_names`` (when given).
  """
  fields = sequence_fields(fields, teacher_top_k=teacher_top_k)
  steps = record[S.STEPS]
  out = _empty_sequence(fields, max_length, pad_id)
  tokens, mask = out[S.SEQ_TOKENS], out[S.SEQ_LOSS_MASK]
  # The reward is the whole episode's, also when its tokens are truncated.
  reward = np.float32(np.sum([np.float32(steps[i][S.REWARD]) for i in range(len(steps))],
                             dtype=np.float32))
  rewards = [np.sum([np.float32(steps[i][S.REWARDS][name]) for i in range(len(steps))],
                    dtype=np.float32) for name in reward_names]
  pos = 0
  for i in range(len(steps)):
    step = steps[i]
    obs = step[S.OBSERVATION][S.OBS_TOKENS]
    take = min(obs.shape[0], max_length - pos)
    tokens[pos:pos + take] = obs[:take]
    pos += take
    take = min(step[S.ACTION][S.ACT_TOKENS].shape[0], max_length - pos)
    if take > 0:
      mask[pos:pos + take] = True
      for field in fields:
        out[field.key][pos:pos + take] = field.get(step)[:take]
      pos += take
    if pos >= max_length:
      break
  out[S.SEQ_REWARD] = reward
  if reward_names:
    out[S.SEQ_REWARDS] = np.asarray(rewards, np.float32)
  return out


def _key(*parts: str) -> str:
  return "/".join(parts)


class RawSequenceDecoder:
  """Serialized episode (tf.train.Example bytes) -> the arrays of
  :func:`episode_to_sequence`, reading only the fields asked for.

  The training fast path (the readers' :func:`grain_batches` and the trainers' input
  pipeline): TFDS' generic decoding materialises every field of every step (texts,
  images, rewards) through Python; this parses the record once and turns the per-step
  byte strings of the wanted per-token arrays into numpy views, laid out by the schema's
  field table (:func:`rlds_lm.schema.token_fields`). Picklable, so Grain worker processes
  can use it. ``episode_to_sequence(materialize(record), ...)`` with the same arguments
  gives the same arrays (tests/test_read.py checks both against an independent
  flattening).

  Args:
    max_length: length ``L`` of the arrays; longer sequences are cut.
    pad_id: token id after the end.
    teacher_top_k: with the default fields, also the teacher top-k of this width.
    fields: the per-token fields to decode (values of :func:`rlds_lm.schema.token_fields`
      of the dataset's config); None: see :func:`sequence_fields`.
    reward_names: named rewards to sum over the steps into ``rewards`` (in this order).
  """

  _OBS = _key(S.STEPS, S.OBSERVATION, S.OBS_TOKENS)
  _ACT = _key(S.STEPS, S.ACTION, S.ACT_TOKENS)
  _REWARD = _key(S.STEPS, S.REWARD)

  def __init__(self, max_length: int, *, pad_id: int = 0, teacher_top_k: int = 0,
               fields: Iterable[S.TokenField] | None = None,
               reward_names: Sequence[str] = ()):
    self.max_length = max_length
    self.pad_id = pad_id
    self.fields = sequence_fields(fields, teacher_top_k=teacher_top_k)
    self.reward_names = tuple(reward_names)
    # Flat feature keys of the serialised example: TFDS joins nested keys with "/".
    self._columns = [(f.key, _key(S.STEPS, *f.path), f.dtype, f.trailing,
                      math.prod(f.trailing)) for f in self.fields]
    self._shapes = {f.key: ((max_length,) + f.trailing, f.dtype) for f in self.fields}
    self._shapes[S.SEQ_LOSS_MASK] = ((max_length,), np.dtype(bool))
    self._rewards = [_key(S.STEPS, S.REWARDS, name) for name in self.reward_names]
    self._token_bytes = self.fields[0].dtype.itemsize  # the action tokens come first

  def __call__(self, raw: bytes) -> dict[str, np.ndarray]:
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

    feature = tf_example_pb2.Example.FromString(raw).features.feature
    if self._OBS not in feature or self._ACT not in feature:
      # Empty bytes parse as an empty Example: refuse it instead of a row of padding.
      raise ValueError(f"not a stored episode ({len(raw)} bytes without the steps' "
                       f"{self._OBS!r} / {self._ACT!r} features): a damaged record")
    length = self.max_length
    # Write each step's arrays straight into the padded outputs: one copy per array.
    out = {key: np.zeros(shape, dtype) for key, (shape, dtype) in self._shapes.items()}
    tokens, mask = out[S.SEQ_TOKENS], out[S.SEQ_LOSS_MASK]
    tokens.fill(self.pad_id)
    columns = [(out[key], feature[name].bytes_list.value, dtype, trailing, width)
               for key, name, dtype, trailing, width in self._columns]
    steps = zip(feature[self._OBS].bytes_list.value, feature[self._ACT].bytes_list.value)
    pos = 0
    for t, (obs, act) in enumerate(steps):
      obs = np.frombuffer(obs, np.int32)
      n = min(obs.size, length - pos)
      tokens[pos:pos + n] = obs[:n]
      pos += n
      n = min(len(act) // self._token_bytes, length - pos)
      if n > 0:  # a turn without action tokens (e.g. the last) adds its observation only
        end = pos + n
        mask[pos:end] = True
        for array, per_step, dtype, trailing, width in columns:
          values = np.frombuffer(per_step[t], dtype, count=n * width)
          array[pos:end] = values.reshape((n,) + trailing) if trailing else values
        pos = end
      if pos >= length:
        break
    out[S.SEQ_REWARD] = np.float32(np.sum(np.asarray(feature[self._REWARD].float_list.value,
                                                     np.float32)))
    if self._rewards:
      out[S.SEQ_REWARDS] = np.asarray(
          [np.sum(np.asarray(feature[key].float_list.value, np.float32))
           for key in self._rewards], np.float32)
    return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


class _Permutation:
  """A seeded bijection of ``[0, n)``, vectorised and O(1) in memory: a balanced Feistel
  network (6 rounds, splitmix64 round function) over the smallest even number of bits
  that holds ``n - 1``, cycle-walked back into range (the domain is less than ``4 n``,
  so about 2 passes on average). The same ``(n, seed, epoch)`` give the same
  permutation on every machine (integer arithmetic only)."""

  ROUNDS = 6

  def __init__(self, n: int, seed: int, epoch: int = 0):
    self.n = n
    self.half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    self.mask = np.uint64((1 << self.half) - 1)
    base = _mix64(np.asarray([int(seed) % 2**64, int(epoch) % 2**64], np.uint64))
    rounds = np.arange(1, self.ROUNDS + 1, dtype=np.uint64)
    self.keys = _mix64(base[0] ^ _mix64(base[1] + rounds * _GOLDEN)).tolist()

  def _encrypt(self, x: np.ndarray) -> np.ndarray:
    half, mask = np.uint64(self.half), self.mask
    hi, lo = x >> half, x & mask
    for key in self.keys:
      hi, lo = lo, hi ^ (_mix64(lo ^ np.uint64(key)) & mask)
    return (hi << half) | lo

  def __call__(self, positions) -> np.ndarray:
    """The images of ``positions`` (ints in ``[0, n)``), as int64."""
    y = self._encrypt(np.asarray(positions, np.uint64))
    outside = np.flatnonzero(y >= self.n)
    while outside.size:  # cycle walking: the cycle through x comes back below n
      y[outside] = self._encrypt(y[outside])
      outside = outside[y[outside] >= self.n]
    return y.astype(np.int64)


class _BatchRecords:
  """Batch ``j`` (of epoch ``epoch``) -> its record indices. Position ``p`` of this
  shard's records (``shard_index, shard_index + shard_count, ...``) holds the record at
  position :class:`_Permutation` ``(records, seed, epoch)(p)`` (``p`` itself without a
  seed); batch ``j`` is positions ``[j * batch_size, (j + 1) * batch_size)``.

  The permutation is computed for a block of consecutive batches at once (about 4,096
  positions; the last block is kept), so a batch costs a slice; memory stays O(block)."""

  BLOCK_POSITIONS = 4096

  def __init__(self, records: int, batch_size: int, shard_index: int, shard_count: int,
               seed: int | None, drop_remainder: bool):
    self.batch_size, self.shard_index, self.shard_count = batch_size, shard_index, shard_count
    self.seed = seed
    self.records = len(range(shard_index, records, shard_count))  # this shard's
    self.batches = (self.records // batch_size if drop_remainder
                    else -(-self.records // batch_size))
    self.block = max(1, self.BLOCK_POSITIONS // max(batch_size, 1))  # batches per block
    self._cache: tuple[tuple[int, int], np.ndarray] | None = None
    self._permutation: tuple[int, _Permutation] | None = None

  def __len__(self) -> int:
    return self.batches

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_cache": None, "_permutation": None}

  def __call__(self, j: int, epoch: int = 0) -> np.ndarray:
    block = j // self.block
    cache = self._cache  # read once: another thread may replace it meanwhile
    if cache is None or cache[0] != (block, epoch):
      first = block * self.block * self.batch_size
      positions = np.arange(first, min(self.records, first + self.block * self.batch_size),
                            dtype=np.int64)
      if self.seed is not None:
        permutation = self._permutation
        if permutation is None or permutation[0] != epoch:
          permutation = self._permutation = (
              epoch, _Permutation(self.records, self.seed, epoch))
        positions = permutation[1](positions)
      cache = self._cache = ((block, epoch),
                             self.shard_index + self.shard_count * positions)
    start = (j - block * self.block) * self.batch_size
    return cache[1][start:start + self.batch_size]


class _DecodedBatch:
  """Record indices -> a padded batch, each record parsed by a
  :class:`RawSequenceDecoder` (the path without a training view)."""

  def __init__(self, source, decoder: RawSequenceDecoder):
    self.source, self.decoder = source, decoder

  def __call__(self, indices, *,
               out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    sequences = [self.decoder(raw) for raw in self.source.__getitems__(indices)]
    batch = {key: np.stack([s[key] for s in sequences]) for key in sorted(sequences[0])}
    if out is None:
      return batch
    result = {}
    for key, value in batch.items():
      result[key] = out[key][:len(indices)]
      result[key][...] = value
    return result


def grain_batches(path: str | os.PathLike[str], *, split: str = "train", batch_size: int,
                  max_length: int, seed: int = 0, shuffle: bool = True,
                  with_teacher: bool = False, pad_id: int = 0, shard_index: int = 0,
                  shard_count: int = 1, drop_remainder: bool = True,
                  training_view: bool = True):
  """A Grain ``MapDataset`` of padded ``[batch, max_length]`` batches (no TensorFlow).

  Each element is a whole batch (a dict of arrays in key order). Deterministic: the same
  dataset, arguments and seed give the same batches. The records are shuffled by a
  seeded bijection of this shard's records (:class:`_Permutation`, computed for blocks
  of batches at once); ``.repeat(n)`` reshuffles each epoch (as Grain's ``repeat`` does
  its shuffles; ``reseed_each_epoch=False`` repeats the first). With ``shard_count > 1``
  each JAX process reads its own interleaved slice of episodes.

  With ``training_view`` (the default) the batches are gathered from the dataset's
  training view (:mod:`rlds_lm.view`, built on first use, rebuilt when stale) by
  :class:`rlds_lm.view.ViewBatcher`. Without a view (``training_view=False``, or none can
  be written) each record is decoded by :class:`RawSequenceDecoder`. The batches are the
  same either way, bit for bit.

  ``for batch in ds`` reads the batches in the calling thread, one after the other
  (Grain's default iteration starts 16 threads per iterator, which cost more than a
  batch on a small host); ``ds[i]``, slices, ``to_iter_dataset(...)``, ``mp_prefetch``
  and :func:`rlds_lm.loading.multiprocess_batches` (whose workers gather straight into
  shared memory) work as on any ``MapDataset``.
  """
  from rlds_lm import _batch_dataset  # pylint: disable=g-import-not-at-top

  builder = open_builder(path)
  config = schema_config(builder)
  k = config.teacher_top_k if with_teacher else 0
  if with_teacher and not k:
    raise ValueError(f"{path}: with_teacher=True but the dataset stores no teacher top-k")
  view = V.open_view(builder, split) if training_view else None
  if view is not None:
    records = len(view)
    keys = [field.key for field in sequence_fields(teacher_top_k=k)]
    make = V.ViewBatcher(view, max_length, pad_id=pad_id, keys=keys)
  else:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    source = builder.as_data_source(
        split, file_format=P.ARRAY_RECORD,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    records = len(source)
    make = _DecodedBatch(source, RawSequenceDecoder(max_length, pad_id=pad_id,
                                                    teacher_top_k=k))
  order = _BatchRecords(records, batch_size, shard_index, shard_count,
                        seed if shuffle else None, drop_remainder)
  if drop_remainder and order.records < batch_size:
    raise ValueError(f"{path}: {order.records} episodes (in shard {shard_index} of "
                     f"{shard_count}) make no full batch of {batch_size}; lower batch_size "
                     f"or pass drop_remainder=False")
  return _batch_dataset.BatchDataset(order, make)


def stack_sequences(sequences) -> dict[str, np.ndarray]:
  """Stacks per-episode arrays (from :func:`episode_to_sequence`) into one batch."""
  return {k: np.stack([s[k] for s in sequences]) for k in sequences[0]}
