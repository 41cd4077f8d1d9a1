"""The batch contract: batch keys, the fields a trainer may ask for, :class:`DataConfig`,
the errors, and the model side of the packing contract (see :mod:`rlds_lm.trainers.data`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

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

# Changing this changes the batches: it is part of the state fingerprint (and so are the
# constants of the mixture, the packing and the epoch order, which carry this comment).
_ALGORITHM = "rlds_lm.trainers.data/3"


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
