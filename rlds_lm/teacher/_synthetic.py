"""Synthetic, model-like teacher logits for tests and benchmarks.

Real next-token distributions have a heavy head (a few tokens hold most of the mass), an
entropy that varies a lot from token to token (near 0 after "the United", several nats
at the start of a sentence), and a long tail. Uniform random logits have none of this.
:func:`zipf_logits` draws, for each token ``t``,

    logits[t, v] = beta_t * (log u(v) - log E[t, v]),   E ~ Exponential(1),

with ``u(v) ∝ 1 / (v + offset)**zipf`` a unigram frequency per id and ``beta_t`` uniform in
``[beta_low, beta_high]``. ``1 / E`` has a Pareto(1) tail, so the sorted probabilities
fall off like a Zipf law with exponent ``beta_t`` (steeper = more peaked), and the ids of
the head are a frequency-weighted draw: low ids (frequent tokens, as in BPE and
SentencePiece vocabularies, whose ids roughly follow frequency) are likelier in every
row, but every row has its own head. ``shuffle_ids=True`` permutes the vocabulary, so
that ids carry no information about probability (same distributions, worst case for
id coding). ``contexts=n`` goes further: each token draws one of ``n`` "contexts", each
with its own permutation of the vocabulary, so which ids are frequent depends on the
context and the dataset-wide marginal predicts a token's tail poorly (the unfavourable
case for a :class:`rlds_lm.teacher.TailPrior`). Each row is still a permutation of the
row drawn without ``shuffle_ids`` / ``contexts`` (same seed), so per-token entropies and
top-k masses are the same in every layout. Pass the same ``vocab_seed`` to draw more
tokens (another ``seed``) over the same vocabulary layout, e.g. a held-out fit sample.

With the defaults at V = 262,144 (seed 1, 256 tokens): mean entropy 2.3 nats (10th / 90th
percentiles 0.2 / 4.7), mean top-1 probability 0.52, mean tail mass outside the top 128
0.059 (median 0.011).
"""

from __future__ import annotations

import numpy as np


def zipf_logits(num_tokens: int, vocab_size: int, *, seed: int = 0, zipf: float = 1.0,
                offset: float = 50.0, beta_low: float = 1.0, beta_high: float = 2.5,
                shuffle_ids: bool = False, contexts: int = 0,
                vocab_seed: int | None = None) -> np.ndarray:
  """Model-like teacher logits (see the module docstring).

  Args:
    num_tokens: T.
    vocab_size: V.
    seed: numpy seed; the output is deterministic in all arguments.
    zipf: exponent of the unigram frequency over ids.
    offset: added to the id in the unigram law (flattens the first ids).
    beta_low: smallest per-token sharpness.
    beta_high: largest per-token sharpness.
    shuffle_ids: permute the vocabulary (ids independent of frequency).
    contexts: if > 0, the number of contexts, each with its own vocabulary permutation;
      each token draws one uniformly (not with ``shuffle_ids``).
    vocab_seed: seed of the permutations (``shuffle_ids`` / ``contexts``); by default
      they derive from ``seed``.

  Returns:
    float32 [T, V].
  """
  if num_tokens < 0 or vocab_size < 1:
    raise ValueError(f"zipf_logits: expected num_tokens >= 0 and vocab_size >= 1, found "
                     f"{num_tokens} and {vocab_size}")
  if not 0 < beta_low <= beta_high:
    raise ValueError(f"zipf_logits: expected 0 < beta_low <= beta_high, found "
                     f"{beta_low} and {beta_high}")
  if not isinstance(contexts, (int, np.integer)) or contexts < 0:
    raise ValueError(f"zipf_logits: expected contexts an int >= 0, found {contexts!r}")
  if shuffle_ids and contexts:
    raise ValueError("zipf_logits: expected shuffle_ids or contexts, found both")
  rng = np.random.default_rng(seed)
  log_unigram = (-zipf * np.log(np.arange(vocab_size) + offset)).astype(np.float32)
  beta = rng.uniform(beta_low, beta_high, size=(num_tokens, 1)).astype(np.float32)
  logits = np.empty((num_tokens, vocab_size), np.float32)
  for t in range(num_tokens):  # row by row: float64 temporaries stay small
    draws = rng.standard_exponential(vocab_size, dtype=np.float32)
    noise = np.log(np.maximum(draws, np.finfo(np.float32).tiny))  # float32 draws can be 0
    logits[t] = beta[t] * (log_unigram - noise)
  if shuffle_ids:
    perm_rng = rng if vocab_seed is None else np.random.default_rng(vocab_seed)
    logits = logits[:, perm_rng.permutation(vocab_size)]
  if contexts:
    layout = seed if vocab_seed is None else vocab_seed
    picks = np.random.default_rng([seed, 1]).integers(contexts, size=num_tokens)
    for c in np.unique(picks):
      rows = np.flatnonzero(picks == c)
      perm = np.random.default_rng([layout, 2, int(c)]).permutation(vocab_size)
      logits[rows] = logits[rows][:, perm]
  return logits
