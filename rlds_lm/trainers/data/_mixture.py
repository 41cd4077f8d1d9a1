"""Mixing datasets: a fixed weighted interleave of row slots, in closed form."""

from __future__ import annotations

import fractions
import math
from collections.abc import Sequence

import numpy as np

# Changing this changes the batches: it is part of the state fingerprint (_ALGORITHM).
_WEIGHT_RESOLUTION = 10_000  # mixture weights are rounded to multiples of 1/10000


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
