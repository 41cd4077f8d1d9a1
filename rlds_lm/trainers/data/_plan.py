"""Epoch planning and packing: each dataset as an endless stream of units (one episode
per unit when padding, one packed row when packing), epoch after epoch in a permutation
keyed by (seed, dataset identity, epoch)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlds_lm.trainers.data._contract import _ALGORITHM, DataConfig
from rlds_lm.trainers.data._index import _Dataset

# Changing these changes the batches: they are part of the state fingerprint (_ALGORITHM).
_OPEN_ROWS = 8  # packing: rows still open for first fit
_PLANS_KEPT = 4  # epoch plans cached per dataset


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
