"""The model-backend interface: what a stage or a user's loop asks of a model.

A backend does two things, whatever runs the model (our JAX checkpoints in process, or any
OpenAI-compatible server such as vLLM, SGLang, TGI, llama.cpp, or ``rlds-lm serve``):

* :meth:`Backend.sample`: one completion per prompt (token ids in, token ids out), with the
  behaviour log-prob of every generated token and, if asked, the ``top_logprobs``
  alternatives at each position;
* :meth:`Backend.annotate`: teacher data for given tokens: the log-prob of each completion
  token and the top-k of the distribution it was scored by (the ``schema.TEACHER_*``
  arrays a rollout stores).

Both take and return token ids: the ids are the training truth (a teacher whose
tokenizer differs from the student's cannot annotate the student's ids, see
:func:`check_same_tokenizer`). :meth:`Backend.describe` is the provenance every episode
and the dataset's lineage record: backend kind, model, revision or digest, endpoint
(never a secret).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

STOP_EOS = "eos"  # the model emitted its end-of-sequence token (or a stop string)
STOP_LENGTH = "length"  # max_new_tokens reached


CHAT_ROLES = ("system", "user", "assistant", "tool")


def chat_prompt(messages: Sequence[dict[str, Any]]) -> str:
  """The text a chat is sampled from by our models: one ``<|role|>`` block per message,
  then the assistant's header. (Our models are trained on no chat format; this one is
  plain and written down so that recorded episodes can be re-rendered exactly.) Served
  models apply their own chat template instead."""
  parts = []
  for i, message in enumerate(messages):
    role, content = message.get("role"), message.get("content")
    if role not in CHAT_ROLES:
      raise ValueError(f"messages[{i}].role must be one of {CHAT_ROLES}, found {role!r}")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
      content = "".join(p.get("text", "") for p in content if isinstance(p, dict)
                        and p.get("type") == "text")
    if not isinstance(content, str):
      raise ValueError(f"messages[{i}].content must be a string")
    parts.append(f"<|{role}|>\n{content}\n")
  return "".join(parts) + "<|assistant|>\n"


class BackendError(RuntimeError):
  """A backend cannot serve a request, or cannot be used at all; the message says why."""


@dataclasses.dataclass(frozen=True)
class Generation:
  """One sampled completion, as a backend returns it.

  Attributes:
    tokens: int32 [n]: the generated token ids (EOS included if emitted).
    logprobs: float32 [n]: behaviour log-prob of each token (the sampling distribution).
    stop_reason: :data:`STOP_EOS` or :data:`STOP_LENGTH`.
    top_ids: int32 [n, k] or None: the k most likely alternatives at each position.
    top_logprobs: float32 [n, k] or None: their log-probs (same distribution).
    text: the completion's text as the backend decoded it ("" if it did not).
    provenance: what produced it: request seed, server-reported model and response id,
      time; recorded in the episode's lineage.
  """

  tokens: np.ndarray
  logprobs: np.ndarray
  stop_reason: str
  top_ids: np.ndarray | None = None
  top_logprobs: np.ndarray | None = None
  text: str = ""
  provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.tokens)


class Backend(abc.ABC):
  """A model behind one small interface (see the module docstring).

  Attributes:
    name: the model name episodes record as the policy / teacher name.
    max_seq_len: the model's context length (prompt + completion), or 0 if unknown.
    vocab_size: the size of the id space, or 0 if unknown.
  """

  name: str = ""
  max_seq_len: int = 0
  vocab_size: int = 0

  @property
  @abc.abstractmethod
  def digest(self) -> str:
    """What identifies the model's parameters (a checkpoint digest, a served revision)."""

  @abc.abstractmethod
  def describe(self) -> dict[str, Any]:
    """Provenance for lineage: kind, model, digest or revision, endpoint; no secrets."""

  @abc.abstractmethod
  def sample(self, prompts: Sequence[np.ndarray], seeds: Sequence[int], sampler: Any,
             max_new_tokens: int, *, top_logprobs: int = 0) -> list[Generation]:
    """One :class:`Generation` per prompt.

    Args:
      prompts: 1-D int token arrays.
      seeds: one seed per prompt (a backend that cannot seed must refuse, not ignore).
      sampler: a :class:`rlds_lm.models.sampling.SamplerConfig`.
      max_new_tokens: tokens to generate at most.
      top_logprobs: also return the k most likely alternatives per position (0: none).
    """

  @abc.abstractmethod
  def annotate(self, sequences: Sequence[np.ndarray], prompt_lengths: Sequence[int], *,
               top_k: int) -> list[dict[str, np.ndarray]]:
    """Teacher arrays (``schema.TEACHER_TOKEN_LOGPROB``, and with ``top_k`` the
    ``TEACHER_TOPK_IDS`` / ``TEACHER_TOPK_LOGPROBS``) for the completion of each sequence
    (the tokens after its prompt), scored at temperature 1."""

  def chat(self, messages: Sequence[dict[str, Any]], *, seed: int, sampler: Any,
           max_new_tokens: int, text_only: bool = False) -> Generation:
    """One assistant reply to ``messages`` (OpenAI chat format); ``text`` holds it.
    ``text_only``: the caller needs the text alone (a backend may then return no ids)."""
    raise BackendError(f"{type(self).__name__} does not chat")

  def close(self) -> None:
    """Releases connections or devices (the default holds none)."""


def check_same_tokenizer(student: str, teacher: str, *, mapped: bool = False) -> None:
  """Refuses a teacher whose tokenizer differs from the student's, unless mapped.

  A teacher scores token ids; the student's ids mean nothing to a model with another
  vocabulary. ``mapped`` says the user translates ids between the two themselves.
  """
  if student != teacher and not mapped:
    raise BackendError(
        f"the teacher's tokenizer ({teacher}) differs from the student's ({student}): it "
        f"would score the student's token ids as its own. Use a teacher with the same "
        f"tokenizer, or map the ids yourself and say so (token mapping flag).")
