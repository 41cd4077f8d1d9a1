"""The toy arithmetic task's helpers for JAX policies, and a byte-level n-gram policy.

The task itself (``"a+b="`` / ``"a-b="``, exact answers, the rewards ``toy_arithmetic``
and ``toy_arithmetic_exact``) is :mod:`rlds_lm.tasks.toy_arithmetic`, re-exported here
(:func:`split_problems`, :func:`check_answer`, ...). It is what the quickstart, the GKD /
J-BOND reproductions and many tests train on; this module adds the byte prompt and answer
tokens, :func:`is_correct` for a sampled completion, :func:`make_eval_fn` (greedy exact
match and per-token accuracy) and :func:`publish_references` (reference completions of
any task as a published rollout dataset, the SFT data).

The n-gram policy is a real (if weak) language model: bigram counts over bytes with
add-alpha smoothing, sampled with temperature, top-k and top-p. A sample depends only on
(prompt, seed, sampler settings, model), never on batch composition or wall clock; it is
the dependency-free toy of the environment tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm import tasks
from rlds_lm.tasks.toy_arithmetic import Problem
from rlds_lm.tasks.toy_arithmetic import arithmetic_problems  # noqa: F401  (re-exported)
from rlds_lm.tasks.toy_arithmetic import check_answer  # noqa: F401  (re-exported)
from rlds_lm.tasks.toy_arithmetic import split_problems  # noqa: F401  (re-exported)
from rlds_lm.tokenizers import ByteTokenizer

ARITHMETIC = "arithmetic"
REWARD = "toy_arithmetic"  # the registered reward the accuracy counts (first line = answer)
REWARD_CORRECT = "correct"
BOS, EOS = 1, 2  # ByteTokenizer's
ANSWER_TOKENS = 6  # answers are at most 3 bytes ("-19", operands < 20), then EOS


def prompt_tokens(problem: Problem) -> np.ndarray:
  """BOS + the question's bytes (no answer)."""
  return ByteTokenizer().encode(problem.question, add_bos=True)


def answer_tokens(problem: Problem) -> np.ndarray:
  """The answer's bytes + EOS: the completion a perfect policy writes."""
  return ByteTokenizer().encode(problem.answer, add_eos=True)


def correct(problems: Sequence[Problem], completions: Sequence[Any]) -> np.ndarray:
  """bool [n]: each sampled completion (``tokens``, ``stop_reason``) is its problem's
  exact answer (the reward ``toy_arithmetic``), then EOS."""
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  tokenizer = ByteTokenizer()
  texts = [tokenizer.decode(c.tokens) for c in completions]
  scores = tasks.get_reward(REWARD).rows([p.as_record() for p in problems], texts)
  stopped = np.asarray([c.stop_reason == sampling.STOP_EOS for c in completions], bool)
  return stopped & (scores == 1.0)


def is_correct(problem: Problem, completion) -> bool:
  """A sampled completion (``tokens``, ``stop_reason``) is the exact answer, then EOS."""
  return bool(correct([problem], [completion])[0])


def token_accuracy(problems: Sequence[Problem], completions: Sequence[Any]) -> np.ndarray:
  """float [n]: per completion, the fraction of its reference tokens (answer bytes + EOS,
  :func:`answer_tokens`) that it matches position by position (a missing token counts as
  wrong): partial credit where exact match gives none."""
  out = []
  for p, c in zip(problems, completions):
    want = answer_tokens(p)
    got = np.asarray(c.tokens)[:len(want)]
    out.append(float(np.sum(got == want[:len(got)])) / len(want))
  return np.asarray(out, np.float64)


def make_eval_fn(problems: Sequence[Problem], max_new_tokens: int = ANSWER_TOKENS
                 ) -> Callable[[Any, Any], dict[str, float]]:
  """``(model_config, params) -> {"accuracy", "token_accuracy"}``: greedy decoding of
  ``problems``; exact match (answer then EOS) and per-token accuracy
  (:func:`token_accuracy`)."""
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  prompts = [prompt_tokens(p) for p in problems]
  seeds = [0] * len(prompts)

  def eval_fn(model, params) -> dict[str, float]:
    completions = sampling.sample(model, params, prompts, seeds,
                                  sampling.SamplerConfig.greedy(), max_new_tokens,
                                  eos_id=EOS).completions()
    return {"accuracy": float(np.mean(correct(problems, completions))),
            "token_accuracy": float(np.mean(token_accuracy(problems, completions)))}

  return eval_fn


def publish_references(data_dir: str, problems: Sequence[Any], *,
                       name: str = "arith_reference", task: str = ARITHMETIC,
                       lineage: Mapping[str, Any] | None = None,
                       source: str = "toy.arithmetic_problems") -> str:
  """Prompts with their reference completions as a published rollout dataset (the train
  split; SFT data). Returns the dataset directory.

  Args:
    data_dir: where to publish.
    problems: objects with ``prompt_id``, ``question`` (the prompt text) and ``answer``
      (the reference completion, without EOS): a :class:`Problem`, or any task's
      reference rows. A prompt id may repeat (several references of one prompt): the
      repeats are numbered by ``sample_index`` in order.
    name: the dataset's name.
    task: recorded as every episode's task (``"arithmetic"``, ``"digit_sum"``, ...).
    lineage: the dataset's lineage.
    source: recorded in every episode's lineage: where the references come from.
  """
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  schema = S.SchemaConfig(vocab_size=ByteTokenizer.vocab_size, tokenizer="byte")
  episodes, seen = [], {}
  for p in problems:
    index = seen.get(p.prompt_id, 0)
    seen[p.prompt_id] = index + 1
    turn = S.Turn(S.observation(schema, prompt_tokens(p), p.question),
                  action_tokens=answer_tokens(p), action_text=p.answer, reward=1.0)
    episodes.append(S.rollout_episode(schema, [turn], prompt_id=p.prompt_id,
                                      sample_index=index, task=task,
                                      policy_name="reference", lineage={"source": source}))
  return P.publish({"train": episodes}, data_dir=data_dir, name=name, config=schema,
                   lineage=dict(lineage or {}))


def decoder_config(width: int, name: str, num_layers: int = 4):
  """A ``tiny``-family decoder ``width`` wide (4 heads, 2 KV heads, MLP 4x)."""
  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(mc.get_config(
      "tiny", d_model=width, num_heads=4, num_kv_heads=2, head_dim=width // 4,
      mlp_dim=4 * width, num_layers=num_layers), name=name)


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
