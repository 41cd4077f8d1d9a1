"""LLM-as-judge: a model (served or in process) compares the N candidates of a prompt.

The judge sees one chat message built by :func:`judge_messages` (the documented prompt
below) and must end its answer with a line ``Verdict: K`` (K = 1..N, the best
candidate) or ``Verdict: tie``. :func:`parse_verdict` reads that line; an answer without
one raises :class:`VerdictError`, which the ``judge`` stage sends to its dead letters
with the judge's raw answer. The result is a preference episode whose agent is the judge
(``judge.kind = "llm"``, ``judge.name`` = the served model), as for every other judge.

The prompt (``{n}``, ``{prompt}``, ``{candidates}`` filled in; candidates are numbered
from 1 and fenced so that a candidate's text cannot pose as the instructions)::

    You compare {n} candidate responses to the same prompt and say which is best.

    Prompt:
    <<<
    {prompt}
    >>>

    Candidate 1:
    <<<
    ...
    >>>

    Think briefly if you need to, then end with one line "Verdict: K", where K is the
    number of the best candidate (1 to {n}), or "Verdict: tie" if none is better than
    the others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rlds_lm.backends import base

_VERDICT = re.compile(r"^\s*\**\s*verdict\s*\**\s*[:=]\s*\**\s*(tie|\d+)\b", re.I | re.M)
FENCE_OPEN, FENCE_CLOSE = "<<<", ">>>"


class VerdictError(ValueError):
  """The judge's answer has no readable verdict; ``answer`` is what it said."""

  def __init__(self, message: str, answer: str):
    super().__init__(message)
    self.answer = answer


def _fence(text: str) -> str:
  # A candidate cannot close the fence early: its own fence markers are defused.
  return text.replace(FENCE_CLOSE, "> > >").replace(FENCE_OPEN, "< < <")


def judge_messages(prompt: str, candidates: Sequence[str]) -> list[dict[str, str]]:
  """The chat the judge answers (see the module docstring)."""
  n = len(candidates)
  if n < 2:
    raise ValueError(f"a judge compares two or more candidates, found {n}")
  blocks = "\n\n".join(f"Candidate {i + 1}:\n{FENCE_OPEN}\n{_fence(c)}\n{FENCE_CLOSE}"
                       for i, c in enumerate(candidates))
  content = (f"You compare {n} candidate responses to the same prompt and say which is "
             f"best.\n\nPrompt:\n{FENCE_OPEN}\n{_fence(prompt)}\n{FENCE_CLOSE}\n\n{blocks}"
             f"\n\nThink briefly if you need to, then end with one line \"Verdict: K\", "
             f"where K is the number of the best candidate (1 to {n}), or \"Verdict: tie\" "
             f"if none is better than the others.")
  return [{"role": "user", "content": content}]


def parse_verdict(answer: str, n: int) -> int:
  """The chosen candidate's index (0-based), or -1 for a tie; the last verdict line wins."""
  found = _VERDICT.findall(answer or "")
  if not found:
    raise VerdictError(f"no 'Verdict: K' line in the judge's answer "
                       f"({len(answer or '')} characters)", answer)
  last = found[-1].lower()
  if last == "tie":
    return -1
  k = int(last)
  if not 1 <= k <= n:
    raise VerdictError(f"the judge's verdict {k} is not a candidate (1 to {n})", answer)
  return k - 1


def judge(backend: base.Backend, prompt: str, candidates: Sequence[str], *, seed: int,
          sampler: Any = None, max_new_tokens: int = 256) -> tuple[int, str, dict[str, Any]]:
  """Asks ``backend`` to judge; returns (choice or -1, the answer, provenance).

  Raises:
    VerdictError: no readable verdict (the stage's dead letter, with the answer).
    BackendError: the backend failed.
  """
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  sampler = sampler or sampling.SamplerConfig.greedy()
  reply = backend.chat(judge_messages(prompt, candidates), seed=seed, sampler=sampler,
                       max_new_tokens=max_new_tokens, text_only=True)
  return parse_verdict(reply.text, len(candidates)), reply.text, dict(reply.provenance)
