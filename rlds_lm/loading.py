"""Multi-process loading through Grain that is faster than one process.

Grain's ``mp_prefetch`` hands each element from a worker process to the trainer's
process in fresh shared memory (one new segment per array per element) or pickled. Both
touch fresh pages on every element; on virtual machines (this project's are Firecracker
VMs with nested paging) a fresh page costs microseconds, so moving one ``[32, 192]``
top-64 batch (3.2 MB) cost 12-17 ms, ten times what decoding it in process costs
(docs/training_view.md, "Multi-process loading"). On top of that every worker is a new
``spawn``-ed interpreter that unpickles the dataset, a few seconds per iterator.

:func:`multiprocess_batches` keeps the transfer off fresh pages: a ring of batch slots in
one memory-mapped file (``/dev/shm`` where there is one), mapped once by every process,
so its pages are faulted in once. Worker processes fill slot ``i % slots`` with batch
``i`` once the trainer's process is done with batch ``i - slots`` (a per-slot counter in
the same file; no locks); through Grain's queues travel only batch numbers and row
counts. A :func:`rlds_lm.read.grain_batches` dataset is gathered straight into the slot
(no batch built, then copied), several consecutive batches per Grain element (Grain's
hand-over costs a few hundred microseconds per element); the trainer's process copies
each batch out once (or, with ``copy=False``, hands out views of the slot). The batches
and their order are those of the dataset it wraps.
"""

from __future__ import annotations

import os
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

_HEADER = 2  # int64 per slot: batch written, batch copied out
_ALIGN = 64
_POLL_S = 0.0001  # a worker waiting for its slot to be copied out: first pause
_POLL_MAX_S = 0.002  # ... and the longest


class _Ring:
  """Batch slots in one shared, memory-mapped file: a fixed layout per slot."""

  def __init__(self, spec: Mapping[str, tuple[tuple[int, ...], np.dtype]], slots: int,
               path: str | None = None):
    self.spec = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in spec.items()}
    self.slots = slots
    layout, offset = {}, 0
    for key, (shape, dtype) in self.spec.items():
      layout[key] = offset
      offset += -(-int(np.prod(shape)) * dtype.itemsize // _ALIGN) * _ALIGN
    self.layout, self.slot_bytes = layout, max(offset, _ALIGN)
    self.header_bytes = -(-slots * _HEADER * 8 // _ALIGN) * _ALIGN
    size = self.header_bytes + slots * self.slot_bytes
    self.owner = path is None
    if path is None:
      directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
      fd, path = tempfile.mkstemp(prefix="rlds_lm_batches_", dir=directory)
      os.ftruncate(fd, size)
      os.close(fd)
    self.path = path
    self._map = np.memmap(path, np.uint8, "r+", shape=(size,))
    self.counters = self._map[:self.header_bytes].view(np.int64)[:slots * _HEADER].reshape(
        slots, _HEADER)
    if self.owner:
      self.counters[:] = -1
      self._finalizer = weakref.finalize(self, _remove, path)

  def arrays(self, slot: int) -> dict[str, np.ndarray]:
    """Slot ``slot``'s arrays (views of the shared file, made once per process)."""
    cache = self.__dict__.setdefault("_arrays", {})
    if slot not in cache:
      data, base = self._map.view(np.ndarray), self.header_bytes + slot * self.slot_bytes
      cache[slot] = {
          key: data[base + self.layout[key]:
                    base + self.layout[key] + int(np.prod(shape)) * dtype.itemsize]
          .view(dtype).reshape(shape) for key, (shape, dtype) in self.spec.items()}
    return cache[slot]

  def __getstate__(self) -> dict[str, Any]:
    return {"spec": self.spec, "slots": self.slots, "path": self.path}

  def __setstate__(self, state: Mapping[str, Any]) -> None:
    self.__init__(state["spec"], state["slots"], path=state["path"])

  def close(self) -> None:
    if self.owner:
      self._finalizer()


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


class _Write:
  """In a worker: batch ``i`` into slot ``i % slots``, once batch ``i - slots`` is out."""

  def __init__(self, ring: _Ring):
    self.ring = ring

  def __call__(self, index: int, batch: Mapping[str, np.ndarray]) -> tuple[int, list[int]]:
    ring = self.ring
    slot = _wait_for_slot(ring, index)
    rows = 0
    for key, target in ring.arrays(slot).items():
      value = np.asarray(batch[key])
      rows = value.shape[0]
      target[:rows] = value
    ring.counters[slot, 0] = index
    return index, [rows]


class _Gather:
  """In a worker: element ``e``, batches ``[e * group, (e + 1) * group)`` of a
  :func:`rlds_lm.read.grain_batches` dataset, each gathered straight into its slot
  (``batch_into``: no batch built and copied over)."""

  def __init__(self, ring: _Ring, dataset, group: int):
    self.ring, self.dataset, self.group = ring, dataset, group
    self.length = len(dataset)

  def __call__(self, element: int) -> tuple[int, list[int]]:
    ring, first = self.ring, element * self.group
    rows = []
    for index in range(first, min(self.length, first + self.group)):
      slot = _wait_for_slot(ring, index)
      filled = self.dataset.batch_into(index, ring.arrays(slot))
      ring.counters[slot, 0] = index
      rows.append(len(next(iter(filled.values()))))
    return first, rows


def _wait_for_slot(ring: _Ring, index: int) -> int:
  """Slot ``index % slots`` once the trainer is done with batch ``index - slots``: polled,
  backing off from 0.1 ms to 2 ms (a worker ahead of the trainer costs little CPU)."""
  slot = index % ring.slots
  pause = _POLL_S
  while index >= ring.slots and ring.counters[slot, 1] < index - ring.slots:
    time.sleep(pause)
    pause = min(2 * pause, _POLL_MAX_S)
  return slot


class _Batches(Iterator[dict[str, np.ndarray]]):
  """The iterator :func:`multiprocess_batches` returns: close it (or exhaust it) to stop
  the workers and remove the ring file.

  With ``copy`` each batch is copied out of its slot (fresh arrays, the slot freed at
  once); without, the batch is a view of its slot, valid until the next batch is
  asked for (the slot is freed then)."""

  def __init__(self, iterator, ring: _Ring, copy: bool = True):
    self._iterator = iterator
    self._ring = ring
    self._copy = copy
    self._held: int | None = None  # the batch whose slot the caller is looking at
    self._pending: list[tuple[int, int]] = []  # (batch, rows) of the current element
    self._at = 0

  def __next__(self) -> dict[str, np.ndarray]:
    ring = self._ring
    if self._held is not None:
      ring.counters[self._held % ring.slots, 1] = self._held
      self._held = None
    if self._at == len(self._pending):
      try:
        first, rows = next(self._iterator)
      except StopIteration:
        self.close()
        raise
      self._pending = [(first + i, n) for i, n in enumerate(rows)]
      self._at = 0
    index, rows = self._pending[self._at]
    self._at += 1
    slot = index % ring.slots
    if ring.counters[slot, 0] != index:
      raise RuntimeError(f"multiprocess_batches: slot {slot} holds batch "
                         f"{int(ring.counters[slot, 0])}, expected {index}")
    arrays = ring.arrays(slot)
    if self._copy:
      out = {key: np.array(value[:rows]) for key, value in arrays.items()}
      ring.counters[slot, 1] = index
    else:
      out = {key: value[:rows] for key, value in arrays.items()}
      self._held = index
    return out

  def close(self) -> None:
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()
    self._ring.close()

  def __enter__(self) -> _Batches:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


_GROUP_BYTES = 4 << 20  # batches per worker element: about this many bytes ...
_GROUP_MIN = 4  # ... and at least this many


def multiprocess_batches(dataset, *, workers: int, slots_per_worker: int = 4,
                         worker_init_fn=None, copy: bool = True,
                         batches_per_element: int | None = None) -> _Batches:
  """Iterates a Grain ``MapDataset`` of batch dicts in ``workers`` processes.

  The batches (dicts of arrays with the same keys, dtypes and trailing shapes; the last
  one may have fewer rows, as with ``drop_remainder=False``) come out in the dataset's
  order, equal to iterating it in process. A :func:`rlds_lm.read.grain_batches` dataset
  (also after ``.repeat(n)``) is gathered by the workers straight into the shared slots,
  several consecutive batches per Grain element (Grain's hand-over costs a few hundred
  microseconds per element, more than gathering a small batch); any other dataset's
  batches are built, then copied into a slot, one per element.

  Args:
    dataset: e.g. :func:`rlds_lm.read.grain_batches`.
    workers: worker processes (Grain ``MultiprocessingOptions(num_workers=...)``).
    slots_per_worker: batches each worker may have ready ahead of the trainer (at least
      two elements' worth).
    worker_init_fn: passed to Grain's ``mp_prefetch``.
    copy: True (the default): each batch is copied out of shared memory into fresh
      arrays, which the caller may keep. False: each batch is a view of its shared slot,
      valid only until the next batch is asked for (the slot is then refilled). Do not
      keep such a batch, nor hand it to ``jax.device_put``/``jnp.asarray`` without a copy:
      on CPU JAX may alias the memory, so a refilled slot would change the array under it.
    batches_per_element: consecutive batches a worker gathers per Grain element (a
      ``grain_batches`` dataset only); None: about 4 MiB of batches, at least 4.

  Returns:
    An iterator of batches with ``close()`` (also a context manager).
  """
  import grain  # pylint: disable=g-import-not-at-top

  from rlds_lm import _batch_dataset  # pylint: disable=g-import-not-at-top

  if workers < 1:
    raise ValueError(f"multiprocess_batches: workers must be >= 1, found {workers}")
  first = dataset[0]
  spec = {key: (np.shape(value), np.asarray(value).dtype) for key, value in first.items()}
  gather = isinstance(dataset, _batch_dataset.BatchDataset)
  batch_bytes = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in spec.values())
  group = 1
  if gather:
    group = batches_per_element or max(_GROUP_MIN, _GROUP_BYTES // max(batch_bytes, 1))
    if group < 1:
      raise ValueError(f"multiprocess_batches: batches_per_element must be >= 1, found "
                       f"{group}")
  # Each worker may fill its next two elements (or slots_per_worker batches) ahead.
  ring = _Ring(spec, slots=workers * max(slots_per_worker, 2 * group))
  try:
    if gather:
      elements = -(-len(dataset) // group)
      handles = grain.MapDataset.range(elements).map(_Gather(ring, dataset, group))
    else:
      handles = dataset.map_with_index(_Write(ring))
    pipeline = (handles
                .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
                .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                             worker_init_fn=worker_init_fn))
    return _Batches(iter(pipeline), ring, copy=copy)
  except BaseException:
    ring.close()
    raise
