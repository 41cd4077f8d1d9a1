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
id coding).

With the defaults at V = 262,144 (seed 1, 256 tokens): mean entropy 2.3 nats (10th / 90th
percentiles 0.2 / 4.7), mean top-1 probability 0.52, mean tail mass outside the top 128
0.059 (median 0.011).
"""

from __future__ import annotations

import numpy as np


def zipf_logits(num_tokens: int, vocab_size: int, *, seed: int = 0, zipf: float = 1.0,
                offset: float = 50.0, beta_low: float = 1.0, beta_high: float = 2.5,
                shuffle_ids: bool = False) -> np.ndarray:
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

  Returns:
    float32 [T, V].
  """
  if num_tokens < 0 or vocab_size < 1:
    raise ValueError(f"zipf_logits: expected num_tokens >= 0 and vocab_size >= 1, found "
                     f"{num_tokens} and {vocab_size}")
  if not 0 < beta_low <= beta_high:
    raise ValueError(f"zipf_logits: expected 0 < beta_low <= beta_high, found "
                     f"{beta_low} and {beta_high}")
  rng = np.random.default_rng(seed)
  log_unigram = (-zipf * np.log(np.arange(vocab_size) + offset)).astype(np.float32)
  beta = rng.uniform(beta_low, beta_high, size=(num_tokens, 1)).astype(np.float32)
  logits = np.empty((num_tokens, vocab_size), np.float32)
  for t in range(num_tokens):  # row by row: float64 temporaries stay small
    draws = rng.standard_exponential(vocab_size, dtype=np.float32)
    noise = np.log(np.maximum(draws, np.finfo(np.float32).tiny))  # float32 draws can be 0
    logits[t] = beta[t] * (log_unigram - noise)
  if shuffle_ids:
    logits = logits[:, rng.permutation(vocab_size)]
  return logits
