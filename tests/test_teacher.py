"""Teacher extraction (top-k, sampled-k, token log-prob), codecs and KL fidelity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlds_lm import schema as S
from rlds_lm import teacher as TT
from rlds_lm import validate as V
from rlds_lm.teacher import _codecs

VOCAB = 1000
TOKENS = 12


def _np_log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  x = np.asarray(logits, np.float64) / temperature
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def logits():
  return TT.zipf_logits(TOKENS, VOCAB, seed=3)


@pytest.fixture(scope="module")
def tokens():
  return np.random.default_rng(0).integers(0, VOCAB, TOKENS).astype(np.int32)


def _arrays(logits, tokens, k=16, s=32, seed=0):
  return TT.teacher_arrays(logits, tokens, top_k=k, sampled=s, key=jax.random.key(seed))


# --------------------------------------------------------------------------------------
# Extraction.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_topk_is_normalised_over_the_full_vocabulary(logits, temperature):
  ids, lps = TT.topk(logits, 16, temperature=temperature)
  ids, lps = np.asarray(ids), np.asarray(lps)
  assert ids.shape == lps.shape == (TOKENS, 16)
  assert ids.dtype == np.int32 and lps.dtype == np.float32
  want = _np_log_softmax(logits, temperature)
  want_ids = np.argsort(-want, axis=-1, kind="stable")[:, :16]
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(lps, np.take_along_axis(want, want_ids, -1), atol=2e-5)
  assert np.all(np.diff(lps, axis=-1) <= 0)  # most likely first
  mass = np.exp(lps.astype(np.float64)).sum(-1)
  assert np.all(mass < 1)  # the tail keeps the rest
  np.testing.assert_allclose(np.asarray(TT.tail_mass(lps)), 1 - mass, atol=1e-5)


def test_topk_batch_dims_numpy_input_and_jit(logits):
  batch = np.stack([logits, logits[::-1]])  # [2, T, V]
  ids, lps = TT.topk(batch, 4)
  assert ids.shape == (2, TOKENS, 4)
  np.testing.assert_array_equal(ids[1], np.asarray(TT.topk(logits[::-1], 4)[0]))
  jitted = jax.jit(lambda x, t: TT.topk(x, 4, temperature=t))
  ids_j, lps_j = jitted(jnp.asarray(logits), 0.5)
  ids_e, lps_e = TT.topk(logits, 4, temperature=0.5)
  np.testing.assert_array_equal(ids_j, ids_e)
  np.testing.assert_allclose(lps_j, lps_e, rtol=1e-6)


def test_sampled_k_and_token_logprob_under_jit(logits, tokens):
  sample = jax.jit(lambda x, key: TT.sampled_k(x, 8, key, temperature=0.9))
  ids, counts = sample(logits, jax.random.key(3))
  want_ids, want_counts = TT.sampled_k(logits, 8, jax.random.key(3), temperature=0.9)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(counts, want_counts)
  got = jax.jit(TT.token_logprob)(logits, tokens)
  np.testing.assert_allclose(got, TT.token_logprob(logits, tokens), rtol=1e-6)


def test_tail_mass_keeps_precision_for_peaked_rows():
  lps = np.array([[np.log1p(-3e-7), np.log(1e-7), np.log(1e-7)]], np.float32)
  np.testing.assert_allclose(np.asarray(TT.tail_mass(lps)), [1e-7], rtol=0.05)


def test_masked_vocabulary_entries_give_finite_logprobs():
  x = np.zeros((2, 8), np.float32)
  x[:, 3:] = -np.inf
  _, lps = TT.topk(x, 5)
  assert np.all(np.isfinite(np.asarray(lps)))
  np.testing.assert_allclose(np.asarray(lps)[:, 3:], TT.LOGPROB_FLOOR)


def test_token_logprob(logits, tokens):
  got = np.asarray(TT.token_logprob(logits, tokens, temperature=0.8))
  want = _np_log_softmax(logits, 0.8)[np.arange(TOKENS), tokens]
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_sampled_k_layout_and_determinism(logits):
  ids, counts = TT.sampled_k(logits, 64, jax.random.key(1))
  ids, counts = np.asarray(ids), np.asarray(counts)
  assert ids.shape == counts.shape == (TOKENS, 64)
  assert ids.dtype == counts.dtype == np.int32
  np.testing.assert_array_equal(counts.sum(-1), 64)
  for row_ids, row_counts in zip(ids, counts):
    n = int((row_counts > 0).sum())
    assert np.all(row_counts[:n] > 0) and np.all(row_counts[n:] == 0)
    assert np.all(np.diff(row_ids[:n]) > 0)  # distinct, ascending
    assert np.all(row_ids[n:] == 0)
  again = TT.sampled_k(logits, 64, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(again[0]), ids)
  other = TT.sampled_k(logits, 64, jax.random.key(2))
  assert not np.array_equal(np.asarray(other[0]), ids)


def test_sampled_k_frequencies_approach_the_distribution():
  # 1,300 ids: not a multiple of the sampling block, so the padding is exercised too.
  rng = np.random.default_rng(5)
  x = (rng.normal(size=(3, 1300)) * 2.0).astype(np.float32)
  x[:, 7] = -np.inf  # probability 0: never drawn
  draws = 50_000
  ids, counts = TT.sampled_k(x, draws, jax.random.key(0), temperature=1.5)
  p = np.exp(_np_log_softmax(x, 1.5))
  freq = np.zeros_like(p)
  rows = np.broadcast_to(np.arange(3)[:, None], ids.shape)
  np.add.at(freq, (rows, np.asarray(ids)), np.asarray(counts) / draws)
  assert freq[:, 7].max() == 0
  assert np.asarray(ids).max() < 1300
  # Every frequency within 5 standard errors (plus float32 slack); total variation small.
  sigma = np.sqrt(p * (1 - p) / draws)
  assert np.all(np.abs(freq - p) <= 5 * sigma + 2e-4)
  assert 0.5 * np.abs(freq - p).sum(-1).max() < 0.08


@pytest.mark.parametrize("call, match", [
    (lambda x: TT.topk(x, VOCAB + 1), r"k: expected 1 <= k <= the vocabulary size \(1000\), "
                                      r"found 1001"),
    (lambda x: TT.topk(x, 0), "k: expected 1 <= k"),
    (lambda x: TT.topk(x, 2.5), "k: expected a Python int"),
    (lambda x: TT.topk(x, 4, temperature=0.0), "temperature: expected a finite scalar > 0, "
                                               "found 0.0"),
    (lambda x: TT.topk(x, 4, temperature=-1.0), "temperature: expected a finite scalar > 0"),
    (lambda x: TT.sampled_k(x, 4, jax.random.key(0), temperature=float("nan")),
     "temperature"),
    (lambda x: TT.sampled_k(x, 0, jax.random.key(0)), "num_samples: expected num_samples >= 1"),
    (lambda x: TT.topk(x[0], 4), r"logits: expected shape \[..., T, V\] \(rank >= 2\)"),
    (lambda x: TT.topk(x.astype(np.int32), 4), "expected floating-point"),
    (lambda x: TT.token_logprob(x, np.zeros(3, np.int32)), r"tokens: expected shape \(12,\)"),
    (lambda x: TT.token_logprob(x, np.full(TOKENS, VOCAB)), r"expected ids in \[0, 1000\), "
                                                            "found id 1000"),
    (lambda x: TT.teacher_arrays(x, np.zeros(TOKENS, np.int32), sampled=4),
     "key: expected a jax.random key"),
])
def test_extraction_refuses_bad_inputs(logits, call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call(logits)


# --------------------------------------------------------------------------------------
# Codecs.
# --------------------------------------------------------------------------------------

CODECS = [TT.RawCodec(VOCAB), TT.Fp16Codec(VOCAB), TT.PackedCodec(VOCAB),
          TT.PackedCodec(VOCAB, levels=32, compressor="zlib"),
          TT.PackedCodec(VOCAB, compressor="none")]


def _by_id(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
  order = np.argsort(ids, axis=-1, kind="stable")
  return np.take_along_axis(values, order, -1)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: f"{c.name}-{getattr(c, 'levels', '')}"
                         f"{getattr(c, 'compressor', '')}")
def test_codec_round_trip(codec, logits, tokens):
  arrays = _arrays(logits, tokens)
  assert isinstance(codec, TT.TeacherCodec)
  data = codec.encode(arrays)
  out = codec.decode(data, TOKENS)
  assert set(out) == set(arrays)
  for name, value in out.items():
    assert value.shape == arrays[name].shape and value.dtype == arrays[name].dtype, name
  # Sampled-k and the top-k id sets are exact.
  np.testing.assert_array_equal(out[S.TEACHER_SAMPLED_IDS], arrays[S.TEACHER_SAMPLED_IDS])
  np.testing.assert_array_equal(out[S.TEACHER_SAMPLED_COUNTS],
                                arrays[S.TEACHER_SAMPLED_COUNTS])
  np.testing.assert_array_equal(np.sort(out[S.TEACHER_TOPK_IDS], -1),
                                np.sort(arrays[S.TEACHER_TOPK_IDS], -1))
  got = _by_id(out[S.TEACHER_TOPK_IDS], out[S.TEACHER_TOPK_LOGPROBS]).astype(np.float64)
  want = _by_id(arrays[S.TEACHER_TOPK_IDS], arrays[S.TEACHER_TOPK_LOGPROBS]).astype(np.float64)
  if codec.lossless:
    assert data and codec.name == "raw"
    for name in arrays:
      np.testing.assert_array_equal(out[name], arrays[name])
  elif codec.name == "fp16":
    np.testing.assert_array_equal(out[S.TEACHER_TOPK_IDS], arrays[S.TEACHER_TOPK_IDS])
    np.testing.assert_allclose(got, want, rtol=2**-11, atol=1e-7)
  else:
    # Within half a quantisation step of sqrt(p), plus the row rescaling to 1 - tail.
    step = 1.0 / codec.levels
    assert np.abs(np.exp(got / 2) - np.exp(want / 2)).max() <= 0.5 * step + 2e-3
    lps = out[S.TEACHER_TOPK_LOGPROBS]
    assert np.all(np.diff(lps, axis=-1) <= 0)  # re-sorted most likely first
    tail_in = 1 - np.exp(want).sum(-1)
    tail_out = 1 - np.exp(got).sum(-1)
    np.testing.assert_allclose(tail_out, tail_in, rtol=0.07, atol=1e-6)
  np.testing.assert_allclose(out[S.TEACHER_TOKEN_LOGPROB], arrays[S.TEACHER_TOKEN_LOGPROB],
                             rtol=2**-10 if not codec.lossless else 0, atol=1e-6)
  # Any codec's blob decodes through the tag dispatcher.
  again = TT.decode(data, TOKENS, VOCAB)
  for name in out:
    np.testing.assert_array_equal(again[name], out[name])


@pytest.mark.parametrize("name", ["raw", "fp16", "packed"])
def test_decoded_arrays_validate_in_an_episode(name, logits, tokens):
  config = S.SchemaConfig(vocab_size=VOCAB, teacher_top_k=16, teacher_sampled_k=32)
  codec = TT.get_codec(name, VOCAB)
  teacher = codec.decode(codec.encode(_arrays(logits, tokens)), TOKENS)
  prompt = np.arange(5, dtype=np.int32)
  episode = S.rollout_episode(
      config, [S.Turn(S.observation(config, prompt, "p"), tokens, teacher=teacher)],
      prompt_id="p0")
  V.validate_episode(episode, config)


@pytest.mark.parametrize("codec", CODECS[:3], ids=lambda c: c.name)
def test_codec_subsets_and_edge_shapes(codec):
  x = TT.zipf_logits(3, 40, seed=1)
  tok = np.zeros(3, np.int32)
  cases = [
      TT.teacher_arrays(x, tok, top_k=40),  # K = V: no tail
      TT.teacher_arrays(x, tok, sampled=300, key=jax.random.key(0)),  # S > 256
      {S.TEACHER_TOKEN_LOGPROB: np.zeros(3, np.float32)},
      TT.teacher_arrays(x[:0], tok[:0], top_k=4, sampled=2, key=jax.random.key(0)),  # T = 0
  ]
  for arrays in cases:
    t = len(arrays[S.TEACHER_TOKEN_LOGPROB])
    out = codec.decode(codec.encode(arrays), t)
    assert set(out) == set(arrays)
    for name in arrays:
      if name != S.TEACHER_TOPK_LOGPROBS:
        np.testing.assert_allclose(np.sort(out[name], -1), np.sort(arrays[name], -1),
                                   rtol=1e-3)


def test_packed_is_much_smaller_than_raw(logits, tokens):
  arrays = _arrays(logits, tokens, k=64, s=0)
  sizes = {c.name: len(c.encode(arrays)) for c in CODECS[:3]}
  assert sizes["packed"] < sizes["fp16"] < sizes["raw"]
  assert sizes["packed"] < 0.5 * sizes["fp16"]


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.pop(S.TEACHER_TOPK_LOGPROBS), "expected topk_ids and topk_logprobs together"),
    (lambda a: a.__setitem__("logits", np.zeros(3)), "found unknown"),
    (lambda a: a[S.TEACHER_TOPK_IDS].__setitem__((0, 0), VOCAB),
     r"topk_ids: expected ids in \[0, 1000\), found id 1000"),
    (lambda a: a[S.TEACHER_TOPK_LOGPROBS].__setitem__((0, 0), 0.5),
     "topk_logprobs: expected log-probs <= 0, found max 0.5"),
    (lambda a: a[S.TEACHER_TOPK_LOGPROBS].__setitem__((0, 0), np.nan), "expected finite"),
    (lambda a: a[S.TEACHER_SAMPLED_COUNTS].__setitem__((0, 0), 99),
     "expected each row to sum to S = 32"),
    (lambda a: a.__setitem__(S.TEACHER_TOKEN_LOGPROB, np.zeros(3, np.float32)),
     "expected one token count T across fields"),
    (lambda a: a.__setitem__(S.TEACHER_TOPK_LOGPROBS, a[S.TEACHER_TOPK_LOGPROBS][:, :3]),
     "expected the shape of topk_ids"),
])
@pytest.mark.parametrize("name", ["raw", "fp16", "packed"])
def test_codecs_refuse_bad_arrays(name, mutate, match, logits, tokens):
  arrays = {k: np.array(v) for k, v in _arrays(logits, tokens).items()}
  mutate(arrays)
  with pytest.raises(ValueError, match=match):
    TT.get_codec(name, VOCAB).encode(arrays)


def test_packed_refuses_repeated_ids_and_bad_blobs(logits, tokens):
  codec = TT.PackedCodec(VOCAB)
  arrays = {k: np.array(v) for k, v in _arrays(logits, tokens).items()}
  arrays[S.TEACHER_TOPK_IDS][2, 1] = arrays[S.TEACHER_TOPK_IDS][2, 0]
  with pytest.raises(ValueError, match="expected distinct ids in each row, found id .* twice "
                                       "in row 2"):
    codec.encode(arrays)
  data = codec.encode(_arrays(logits, tokens))
  with pytest.raises(ValueError, match=r"expected num_tokens = 11, found T = 12"):
    codec.decode(data, TOKENS - 1)
  with pytest.raises(ValueError, match="truncated"):
    codec.decode(data[:-5], TOKENS)
  with pytest.raises(ValueError, match="trailing byte"):
    codec.decode(data + b"\0", TOKENS)
  with pytest.raises(ValueError, match=r"expected codec tag 1 \('raw'\), found tag 3 "
                                       r"\('packed'\)"):
    TT.RawCodec(VOCAB).decode(data, TOKENS)
  with pytest.raises(ValueError, match="codec: expected one of"):
    TT.get_codec("gzip", VOCAB)
  with pytest.raises(ValueError, match="PackedCodec.levels: expected 1..255, found 300"):
    TT.PackedCodec(VOCAB, levels=300)


def test_bit_packing_round_trip():
  rng = np.random.default_rng(0)
  nbits = rng.integers(0, 40, 500)
  values = rng.integers(0, 2**40, 500) & ((1 << nbits) - 1)
  data = _codecs.pack_bits(values, nbits)
  assert len(data) == -(-nbits.sum() // 8)
  np.testing.assert_array_equal(_codecs.unpack_bits(data, nbits), values)
  np.testing.assert_array_equal(_codecs.unpack_bits(_codecs.pack_bits(values % 8, 3), 3, 500),
                                values % 8)


# --------------------------------------------------------------------------------------
# Reconstruction and KL.
# --------------------------------------------------------------------------------------


def _independent_topk_kl(true_lp: np.ndarray, ids: np.ndarray, lps: np.ndarray) -> np.ndarray:
  """KL(p || top-k + uniform tail), dense, written without the library."""
  p = np.exp(true_lp)
  out = []
  for t in range(p.shape[0]):
    q = np.empty(p.shape[1])
    top = np.exp(lps[t].astype(np.float64))
    q[:] = (1 - top.sum()) / (p.shape[1] - len(top))
    q[ids[t]] = top
    out.append(np.sum(p[t] * (np.log(p[t]) - np.log(q))))
  return np.array(out)


def test_kl_of_raw_topk_matches_an_independent_dense_computation(logits, tokens):
  arrays = _arrays(logits, tokens, k=16, s=0)
  true_lp = _np_log_softmax(logits)
  got = TT.kl_divergence(np.asarray(TT.log_probs(logits)), arrays, chunk=5)
  want = _independent_topk_kl(true_lp, arrays[S.TEACHER_TOPK_IDS],
                              arrays[S.TEACHER_TOPK_LOGPROBS])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  dense = TT.reconstruct(arrays, VOCAB)
  assert dense.shape == (TOKENS, VOCAB)
  np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-5)
  dense_kl = np.sum(np.exp(true_lp) * (true_lp - np.log(dense.astype(np.float64))), -1)
  np.testing.assert_allclose(got, dense_kl, rtol=1e-3, atol=1e-6)


def test_kl_is_nonnegative_and_decreases_with_k(logits, tokens):
  true_lp = np.asarray(TT.log_probs(logits))
  means = []
  for k in (2, 8, 32, 128, 512):
    kl = TT.kl_divergence(true_lp, _arrays(logits, tokens, k=k, s=0))
    assert np.all(kl >= -1e-9)
    means.append(kl.mean())
  assert all(a > b for a, b in zip(means, means[1:])), means
  full = TT.kl_divergence(true_lp, _arrays(logits, tokens, k=VOCAB, s=0))
  np.testing.assert_allclose(full, 0.0, atol=1e-6)


def test_quantisation_adds_little_kl(logits, tokens):
  true_lp = np.asarray(TT.log_probs(logits))
  arrays = _arrays(logits, tokens, k=64, s=0)
  base = TT.kl_divergence(true_lp, arrays).mean()
  for levels in (16, 64, 255):
    codec = TT.PackedCodec(VOCAB, levels=levels)
    kl = TT.kl_divergence(true_lp, codec.decode(codec.encode(arrays), TOKENS)).mean()
    assert base <= kl <= base + 64 / (6 * levels**2), (levels, base, kl)


def test_renormalized_and_sampled_reconstructions(logits, tokens):
  arrays = _arrays(logits, tokens, k=16, s=32)
  true_lp = np.asarray(TT.log_probs(logits))
  renorm = TT.reconstruct(arrays, VOCAB, tail=TT.TAIL_RENORMALIZE)
  np.testing.assert_allclose(renorm.sum(-1), 1.0, atol=1e-5)
  assert np.all((renorm > 0).sum(-1) == 16)
  assert np.all(np.isinf(TT.kl_divergence(true_lp, arrays, tail=TT.TAIL_RENORMALIZE)))
  sampled = TT.reconstruct(arrays, VOCAB, source="sampled")
  rows = np.arange(TOKENS)[:, None]
  ids, counts = arrays[S.TEACHER_SAMPLED_IDS], arrays[S.TEACHER_SAMPLED_COUNTS]
  np.testing.assert_allclose(sampled[rows, ids][counts > 0], (counts / 32)[counts > 0])
  np.testing.assert_allclose(sampled.sum(-1), 1.0, atol=1e-6)
  assert np.all(np.isinf(TT.kl_divergence(true_lp, arrays, source="sampled")))
  with pytest.raises(ValueError, match="tail: expected one of"):
    TT.reconstruct(arrays, VOCAB, tail="zero")


def test_uniform_tail_survives_topk_mass_rounded_above_one():
  lps = np.log(np.array([[0.6, 0.4000001]], np.float64))
  arrays = {S.TEACHER_TOPK_IDS: np.array([[0, 1]]), S.TEACHER_TOPK_LOGPROBS: lps}
  dense = TT.reconstruct(arrays, 10)
  assert np.all(dense > 0) and abs(dense.sum() - 1) < 1e-6


def test_zipf_logits_are_deterministic_and_heavy_headed():
  a = TT.zipf_logits(8, 5000, seed=4)
  np.testing.assert_array_equal(a, TT.zipf_logits(8, 5000, seed=4))
  assert a.dtype == np.float32 and np.all(np.isfinite(a))
  top1 = np.exp(_np_log_softmax(a).max(-1))
  assert top1.mean() > 0.2
  shuffled = TT.zipf_logits(8, 5000, seed=4, shuffle_ids=True)
  np.testing.assert_allclose(np.sort(shuffled, -1), np.sort(a, -1))


@pytest.mark.parametrize("name", ["raw", "fp16", "packed"])
def test_corrupt_blobs_raise_value_errors_only(name, logits, tokens):
  codec = TT.get_codec(name, VOCAB)
  data = codec.encode(_arrays(logits, tokens, k=8, s=16))
  rng = np.random.default_rng(0)
  for _ in range(150):
    bad = bytearray(data)
    for i in rng.integers(0, len(bad), size=rng.integers(1, 4)):
      bad[i] = rng.integers(0, 256)
    if rng.random() < 0.2:
      bad = bad[:rng.integers(0, len(bad))]
    try:
      out = codec.decode(bytes(bad), TOKENS)
    except ValueError:
      continue
    assert out[S.TEACHER_TOPK_IDS].max() < VOCAB  # what decodes is still well-formed


@pytest.mark.parametrize("vocab", [0, 2**31 + 1, 3.5])
def test_codecs_refuse_bad_vocab_sizes(vocab):
  for cls in (TT.RawCodec, TT.Fp16Codec, TT.PackedCodec):
    with pytest.raises(ValueError, match=r"vocab_size: expected an int in \[1, 2\*\*31\]"):
      cls(vocab)
