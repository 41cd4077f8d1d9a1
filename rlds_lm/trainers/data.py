"""The trainers' input pipeline: published datasets -> fixed-shape ``[batch, length]`` batches.

No TensorFlow, no Grain: records come from the datasets' ``array_record`` files through
``tfds.builder_from_directory(...).as_data_source`` (raw bytes) and are decoded with
:class:`rlds_lm.read.RawSequenceDecoder`, so this runs on GPU / TPU hosts with JAX alone.

**Batch ``i`` is a pure function of (datasets, config, seed, ``i``).** Nothing depends on
what was read before, on worker or thread counts, or on the number of processes:

* Each dataset is an endless stream of *units* (one episode per unit when padding, one
  packed row per unit when packing), epoch after epoch. Epoch ``e`` visits the dataset's
  trainable episodes in the order of a permutation keyed by ``(seed, dataset identity,
  e)`` (a stable argsort of Philox raw output: counter-based, independent of NumPy's
  ``Generator`` algorithms, which NumPy does not promise to keep). Packing then fills rows
  in that order (first fit over a few open rows), so every token of every episode lands
  in exactly one row per epoch.
* Global row slot ``n`` (batch ``i`` holds slots ``i * batch_size ...``) belongs to the
  mixture component chosen by a fixed weighted interleave (the Sainte-Lague sequence of the
  weights, rounded to 1/10000): over every period of ``sum(parts)`` slots each dataset
  gets exactly its share, spread evenly. Its unit index within the dataset follows in
  closed form, so no counter has to be replayed.
* Process ``p`` of ``P`` decodes the contiguous rows ``[p * B / P, (p + 1) * B / P)`` of
  each global batch (the layout of ``jax.make_array_from_process_local_data`` with the
  batch axis sharded over processes); the processes' slices concatenated in process order
  are the single-process global batch.

Resuming is therefore ``{"step": n}``; the state also carries a fingerprint of the
datasets (content identity, not paths), weights and :class:`DataConfig`, and restoring a
state saved by a different pipeline is refused (:class:`StateMismatchError`). The shard
layout is not part of it: a run may resume on a different number of processes.

Episodes marked ``invalid`` and episodes without tokens are never trained on. Finding them
(and, for packing, every episode's length) takes one pass over each dataset at
construction; ``index_cache_dir`` keeps the result for the next run.

Batch contract (``B`` = rows of this process = ``batch_size / shard_count``, ``L`` =
``max_length``, ``M`` = ``max_segments``, ``K`` / ``S`` = teacher top-k / sampled-k width,
``R`` = number of reward names; "per sequence" shapes are ``[B]`` when padding and
``[B, M]`` when packing, slot ``j`` holding the sequence with segment id ``j + 1``):

=========================  ========  =============  =======================================
key                        dtype     shape          meaning
=========================  ========  =============  =======================================
``tokens``                 int32     [B, L]         prompt and completion tokens, turn by
                                                    turn; ``pad_id`` on padding
``loss_mask``              bool      [B, L]         True on action (policy) tokens
``behaviour_logprobs``     float32   [B, L]         behaviour log p(token); 0 off-action
``segment_ids``            int32     [B, L]         1, 2, ... per sequence in the row; 0 on
                                                    padding (always 1 when padding)
``positions``              int32     [B, L]         0, 1, ... restarting in every segment;
                                                    0 on padding
``reward``                 float32   per sequence   sum of the episode's step rewards (the
                                                    whole episode's, also when truncated)
``dataset``                int32     per sequence   index of the dataset in the mixture;
                                                    -1 for an empty slot
``record_index``           int32     per sequence   record of that dataset's split; -1 empty
``rewards``                float32   per seq. + [R] named rewards summed over steps, columns
                                                    in :attr:`DataPipeline.reward_names`
``token_rewards``          float32   [B, L]         per-token rewards; 0 off-action
``thinking_mask``          bool      [B, L]         True on thinking tokens
``teacher_token_logprobs`` float32   [B, L]         teacher log p(token); 0 off-action
``teacher_topk_ids``       int32     [B, L, K]      teacher top-k ids; 0 off-action
``teacher_topk_logprobs``  float32   [B, L, K]      their log-probs; 0 off-action
``teacher_sampled_ids``    int32     [B, L, S]      distinct ids among S teacher draws
``teacher_sampled_counts`` int32     [B, L, S]      draws per id (rows sum to S on action)
=========================  ========  =============  =======================================

The first eight keys are always there; the others when required or available (see
:class:`DataPipeline`). A sequence longer than ``max_length`` is cut at ``max_length``, as
:func:`rlds_lm.read.episode_to_sequence` does; a padded row equals that function's output.

**The packing contract a model must honour** (:func:`attention_mask` and
:func:`target_mask` implement it and work on NumPy and JAX arrays alike):

1. Attention: token ``t`` may attend to token ``u`` only if ``segment_ids[u] ==
   segment_ids[t] > 0`` and ``positions[u] <= positions[t]``. A position-only causal mask
   (``rlds_lm.models.forward``'s ``positions`` / ``valid``) is not enough: it lets a
   segment see the earlier segments of its row.
2. Positions: rotary / absolute position embeddings use ``positions``, not the column.
3. Loss: the logits at ``t`` predict ``tokens[t + 1]`` only when ``segment_ids[t + 1] ==
   segment_ids[t]``; the first token of a segment has no context. Train on
   ``target_mask(loss_mask, segment_ids)`` (``[B, L - 1]``, aligned with
   ``tokens[:, 1:]``).
4. Per-sequence values reach tokens through the segment ids:
   ``reward[b, segment_ids[b, t] - 1]`` for ``segment_ids[b, t] > 0``.

Example::

    pipeline = DataPipeline({"/data/math/1.0.0": 0.7, "/data/chat/1.0.0": 0.3},
                            DataConfig(batch_size=64, max_length=2048, packing=True),
                            require=(S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS),
                            vocab_size=259, tokenizer="byte",
                            shard_index=jax.process_index(),
                            shard_count=jax.process_count())
    it = pipeline.iterator(state=saved.get("data"))  # None: start at step 0
    for step in range(num_steps):
      batch = next(it)
      ...
      saved["data"] = it.get_state()  # JSON: {"step": ..., "fingerprint": ...}
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import fractions
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S

# --------------------------------------------------------------------------------------
# Batch keys (see the module docstring for the contract).
# --------------------------------------------------------------------------------------

# The per-token keys are the training-sequence keys of the schema (schema.SEQ_*), each
# declared with the stored field it comes from (schema.step_specs, schema.token_fields).
TOKENS = S.SEQ_TOKENS  # int32 [B, L]
LOSS_MASK = S.SEQ_LOSS_MASK  # bool [B, L]
BEHAVIOUR_LOGPROBS = S.SEQ_BEHAVIOUR_LOGPROBS  # float32 [B, L]
SEGMENT_IDS = "segment_ids"  # int32 [B, L]: 1.. per sequence in the row, 0 on padding
POSITIONS = "positions"  # int32 [B, L]: position within the segment, 0 on padding
REWARD = S.SEQ_REWARD  # float32, per sequence: sum of step rewards
DATASET = "dataset"  # int32, per sequence: index in the mixture, -1 for an empty slot
RECORD_INDEX = "record_index"  # int32, per sequence: record in its split, -1 when empty
REWARDS = S.SEQ_REWARDS  # float32, per sequence + [R]: named rewards summed over steps
TOKEN_REWARDS = S.SEQ_TOKEN_REWARDS  # float32 [B, L]
THINKING_MASK = S.SEQ_THINKING_MASK  # bool [B, L]
TEACHER_TOKEN_LOGPROBS = S.SEQ_TEACHER_TOKEN_LOGPROBS  # float32 [B, L]
TEACHER_TOPK_IDS = S.SEQ_TEACHER_TOPK_IDS  # int32 [B, L, K]
TEACHER_TOPK_LOGPROBS = S.SEQ_TEACHER_TOPK_LOGPROBS  # float32 [B, L, K]
TEACHER_SAMPLED_IDS = S.SEQ_TEACHER_SAMPLED_IDS  # int32 [B, L, S]
TEACHER_SAMPLED_COUNTS = S.SEQ_TEACHER_SAMPLED_COUNTS  # int32 [B, L, S]

# Every per-token field a rollout step may store, by batch key (the widths do not
# matter here: a schema that stores each kind of teacher data).
_TOKEN_FIELDS = S.token_fields(S.SchemaConfig(teacher_top_k=1, teacher_sampled_k=1))
# Schema field names a trainer may `require` (or ask for as `optional`), and the batch
# key each one fills: the per-token fields, the primary reward and the named rewards
# (`rewards/<name>` asks for one of them).
_FIELD_KEYS = {**{f.name: key for key, f in _TOKEN_FIELDS.items()},
               S.REWARD: REWARD, S.REWARDS: REWARDS}
# In every batch: the action / observation tokens, behaviour log-probs and the reward.
_ALWAYS = (S.ACT_TOKENS, S.ACTION_LOGPROBS, S.REWARD)
FIELDS = tuple(_FIELD_KEYS)  # what `require` / `optional` accept
# Keys copied token by token from a decoded sequence into its place in a row.
_PER_TOKEN_KEYS = (LOSS_MASK, *_TOKEN_FIELDS)

# Changing any of these changes the batches: they are part of the state fingerprint.
_ALGORITHM = "rlds_lm.trainers.data/3"
_WEIGHT_RESOLUTION = 10_000  # mixture weights are rounded to multiples of 1/10000
_OPEN_ROWS = 8  # packing: rows still open for first fit
_SCAN_CHUNK = 1024  # records read per call while indexing a dataset
_PLANS_KEPT = 4  # epoch plans cached per dataset

_OBS_TOKENS_KEY = "/".join((S.STEPS, S.OBSERVATION, S.OBS_TOKENS))
_ACT_TOKENS_KEY = "/".join((S.STEPS, S.ACTION, S.ACT_TOKENS))


# One directory, a list of them (equal weights) or {directory: weight}.
Datasets = (str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
            | Mapping[str | os.PathLike[str], float])


class DataMismatchError(ValueError):
  """The datasets do not fit the trainer or each other (missing fields, vocabularies)."""


class StateMismatchError(ValueError):
  """A saved iterator state belongs to another pipeline (datasets or config differ)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Everything that decides the batches, besides the datasets and their weights.

  Attributes:
    batch_size: rows of the *global* batch, over all processes.
    max_length: tokens per row ``L``; longer sequences are cut.
    packing: False: one sequence per row, padded. True: several sequences per row.
    max_segments: packing: at most this many sequences per row (the width ``M`` of the
      per-sequence arrays).
    seed: shuffling seed.
    shuffle: False visits each dataset in record order every epoch (evaluation).
    split: the split to read (TFDS split syntax, e.g. ``"train[:90%]"``).
    pad_id: token id of padding.
  """

  batch_size: int
  max_length: int
  packing: bool = False
  max_segments: int = 16
  seed: int = 0
  shuffle: bool = True
  split: str = "train"
  pad_id: int = 0

  def __post_init__(self):
    for name in ("batch_size", "max_length", "max_segments"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"DataConfig.{name}: expected an integer >= 1, found {value!r}")
    if not isinstance(self.seed, (int, np.integer)):
      raise ValueError(f"DataConfig.seed: expected an integer, found {self.seed!r}")


# --------------------------------------------------------------------------------------
# Helpers for the model side of the packing contract (NumPy or JAX arrays).
# --------------------------------------------------------------------------------------


def attention_mask(segment_ids, positions):
  """bool ``[B, L, L]``: may token ``t`` (axis 1) attend to token ``u`` (axis 2)?

  Same non-padding segment and not later in it. Works on NumPy and JAX arrays (only
  indexing and operators), so a model can use it as it is.
  """
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
  return same & (positions[:, None, :] <= positions[:, :, None])


def target_mask(loss_mask, segment_ids):
  """bool ``[B, L - 1]``: train the logits at ``t`` on ``tokens[t + 1]``?

  True where ``tokens[t + 1]`` is an action token of the same segment as ``tokens[t]``.
  """
  return loss_mask[:, 1:] & (segment_ids[:, 1:] == segment_ids[:, :-1])


# --------------------------------------------------------------------------------------
# Mixing: a fixed weighted interleave of row slots, in closed form.
# --------------------------------------------------------------------------------------


def _weight_parts(weights: Sequence[float]) -> tuple[int, ...]:
  """Integer shares of each dataset per period (weights rounded to 1/10000)."""
  total = math.fsum(weights)
  parts = [max(1, round(w / total * _WEIGHT_RESOLUTION)) for w in weights]
  divisor = math.gcd(*parts)
  return tuple(p // divisor for p in parts)


class _Mixture:
  """Row slot ``n`` -> (dataset, unit index within the dataset), without replay.

  One period of ``sum(parts)`` slots holds ``parts[d]`` slots of dataset ``d``, ordered
  by the Sainte-Lague sequence (the ``k``-th slot of ``d`` sits at ``(k + 1/2) /
  parts[d]``), so each dataset's slots are spread evenly; every period repeats it.
  """

  def __init__(self, parts: Sequence[int]):
    self.parts = np.asarray(parts, np.int64)
    order = sorted((fractions.Fraction(2 * k + 1, 2 * m), d, k)
                   for d, m in enumerate(parts) for k in range(m))
    self.period = len(order)
    self._dataset = np.asarray([d for _, d, _ in order], np.int64)
    self._rank = np.asarray([k for _, _, k in order], np.int64)

  def locate(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cycle, offset = np.divmod(slots, self.period)
    dataset = self._dataset[offset]
    return dataset, cycle * self.parts[dataset] + self._rank[offset]


# --------------------------------------------------------------------------------------
# One dataset: identity, index of trainable episodes, epoch plans.
# --------------------------------------------------------------------------------------


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


def _index(path: str, split: str, identity: str, source, cache_dir: str | None) -> np.ndarray:
  """:func:`_scan`, cached in memory and, given ``cache_dir``, on disk by identity."""
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
    lengths = _scan(source)
  if file and not os.path.exists(file):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
      np.save(f, lengths, allow_pickle=False)
    os.replace(tmp, file)  # atomic: concurrent processes never read half a file
  with _INDEX_LOCK:
    _INDEX_CACHE[key] = lengths
  return lengths


def _philox_key(*parts: Any) -> int:
  """128-bit Philox key from named parts (stable across machines and versions)."""
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
  return int.from_bytes(digest[:16], "little")


def _pack(lengths: Sequence[int], capacity: int, max_segments: int) -> list[list[int]]:
  """Rows of positions into ``lengths``: first fit over the last few open rows, in order.

  A row closes when it is full (``capacity`` tokens or ``max_segments`` sequences) or
  when it is the oldest of more than ``_OPEN_ROWS`` open rows; rows come out in closing
  order, the still-open ones last.
  """
  closed: list[list[int]] = []
  open_rows: list[list[Any]] = []  # [free tokens, members]
  for i, n in enumerate(lengths):
    for j, row in enumerate(open_rows):
      if row[0] >= n:
        row[0] -= n
        row[1].append(i)
        if row[0] == 0 or len(row[1]) == max_segments:
          closed.append(open_rows.pop(j)[1])
        break
    else:
      if n == capacity or max_segments == 1:
        closed.append([i])
        continue
      open_rows.append([capacity - n, [i]])
      if len(open_rows) > _OPEN_ROWS:
        closed.append(open_rows.pop(0)[1])
  closed.extend(row[1] for row in open_rows)
  return closed


@dataclasses.dataclass
class _Plan:
  """One epoch of one dataset: unit ``u`` is ``records[offsets[u]:offsets[u + 1]]``."""

  offsets: np.ndarray
  records: np.ndarray

  @property
  def units(self) -> int:
    return len(self.offsets) - 1


class _Dataset:
  """A published dataset opened for training: schema, raw records, trainable episodes."""

  def __init__(self, path: str, split: str):
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

  def __repr__(self) -> str:
    return f"{self.path} ({self.name})"


class _Stream:
  """The endless unit stream of one dataset under one config (thread-safe)."""

  def __init__(self, dataset: _Dataset, lengths: np.ndarray, config: DataConfig):
    self._dataset = dataset
    self._config = config
    self.eligible = np.flatnonzero(lengths > 0)
    self.lengths = np.minimum(lengths, config.max_length)  # per record, after the cut
    self._plans: collections.OrderedDict[int, _Plan] = collections.OrderedDict()
    self._starts = [0]  # packing: first unit of each epoch planned so far
    self._lock = threading.RLock()

  def _order(self, epoch: int) -> np.ndarray:
    n = self.eligible.size
    if not self._config.shuffle:
      return self.eligible
    key = _philox_key(_ALGORITHM, "permutation", self._config.seed,
                      self._dataset.identity, epoch)
    raw = np.random.Philox(key=key).random_raw(n)
    return self.eligible[np.argsort(raw, kind="stable")]

  def plan(self, epoch: int) -> _Plan:
    with self._lock:
      if epoch in self._plans:
        self._plans.move_to_end(epoch)
        return self._plans[epoch]
      order = self._order(epoch)
      if self._config.packing:
        rows = _pack(self.lengths[order].tolist(), self._config.max_length,
                     self._config.max_segments)
        offsets = np.cumsum([0] + [len(r) for r in rows])
        members = np.fromiter((i for r in rows for i in r), np.int64, count=order.size)
        plan = _Plan(offsets, order[members])
      else:
        plan = _Plan(np.arange(order.size + 1), order)
      self._plans[epoch] = plan
      while len(self._plans) > _PLANS_KEPT:
        self._plans.popitem(last=False)
      return plan

  def epoch_of(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, unit within the epoch) of each unit index of the stream."""
    if not self._config.packing:
      return np.divmod(units, self.eligible.size)
    # Rows per epoch vary with the permutation: plan epochs up to the last one needed.
    last = int(units.max(initial=0))
    with self._lock:
      while self._starts[-1] <= last:
        self._starts.append(self._starts[-1] + self.plan(len(self._starts) - 1).units)
      starts = np.asarray(self._starts)
    epoch = np.searchsorted(starts, units, side="right") - 1
    return epoch, units - starts[epoch]

  def units(self, indices: np.ndarray) -> list[np.ndarray]:
    """Record indices of each requested unit."""
    epochs, within = self.epoch_of(indices)
    out = []
    for e, u in zip(epochs.tolist(), within.tolist()):
      plan = self.plan(e)
      out.append(plan.records[plan.offsets[u]:plan.offsets[u + 1]])
    return out


# --------------------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------------------


def _available(config: S.SchemaConfig) -> set[str]:
  """The field names of :data:`FIELDS` (and ``rewards/<name>``) a dataset can fill."""
  names = {field.name for field in S.token_fields(config).values()} | {S.REWARD}
  if config.reward_names:
    names.add(S.REWARDS)
    names.update(f"{S.REWARDS}/{name}" for name in config.reward_names)
  return names


def _check_names(names: Sequence[str], argument: str) -> None:
  unknown = [n for n in names if n not in FIELDS and not n.startswith(f"{S.REWARDS}/")]
  if unknown:
    raise ValueError(f"DataPipeline({argument}=...): unknown fields {unknown}; known: "
                     f"{sorted(FIELDS)} and '{S.REWARDS}/<name>'")


def _normalise_datasets(datasets) -> list[tuple[str, float]]:
  if isinstance(datasets, (str, os.PathLike)):
    datasets = {datasets: 1.0}
  elif not isinstance(datasets, Mapping):
    datasets = {path: 1.0 for path in datasets}
  out = [(os.fspath(path), float(weight)) for path, weight in datasets.items()]
  if not out:
    raise ValueError("DataPipeline: no datasets")
  for path, weight in out:
    if not math.isfinite(weight) or weight <= 0:
      raise ValueError(f"DataPipeline: the weight of {path} must be a positive number, "
                       f"found {weight}")
  return out


class DataPipeline:
  """Fixed-shape training batches from one or several published datasets.

  Construction opens every dataset, checks it against the trainer's needs and the other
  datasets, and indexes its trainable episodes; :meth:`batch` then returns batch ``step``
  of this process, as a pure function of the step.

  Args:
    datasets: a dataset directory (as returned by :func:`rlds_lm.publish.publish`), a
      list of them (equal weights) or ``{directory: weight}`` (weights need not sum to
      1; they give the share of rows, i.e. of sequences when padding and of rows,
      roughly tokens, when packing).
    config: batch shape, packing, seed, split.
    require: schema field names the trainer needs (:data:`FIELDS`, e.g.
      ``S.TEACHER_TOPK_IDS`` for distillation, ``S.REWARDS`` or ``"rewards/correct"``
      for RL); a dataset without one is refused, naming what it misses.
    optional: fields to include when every dataset has them; None includes everything
      every dataset has (``()`` keeps batches lean: only the eight core keys and
      ``require``).
    vocab_size: the model's vocabulary size; datasets with another are refused.
    tokenizer: the model's tokenizer (its ``name`` or the object); datasets tokenised
      otherwise are refused.
    shard_index: this process (``jax.process_index()``).
    shard_count: number of processes (``jax.process_count()``); must divide
      ``batch_size``.
    index_cache_dir: optional directory keeping each dataset's index of trainable
      episodes (one ``.npy`` per dataset, named by its content identity), so that later
      runs skip the indexing pass.

  Raises:
    DataMismatchError: a dataset lacks a required field, has another vocabulary or
      tokenizer than the model or the other datasets, a different teacher width than
      the others, no array_record files or no trainable episode.
    ValueError: invalid arguments.

  Attributes:
    config: the :class:`DataConfig`.
    fingerprint: identity of the batch sequence (datasets, weights, config), saved with
      the iterator state.
    weights: ``{directory: share of rows}`` after rounding.
    reward_names: columns of ``rewards`` (empty when it is not produced).
    teacher_top_k: ``K`` of the teacher top-k keys (0 when not produced).
    teacher_sampled_k: ``S`` of the teacher sampled-k keys (0 when not produced).
  """

  def __init__(self, datasets: Datasets, config: DataConfig, *, require: Sequence[str] = (),
               optional: Sequence[str] | None = None, vocab_size: int | None = None,
               tokenizer: Any = None, shard_index: int = 0, shard_count: int = 1,
               index_cache_dir: str | os.PathLike[str] | None = None):
    if shard_count < 1 or not 0 <= shard_index < shard_count:
      raise ValueError(f"DataPipeline: shard_index must be in [0, shard_count); found "
                       f"shard_index={shard_index}, shard_count={shard_count}")
    if config.batch_size % shard_count:
      raise ValueError(f"DataPipeline: batch_size {config.batch_size} is not divisible by "
                       f"shard_count {shard_count}")
    require, optional = tuple(require), (None if optional is None else tuple(optional))
    _check_names(require, "require")
    _check_names(optional or (), "optional")
    self.config = config
    self.shard_index, self.shard_count = shard_index, shard_count
    entries = _normalise_datasets(datasets)
    self._datasets = [_Dataset(path, config.split) for path, _ in entries]
    self._check_model(vocab_size, tokenizer)
    self._outputs = self._choose_outputs(require, optional)
    parts = _weight_parts([w for _, w in entries])
    self._mixture = _Mixture(parts)
    self.fingerprint = S.content_id({
        "algorithm": _ALGORITHM, "config": dataclasses.asdict(config),
        "datasets": [[d.identity, p] for d, p in zip(self._datasets, parts)]}, prefix="data-")
    self.weights = {d.path: p / sum(parts) for d, p in zip(self._datasets, parts)}
    cache_dir = os.fspath(index_cache_dir) if index_cache_dir is not None else None
    self._streams = []
    for dataset in self._datasets:
      lengths = _index(dataset.path, config.split, dataset.identity, dataset.source, cache_dir)
      stream = _Stream(dataset, lengths, config)
      if not stream.eligible.size:
        raise DataMismatchError(
            f"{dataset}: no trainable episode in split {config.split!r} "
            f"({len(lengths)} records: {int(np.sum(lengths < 0))} invalid, "
            f"{int(np.sum(lengths == 0))} without tokens)")
      self._streams.append(stream)
    # One decoder for every dataset: the fields and their widths agree (checked above).
    self._fields = [field for key, field in S.token_fields(self._datasets[0].schema).items()
                    if key in self._outputs]
    self._decoder = R.RawSequenceDecoder(
        config.max_length, pad_id=config.pad_id, fields=self._fields,
        reward_names=self.reward_names if REWARDS in self._outputs else ())

  # -- validation ----------------------------------------------------------------------

  def _check_model(self, vocab_size: int | None, tokenizer: Any) -> None:
    if tokenizer is not None and not isinstance(tokenizer, str):
      tokenizer = tokenizer.name
    problems = []
    for dataset in self._datasets:
      schema = dataset.schema
      if schema.kind != S.ROLLOUT:
        problems.append(f"{dataset}: holds {schema.kind} episodes; the trainers read "
                        f"{S.ROLLOUT} episodes")
      if vocab_size is not None and schema.vocab_size != vocab_size:
        problems.append(f"{dataset}: vocab_size {schema.vocab_size}, the model's is "
                        f"{vocab_size}")
      if tokenizer is not None and schema.tokenizer != tokenizer:
        problems.append(f"{dataset}: tokenizer {schema.tokenizer!r}, the model's is "
                        f"{tokenizer!r}")
    for name in ("vocab_size", "tokenizer"):
      values = {str(d): getattr(d.schema, name) for d in self._datasets}
      if len(set(values.values())) > 1:
        problems.append(f"the datasets disagree on {name}: {values}")
    if problems:
      raise DataMismatchError("DataPipeline: refused:\n  " + "\n  ".join(problems))

  def _choose_outputs(self, require: tuple[str, ...],
                      optional: tuple[str, ...] | None) -> set[str]:
    """Batch keys to produce (setting the reward names and teacher widths); refuses
    missing required fields and mixed teacher widths."""
    missing = {}
    for dataset in self._datasets:
      lacks = [n for n in require if n not in _available(dataset.schema)]
      if lacks:
        missing[str(dataset)] = lacks
    if missing:
      lines = [f"{path}: missing {lacks}" for path, lacks in missing.items()]
      raise DataMismatchError(
          "DataPipeline: datasets lack required fields:\n  " + "\n  ".join(lines) +
          "\n(what a dataset holds is its SchemaConfig: teacher_top_k, teacher_sampled_k, "
          "reward_names)")
    common = set.intersection(*(_available(d.schema) for d in self._datasets))
    wanted = set(require) | (common if optional is None else set(optional) & common)
    # Named rewards: the explicitly named ones, else the first dataset's names.
    named = [n.split("/", 1)[1] for n in (*require, *(optional or ()))
             if n.startswith(f"{S.REWARDS}/") and n in wanted]
    if named:
      wanted.add(S.REWARDS)
    elif S.REWARDS in wanted:
      named = list(self._datasets[0].schema.reward_names)
      if any(tuple(d.schema.reward_names) != tuple(named) for d in self._datasets):
        if S.REWARDS in require:
          raise DataMismatchError(
              "DataPipeline: the datasets name different rewards: "
              f"{ {str(d): d.schema.reward_names for d in self._datasets} }; require the "
              f"common ones as '{S.REWARDS}/<name>'")
        wanted.discard(S.REWARDS)
        named = []
    self.reward_names = tuple(dict.fromkeys(named))
    outputs = {LOSS_MASK, SEGMENT_IDS, POSITIONS, DATASET, RECORD_INDEX}
    outputs.update(_FIELD_KEYS[n] for n in _ALWAYS)
    outputs.update(_FIELD_KEYS[n] for n in wanted if n in _FIELD_KEYS)
    if TEACHER_TOPK_IDS in outputs or TEACHER_TOPK_LOGPROBS in outputs:
      outputs.update((TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS))  # decoded together
    if TEACHER_SAMPLED_IDS in outputs or TEACHER_SAMPLED_COUNTS in outputs:
      outputs.update((TEACHER_SAMPLED_IDS, TEACHER_SAMPLED_COUNTS))
    for key, name in ((TEACHER_TOPK_IDS, "teacher_top_k"),
                      (TEACHER_SAMPLED_IDS, "teacher_sampled_k")):
      widths = {str(d): getattr(d.schema, name) for d in self._datasets}
      if key in outputs and len(set(widths.values())) > 1:
        raise DataMismatchError(
            f"DataPipeline: the datasets disagree on {name}: {widths}; a batch has one "
            f"width. Mix datasets with the same teacher data, or leave the teacher fields "
            f"out (optional=() and no teacher field in require).")
    first = self._datasets[0].schema
    self.teacher_top_k = first.teacher_top_k if TEACHER_TOPK_IDS in outputs else 0
    self.teacher_sampled_k = first.teacher_sampled_k if TEACHER_SAMPLED_IDS in outputs else 0
    return outputs

  # -- shapes --------------------------------------------------------------------------

  @property
  def local_batch_size(self) -> int:
    """Rows of this process's batch."""
    return self.config.batch_size // self.shard_count

  @property
  def batch_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of this process's batches."""
    b, length = self.local_batch_size, self.config.max_length
    per_seq = (b, self.config.max_segments) if self.config.packing else (b,)
    spec = {
        TOKENS: ((b, length), np.int32), LOSS_MASK: ((b, length), np.bool_),
        BEHAVIOUR_LOGPROBS: ((b, length), np.float32), SEGMENT_IDS: ((b, length), np.int32),
        POSITIONS: ((b, length), np.int32), REWARD: (per_seq, np.float32),
        DATASET: (per_seq, np.int32), RECORD_INDEX: (per_seq, np.int32),
        REWARDS: (per_seq + (len(self.reward_names),), np.float32),
    }
    # The per-token fields: [B, L] and each token's shape, as the schema declares them.
    spec.update((field.key, ((b, length) + field.trailing, field.dtype))
                for field in self._fields)
    return {k: (shape, np.dtype(dtype)) for k, (shape, dtype) in spec.items()
            if k in self._outputs}

  def units_per_epoch(self, epoch: int = 0) -> list[int]:
    """Per dataset: rows (packing) or sequences (padding) that its epoch ``epoch`` fills."""
    return [stream.plan(epoch).units for stream in self._streams]

  def summary(self) -> dict[str, Any]:
    """JSON-serialisable description (for logs and error messages)."""
    return {
        "fingerprint": self.fingerprint,
        "config": dataclasses.asdict(self.config),
        "datasets": [{"path": d.path, "name": d.name, "identity": d.identity,
                      "weight": self.weights[d.path], "records": len(d.source),
                      "trainable": int(s.eligible.size)}
                     for d, s in zip(self._datasets, self._streams)],
        "keys": sorted(self._outputs),
        "shard": [self.shard_index, self.shard_count],
    }

  # -- batches -------------------------------------------------------------------------

  def rows(self, step: int) -> list[list[tuple[int, int]]]:
    """``(dataset, record)`` of each sequence in each row of this process's batch."""
    if step < 0:
      raise ValueError(f"DataPipeline: step must be >= 0, found {step}")
    local = self.local_batch_size
    slots = (step * self.config.batch_size + self.shard_index * local
             + np.arange(local, dtype=np.int64))
    datasets, units = self._mixture.locate(slots)
    rows: list[list[tuple[int, int]]] = [[] for _ in range(local)]
    for d, stream in enumerate(self._streams):
      where = np.flatnonzero(datasets == d)
      if where.size:
        for row, records in zip(where.tolist(), stream.units(units[where])):
          rows[row] = [(d, r) for r in records.tolist()]
    return rows

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch ``step`` (a pure function of ``step``)."""
    rows = self.rows(step)
    out = {key: np.zeros(shape, dtype) for key, (shape, dtype) in self.batch_spec.items()}
    out[TOKENS].fill(self.config.pad_id)
    out[DATASET].fill(-1)
    out[RECORD_INDEX].fill(-1)
    # One read per dataset for the whole batch; each record decoded once.
    raws = {}
    for d, dataset in enumerate(self._datasets):
      wanted = sorted({r for row in rows for dd, r in row if dd == d})
      if wanted:
        raws.update(((d, r), raw) for r, raw in zip(wanted, dataset.source.__getitems__(wanted)))
    per_token = [k for k in out if k in _PER_TOKEN_KEYS]
    for b, row in enumerate(rows):
      offset = 0
      for s, (d, record) in enumerate(row):
        n = int(self._streams[d].lengths[record])
        seq = self._decoder(raws[d, record])
        end = offset + n
        for key in per_token:
          out[key][b, offset:end] = seq[key][:n]
        out[SEGMENT_IDS][b, offset:end] = s + 1
        out[POSITIONS][b, offset:end] = np.arange(n, dtype=np.int32)
        at = (b, s) if self.config.packing else (b,)
        out[REWARD][at] = seq[REWARD]
        out[DATASET][at] = d
        out[RECORD_INDEX][at] = record
        if REWARDS in out:
          out[REWARDS][at] = seq[REWARDS]
        offset = end
    return out

  def iterator(self, state: Mapping[str, Any] | None = None, *,
               prefetch: int = 1) -> DataIterator:
    """An iterator from step 0, or from a saved :meth:`DataIterator.get_state`."""
    it = DataIterator(self, prefetch=prefetch)
    if state is not None:
      it.set_state(state)
    return it

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iterator()


class DataIterator:
  """Batches ``step, step + 1, ...`` of a :class:`DataPipeline`; resumable exactly.

  With ``prefetch > 0`` a background thread decodes the next batches while the trainer
  runs its step (the batches are the same either way: each is a pure function of its
  step). The state is ``{"step": next step, "fingerprint": pipeline fingerprint}``.
  """

  def __init__(self, pipeline: DataPipeline, *, step: int = 0, prefetch: int = 1):
    if prefetch < 0:
      raise ValueError(f"DataIterator: prefetch must be >= 0, found {prefetch}")
    self.pipeline = pipeline
    self._step = step
    self._prefetch = prefetch
    self._pending: collections.deque[tuple[int, concurrent.futures.Future]] = (
        collections.deque())
    self._executor = (concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="rlds_lm-data") if prefetch else None)

  @property
  def step(self) -> int:
    """The step of the batch that ``next`` returns."""
    return self._step

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._executor is None:
      batch = self.pipeline.batch(self._step)
    else:
      self._fill()
      step, future = self._pending.popleft()
      assert step == self._step, (step, self._step)
      batch = future.result()
    self._step += 1
    if self._executor is not None:
      self._fill()
    return batch

  def _fill(self) -> None:
    while len(self._pending) < self._prefetch:
      step = self._step + len(self._pending)
      self._pending.append((step, self._executor.submit(self.pipeline.batch, step)))

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position: restoring it continues with the same batches."""
    return {"step": self._step, "fingerprint": self.pipeline.fingerprint}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a state of :meth:`get_state`; refuses another pipeline's state."""
    if not isinstance(state, Mapping) or "step" not in state or "fingerprint" not in state:
      raise StateMismatchError(f"DataIterator: not a data state (expected "
                               f"{{'step', 'fingerprint'}}): {state!r}")
    step = state["step"]
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise StateMismatchError(f"DataIterator: state step must be an integer >= 0, "
                               f"found {step!r}")
    if state["fingerprint"] != self.pipeline.fingerprint:
      raise StateMismatchError(
          f"DataIterator: the state was saved by data pipeline {state['fingerprint']!r}, "
          f"this one is {self.pipeline.fingerprint!r}: the datasets, their weights or the "
          f"DataConfig differ, so its batches would not continue the saved sequence. "
          f"This pipeline: {json.dumps(self.pipeline.summary(), sort_keys=True)}")
    self._cancel()
    self._step = int(step)

  def _cancel(self) -> None:
    for _, future in self._pending:
      future.cancel()
    self._pending.clear()

  def close(self) -> None:
    """Stops the prefetch thread (pending batches are dropped)."""
    self._cancel()
    if self._executor is not None:
      self._executor.shutdown(wait=False, cancel_futures=True)
      self._executor = None

  def __enter__(self) -> DataIterator:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __del__(self):
    executor = getattr(self, "_executor", None)
    if executor is not None:
      executor.shutdown(wait=False, cancel_futures=True)
