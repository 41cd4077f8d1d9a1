"""``arithmetic_concise``: the exact arithmetic check minus a penalty per character.

The worked example of docs/tasks.md: this module is all a new reward takes. Once it is
in ``rlds_lm/tasks/``, ``bond.BondConfig(reward="arithmetic_concise")`` trains on it and
``python -m pipelines.score --scorers=arithmetic_concise`` records it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm.tasks import arithmetic
from rlds_lm.tasks import registry

PENALTY = 0.01  # subtracted per character of the completion


@registry.register_reward("arithmetic_concise", task=arithmetic.TASK,
                          fields=("question", "answer"))
def score(record: Mapping[str, Any], completions: Sequence[str]) -> np.ndarray:
  """float32 [n]: 1.0 for a correct answer (``arithmetic``), minus PENALTY per character."""
  correct = arithmetic.score(record, completions)
  lengths = np.asarray([len(c) for c in completions], np.float32)
  return correct - np.float32(PENALTY) * lengths
