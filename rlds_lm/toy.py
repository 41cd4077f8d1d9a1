"""A tiny arithmetic task and a byte-level n-gram policy, for the quickstart and tests.

The policy is a real (if weak) language model: bigram counts over bytes with add-alpha
smoothing, sampled with temperature, top-k and top-p. A sample depends only on
(prompt, seed, sampler settings, model), never on batch composition or wall clock.
Issue 3 brings the Gemma-style JAX decoder; this stays as the dependency-free toy.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from rlds_lm import schema as S
from rlds_lm.tokenizers import ByteTokenizer

ARITHMETIC = "arithmetic"
REWARD_CORRECT = "correct"


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt_id: str
  question: str
  answer: str


def arithmetic_problems(count: int, seed: int = 0, max_operand: int = 50) -> list[Problem]:
  """``count`` distinct problems ``"a+b="`` / ``"a-b="`` with exact answers, deterministic in seed."""
  if count > 2 * max_operand * max_operand:
    raise ValueError(f"only {2 * max_operand ** 2} distinct problems with operands "
                     f"< {max_operand}; asked for {count}")
  rng = np.random.default_rng(seed)
  out = []
  seen = set()
  while len(out) < count:
    a, b = (int(x) for x in rng.integers(0, max_operand, size=2))
    op = "+" if rng.random() < 0.5 else "-"
    question = f"{a}{op}{b}="
    if question in seen:
      continue
    seen.add(question)
    answer = str(a + b if op == "+" else a - b)
    out.append(Problem(S.content_id(ARITHMETIC, question, prefix="q-"), question, answer))
  return out


def check_answer(problem: Problem, completion: str) -> float:
  """1.0 if the completion's first line is exactly the answer, else 0.0."""
  return float(completion.split("\n", 1)[0].strip() == problem.answer)


class NgramPolicy:
  """A byte bigram language model over :class:`ByteTokenizer` ids."""

  def __init__(self, counts: np.ndarray, name: str = "bigram"):
    self.tokenizer = ByteTokenizer()
    self.counts = counts.astype(np.float64)
    self.name = name
    self.log_probs = np.log(self.counts / self.counts.sum(axis=1, keepdims=True))
    self.digest = hashlib.sha256(self.counts.tobytes()).hexdigest()[:16]

  @classmethod
  def fit(cls, texts: list[str], alpha: float = 0.05, name: str = "bigram") -> NgramPolicy:
    tok = ByteTokenizer()
    counts = np.full((tok.vocab_size, tok.vocab_size), alpha)
    for text in texts:
      ids = tok.encode(text, add_bos=True, add_eos=True)
      np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    return cls(counts, name)

  def sample(self, prompt: np.ndarray, *, seed: int, max_new_tokens: int = 8,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Samples a completion; returns (tokens, behaviour log-probs), stops after EOS."""
    if temperature <= 0:
      raise ValueError(f"temperature must be > 0, found {temperature}")
    rng = np.random.default_rng(seed)
    prev = int(prompt[-1]) if len(prompt) else self.tokenizer.bos_id
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
      logits = self.log_probs[prev] / temperature
      order = np.argsort(-logits, kind="stable")
      keep = np.ones_like(logits, bool)
      if top_k:
        keep[order[top_k:]] = False
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      if top_p < 1.0:
        cum = np.cumsum(probs[order])
        cut = order[np.searchsorted(cum, top_p) + 1:]
        keep[cut] = False
      probs = np.where(keep, probs, 0.0)
      probs /= probs.sum()
      token = int(rng.choice(len(probs), p=probs))
      tokens.append(token)
      logprobs.append(np.log(probs[token]))
      prev = token
      if token == self.tokenizer.eos_id:
        break
    return np.asarray(tokens, np.int32), np.asarray(logprobs, np.float32)


def training_corpus(problems: list[Problem], noise: float = 0.3, seed: int = 0) -> list[str]:
  """Question + answer lines, a fraction ``noise`` of them with a wrong answer."""
  rng = np.random.default_rng(seed)
  out = []
  for p in problems:
    answer = p.answer
    if rng.random() < noise:
      answer = str(int(answer) + int(rng.integers(1, 5)))
    out.append(p.question + answer)
  return out


def sample_seed(prompt_id: str, sample_index: int, policy_digest: str) -> int:
  """Per-sample seed from (prompt, sample index, policy): reproducible in any order."""
  return S.content_seed(prompt_id, sample_index, policy_digest)
