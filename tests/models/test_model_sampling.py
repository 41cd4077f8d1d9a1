"""KV-cache sampling: equal to the uncached reference, batch-independent, honest log-probs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rlds_lm import models as M
from rlds_lm.models import config as C
from rlds_lm.models import sampling as SM
from rlds_lm.tokenizers import ByteTokenizer

EOS = ByteTokenizer.eos_id
NEW = 8  # max_new_tokens everywhere (one compilation per sampler kind)
TEMPERATURE = M.SamplerConfig(temperature=1.0)
TRUNCATED = M.SamplerConfig(temperature=0.7, top_k=20, top_p=0.9)
GREEDY = M.SamplerConfig.greedy()


@pytest.fixture(scope="module")
def params():
  return M.init_params(C.TINY, seed=0)


def _prompts(lengths=(5, 11, 3), seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, C.TINY.vocab_size, n).astype(np.int32) for n in lengths]


def _sample(params, prompts, seeds, sampler, **kwargs):
  return M.sample(C.TINY, params, prompts, seeds, sampler, NEW, eos_id=EOS, **kwargs)


@pytest.mark.parametrize("sampler", [GREEDY, TEMPERATURE, TRUNCATED],
                         ids=["greedy", "temperature", "top_k_top_p"])
def test_cached_sampler_equals_uncached(params, sampler):
  prompts, seeds = _prompts(), [11, 12, 2**40 + 13]
  cached = _sample(params, prompts, seeds, sampler)
  uncached = M.sample_uncached(C.TINY, params, prompts, seeds, sampler, NEW, eos_id=EOS)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_array_equal(cached.lengths, uncached.lengths)
  assert cached.stop_reasons == uncached.stop_reasons
  np.testing.assert_allclose(cached.logprobs, uncached.logprobs, atol=1e-4)
  if sampler is not GREEDY:  # different seeds, different completions
    assert len({tuple(row) for row in cached.tokens}) == 3


def test_same_seed_same_completion_in_any_batch(params):
  prompt = _prompts((7,), seed=1)[0]
  alone = _sample(params, [prompt], [5], TEMPERATURE)
  others = _prompts((20, 2, 9), seed=2)  # the 20-token prompt changes the length bucket
  batch = _sample(params, [others[0], others[1], prompt, others[2]], [8, 9, 5, 10],
                  TEMPERATURE, padding="right")
  np.testing.assert_array_equal(batch.tokens[2], alone.tokens[0])
  np.testing.assert_allclose(batch.logprobs[2], alone.logprobs[0], atol=1e-4)
  twice = _sample(params, [prompt, prompt, others[1]], [5, 5, 6], TEMPERATURE)
  np.testing.assert_array_equal(twice.tokens[0], alone.tokens[0])
  np.testing.assert_array_equal(twice.tokens[1], alone.tokens[0])


def test_left_and_right_padding_agree(params):
  prompts, seeds = _prompts(seed=3), [1, 2, 3]
  left = _sample(params, prompts, seeds, TRUNCATED, padding="left")
  right = _sample(params, prompts, seeds, TRUNCATED, padding="right")
  np.testing.assert_array_equal(left.tokens, right.tokens)
  np.testing.assert_allclose(left.logprobs, right.logprobs, atol=1e-4)


def _reference_logprobs(logits: np.ndarray, sampler: M.SamplerConfig) -> np.ndarray:
  """The sampling distribution recomputed in numpy: temperature, top-k, top-p."""
  x = logits.astype(np.float64) / sampler.temperature
  order = np.argsort(-x, kind="stable")
  keep = np.zeros(x.shape, bool)
  kept = order[:sampler.top_k] if sampler.top_k else order
  if sampler.top_p < 1:
    p = np.exp(x[kept] - x[kept].max())
    p /= p.sum()
    kept = kept[(np.cumsum(p) - p) < sampler.top_p]
  keep[kept] = True
  z = np.where(keep, x, -np.inf)
  return z - (np.log(np.exp(z[keep] - z[keep].max()).sum()) + z[keep].max())


@pytest.mark.parametrize("sampler", [TEMPERATURE, TRUNCATED, GREEDY],
                         ids=["temperature", "top_k_top_p", "greedy"])
def test_behaviour_logprobs_match_recomputed_distribution(params, sampler):
  prompts = _prompts(seed=4)
  out = _sample(params, prompts, [21, 22, 23], sampler)
  sequences = [np.concatenate([p, out.tokens[i, :n]])
               for i, (p, n) in enumerate(zip(prompts, out.lengths))]
  scored = M.score(C.TINY, params, sequences, [len(p) for p in prompts], return_logits=True)
  for i, s in enumerate(scored):
    for j, token in enumerate(out.tokens[i, :out.lengths[i]]):
      reference = _reference_logprobs(s.logits[j], sampler)
      assert np.isfinite(reference[token]), "sampled a token outside the truncated set"
      np.testing.assert_allclose(out.logprobs[i, j], reference[token], atol=2e-4)
      if sampler is GREEDY:
        assert token == np.argmax(s.logits[j]) and out.logprobs[i, j] == 0.0


def test_eos_ends_a_sequence(params):
  prompts = _prompts(seed=5)
  greedy = _sample(params, prompts, [0, 0, 0], GREEDY)
  eos = int(greedy.tokens[0, 2])  # make prompt 0's third token the end of sequence
  out = M.sample(C.TINY, params, prompts, [0, 0, 0], GREEDY, NEW, eos_id=eos)
  first = int(np.flatnonzero(greedy.tokens[0] == eos)[0])
  assert out.lengths[0] == first + 1 and out.stop_reasons[0] == "eos"
  np.testing.assert_array_equal(out.tokens[0, :first + 1], greedy.tokens[0, :first + 1])
  assert np.all(out.tokens[0, first + 1:] == 0) and np.all(out.logprobs[0, first + 1:] == 0)
  completions = out.completions()
  assert len(completions[0]) == first + 1 and completions[0].tokens[-1] == eos
  for i in (1, 2):
    expected = "eos" if eos in greedy.tokens[i] else "length"
    assert out.stop_reasons[i] == expected


def test_sampling_logprobs_truncation():
  probs = np.array([[0.05, 0.5, 0.15, 0.3]])
  logits = np.log(probs)
  keep = lambda **kw: np.isfinite(np.asarray(SM.sampling_logprobs(logits, **kw)))[0]
  assert keep(temperature=1.0, top_p=0.7, top_k=0, nucleus=True).tolist() == [0, 1, 0, 1]
  assert keep(temperature=1.0, top_p=0.5, top_k=0, nucleus=True).tolist() == [0, 1, 0, 0]
  assert keep(temperature=1.0, top_p=1.0, top_k=3, nucleus=False).tolist() == [0, 1, 1, 1]
  # top-p applies to the renormalised top-k distribution: 0.5/0.8 < 0.7 <= 0.8/0.8
  assert keep(temperature=1.0, top_p=0.7, top_k=2, nucleus=True).tolist() == [0, 1, 0, 1]
  logp = np.asarray(SM.sampling_logprobs(logits, temperature=2.0, top_p=1.0, top_k=0,
                                         nucleus=False))
  expected = np.log(probs ** 0.5 / (probs ** 0.5).sum())
  np.testing.assert_allclose(logp, expected, rtol=1e-5)


def _top2(logits, targets):
  del targets
  values, indices = jax.lax.top_k(logits, 2)
  return {"values": values, "indices": indices}


def test_policy_sample_and_score(params):
  policy = M.Policy(C.TINY, params, eos_id=EOS, name="tiny-test")
  prompts = _prompts(seed=6)
  completions = policy.sample(prompts, [1, 2, 3], TRUNCATED, NEW)
  for c in completions:
    assert (c.stop_reason, len(c)) == ("length", NEW) or (
        c.stop_reason == "eos" and c.tokens[-1] == EOS)
  sequences = [np.concatenate([p, c.tokens]) for p, c in zip(prompts, completions)]
  scored = policy.score(sequences, [len(p) for p in prompts], extract=_top2,
                        return_logits=True)
  for c, s in zip(completions, scored):
    n = len(c.tokens)
    assert s.logprobs.shape == (n,) and s.logits.shape == (n, C.TINY.vocab_size)
    assert s.extra["values"].shape == (n, 2) and s.extra["indices"].shape == (n, 2)
    log_softmax = s.logits - np.log(np.exp(s.logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(s.logprobs, log_softmax[np.arange(n), c.tokens], atol=1e-5)
    np.testing.assert_array_equal(s.extra["indices"][:, 0], s.logits.argmax(-1))
  assert policy.name == "tiny-test" and len(policy.digest) == 16


@pytest.mark.parametrize("call, message", [
    (lambda p: _sample(p, [np.arange(3, 3 + 513) % 250 + 3], [0], GREEDY),
     r"prompt 0 has 513 tokens, longer than the context of model 'tiny' \(max_seq_len=512\)"),
    (lambda p: _sample(p, [np.full(508, 5)], [0], GREEDY),
     r"prompt 0 has 508 tokens; with max_new_tokens=8 it needs 516 positions"),
    (lambda p: _sample(p, [np.array([5, 259, 6])], [0], GREEDY),
     r"prompt 0: token id 259 at index 1 is outside the vocabulary \[0, 259\)"),
    (lambda p: _sample(p, [np.array([5]), np.array([-1])], [0, 1], GREEDY),
     r"prompt 1: token id -1 at index 0 is outside the vocabulary"),
    (lambda p: _sample(p, [np.array([5])], [0], M.SamplerConfig(top_k=300)),
     r"top_k=300 is larger than the vocabulary \(259 ids\)"),
    (lambda p: _sample(p, [np.array([5])], [0, 1], GREEDY),
     r"expected one seed per prompt \(1\), found 2"),
    (lambda p: _sample(p, [np.array([5])], [-3], GREEDY),
     r"seeds must be integers in \[0, 2\*\*64\)"),
    (lambda p: _sample(p, [np.array([], np.int32)], [0], GREEDY),
     r"prompt 0: expected a non-empty 1-D integer array"),
    (lambda p: _sample(p, [np.array([1.5, 2.0])], [0], GREEDY),
     r"prompt 0: expected a non-empty 1-D integer array, found dtype=float64"),
    (lambda p: M.sample(C.TINY, p, [np.array([5])], [0], GREEDY, 0, eos_id=EOS),
     r"max_new_tokens must be an int >= 1, found 0"),
    (lambda p: M.score(C.TINY, p, [np.array([5, 6])], [0]),
     r"sequence 0: prompt length must be in \[1, 2\], found 0"),
    (lambda p: M.sample(C.TINY, p, [np.array([5])], [0], GREEDY, 4, eos_id=259),
     r"eos_id 259 is outside the vocabulary \[0, 259\)"),
    (lambda p: M.sample(C.TINY, p, [np.array([5])], [0], GREEDY, 4, eos_id=EOS,
                        padding="middle"),
     r"padding must be 'left' or 'right', found 'middle'"),
])
def test_bad_inputs_are_refused(params, call, message):
  with pytest.raises(ValueError, match=message):
    call(params)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), r"temperature must be > 0 \(use SamplerConfig.greedy\(\)"),
    (dict(temperature=-1.0), r"temperature must be > 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\] \(1.0 = off\), found 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), r"top_k must be an int >= 0 \(0 = off\), found -1"),
])
def test_bad_sampler_settings_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    M.SamplerConfig(**kwargs)


def test_sampler_fields_match_the_episode_schema():
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  assert TRUNCATED.to_dict() == {S.SAMPLER_TEMPERATURE: 0.7, S.SAMPLER_TOP_K: 20,
                                 S.SAMPLER_TOP_P: 0.9}
