"""tf.data views of published datasets, for ``rlds.transformations`` users.

Our steps are turns: ``observation/tokens``, ``action/tokens`` and the per-token step
metadata have a different length in every step (docs/interop.md, "rlds.transformations
on our steps"). What needs stacking steps into one tensor fails on them as they are:
``rlds.transformations.batch``, ``shift_keys`` (which batches) and ``mean_and_std``
over those fields. Three ways round it:

* :func:`token_level`: one step per token, every field of fixed shape: every
  transformation applies;
* :func:`turn_windows`: ``batch`` for turn-level steps, ragged fields as
  ``tf.RaggedTensor``;
* map the steps to fixed-shape fields first (reward, discount, flags, lengths).

:func:`with_returns` adds each step's (discounted) return-to-go.

This module imports TensorFlow; trainers use :mod:`rlds_lm.read` instead.
"""

from __future__ import annotations

import os

from rlds_lm import _compat
from rlds_lm import read as R
from rlds_lm import schema as S


def rlds():
  """The ``rlds`` package (with the reverb stand-in; see :mod:`rlds_lm._compat`)."""
  return _compat.import_rlds()


def as_dataset(path: str | os.PathLike[str], split: str = "train", *,
               shuffle_files: bool = False, seed: int = 0):
  """A ``tf.data.Dataset`` of episodes (``steps`` is a nested dataset), deterministic.

  A fresh builder is opened per call: TFDS's ``as_data_source`` switches a builder's
  file format to array_record, which ``as_dataset`` cannot read.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = R.open_builder(path)
  read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=1
                                if not shuffle_files else 16)
  return builder.as_dataset(split, shuffle_files=shuffle_files, read_config=read_config)


def token_level(steps):
  """The token-level view of a turn-level ``steps`` dataset (one step per token).

  Same steps, fields and values as :func:`rlds_lm.read.token_view`, computed in
  tf.data: the turn-level steps are gathered into ragged tensors once and the token
  steps are sliced out of them.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  # Every step in one ragged element. The batch width is the episode's own step count:
  # ragged_batch's cost grows with the width, and a huge constant width stalls in graph
  # mode (e.g. inside ds.flat_map).
  num_steps = steps.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
  turns = steps.ragged_batch(num_steps).get_single_element()
  obs = turns[S.OBSERVATION][S.OBS_TOKENS]
  act = turns[S.ACTION][S.ACT_TOKENS]
  n_steps = tf.shape(turns[S.REWARD])[0]
  sequence = tf.concat([obs, act], axis=1)  # per turn: observation then action tokens
  full = sequence.flat_values
  turn_start = tf.cumsum(sequence.row_lengths(), exclusive=True)
  token_turn = tf.cast(act.value_rowids(), tf.int32)
  within = tf.range(tf.size(act.flat_values, out_type=tf.int64)) - tf.gather(
      act.row_starts(), act.value_rowids())
  position = tf.gather(turn_start + obs.row_lengths(), act.value_rowids()) + within
  prev = tf.where(position > 0, tf.gather(full, tf.maximum(position - 1, 0)), -1)
  turn_last = within == tf.gather(act.row_lengths(), act.value_rowids()) - 1
  reward = turns[S.TOKEN_REWARDS].flat_values + tf.where(
      turn_last, tf.gather(turns[S.REWARD], token_turn), 0.0)
  discount = tf.where(turn_last, tf.gather(turns[S.DISCOUNT], token_turn), 1.0)
  n_tokens = tf.size(act.flat_values)
  body = {
      S.OBSERVATION: {R.TOKEN_POSITION: tf.cast(position, tf.int32),
                      R.TOKEN_PREV: tf.cast(prev, tf.int32), R.TOKEN_TURN: token_turn},
      S.ACTION: act.flat_values,
      S.REWARD: reward,
      S.DISCOUNT: discount,
      S.IS_FIRST: tf.range(n_tokens) == 0,
      S.IS_LAST: tf.zeros([n_tokens], tf.bool),
      S.IS_TERMINAL: tf.zeros([n_tokens], tf.bool),
      "action_logprob": turns[S.ACTION_LOGPROBS].flat_values,
      "thinking": turns[S.ACTION][S.ACT_THINKING_MASK].flat_values,
  }
  final = {
      S.OBSERVATION: {R.TOKEN_POSITION: tf.cast(tf.size(full), tf.int32),
                      R.TOKEN_PREV: tf.cond(tf.size(full) > 0, lambda: full[-1],
                                            lambda: tf.constant(-1, full.dtype)),
                      R.TOKEN_TURN: n_steps - 1},
      S.ACTION: tf.constant(0, act.dtype), S.REWARD: tf.constant(0.0),
      S.DISCOUNT: tf.constant(1.0), S.IS_FIRST: n_tokens == 0,
      S.IS_LAST: tf.constant(True), S.IS_TERMINAL: turns[S.IS_TERMINAL][-1],
      "action_logprob": tf.constant(0.0), "thinking": tf.constant(False),
  }
  if S.TEACHER in turns:
    body[S.TEACHER] = {k: v.flat_values for k, v in turns[S.TEACHER].items()}
    final[S.TEACHER] = {k: tf.zeros(tf.shape(v.flat_values)[1:], v.dtype)
                        for k, v in turns[S.TEACHER].items()}
  return tf.data.Dataset.from_tensor_slices(body).concatenate(
      tf.data.Dataset.from_tensors(final))


def turn_windows(steps, size: int, shift: int | None = None, *,
                 drop_remainder: bool = False):
  """Windows of ``size`` consecutive turn-level steps, every ``shift`` steps (default
  ``size``): what ``rlds.transformations.batch`` gives on fixed-shape steps.

  Each element is one step dict whose leaves have a leading window axis; fields whose
  length varies between steps (tokens, per-token metadata, teacher rows) are
  ``tf.RaggedTensor`` ``[window, (tokens), ...]``, the rest dense tensors.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  windows = steps.window(size, shift=shift or size, drop_remainder=drop_remainder)
  return windows.flat_map(lambda w: tf.data.Dataset.zip(w).ragged_batch(size))


def with_returns(steps, gamma: float = 1.0, *, key: str = "return"):
  """``steps`` with ``key`` added to each: its return-to-go
  ``G_t = r_t + gamma * discount_t * G_{t+1}`` (the RLDS convention: step t's discount
  weighs what follows it; 0 after a terminal step).

  Works on turn-level steps (``r_t`` = the turn's ``reward``) and on :func:`token_level`
  steps (per-token rewards, the turn's reward on its last token). Runs in graph mode
  too, e.g. inside ``ds.flat_map``.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  n = steps.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
  scalars = steps.map(lambda s: (tf.cast(s[S.REWARD], tf.float32),
                                 tf.cast(s[S.DISCOUNT], tf.float32)))
  # An RLDS episode has at least one step (the final observation).
  rewards, discounts = scalars.batch(tf.maximum(n, 1)).get_single_element()
  returns = tf.scan(lambda following, rd: rd[0] + gamma * rd[1] * following,
                    (rewards, discounts), initializer=tf.constant(0.0), reverse=True)
  return tf.data.Dataset.zip((steps, tf.data.Dataset.from_tensor_slices(returns))).map(
      lambda step, g: {**step, key: g})

