"""``rlds-lm annotate DATASET --out LOGDIR``: people as the agent that judges and demonstrates.

A local web app serves the groups (the N samples of one prompt) of a published rollout
dataset one at a time. A person picks the best candidate, ranks them, marks a tie, flags
a candidate as invalid or unsafe with a reason, or edits a candidate into a corrected
demonstration. Every judgement is recorded through the :class:`~rlds_lm.Recorder`:

* ``LOGDIR/preferences``: preference episodes (the schema the ``judge`` stage writes)
  whose judge is the person: ``judge.kind = "human"``, ``judge.name`` = the annotator;
  the lineage holds the time taken, the annotator's sequence number, the flags and the
  source dataset;
* ``LOGDIR/demonstrations``: a corrected candidate as a rollout episode (policy
  ``human:<annotator>``) whose lineage names the edited candidate's episode id.

**What a crash can lose.** An annotator's latest judgement stays open for ``undo`` until
their next action, or ``undo_window_s`` seconds, or a clean shutdown, whichever comes
first; then it is recorded (and flushed: the Recorder's guarantee). Killing the server
loses at most that one judgement in flight per annotator. A restarted server reads the
logs and resumes every annotator where they stopped: a group an annotator finished is
never shown to them again, and each group is shown until ``overlap`` annotators judged
it.

Publish with ``rlds_lm.publish_log(LOGDIR/preferences, ...)`` like any log; the BOND
trainer and the TRL preference export take the result as they take programmatic
preferences, and ``rlds-lm inspect`` reports agreement (:func:`agreement`).
"""

# No `from __future__ import annotations`: FastAPI reads handler annotations at run time.
import argparse
import collections
import dataclasses
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S

PREFERENCES = "preferences"
DEMONSTRATIONS = "demonstrations"
FLAGS = ("invalid", "unsafe")
SESSION_TIMEOUT_S = 120.0  # a session unheard of for this long may be taken over


class AnnotationError(ValueError):
  """A request or an input the annotation app refuses; ``status`` is the HTTP code."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass
class Group:
  """The candidates of one prompt."""

  prompt_id: str
  prompt_tokens: np.ndarray
  prompt_text: str
  episodes: list  # the rollout episodes, by sample index


def load_groups(dataset: str, split: str = "train") -> tuple[S.SchemaConfig, list[Group]]:
  """The groups of a published rollout dataset with at least two candidates each."""
  from rlds_lm import read  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(dataset):
    raise AnnotationError(f"{dataset} does not exist")
  builder = read.open_builder(dataset)
  config = read.schema_config(builder)
  if config.kind != S.ROLLOUT:
    raise AnnotationError(f"{dataset} holds {config.kind} episodes; annotate needs rollouts")
  _, records = read.iter_records(dataset, split)
  by_prompt: dict[str, list] = collections.defaultdict(list)
  for record in records:
    episode = read.materialize(record)
    by_prompt[str(episode[S.PROMPT_ID])].append(episode)
  groups = []
  for prompt_id in sorted(by_prompt):
    episodes = sorted(by_prompt[prompt_id], key=lambda e: (int(e[S.SAMPLE_INDEX]),
                                                           str(e[S.EPISODE_ID])))
    if len(episodes) < 2:
      continue
    obs = episodes[0][S.STEPS][0][S.OBSERVATION]
    groups.append(Group(prompt_id, np.asarray(obs[S.OBS_TOKENS], np.int32),
                        str(obs[S.OBS_TEXT]), episodes))
  if not groups:
    raise AnnotationError(
        f"{dataset} has no groups to compare: every prompt has one sample (generate "
        f"with --num_samples 2 or more)")
  return config, groups


def _segments(step: Mapping[str, Any], tokenizer) -> list[dict[str, Any]]:
  """The action as runs of (text, thinking?, teacher-student gap colour, tooltip)."""
  from rlds_lm import viewer  # pylint: disable=g-import-not-at-top
  tokens = np.asarray(step[S.ACTION][S.ACT_TOKENS])
  thinking = np.asarray(step[S.ACTION].get(S.ACT_THINKING_MASK, np.zeros(len(tokens), bool)),
                        bool)
  colours, tips = viewer.token_colors(step, "teacher", tokenizer)
  out: list[dict[str, Any]] = []
  for i, token in enumerate(tokens.tolist()):
    piece = tokenizer.decode([token]) if tokenizer is not None else f"<{token}>"
    think = bool(thinking[i]) if i < len(thinking) else False
    out.append({"text": piece, "thinking": think, "colour": colours[i], "tip": tips[i]})
  return out


class Annotations:
  """The app's state and recording, independent of the web framework.

  Args:
    dataset: a published rollout dataset directory.
    out: the log directory (``preferences/`` and ``demonstrations/`` below it).
    overlap: how many annotators judge each group.
    undo_window_s: how long a judgement stays open for undo (see the module docstring).
    tokenizer_model: the SentencePiece model file, for datasets tokenised with one.
  """

  def __init__(self, dataset: str, out: str, *, overlap: int = 1,
               undo_window_s: float = 10.0, tokenizer_model: str | None = None,
               split: str = "train", clock=time.monotonic):
    from rlds_lm import recorder as recorder_lib  # pylint: disable=g-import-not-at-top
    from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
    if overlap < 1:
      raise AnnotationError(f"overlap must be >= 1, found {overlap}")
    self.dataset = os.path.abspath(dataset)
    self.config, self.groups = load_groups(dataset, split)
    self.by_id = {g.prompt_id: g for g in self.groups}
    try:
      self.tokenizer = tokenizers.tokenizer_from_name(self.config.tokenizer, tokenizer_model)
    except ValueError as e:
      raise AnnotationError(f"{e} (pass --tokenizer_model)") from e
    self.overlap = overlap
    self.undo_window_s = undo_window_s
    self.clock = clock
    self.pref_config = S.SchemaConfig(kind=S.PREFERENCE, vocab_size=self.config.vocab_size,
                                      tokenizer=self.config.tokenizer)
    self.demo_config = dataclasses.replace(self.config, teacher_top_k=0,
                                           teacher_sampled_k=0)
    self._lock = threading.RLock()
    try:
      self._prefs = recorder_lib.Recorder(os.path.join(out, PREFERENCES), self.pref_config)
      self._demos = recorder_lib.Recorder(os.path.join(out, DEMONSTRATIONS),
                                          self.demo_config)
    except ValueError as e:
      raise AnnotationError(f"{out}: {e}") from e
    self._done: dict[str, set[str]] = collections.defaultdict(set)  # annotator -> prompts
    self._count: collections.Counter = collections.Counter()  # prompt -> judgements
    self._sequence: collections.Counter = collections.Counter()  # annotator -> recorded
    self._resume(os.path.join(out, PREFERENCES))
    self._pending: dict[str, tuple[float, dict[str, Any]]] = {}  # annotator -> judgement
    self._sessions: dict[str, tuple[str, float]] = {}  # annotator -> (token, last seen)
    self._skipped: dict[str, list[str]] = collections.defaultdict(list)
    self._shown: dict[str, tuple[str, float]] = {}  # annotator -> (prompt, shown at)

  def _resume(self, log_dir: str) -> None:
    from rlds_lm import logs  # pylint: disable=g-import-not-at-top
    for episode in logs.read_log(log_dir, self.pref_config):
      lineage = S.lineage_dict(episode)
      annotator = lineage.get("annotator")
      if annotator is None:
        continue
      self._done[annotator].add(str(episode[S.PROMPT_ID]))
      self._count[str(episode[S.PROMPT_ID])] += 1
      self._sequence[annotator] += 1

  # -- sessions ----------------------------------------------------------------------------

  def login(self, annotator: str) -> str:
    """A session token for ``annotator``; refuses a name already annotating elsewhere."""
    annotator = (annotator or "").strip()
    if not annotator or len(annotator) > 64 or not annotator.isprintable():
      raise AnnotationError("an annotator name is 1 to 64 printable characters")
    with self._lock:
      now = self.clock()
      held = self._sessions.get(annotator)
      if held is not None and now - held[1] < SESSION_TIMEOUT_S:
        raise AnnotationError(f"annotator {annotator!r} is already annotating in another "
                              f"window; close it, or choose another name", status=409)
      token = secrets.token_urlsafe(16)
      self._sessions[annotator] = (token, now)
      return token

  def _annotator(self, token: str) -> str:
    with self._lock:
      for name, (held, _) in self._sessions.items():
        if held == token:
          self._sessions[name] = (held, self.clock())
          return name
    raise AnnotationError("unknown or expired session: enter your name again", status=401)

  def logout(self, token: str) -> None:
    with self._lock:
      annotator = self._annotator(token)
      self._commit(annotator)
      del self._sessions[annotator]

  # -- what to show ------------------------------------------------------------------------

  def _open_for(self, annotator: str) -> list[str]:
    pending = {p["prompt_id"] for _, p in self._pending.values()}
    counts = self._count.copy()
    for prompt in pending:
      counts[prompt] += 1
    mine = self._done[annotator] | {p["prompt_id"] for a, (_, p) in self._pending.items()
                                     if a == annotator}
    return [g.prompt_id for g in self.groups
            if g.prompt_id not in mine and counts[g.prompt_id] < self.overlap]

  def next_group(self, token: str) -> dict[str, Any]:
    """The next group for the session's annotator, or ``{"done": true}``."""
    with self._lock:
      annotator = self._annotator(token)
      self._expire()
      open_ = self._open_for(annotator)
      skipped = [p for p in self._skipped[annotator] if p in open_]
      fresh = [p for p in open_ if p not in skipped]
      progress = {"done": len(self._done[annotator]) + sum(
          1 for a in self._pending if a == annotator), "remaining": len(open_)}
      if not open_:
        return {"done": True, "progress": progress, "annotator": annotator,
                "can_undo": annotator in self._pending}
      prompt_id = (fresh or skipped)[0]
      self._shown[annotator] = (prompt_id, self.clock())
      return {"done": False, "progress": progress, "annotator": annotator,
              "can_undo": annotator in self._pending, **self.group_view(prompt_id)}

  def group_view(self, prompt_id: str) -> dict[str, Any]:
    group = self.by_id.get(prompt_id)
    if group is None:
      raise AnnotationError(f"there is no group {prompt_id!r}", status=404)
    candidates = []
    for episode in group.episodes:
      step = episode[S.STEPS][0]
      candidates.append({
          "episode_id": str(episode[S.EPISODE_ID]),
          "text": self.tokenizer.decode(step[S.ACTION][S.ACT_TOKENS]),
          "segments": _segments(step, self.tokenizer),
          "reward": S.episode_return(episode)})
    prompt = group.prompt_text or self.tokenizer.decode(group.prompt_tokens)
    return {"prompt_id": prompt_id, "prompt": prompt, "candidates": candidates}

  # -- judgements --------------------------------------------------------------------------

  def judge(self, token: str, prompt_id: str, *, choice: int | None = None,
            ranking: Sequence[int] | None = None, tie: bool = False,
            flags: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """Records a judgement of the group (opens it for undo; see the module docstring)."""
    with self._lock:
      annotator = self._annotator(token)
      group = self.by_id.get(prompt_id)
      if group is None:
        raise AnnotationError(f"there is no group {prompt_id!r}", status=404)
      if prompt_id in self._done[annotator] or any(
          a == annotator and p["prompt_id"] == prompt_id for a, (_, p) in
          self._pending.items()):
        raise AnnotationError(f"{annotator} already judged {prompt_id}", status=409)
      n = len(group.episodes)
      ranking = [int(r) for r in ranking] if ranking else None
      if ranking is not None and sorted(ranking) != list(range(n)):
        raise AnnotationError(f"ranking must order all {n} candidates, found {ranking}")
      if tie:
        choice = -1
      elif ranking is not None:
        choice = ranking[0] if choice is None else choice
      if choice is None or not -1 <= int(choice) < n:
        raise AnnotationError(f"choice must be a candidate index in [0, {n}) or a tie")
      clean_flags = {}
      for index, flag in (flags or {}).items():
        if not str(index).isdigit() or int(index) >= n:
          raise AnnotationError(f"flag on candidate {index!r}: no such candidate")
        if flag.get("kind") not in FLAGS:
          raise AnnotationError(f"a flag is one of {FLAGS}, found {flag.get('kind')!r}")
        clean_flags[str(int(index))] = {"kind": flag["kind"],
                                        "reason": str(flag.get("reason", ""))[:2000]}
      shown_prompt, shown_at = self._shown.get(annotator, (None, self.clock()))
      seconds = self.clock() - shown_at if shown_prompt == prompt_id else 0.0
      self._commit(annotator)  # the previous judgement is final now
      judgement = {"prompt_id": prompt_id, "choice": int(choice), "ranking": ranking,
                   "tie": bool(tie), "flags": clean_flags, "seconds": round(seconds, 3)}
      self._pending[annotator] = (self.clock(), judgement)
      return {"ok": True}

  def undo(self, token: str) -> dict[str, Any]:
    """Withdraws the annotator's open judgement; its group is shown again next."""
    with self._lock:
      annotator = self._annotator(token)
      if annotator not in self._pending:
        raise AnnotationError("nothing to undo (a judgement is final after your next "
                              f"action or {self.undo_window_s:g} s)", status=409)
      _, judgement = self._pending.pop(annotator)
      self._skipped[annotator] = [p for p in self._skipped[annotator]
                                  if p != judgement["prompt_id"]]
      return {"ok": True, "prompt_id": judgement["prompt_id"]}

  def skip(self, token: str, prompt_id: str) -> dict[str, Any]:
    with self._lock:
      annotator = self._annotator(token)
      if prompt_id not in self.by_id:
        raise AnnotationError(f"there is no group {prompt_id!r}", status=404)
      self._commit(annotator)
      queue = [p for p in self._skipped[annotator] if p != prompt_id]
      self._skipped[annotator] = queue + [prompt_id]
      return {"ok": True}

  def demonstrate(self, token: str, prompt_id: str, candidate: int, text: str
                  ) -> dict[str, Any]:
    """Records an edited candidate as a rollout episode (a human demonstration)."""
    with self._lock:
      annotator = self._annotator(token)
      group = self.by_id.get(prompt_id)
      if group is None:
        raise AnnotationError(f"there is no group {prompt_id!r}", status=404)
      if not 0 <= int(candidate) < len(group.episodes):
        raise AnnotationError(f"no candidate {candidate} in {prompt_id}")
      if not isinstance(text, str) or not text.strip():
        raise AnnotationError("a demonstration needs text")
      source = group.episodes[int(candidate)]
      tokens = self.tokenizer.encode(text)
      if self.tokenizer.eos_id is not None:
        tokens = np.concatenate([tokens, [self.tokenizer.eos_id]]).astype(np.int32)
      obs = S.observation(self.demo_config, group.prompt_tokens, group.prompt_text, "prompt")
      turn = S.Turn(observation=obs, action_tokens=tokens, action_text=text,
                    action_logprobs=np.zeros(len(tokens), np.float32))
      self._commit(annotator)
      shown_prompt, shown_at = self._shown.get(annotator, (None, self.clock()))
      episode = S.rollout_episode(
          self.demo_config, [turn], prompt_id=prompt_id, task=str(source.get(S.TASK, "")),
          sample_index=int(candidate), policy_name=f"human:{annotator}",
          lineage={"annotator": annotator, "edited_from": str(source[S.EPISODE_ID]),
                   "dataset": self.dataset, "behaviour_logprobs": "none (a person)",
                   "seconds": round(self.clock() - shown_at, 3)
                   if shown_prompt == prompt_id else 0.0, "wall_time": time.time()})
      self._demos.record(episode)
      return {"ok": True, "episode_id": episode[S.EPISODE_ID]}

  # -- recording ---------------------------------------------------------------------------

  def _commit(self, annotator: str) -> None:
    """Records the annotator's open judgement, if any (it can no longer be undone)."""
    entry = self._pending.pop(annotator, None)
    if entry is None:
      return
    _, j = entry
    group = self.by_id[j["prompt_id"]]
    n = len(group.episodes)
    ranking = j["ranking"]
    if ranking is None:
      best = [j["choice"]] if j["choice"] >= 0 else []
      ranking = best + [i for i in range(n) if i not in best]
    # Scores say what the person said: N, N-1, ... by rank when they ranked; 1 for the
    # chosen candidate and 0 for the others when they only picked one; all 0 for a tie.
    scores = np.zeros(n, np.float32)
    if j["ranking"] is not None:
      for place, index in enumerate(ranking):
        scores[index] = float(n - place)
    elif j["choice"] >= 0:
      scores[j["choice"]] = 1.0
    self._sequence[annotator] += 1
    obs = S.observation(self.pref_config, group.prompt_tokens, group.prompt_text, "prompt")
    episode = S.preference_episode(
        self.pref_config, obs, [str(e[S.EPISODE_ID]) for e in group.episodes],
        [e[S.STEPS][0][S.ACTION][S.ACT_TOKENS] for e in group.episodes],
        prompt_id=j["prompt_id"], choice=j["choice"], ranking=ranking, scores=scores,
        judge_name=annotator, judge_kind="human",
        lineage={"annotator": annotator, "sequence": self._sequence[annotator],
                 "seconds": j["seconds"], "tie": j["tie"], "ranked": j["ranking"] is not None,
                 "flags": j["flags"], "dataset": self.dataset, "wall_time": time.time()})
    self._prefs.record(episode)
    self._done[annotator].add(j["prompt_id"])
    self._count[j["prompt_id"]] += 1

  def _expire(self) -> None:
    now = self.clock()
    for annotator, (opened, _) in list(self._pending.items()):
      if now - opened >= self.undo_window_s:
        self._commit(annotator)

  def start_expiry(self, every_s: float = 0.5) -> None:
    """Records open judgements once their undo window has passed, in the background, so
    that what a crash can lose is bounded in time, not only by the annotator's next
    action."""
    self._stop = threading.Event()

    def loop():
      while not self._stop.wait(every_s):
        with self._lock:
          self._expire()

    threading.Thread(target=loop, name="rlds-lm-annotate-expiry", daemon=True).start()

  def close(self) -> None:
    """Records every open judgement and closes the logs (a clean shutdown)."""
    if getattr(self, "_stop", None) is not None:
      self._stop.set()
    with self._lock:
      for annotator in list(self._pending):
        self._commit(annotator)
      self._prefs.close()
      self._demos.close()


def agreement(episodes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """Pairwise agreement of judges on the judgements they share.

  Two judgements are of the same question when they have the same prompt and the same
  set of candidates (whatever order each judge listed them in). For every question
  answered by two or more judges (people, reward models, LLMs: ``kind:name``), every pair
  of judges agrees when they chose the same candidate, or both called a tie. Returns the
  overall rate and the rate per pair of judges (``"a | b"``), with the counts behind them.
  """
  def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)

  choices: dict[tuple, dict[str, str]] = collections.defaultdict(dict)
  for episode in episodes:
    judge = episode[S.JUDGE]
    name = f"{text(judge[S.JUDGE_KIND])}:{text(judge[S.JUDGE_NAME])}"
    candidates = [text(c) for c in episode.get(S.CANDIDATE_IDS, [])]
    choice = int(episode[S.STEPS][0][S.ACTION][S.ACT_CHOICE])
    chosen = "tie" if choice < 0 else (candidates[choice] if candidates else str(choice))
    question = (text(episode[S.PROMPT_ID]), tuple(sorted(candidates)))
    choices[question][name] = chosen
  pairs: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for by_judge in choices.values():
    names = sorted(by_judge)
    for i, a in enumerate(names):
      for b in names[i + 1:]:
        pair = pairs[f"{a} | {b}"]
        pair[0] += int(by_judge[a] == by_judge[b])
        pair[1] += 1
  agree = sum(p[0] for p in pairs.values())
  total = sum(p[1] for p in pairs.values())
  return {"pairs_compared": total, "agreement": (agree / total) if total else None,
          "by_pair": {k: {"agree": a, "compared": n, "rate": a / n}
                      for k, (a, n) in sorted(pairs.items())}}


_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "annotate_page.html")


def make_app(annotations: Annotations):
  """The FastAPI app: the page and its JSON API."""
  import fastapi  # pylint: disable=g-import-not-at-top
  from fastapi import responses  # pylint: disable=g-import-not-at-top

  app = fastapi.FastAPI(title="rlds-lm annotate", docs_url=None, redoc_url=None)

  async def call(request: fastapi.Request, fn):
    try:
      body = await request.json()
    except ValueError:
      return responses.JSONResponse({"error": "the request body is not JSON"}, 400)
    if not isinstance(body, dict):
      return responses.JSONResponse({"error": "the request body must be an object"}, 400)
    try:
      return responses.JSONResponse(fn(body))
    except AnnotationError as e:
      return responses.JSONResponse({"error": str(e)}, e.status)
    except (TypeError, ValueError, KeyError) as e:
      return responses.JSONResponse({"error": f"bad request: {e}"}, 400)

  @app.get("/")
  async def page():
    with open(_PAGE, encoding="utf-8") as f:
      return responses.HTMLResponse(f.read(), headers={
          "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                     "style-src 'self' 'unsafe-inline'; img-src 'none'"})

  @app.post("/api/login")
  async def login(request: fastapi.Request):
    return await call(request, lambda b: {"token": annotations.login(b.get("annotator", ""))})

  @app.post("/api/logout")
  async def logout(request: fastapi.Request):
    return await call(request, lambda b: annotations.logout(b.get("token", "")) or {"ok": True})

  @app.post("/api/next")
  async def next_group(request: fastapi.Request):
    return await call(request, lambda b: annotations.next_group(b.get("token", "")))

  @app.post("/api/judge")
  async def judge(request: fastapi.Request):
    return await call(request, lambda b: annotations.judge(
        b.get("token", ""), str(b.get("prompt_id", "")), choice=b.get("choice"),
        ranking=b.get("ranking"), tie=bool(b.get("tie")), flags=b.get("flags") or {}))

  @app.post("/api/undo")
  async def undo(request: fastapi.Request):
    return await call(request, lambda b: annotations.undo(b.get("token", "")))

  @app.post("/api/skip")
  async def skip(request: fastapi.Request):
    return await call(request, lambda b: annotations.skip(b.get("token", ""),
                                                          str(b.get("prompt_id", ""))))

  @app.post("/api/demonstrate")
  async def demonstrate(request: fastapi.Request):
    return await call(request, lambda b: annotations.demonstrate(
        b.get("token", ""), str(b.get("prompt_id", "")), int(b.get("candidate", -1)),
        b.get("text", "")))

  return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("dataset", help="published rollout dataset directory (with groups)")
  parser.add_argument("--out", required=True, help="log directory for the annotations")
  parser.add_argument("--overlap", type=int, default=1,
                      help="annotators per group (default: %(default)s)")
  parser.add_argument("--undo_window_s", type=float, default=10.0,
                      help="seconds a judgement stays open for undo (default: %(default)s)")
  parser.add_argument("--tokenizer_model", default=None,
                      help="SentencePiece model file, for datasets tokenised with one "
                           "(default: none, for byte-tokenised datasets)")
  parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
  parser.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
  import uvicorn  # pylint: disable=g-import-not-at-top
  annotations = Annotations(args.dataset, args.out, overlap=args.overlap,
                            undo_window_s=args.undo_window_s,
                            tokenizer_model=args.tokenizer_model)
  print(f"annotating {len(annotations.groups)} groups of {args.dataset} on "
        f"http://{args.host}:{args.port}/ (recording to {args.out})", flush=True)
  annotations.start_expiry()
  # uvicorn shuts down on SIGTERM / SIGINT and then raises the signal again with the
  # handler it found: make that handler an exit, so the `finally` below records the open
  # judgements instead of the process dying mid-way.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  try:
    uvicorn.run(make_app(annotations), host=args.host, port=args.port, log_level="warning")
  finally:
    annotations.close()  # uvicorn returns on SIGINT / SIGTERM: open judgements are kept
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="rlds-lm annotate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
