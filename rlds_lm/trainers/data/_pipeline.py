"""The pipeline: :class:`DataPipeline` (datasets -> batch ``i`` as a pure function of
``i``) and :class:`DataIterator` (prefetching, resumable exactly)."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import view as V
from rlds_lm.trainers.data._contract import (
    _ALGORITHM, _ALWAYS, _FIELD_KEYS, _PER_TOKEN_KEYS, DATASET, FIELDS, LOSS_MASK, POSITIONS,
    RECORD_INDEX, REWARD, REWARDS, SEGMENT_IDS, TEACHER_SAMPLED_COUNTS, TEACHER_SAMPLED_IDS,
    TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS, TOKENS, DataConfig, DataMismatchError, Datasets,
    StateMismatchError)
from rlds_lm.trainers.data._index import _Dataset, _index
from rlds_lm.trainers.data._mixture import _Mixture, _weight_parts
from rlds_lm.trainers.data._plan import _Stream

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
      runs skip the indexing pass (not needed for a dataset with a training view: the
      view holds the index).
    training_view: read each dataset through its training view (:mod:`rlds_lm.view`,
      built on first use next to the dataset or in a cache, rebuilt when stale) instead
      of decoding its records. The batches are the same, bit for bit; a dataset without
      a view (read-only and no cache, a sliced split) is decoded.

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
               index_cache_dir: str | os.PathLike[str] | None = None,
               training_view: bool = True):
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
    self._datasets = [_Dataset(path, config.split, training_view=training_view)
                      for path, _ in entries]
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
      lengths = _index(dataset.path, config.split, dataset.identity, dataset.source,
                       cache_dir, known=None if dataset.view is None else dataset.view.lengths)
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
    # Per dataset with a view: its named-reward columns in this pipeline's order.
    self._reward_columns = [
        [d.view.reward_names.index(n) for n in self.reward_names] if d.view is not None
        else None for d in self._datasets]

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
    return dict(self._spec())

  def _spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    spec = self.__dict__.get("_batch_spec")
    if spec is None:
      spec = self._batch_spec = self._make_batch_spec()
    return spec

  def _make_batch_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    b, length = self.local_batch_size, self.config.max_length
    per_seq = (b, self.config.max_segments) if self.config.packing else (b,)
    # The stored per-token fields: [B, L] and each token's shape, as the schema declares.
    spec = {field.key: ((b, length) + field.trailing, field.dtype) for field in self._fields}
    spec.update({
        LOSS_MASK: ((b, length), np.bool_), SEGMENT_IDS: ((b, length), np.int32),
        POSITIONS: ((b, length), np.int32), REWARD: (per_seq, np.float32),
        DATASET: (per_seq, np.int32), RECORD_INDEX: (per_seq, np.int32),
        REWARDS: (per_seq + (len(self.reward_names),), np.float32),
    })
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

  def _segments(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(row, segment, dataset, record)`` arrays: every sequence of this process's batch
    ``step``, in row order (``segment`` counts from 0 within its row)."""
    if step < 0:
      raise ValueError(f"DataPipeline: step must be >= 0, found {step}")
    local = self.local_batch_size
    slots = (step * self.config.batch_size + self.shard_index * local
             + np.arange(local, dtype=np.int64))
    if len(self._streams) == 1 and not self.config.packing:
      # The common case, in closed form: one dataset (its units are the slots), one
      # record per row, every row in one epoch.
      stream = self._streams[0]
      n = stream.eligible.size
      epoch = int(slots[0]) // n if n else -1
      if n and int(slots[-1]) // n == epoch:
        rows, zeros = self._row_constants(local)
        return rows, zeros, zeros, stream.plan(epoch).records[slots - epoch * n]
    datasets, units = self._mixture.locate(slots)
    parts = []
    for d, stream in enumerate(self._streams):
      where = np.flatnonzero(datasets == d)
      if not where.size:
        continue
      epochs, within = stream.epoch_of(units[where])
      first_epoch = int(epochs[0])
      for epoch in ([first_epoch] if (epochs == first_epoch).all()
                    else np.unique(epochs).tolist()):
        pick = epochs == epoch
        plan = stream.plan(epoch)
        if not self.config.packing:  # one record per row
          rows_e = where[pick]
          parts.append((rows_e, np.zeros(rows_e.size, np.int64),
                        np.full(rows_e.size, d, np.int64), plan.records[within[pick]]))
          continue
        first = plan.offsets[within[pick]]
        count = plan.offsets[within[pick] + 1] - first
        segment = (np.arange(int(count.sum()), dtype=np.int64)
                   - np.repeat(np.cumsum(count) - count, count))
        parts.append((np.repeat(where[pick], count), segment,
                      np.full(segment.size, d, np.int64),
                      plan.records[np.repeat(first, count) + segment]))
    if len(parts) == 1:  # one dataset, one epoch: already in row order
      return parts[0]
    row, segment, dataset, record = (np.concatenate(c) for c in zip(*parts))
    order = np.lexsort((segment, row))
    return row[order], segment[order], dataset[order], record[order]

  def _row_constants(self, local: int) -> tuple[np.ndarray, np.ndarray]:
    """``(arange(local), zeros(local))`` as int64, read-only, made once."""
    constants = self.__dict__.get("_constants")
    if constants is None or constants[0].size != local:
      constants = (np.arange(local, dtype=np.int64), np.zeros(local, np.int64))
      for array in constants:
        array.flags.writeable = False
      self._constants = constants
    return constants

  def rows(self, step: int) -> list[list[tuple[int, int]]]:
    """``(dataset, record)`` of each sequence in each row of this process's batch."""
    row, _, dataset, record = self._segments(step)
    rows: list[list[tuple[int, int]]] = [[] for _ in range(self.local_batch_size)]
    for b, d, r in zip(row.tolist(), dataset.tolist(), record.tolist()):
      rows[b].append((d, r))
    return rows

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch ``step`` (a pure function of ``step``)."""
    row, segment, dataset, record = self._segments(step)
    packing, length = self.config.packing, self.config.max_length
    used = ([int(dataset[0])] if dataset.size and (dataset == dataset[0]).all()
            else np.unique(dataset).tolist())
    if len(used) == 1:
      lengths = self._streams[used[0]].lengths[record]
    else:
      lengths = np.empty(record.size, np.int64)
      for d in used:
        pick = dataset == d
        lengths[pick] = self._streams[d].lengths[record[pick]]
    if packing:  # where each sequence starts in its row: the lengths before it there
      ends = np.cumsum(lengths)
      first = np.searchsorted(row, row)  # the row's first sequence
      offsets = ends - lengths - (ends[first] - lengths[first])
    else:
      offsets = np.zeros(record.size, np.int64)
    spec = self._spec()
    per_token = [k for k in spec if k in _PER_TOKEN_KEYS]
    # Padding, every row one sequence from a view: whole rows gathered, padding
    # included, and every row's per-sequence values set; nothing to initialise.
    by_rows = not packing and all(self._datasets[d].view is not None for d in used)
    if by_rows:
      out = {key: np.empty(shape, dtype) for key, (shape, dtype) in spec.items()}
    else:
      out = {key: np.zeros(shape, dtype) for key, (shape, dtype) in spec.items()}
      out[TOKENS].fill(self.config.pad_id)
      out[DATASET].fill(-1)
      out[RECORD_INDEX].fill(-1)
    at = (row, segment) if packing else (row,)
    out[DATASET][at] = dataset
    out[RECORD_INDEX][at] = record
    for d in used:
      source = self._datasets[d]
      pick = np.flatnonzero(dataset == d) if len(used) > 1 else slice(None)
      view, records, rows_d = source.view, record[pick], row[pick]
      at_d = (rows_d, segment[pick]) if packing else (rows_d,)
      if view is None:
        self._decode_into(out, per_token, d, source, records, at_d, offsets[pick],
                          lengths[pick], segment[pick])
        continue
      out[REWARD][at_d] = view.arrays[REWARD][records]
      if REWARDS in out:
        out[REWARDS][at_d] = view.arrays[REWARDS][records][:, self._reward_columns[d]]
      if by_rows:
        self._gather_rows(out, per_token, view, records, rows_d, lengths[pick])
      else:
        self._copy_from_view(out, per_token, view, rows_d * length + offsets[pick],
                             view.offsets[records], lengths[pick], segment[pick] + 1)
    return out

  def _gather_rows(self, out: dict[str, np.ndarray], per_token: Sequence[str], view,
                   records: np.ndarray, rows: np.ndarray, lengths: np.ndarray) -> None:
    """Padding from a training view: rows ``rows`` are the first ``lengths`` tokens of
    ``records``, each field gathered for all of them at once (:class:`rlds_lm.view.Rows`)."""
    gathered = V.Rows(view, view.offsets[records], lengths, self.config.max_length)
    every = rows.size == self.local_batch_size  # rows 0..B-1 in order: no scatter
    for key in per_token:
      fill = self.config.pad_id if key == TOKENS else 0
      if every:
        out[key] = gathered.gather(key, fill)
      else:
        out[key][rows] = gathered.gather(key, fill)
    keep = gathered.keep
    if every:
      np.copyto(out[SEGMENT_IDS], keep)
      np.multiply(np.arange(self.config.max_length, dtype=np.int32), keep,
                  out=out[POSITIONS])
    else:
      out[SEGMENT_IDS][rows] = keep
      out[POSITIONS][rows] = np.arange(self.config.max_length, dtype=np.int32) * keep

  def _decode_into(self, out: dict[str, np.ndarray], per_token: Sequence[str], d: int,
                   dataset, records: np.ndarray, at, offsets: np.ndarray,
                   lengths: np.ndarray, segments: np.ndarray) -> None:
    """Sequences of a dataset without a training view: one read for all of them, each
    record decoded once."""
    wanted = sorted(set(records.tolist()))
    raws = dict(zip(wanted, dataset.source.__getitems__(wanted)))
    rows = at[0].tolist()
    for i, (record, offset, n, s) in enumerate(zip(records.tolist(), offsets.tolist(),
                                                   lengths.tolist(), segments.tolist())):
      seq = self._decoder(raws[record])
      b, end = rows[i], offset + n
      for key in per_token:
        out[key][b, offset:end] = seq[key][:n]
      out[SEGMENT_IDS][b, offset:end] = s + 1
      out[POSITIONS][b, offset:end] = np.arange(n, dtype=np.int32)
      cell = (b, s) if self.config.packing else (b,)
      out[REWARD][cell] = seq[REWARD]
      if REWARDS in out:
        out[REWARDS][cell] = seq[REWARDS]

  @staticmethod
  def _copy_from_view(out: dict[str, np.ndarray], per_token: Sequence[str], view,
                      cells: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                      ids: np.ndarray) -> None:
    """Copies segments (first cell in the flattened ``[B * L]``, first view token,
    length, segment id) from a training view: one fancy index per field for all of
    them."""
    first = np.cumsum(counts) - counts
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
    target = np.repeat(cells, counts) + within
    source = np.repeat(starts, counts) + within
    for key in per_token:
      array = out[key]
      array.reshape((-1,) + array.shape[2:])[target] = view.arrays[key][source]
    out[SEGMENT_IDS].reshape(-1)[target] = np.repeat(ids, counts)
    out[POSITIONS].reshape(-1)[target] = within

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
