"""The Grain dataset :func:`rlds_lm.read.grain_batches` returns: one element per batch.

Kept apart from :mod:`rlds_lm.read` because importing Grain takes seconds; this module is
imported when a dataset is built (and by worker processes that unpickle one).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import grain
import numpy as np


class BatchDataset(grain.MapDataset):
  """Batch ``i`` = ``make(order(i))``: a Grain ``MapDataset`` whose elements are whole
  batches.

  ``order(j, epoch)`` gives the record indices of batch ``j`` of an epoch and
  ``make(indices, out=None)`` gathers them (:class:`rlds_lm.view.ViewBatcher`, or the
  decoder). Iterating (``for batch in ds``) reads the batches one after the other in the
  calling thread: no thread pool per iterator (Grain's default, 16 threads), which on a
  small host costs more than gathering a batch. Everything else is Grain's:
  ``ds[i]``, slices, ``map``, ``to_iter_dataset(read_options)``, ``mp_prefetch``.

  ``repeat(n)`` keeps this class (so :func:`rlds_lm.loading.multiprocess_batches` can
  still have its workers write straight into shared memory through :meth:`batch_into`);
  epoch ``e`` is shuffled with the epoch folded into the seed unless
  ``reseed_each_epoch=False``, as Grain's ``repeat`` treats its shuffles.
  """

  def __init__(self, order: Callable[..., np.ndarray], make: Callable[..., Any], *,
               epochs: int | None = 1, reseed_each_epoch: bool = True):
    super().__init__()
    self._order, self._make = order, make
    self._epochs, self._reseed = epochs, reseed_each_epoch

  @property
  def batches_per_epoch(self) -> int:
    return len(self._order)

  def __len__(self) -> int:
    if self._epochs is None:
      return sys.maxsize if len(self._order) else 0
    return len(self._order) * self._epochs

  def records(self, index: int) -> np.ndarray:
    """The record indices of element ``index`` (taken modulo the length, as Grain)."""
    per_epoch = len(self._order)
    if not per_epoch:
      raise IndexError("BatchDataset: no batches")
    index = int(index)
    if self._epochs is not None:
      index %= len(self)
    epoch, j = divmod(index, per_epoch)
    return self._order(j, epoch if self._reseed else 0)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._make(self.records(index))

  def batch_into(self, index: int, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Writes element ``index`` into ``out`` (arrays of at least its rows, one per key);
    returns the filled leading rows."""
    return self._make(self.records(index), out=out)

  def repeat(self, num_epochs: int | None = None, *,
             reseed_each_epoch: bool = True) -> grain.MapDataset:
    if self._epochs != 1:
      return super().repeat(num_epochs, reseed_each_epoch=reseed_each_epoch)
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"repeat: num_epochs must be positive or None, found {num_epochs}")
    return BatchDataset(self._order, self._make, epochs=num_epochs,
                        reseed_each_epoch=reseed_each_epoch)

  def __iter__(self):
    return _Iterator(self)

  def __str__(self) -> str:
    return (f"BatchDataset({len(self._order)} batches per epoch, "
            f"epochs={self._epochs}, make={type(self._make).__name__})")


class _Iterator:
  """Batches ``0, 1, ...`` of a :class:`BatchDataset` in the calling thread; its state
  (``get_state``/``set_state``) is the next index, as Grain's iterators keep it."""

  def __init__(self, dataset: BatchDataset):
    self._dataset = dataset
    self._next = 0
    self._length = len(dataset)

  def __iter__(self) -> _Iterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._next >= self._length:
      raise StopIteration
    batch = self._dataset[self._next]
    self._next += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"next_index": self._next}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._next = int(state["next_index"])
