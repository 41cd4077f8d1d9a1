"""Tokenizers: a byte-level default that needs no download, and SentencePiece.

Both expose the same small interface (:class:`Tokenizer`). ``name`` is an identity
string stored in every dataset's schema (``SchemaConfig.tokenizer``) so that trainers
can refuse data tokenised for another model: ``"byte"`` for the byte tokenizer,
``"spm:<16 hex digits of SHA-256 of the model file>"`` for SentencePiece.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
  name: str
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    ...

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ...


class ByteTokenizer:
  """UTF-8 bytes shifted past three special ids: pad=0, bos=1, eos=2, byte b -> b + 3.

  ``decode`` drops special ids and replaces invalid UTF-8 (a sampled byte sequence need
  not be valid) with U+FFFD.
  """

  name = "byte"
  pad_id = 0
  bos_id = 1
  eos_id = 2
  offset = 3
  vocab_size = 256 + 3

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + self.offset
    parts = [[self.bos_id]] if add_bos else []
    parts.append(ids)
    if add_eos:
      parts.append([self.eos_id])
    return np.concatenate([np.asarray(p, np.int32) for p in parts])

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
      bad = array[(array < 0) | (array >= self.vocab_size)][0]
      raise ValueError(f"ByteTokenizer.decode: id {bad} outside [0, {self.vocab_size})")
    data = (array[array >= self.offset] - self.offset).astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model loaded from a local ``.model`` file (no download)."""

  def __init__(self, model_path: str | os.PathLike[str]):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    with open(model_path, "rb") as f:
      proto = f.read()
    self._sp = spm.SentencePieceProcessor(model_proto=proto)
    self.model_path = os.fspath(model_path)
    self.name = "spm:" + hashlib.sha256(proto).hexdigest()[:16]
    self.vocab_size = int(self._sp.get_piece_size())
    self.bos_id = int(self._sp.bos_id())
    self.eos_id = int(self._sp.eos_id())
    self.pad_id = int(self._sp.pad_id())

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    ids = list(self._sp.encode(text))
    if add_bos:
      ids = [self.bos_id] + ids
    if add_eos:
      ids = ids + [self.eos_id]
    return np.asarray(ids, np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
      bad = array[(array < 0) | (array >= self.vocab_size)][0]
      raise ValueError(f"SentencePieceTokenizer.decode: id {bad} outside "
                       f"[0, {self.vocab_size})")
    return self._sp.decode([int(i) for i in array])


def train_sentencepiece(texts: Iterable[str], model_prefix: str | os.PathLike[str], *,
                        vocab_size: int = 512, model_type: str = "bpe") -> SentencePieceTokenizer:
  """Trains a small SentencePiece model locally and returns it loaded.

  Ids: pad=0, bos=1, eos=2, unk=3 (the layout Gemma uses), byte fallback on so every
  string round-trips (the 256 byte pieces need ``vocab_size`` of about 300 or more).
  Writes ``model_prefix + ".model"``. The model is trained in memory, so its bytes (and
  so the tokenizer's name) depend on the texts and options only, not on where it is
  written (a model written by the trainer stores its output path).
  """
  import io  # pylint: disable=g-import-not-at-top

  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  path = os.fspath(model_prefix) + ".model"
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, pad_id=0, bos_id=1, eos_id=2, unk_id=3, byte_fallback=True,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    f.write(model.getvalue())
  os.replace(path + ".tmp", path)
  return SentencePieceTokenizer(path)


def tokenizer_from_name(name: str, model_path: str | None = None) -> Tokenizer:
  """Returns the tokenizer for a stored identity; SentencePiece needs its model file."""
  if name == "byte":
    return ByteTokenizer()
  if name.startswith("spm:"):
    if model_path is None:
      raise ValueError(f"tokenizer {name!r} needs its SentencePiece model file")
    tok = SentencePieceTokenizer(model_path)
    if tok.name != name:
      raise ValueError(f"SentencePiece model {model_path} is {tok.name}, expected {name}")
    return tok
  raise ValueError(f"unknown tokenizer {name!r}: expected 'byte' or 'spm:<digest>'")
