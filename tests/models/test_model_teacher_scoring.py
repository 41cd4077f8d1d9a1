"""Teacher annotation from a real (tiny) model: values, batch independence, schema fit."""

import numpy as np
import pytest

from rlds_lm import schema as S
from rlds_lm import teacher as T
from rlds_lm import validate as V
from rlds_lm.models import config as C
from rlds_lm.models import gemma
from rlds_lm.models import sampling
from rlds_lm.models import teacher_scoring

CFG = C.TINY


@pytest.fixture(scope="module")
def params():
  return gemma.init_params(CFG, seed=3)


def _sequences():
  rng = np.random.default_rng(0)
  return [rng.integers(3, CFG.vocab_size, size=n).astype(np.int32) for n in (9, 14, 6)]


def test_annotation_matches_extraction_on_the_full_logits(params):
  seqs, prompts = _sequences(), [4, 5, 2]
  got = teacher_scoring.annotate(CFG, params, seqs, prompts, top_k=5)
  scored = sampling.score(CFG, params, seqs, prompts, return_logits=True)
  for arrays, s, seq, p in zip(got, scored, seqs, prompts):
    ids, lps = T.topk(s.logits, 5)
    np.testing.assert_array_equal(arrays[S.TEACHER_TOPK_IDS], np.asarray(ids))
    np.testing.assert_allclose(arrays[S.TEACHER_TOPK_LOGPROBS], np.asarray(lps), atol=1e-5)
    np.testing.assert_allclose(arrays[S.TEACHER_TOKEN_LOGPROB], s.logprobs, atol=1e-5)
    assert arrays[S.TEACHER_TOPK_IDS].shape == (len(seq) - p, 5)


def test_annotation_is_independent_of_the_batch(params):
  seqs, prompts, seeds = _sequences(), [4, 5, 2], [11, 12, 13]
  together = teacher_scoring.annotate(CFG, params, seqs, prompts, top_k=4, sampled=16,
                                      seeds=seeds)
  alone = teacher_scoring.annotate(CFG, params, seqs[1:2], prompts[1:2], top_k=4,
                                   sampled=16, seeds=seeds[1:2])
  for key in together[1]:
    np.testing.assert_allclose(together[1][key], alone[0][key], atol=1e-5, err_msg=key)
  counts = together[0][S.TEACHER_SAMPLED_COUNTS]
  assert (counts.sum(axis=-1) == 16).all()


def test_annotated_turn_validates_in_a_teacher_dataset(params):
  config = S.SchemaConfig(vocab_size=CFG.vocab_size, teacher_top_k=4, teacher_sampled_k=8)
  seq = _sequences()[0]
  arrays = teacher_scoring.annotate(CFG, params, [seq], [4], top_k=4, sampled=8, seeds=[1])
  episode = S.rollout_episode(config, [S.Turn(S.observation(config, seq[:4]), seq[4:],
                                              teacher=arrays[0])], prompt_id="p")
  V.validate_episode(episode, config)


def test_bad_requests_are_refused(params):
  seqs = _sequences()
  with pytest.raises(ValueError, match="one seed per sequence"):
    teacher_scoring.annotate(CFG, params, seqs, [1, 1, 1], sampled=4)
  with pytest.raises(ValueError, match="top_k"):
    teacher_scoring.annotate(CFG, params, seqs, [1, 1, 1], top_k=CFG.vocab_size + 1)
  with pytest.raises(ValueError, match="temperature"):
    teacher_scoring.annotate(CFG, params, seqs, [1, 1, 1], top_k=2, temperature=0.0)
  with pytest.raises(ValueError, match="prompt length"):
    teacher_scoring.annotate(CFG, params, seqs, [0, 1, 1], top_k=2)
