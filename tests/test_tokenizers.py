"""Byte tokenizer and SentencePiece trained locally."""

import numpy as np
import pytest

from rlds_lm import tokenizers


def test_byte_tokenizer_round_trips_unicode():
  tok = tokenizers.ByteTokenizer()
  text = "12+7=19 · héllo 🙂"
  ids = tok.encode(text, add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids.dtype == np.int32
  assert ids.max() < tok.vocab_size
  assert tok.decode(ids) == text
  with pytest.raises(ValueError, match="outside"):
    tok.decode([tok.vocab_size])


def test_sentencepiece_trained_locally(tmp_path):
  texts = [f"{a}+{b}={a + b}" for a in range(30) for b in range(30)]
  tok = tokenizers.train_sentencepiece(texts, tmp_path / "spm", vocab_size=300)
  assert tok.vocab_size == 300 and tok.name.startswith("spm:")
  ids = tok.encode("12+7=19 héllo", add_bos=True)
  assert ids[0] == tok.bos_id
  assert tok.decode(ids) == "12+7=19 héllo"  # byte fallback covers unseen characters
  again = tokenizers.tokenizer_from_name(tok.name, tok.model_path)
  np.testing.assert_array_equal(again.encode("3+4=7"), tok.encode("3+4=7"))
  with pytest.raises(ValueError, match="needs its SentencePiece model"):
    tokenizers.tokenizer_from_name(tok.name)
  assert tokenizers.tokenizer_from_name("byte").vocab_size == 259


def test_the_same_sentencepiece_training_gives_the_same_identity_anywhere(tmp_path):
  # The name is what a dataset stores to say which tokenizer wrote it: the same texts and
  # options must give the same one whatever folder the model is written to.
  texts = [f"{a} plus {b} is {a + b}" for a in range(40) for b in range(20)]
  a = tokenizers.train_sentencepiece(texts, tmp_path / "one" / "spm", vocab_size=300)
  b = tokenizers.train_sentencepiece(texts, tmp_path / "two" / "other", vocab_size=300)
  assert a.name == b.name
  assert (tmp_path / "one" / "spm.model").read_bytes() == (
      tmp_path / "two" / "other.model").read_bytes()
  c = tokenizers.train_sentencepiece(texts[:-100], tmp_path / "three" / "spm",
                                     vocab_size=300)
  assert c.name != a.name
