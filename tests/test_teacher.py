"""Teacher extraction (top-k, sampled-k, token log-prob), codecs and KL fidelity."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlds_lm import schema as S
from rlds_lm import teacher as TT
from rlds_lm import validate as V
from rlds_lm.teacher import _bytes

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


FIXTURE_V1 = os.path.join(os.path.dirname(__file__), "fixtures", "teacher_packed_v1.npz")


@pytest.mark.parametrize("case", ["zstd128", "zlib32", "none", "notail", "wide"])
def test_packed_decodes_blobs_written_by_format_version_1(case):
  # Blobs encoded by PackedCodec format version 1 (commit a3b9814, before issue 15), with
  # the arrays that code decoded them to: they must still decode to the same arrays.
  saved = np.load(FIXTURE_V1)
  vocab, num_tokens = (int(x) for x in saved[f"{case}/meta"])
  blob = saved[f"{case}/blob"].tobytes()
  assert blob[1] == 1  # the format version byte
  out = TT.decode(blob, num_tokens, vocab)
  fields = {key.split("/", 1)[1] for key in saved.files if key.startswith(case + "/")}
  assert set(out) == fields - {"blob", "meta"}
  for name, value in out.items():
    np.testing.assert_array_equal(value, saved[f"{case}/{name}"], err_msg=name)


def test_packed_writes_format_version_2_and_names_unknown_versions(logits, tokens):
  codec = TT.PackedCodec(VOCAB)
  data = codec.encode(_arrays(logits, tokens))
  assert data[:2] == bytes([codec.tag, 2])
  with pytest.raises(ValueError, match=r"packed data: expected format version 1 or 2, "
                                       r"found 9 \(written by a newer rlds_lm\?\)"):
    codec.decode(data[:1] + b"\x09" + data[2:], TOKENS)
  with pytest.raises(ValueError, match="fp16 data: expected format version 1, found 2"):
    TT.Fp16Codec(VOCAB).decode(bytes([TT.Fp16Codec.tag]) + data[1:], TOKENS)


@pytest.mark.parametrize("layout", ["frequency-ordered", "shuffled"])
@pytest.mark.parametrize("compressor", ["zstd", "zlib", "none"])
def test_packed_round_trip_of_wide_turns(layout, compressor):
  # Enough entries (T * K = 16384) for the id coder to split rows into several contexts.
  vocab, t, k = 8192, 128, 128
  x = TT.zipf_logits(t, vocab, seed=7, shuffle_ids=layout == "shuffled")
  arrays = TT.teacher_arrays(x, np.zeros(t, np.int32), top_k=k)
  codec = TT.PackedCodec(vocab, compressor=compressor)
  out = codec.decode(codec.encode(arrays), t)
  np.testing.assert_array_equal(np.sort(out[S.TEACHER_TOPK_IDS], -1),
                                np.sort(arrays[S.TEACHER_TOPK_IDS], -1))
  got = _by_id(out[S.TEACHER_TOPK_IDS], out[S.TEACHER_TOPK_LOGPROBS]).astype(np.float64)
  want = _by_id(arrays[S.TEACHER_TOPK_IDS], arrays[S.TEACHER_TOPK_LOGPROBS]).astype(np.float64)
  assert np.abs(np.exp(got / 2) - np.exp(want / 2)).max() <= 0.5 / codec.levels + 2e-3
  fp16 = TT.Fp16Codec(vocab)
  np.testing.assert_array_equal(  # entropy-coded, but float16 exactly
      out[S.TEACHER_TOKEN_LOGPROB],
      fp16.decode(fp16.encode(arrays), t)[S.TEACHER_TOKEN_LOGPROB])


@pytest.mark.parametrize("compressor", ["zstd", "none"])
def test_packed_round_trip_of_ids_at_the_largest_vocabulary(compressor):
  # Id 2**31 - 1 first in its row is a gap of 32 bits: its symbol holds at most 2 more
  # bits in a byte, which the encoder must respect whatever width compresses best.
  vocab = 2**31
  ids = np.array([[2**31 - 1, 0], [5, 2**31 - 2], [2**30, 2**31 - 1]], np.int32)
  arrays = {S.TEACHER_TOPK_IDS: ids,
            S.TEACHER_TOPK_LOGPROBS: np.log([[0.5, 0.25], [0.4, 0.4], [0.9, 0.05]]),
            S.TEACHER_SAMPLED_IDS: ids,
            S.TEACHER_SAMPLED_COUNTS: np.array([[1, 1], [1, 1], [2, 0]], np.int32)}
  codec = TT.PackedCodec(vocab, compressor=compressor)
  out = codec.decode(codec.encode(arrays), 3)
  np.testing.assert_array_equal(np.sort(out[S.TEACHER_TOPK_IDS], -1), np.sort(ids, -1))
  np.testing.assert_array_equal(out[S.TEACHER_SAMPLED_IDS],
                                [[0, 2**31 - 1], [5, 2**31 - 2], [2**30, 0]])


def test_packed_refuses_an_unknown_symbol_width(logits, tokens):
  codec = TT.PackedCodec(VOCAB)
  arrays = _arrays(logits, tokens, s=0)
  data = codec.encode(arrays)
  # The width byte follows the tail masses and the id contexts byte.
  at = (sum(codec.size_breakdown(arrays)[name] for name in ("header", "tail_mass")) + 1)
  assert data[at] in (0, 2, 3)
  with pytest.raises(ValueError, match="expected id classes of at most 3 extra bits, "
                                       "found 7"):
    codec.decode(data[:at] + b"\x07" + data[at + 1:], TOKENS)


def test_packed_entropy_codes_the_bits_below_each_gaps_leading_one():
  # Every gap is 64: bit length 7, and the 6 bits below its leading 1 are all 0. Raw
  # bits would cost 6 bits per id whatever their values; the top two of them are coded
  # with the bit length, so their regularity is paid for once, not per id.
  t, k, vocab = 64, 32, 4096
  offsets = np.random.default_rng(0).integers(0, 64, t)
  ids = offsets[:, None] + 64 * np.arange(k)[None, :]
  logprobs = np.log(np.full((t, k), 0.5 / k))
  arrays = {S.TEACHER_TOPK_IDS: ids.astype(np.int32),
            S.TEACHER_TOPK_LOGPROBS: logprobs.astype(np.float32)}
  codec = TT.PackedCodec(vocab)
  sizes = codec.size_breakdown(arrays)
  assert sizes["topk_id_bits"] <= t * k * 4 / 8 + 2
  assert sizes["topk_id_classes"] + sizes["topk_id_bits"] < 0.75 * t * k * 6 / 8
  out = codec.decode(codec.encode(arrays), t)
  np.testing.assert_array_equal(np.sort(out[S.TEACHER_TOPK_IDS], -1), ids)


def test_bit_packing_round_trip():
  rng = np.random.default_rng(0)
  nbits = rng.integers(0, 40, 500)
  values = rng.integers(0, 2**40, 500) & ((1 << nbits) - 1)
  data = _bytes.pack_bits(values, nbits)
  assert len(data) == -(-nbits.sum() // 8)
  np.testing.assert_array_equal(_bytes.unpack_bits(data, nbits), values)
  np.testing.assert_array_equal(_bytes.unpack_bits(_bytes.pack_bits(values % 8, 3), 3, 500),
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


# --------------------------------------------------------------------------------------
# Tail prior.
# --------------------------------------------------------------------------------------


def _fitted_prior(k: int, *, tokens: int = 256, smoothing: float = 0.05, **layout):
  """A prior fitted on held-out tokens (another seed than the evaluated ones)."""
  fit = TT.zipf_logits(tokens, VOCAB, seed=11, **layout)
  ids, _ = TT.topk(fit, k)
  weights = TT.tail_weights(np.asarray(TT.log_probs(fit)), np.asarray(ids), chunk=64)
  return TT.TailPrior.from_weights(weights, smoothing=smoothing)


def _independent_prior_kl(true_lp: np.ndarray, ids: np.ndarray, lps: np.ndarray,
                          log_pi: np.ndarray) -> np.ndarray:
  """KL(p || top-k + tail mass spread along pi), dense, written without the library."""
  p = np.exp(true_lp)
  pi = np.exp(log_pi - np.log(np.exp(log_pi).sum()))
  out = []
  for t in range(p.shape[0]):
    top = np.exp(lps[t].astype(np.float64))
    off = np.ones(p.shape[1], bool)
    off[ids[t]] = False
    q = np.empty(p.shape[1])
    q[off] = (1 - top.sum()) * pi[off] / pi[off].sum()
    q[ids[t]] = top
    out.append(np.sum(p[t] * (np.log(p[t]) - np.log(q))))
  return np.array(out)


def test_prior_reconstruction_is_a_proper_distribution(logits, tokens):
  arrays = _arrays(logits, tokens, k=16, s=0)
  prior = _fitted_prior(16)
  dense = TT.reconstruct(arrays, VOCAB, tail=TT.TAIL_PRIOR, prior=prior).astype(np.float64)
  assert dense.shape == (TOKENS, VOCAB)
  assert np.all(dense > 0) and np.all(np.isfinite(dense))
  np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-5)
  ids, lps = arrays[S.TEACHER_TOPK_IDS], arrays[S.TEACHER_TOPK_LOGPROBS]
  rows = np.arange(TOKENS)[:, None]
  np.testing.assert_allclose(dense[rows, ids], np.exp(lps), rtol=1e-6)
  off = np.ones(dense.shape, bool)
  off[rows, ids] = False
  for t in range(TOKENS):  # off the row: proportional to the prior, holding the tail mass
    ratio = dense[t][off[t]] / np.exp(prior.log_probs[off[t]])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    np.testing.assert_allclose(dense[t][off[t]].sum(), 1 - np.exp(lps[t].astype(np.float64)).sum(),
                               rtol=1e-4)
  # Tails rounded to <= 0 keep MIN_TAIL_MASS, spread along the prior.
  peaked = {S.TEACHER_TOPK_IDS: np.array([[0, 1]]),
            S.TEACHER_TOPK_LOGPROBS: np.log(np.array([[0.6, 0.4000001]]))}
  small = TT.TailPrior.from_weights(np.arange(1.0, 11.0))
  dense = TT.reconstruct(peaked, 10, tail=TT.TAIL_PRIOR, prior=small)
  assert np.all(dense > 0) and abs(dense.sum() - 1) < 1e-6
  # A prior that puts almost all its mass on the row's ids: the off-row prior mass
  # (~1e-23) is summed id by id, not as 1 - sum(row).
  log_w = np.full(VOCAB, -60.0)
  log_w[ids[0]] = 0.0
  concentrated = TT.TailPrior(log_w)
  dense = TT.reconstruct(arrays, VOCAB, tail=TT.TAIL_PRIOR, prior=concentrated)
  np.testing.assert_allclose(dense.astype(np.float64).sum(-1), 1.0, atol=1e-5)
  assert np.all(dense > 0)
  want = _independent_prior_kl(_np_log_softmax(logits), ids, lps, concentrated.log_probs)
  got = TT.kl_divergence(np.asarray(TT.log_probs(logits)), arrays, tail=TT.TAIL_PRIOR,
                         prior=concentrated)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_uniform_prior_equals_the_uniform_tail(logits, tokens):
  true_lp = np.asarray(TT.log_probs(logits))
  uniform = TT.TailPrior.uniform(VOCAB)
  np.testing.assert_allclose(uniform.log_probs, -np.log(VOCAB), rtol=1e-12)
  assert uniform == TT.TailPrior.from_weights(np.ones(VOCAB))
  assert uniform == TT.TailPrior.from_weights(np.arange(VOCAB), smoothing=1.0)
  for k in (1, 16, 300):
    arrays = _arrays(logits, tokens, k=k, s=0)
    np.testing.assert_allclose(
        TT.reconstruct(arrays, VOCAB, tail=TT.TAIL_PRIOR, prior=uniform),
        TT.reconstruct(arrays, VOCAB), rtol=1e-6)
    np.testing.assert_allclose(
        TT.kl_divergence(true_lp, arrays, tail=TT.TAIL_PRIOR, prior=uniform),
        TT.kl_divergence(true_lp, arrays), rtol=1e-9, atol=1e-12)
  full = _arrays(logits, tokens, k=VOCAB, s=0)  # no tail at all
  np.testing.assert_allclose(
      TT.kl_divergence(true_lp, full, tail=TT.TAIL_PRIOR, prior=uniform), 0.0, atol=1e-6)


def test_marginal_priors_beat_the_uniform_tail_on_frequency_ordered_ids(logits, tokens):
  arrays = _arrays(logits, tokens, k=16, s=0)
  ids, lps = arrays[S.TEACHER_TOPK_IDS], arrays[S.TEACHER_TOPK_LOGPROBS]
  true_lp = _np_log_softmax(logits)
  uniform = _independent_topk_kl(true_lp, ids, lps).mean()
  # The generator's own unigram law, and a prior fitted on held-out tokens.
  unigram = TT.TailPrior(-np.log(np.arange(VOCAB) + 50.0))
  for prior in (unigram, _fitted_prior(16)):
    want = _independent_prior_kl(true_lp, ids, lps, prior.log_probs)
    got = TT.kl_divergence(np.asarray(TT.log_probs(logits)), arrays, tail=TT.TAIL_PRIOR,
                           prior=prior, chunk=5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.all(got >= -1e-9)
    assert want.mean() < 0.9 * uniform, (want.mean(), uniform)
  # Dense reconstruction agrees with the sparse KL.
  dense = TT.reconstruct(arrays, VOCAB, tail=TT.TAIL_PRIOR, prior=unigram)
  dense_kl = np.sum(np.exp(true_lp) * (true_lp - np.log(dense.astype(np.float64))), -1)
  np.testing.assert_allclose(
      TT.kl_divergence(true_lp, arrays, tail=TT.TAIL_PRIOR, prior=unigram), dense_kl,
      rtol=1e-3, atol=1e-6)


def test_fitted_prior_does_not_help_when_contexts_hide_the_tail(tokens):
  # 1,000 contexts over 1,000 ids: the marginal of the fit sample says nothing about a
  # token's own layout; a lightly smoothed prior is then no better than uniform.
  layout = {"contexts": 1000, "vocab_seed": 2}
  logits = TT.zipf_logits(TOKENS, VOCAB, seed=3, **layout)
  np.testing.assert_allclose(np.sort(logits, -1), np.sort(TT.zipf_logits(TOKENS, VOCAB, seed=3), -1))
  arrays = _arrays(logits, tokens, k=16, s=0)
  true_lp = np.asarray(TT.log_probs(logits))
  uniform = TT.kl_divergence(true_lp, arrays).mean()
  prior = TT.kl_divergence(true_lp, arrays, tail=TT.TAIL_PRIOR,
                           prior=_fitted_prior(16, **layout)).mean()
  assert prior > 0.95 * uniform, (prior, uniform)


def test_tail_weights_and_topk_counts(logits):
  true_lp = np.asarray(TT.log_probs(logits))
  ids = np.asarray(TT.topk(logits, 8)[0])
  got = TT.tail_weights(true_lp, ids, chunk=5)
  p = np.exp(_np_log_softmax(logits))
  want = p.copy()
  want[np.arange(TOKENS)[:, None], ids] = 0
  np.testing.assert_allclose(got, want.sum(0), rtol=1e-5, atol=1e-12)
  np.testing.assert_allclose(got.sum(), (1 - np.take_along_axis(p, ids, -1).sum(-1)).sum(),
                             rtol=1e-5)
  # Additive over turns.
  halves = (TT.tail_weights(true_lp[:5], ids[:5]) + TT.tail_weights(true_lp[5:], ids[5:]))
  np.testing.assert_allclose(halves, got, rtol=1e-12)
  counts = TT.topk_counts(ids, VOCAB)
  assert counts.shape == (VOCAB,) and counts.sum() == ids.size
  np.testing.assert_array_equal(counts, np.bincount(ids.ravel(), minlength=VOCAB))


def test_prior_serialisation_round_trip():
  rng = np.random.default_rng(0)
  log_w = rng.normal(size=VOCAB) * 3
  log_w[5] = -np.inf  # raised to the floor, LOG_RANGE nats below the largest
  prior = TT.TailPrior(log_w)
  np.testing.assert_allclose(np.exp(prior.log_probs).sum(), 1.0, rtol=1e-12)
  finite = np.isfinite(log_w)
  want = log_w[finite] - np.log(np.exp(log_w[finite]).sum())
  np.testing.assert_allclose(prior.log_probs[finite], want, atol=1e-3)
  assert prior.log_probs[5] == pytest.approx(prior.log_probs.max() - 65535 / 1024)
  data = prior.to_bytes()
  back = TT.TailPrior.from_bytes(data)
  assert back == prior and back.vocab_size == VOCAB
  np.testing.assert_array_equal(back.log_probs, prior.log_probs)
  assert back.to_bytes() == data
  assert TT.TailPrior(back.log_probs) == prior  # re-quantising is idempotent
  assert len(TT.TailPrior.uniform(262_144).to_bytes()) < 1000  # constant: compresses away
  with pytest.raises(ValueError):
    prior.log_probs[0] = 0.0  # read-only


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d[:3], "expected 4 more byte"),
    (lambda d: b"XXXX" + d[4:], "expected magic"),
    (lambda d: d[:4] + b"\x09" + d[5:], "expected format version 1"),
    (lambda d: d[:-5], "expected a zlib stream"),
    (lambda d: d + b"\x00", "expected a zlib stream"),
    (lambda d: d[:5] + _bytes._varint(VOCAB + 1) + d[7:], "expected 2002 bytes"),
])
def test_prior_from_bytes_refuses_corrupt_data(mutate, match):
  data = TT.TailPrior(-np.log(np.arange(VOCAB) + 50.0)).to_bytes()
  with pytest.raises(ValueError, match=match):
    TT.TailPrior.from_bytes(mutate(data))
  rng = np.random.default_rng(1)
  for _ in range(100):
    bad = bytearray(data)
    for i in rng.integers(0, len(bad), size=rng.integers(1, 4)):
      bad[i] = rng.integers(0, 256)
    try:
      TT.TailPrior.from_bytes(bytes(bad))
    except ValueError:
      continue


@pytest.mark.parametrize("build, match", [
    (lambda: TT.TailPrior.from_weights(np.array([1.0, -0.5, 2.0])),
     r"expected finite weights >= 0, found -0.5 at id 1"),
    (lambda: TT.TailPrior.from_weights(np.array([1.0, np.nan])),
     r"expected finite weights >= 0, found nan at id 1"),
    (lambda: TT.TailPrior.from_weights(np.array([1.0, np.inf])), "finite weights"),
    (lambda: TT.TailPrior.from_weights(np.zeros(4)), "positive sum, found all 0"),
    (lambda: TT.TailPrior.from_weights(np.array([1.0, 0.0])),
     r"found 1 id\(s\) with weight 0 .* pass smoothing > 0"),
    (lambda: TT.TailPrior.from_weights(np.ones(3), smoothing=1.5), r"smoothing in \[0, 1\]"),
    (lambda: TT.TailPrior.from_weights(np.ones((2, 3))), r"shape \[V\]"),
    (lambda: TT.TailPrior.from_weights(np.array(["a"])), "numeric weights"),
    (lambda: TT.TailPrior(np.array([0.0, np.nan])), r"found nan at id 1"),
    (lambda: TT.TailPrior(np.array([0.0, np.inf])), r"found inf at id 1"),
    (lambda: TT.TailPrior(np.full(3, -np.inf)), "all -inf"),
    (lambda: TT.TailPrior(np.zeros(0)), r"shape \[V\]"),
    (lambda: TT.TailPrior.uniform(0), r"vocab_size an int in \[1, 2\*\*31\]"),
    (lambda: TT.topk_counts(np.array([[0, VOCAB]]), VOCAB), r"ids in \[0, 1000\), found id 1000"),
    (lambda: TT.tail_weights(np.zeros((2, 5)), np.zeros((3, 1), int)), "expected T = 2 rows"),
    (lambda: TT.tail_weights(np.zeros((2, 5)), np.full((2, 1), 5)), r"ids in \[0, 5\)"),
])
def test_prior_refuses_bad_inputs(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_reconstruction_refuses_bad_priors(logits, tokens):
  arrays = _arrays(logits, tokens, k=4, s=0)
  true_lp = np.asarray(TT.log_probs(logits))
  other = TT.TailPrior.uniform(VOCAB + 1)
  for fn in (lambda **kw: TT.reconstruct(arrays, VOCAB, **kw),
             lambda **kw: TT.kl_divergence(true_lp, arrays, **kw)):
    with pytest.raises(ValueError, match=r"prior over V = 1000 ids .* found V = 1001"):
      fn(tail=TT.TAIL_PRIOR, prior=other)
    with pytest.raises(ValueError, match="expected a TailPrior with tail='prior', found NoneType"):
      fn(tail=TT.TAIL_PRIOR)
    with pytest.raises(ValueError, match="expected a TailPrior .* found ndarray"):
      fn(tail=TT.TAIL_PRIOR, prior=np.zeros(VOCAB))
    with pytest.raises(ValueError, match="given with tail='uniform', which ignores it"):
      fn(prior=TT.TailPrior.uniform(VOCAB))


def test_zipf_logits_vocabulary_layouts():
  plain = TT.zipf_logits(64, 500, seed=1)
  def column_means(x):
    return x.mean(0)
  for layout in ({"shuffle_ids": True, "vocab_seed": 7}, {"contexts": 1, "vocab_seed": 7},
                 {"contexts": 3, "vocab_seed": 7}):
    a = TT.zipf_logits(64, 500, seed=1, **layout)
    np.testing.assert_allclose(np.sort(a, -1), np.sort(plain, -1))  # rows permuted only
    np.testing.assert_array_equal(a, TT.zipf_logits(64, 500, seed=1, **layout))
  # One layout shared by two samples (other seeds) when vocab_seed is shared.
  same = [TT.zipf_logits(256, 500, seed=s, contexts=1, vocab_seed=7) for s in (1, 2)]
  other = TT.zipf_logits(256, 500, seed=2, contexts=1, vocab_seed=8)
  assert np.corrcoef(column_means(same[0]), column_means(same[1]))[0, 1] > 0.8
  assert abs(np.corrcoef(column_means(same[0]), column_means(other))[0, 1]) < 0.3
  with pytest.raises(ValueError, match="shuffle_ids or contexts, found both"):
    TT.zipf_logits(2, 10, shuffle_ids=True, contexts=2)
  with pytest.raises(ValueError, match="contexts an int >= 0"):
    TT.zipf_logits(2, 10, contexts=-1)
