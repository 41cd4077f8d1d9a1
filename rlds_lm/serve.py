"""``rlds-lm serve CHECKPOINT``: an OpenAI-compatible server over an rlds_lm JAX policy.

Endpoints (shapes as vLLM documents them, so a client written for vLLM works unchanged):

* ``GET /v1/models``: the one served model (``root`` is its checkpoint digest,
  ``max_model_len`` its context);
* ``POST /v1/completions``: ``prompt`` as text or token ids (or a list of either),
  ``max_tokens``, ``temperature`` (0: greedy), ``top_p``, ``top_k``, ``seed``, ``n``,
  ``stop``, ``logprobs`` (behaviour log-probs of the sampling distribution and k
  alternatives), and the vLLM extensions ``prompt_logprobs`` (teacher scoring of the
  prompt's own tokens), ``return_tokens_as_token_ids`` and ``return_token_ids``;
* ``POST /v1/chat/completions``: ``messages`` rendered with :func:`chat_prompt`, with
  ``logprobs`` / ``top_logprobs`` in the chat shape;
* ``GET /health``.

Concurrent requests are batched: a single model thread takes every request that arrived
within ``max_wait_ms`` (up to ``max_batch`` sequences), groups those with the same
sampler settings, and answers each group with one model call. A sample's tokens depend
only on its prompt, seed and sampler settings, never on the requests it was batched with,
so the HTTP backend and the in-process one give the same episodes.

With ``--api_key_env NAME`` the server requires ``Authorization: Bearer $NAME``.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (fastapi.Request) at run time, in the scope where they are defined.
import argparse
import asyncio
import collections
import concurrent.futures
import dataclasses
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlds_lm.backends.base import chat_prompt

class RequestError(ValueError):
  """A request the server refuses (HTTP 400 / 404), with the field at fault."""

  def __init__(self, message: str, *, status: int = 400, param: str | None = None):
    super().__init__(message)
    self.status = status
    self.param = param


@dataclasses.dataclass
class _Job:
  kind: str  # "sample" or "score"
  key: tuple  # what a batch must share
  items: list  # (prompt, seed) for sample; sequence for score
  future: concurrent.futures.Future


class Batcher:
  """One model thread; concurrent callers' work is grouped into model calls."""

  def __init__(self, backend, *, max_batch: int = 64, max_wait_ms: float = 5.0):
    self.backend = backend
    self.max_batch = max_batch
    self.max_wait_s = max_wait_ms / 1000.0
    self._queue: queue.Queue[_Job | None] = queue.Queue()
    self.calls = collections.Counter()
    self._thread = threading.Thread(target=self._loop, name="rlds-lm-serve-model",
                                    daemon=True)
    self._thread.start()

  def submit(self, kind: str, key: tuple, items: list) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    self._queue.put(_Job(kind, key, items, future))
    return future

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=30)

  def _loop(self) -> None:
    while True:
      first = self._queue.get()
      if first is None:
        return
      jobs, size = [first], len(first.items)
      deadline = time.monotonic() + self.max_wait_s
      while size < self.max_batch:
        try:
          job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if job is None:
          self._queue.put(None)
          break
        jobs.append(job)
        size += len(job.items)
      groups: dict[tuple, list[_Job]] = collections.defaultdict(list)
      for job in jobs:
        groups[(job.kind, job.key)].append(job)
      for (kind, key), members in groups.items():
        self._run(kind, key, members)

  def _run(self, kind: str, key: tuple, jobs: list[_Job]) -> None:
    items = [item for job in jobs for item in job.items]
    try:
      self.calls[kind] += 1
      if kind == "sample":
        sampler, max_new, top = key
        results = self.backend.sample([p for p, _ in items], [s for _, s in items],
                                      sampler, max_new, top_logprobs=top)
      else:
        results = _score_prompts(self.backend.policy, items, key[0])
    except Exception as e:  # pylint: disable=broad-except
      for job in jobs:
        job.future.set_exception(e)
      return
    start = 0
    for job in jobs:
      job.future.set_result(results[start:start + len(job.items)])
      start += len(job.items)


def _prompt_extract(logits, targets, *, k: int):
  """Per position: token log-prob, its rank, and the top-k (full-vocabulary softmax)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rlds_lm import teacher as T  # pylint: disable=g-import-not-at-top
  token_lp = T.token_logprob(logits, targets)
  logp = T.log_probs(logits)
  rank = 1 + jnp.sum(logp > token_lp[..., None], axis=-1)
  ids, lps = T.topk(logits, k)
  return token_lp, rank.astype(jnp.int32), ids, lps


_EXTRACTORS: dict[int, Any] = {}


def _score_prompts(policy, sequences: list[np.ndarray], k: int) -> list[tuple]:
  """For each sequence: (token log-prob, rank, top ids, top log-probs) of tokens 1..n-1."""
  import functools  # pylint: disable=g-import-not-at-top
  extract = _EXTRACTORS.setdefault(k, functools.partial(_prompt_extract, k=k))
  scored = policy.score(sequences, [1] * len(sequences), extract=extract)
  return [tuple(np.asarray(x) for x in s.extra) for s in scored]


class Server:
  """The request logic, separate from the web framework (testable without HTTP)."""

  def __init__(self, backend, *, max_batch: int = 64, max_wait_ms: float = 5.0):
    self.backend = backend
    self.tokenizer = backend.tokenizer
    self.batcher = Batcher(backend, max_batch=max_batch, max_wait_ms=max_wait_ms)
    self.created = int(time.time())

  def models(self) -> dict[str, Any]:
    return {"object": "list", "data": [{
        "id": self.backend.name, "object": "model", "created": self.created,
        "owned_by": "rlds_lm", "root": self.backend.digest, "parent": None,
        "max_model_len": self.backend.max_seq_len,
        "rlds_lm_digest": self.backend.digest,
        "rlds_lm_vocab_size": self.backend.vocab_size}]}

  # -- request parsing ---------------------------------------------------------------------

  def _check_model(self, body: dict[str, Any]) -> None:
    if body.get("model") != self.backend.name:
      raise RequestError(f"The model `{body.get('model')}` does not exist; this server "
                         f"serves `{self.backend.name}`.", status=404, param="model")

  def _prompts(self, prompt: Any) -> list[np.ndarray]:
    vocab = self.backend.vocab_size
    if isinstance(prompt, str):
      prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
      prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
      raise RequestError("prompt must be a string, a list of token ids, or a list of "
                         "either", param="prompt")
    out = []
    for p in prompt:
      if isinstance(p, str):
        out.append(self.tokenizer.encode(p, add_bos=True))
      elif (isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                              for t in p)):
        if min(p) < 0 or max(p) >= vocab:
          raise RequestError(f"token ids must be in [0, {vocab})", param="prompt")
        out.append(np.asarray(p, np.int32))
      else:
        raise RequestError("each prompt must be a non-empty string or list of token ids",
                           param="prompt")
    return out

  @staticmethod
  def _int(body: dict[str, Any], name: str, default: int | None, lo: int,
           hi: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
      return None
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (
        hi is not None and value > hi):
      raise RequestError(f"{name} must be an integer in [{lo}, {hi if hi is not None else ''}"
                         f"], found {value!r}", param=name)
    return value

  def _sampler(self, body: dict[str, Any]):
    from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    top_k = body.get("top_k", 0)
    if temperature is None:
      temperature = 1.0
    if not isinstance(temperature, (int, float)) or temperature < 0:
      raise RequestError("temperature must be >= 0", param="temperature")
    if top_k is None or top_k == -1:
      top_k = 0
    if temperature == 0:
      return sampling.SamplerConfig.greedy()
    try:
      config = sampling.SamplerConfig(temperature=float(temperature),
                                      top_k=int(top_k) if isinstance(top_k, int) else top_k,
                                      top_p=float(top_p if top_p is not None else 1.0))
      config.check_vocab(self.backend.vocab_size)
    except (TypeError, ValueError) as e:
      raise RequestError(str(e)) from e
    return config

  def _token_str(self, token: int, as_ids: bool) -> str:
    return f"token_id:{token}" if as_ids else self.tokenizer.decode([token])

  # -- completions -------------------------------------------------------------------------

  def _generate(self, body: dict[str, Any], prompts: list[np.ndarray], *, top: int
                ) -> tuple[list[Any], list[np.ndarray]]:
    from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
    n = self._int(body, "n", 1, 1, 128)
    max_tokens = self._int(body, "max_tokens", 16, 1)
    seed = self._int(body, "seed", None, 0)
    if seed is None:
      seed = int.from_bytes(os.urandom(8), "little") >> 1
    limit = self.backend.max_seq_len
    for p in prompts:
      if len(p) + max_tokens > limit:
        raise RequestError(f"This model's maximum context length is {limit} tokens; the "
                           f"prompt has {len(p)} and max_tokens is {max_tokens}",
                           param="max_tokens")
    sampler = self._sampler(body)
    # Sample i of a request with seed s uses seed s for i = 0 (so that n=1 requests are
    # reproducible by their seed alone) and a content seed of (s, i) after that.
    items = [(p, seed if i == 0 else S.content_seed("serve", seed, i))
             for p in prompts for i in range(n)]
    gens = self.batcher.submit("sample", (sampler, max_tokens, top), items).result()
    return gens, [p for p in prompts for _ in range(n)]

  def _prompt_logprobs(self, prompts: list[np.ndarray], k: int, as_ids: bool
                       ) -> list[list[Any]]:
    scored = self.batcher.submit("score", (max(1, k),), list(prompts)).result()
    out = []
    for p, (token_lp, rank, ids, lps) in zip(prompts, scored):
      rows: list[Any] = [None]
      for j in range(len(p) - 1):
        entry = {}
        actual = int(p[j + 1])
        entry[str(actual)] = {"logprob": float(token_lp[j]), "rank": int(rank[j]),
                              "decoded_token": self._token_str(actual, as_ids)}
        for r, (t, lp) in enumerate(zip(ids[j][:k].tolist(), lps[j][:k].tolist())):
          entry.setdefault(str(t), {"logprob": float(lp), "rank": r + 1,
                                    "decoded_token": self._token_str(t, as_ids)})
        rows.append(entry)
      out.append(rows)
    return out

  def _cut_at_stop(self, gen, stop: list[str]):
    """(tokens, logprobs, tops, text, finish, stop_reason) after the first stop string."""
    tokens, text = gen.tokens, self.tokenizer.decode(gen.tokens)
    finish = "length" if gen.stop_reason == "length" else "stop"
    if stop:
      for t in range(1, len(tokens) + 1):
        prefix = self.tokenizer.decode(tokens[:t])
        hits = [(prefix.find(s), s) for s in stop if s and s in prefix]
        if hits:
          at, s = min(hits)
          return t, prefix[:at], "stop", s
    return len(tokens), text, finish, None

  def completions(self, body: dict[str, Any]) -> dict[str, Any]:
    self._check_model(body)
    if body.get("stream"):
      raise RequestError("stream=true is not supported by rlds-lm serve", param="stream")
    if body.get("echo"):
      raise RequestError("echo is not supported; use prompt_logprobs", param="echo")
    prompts = self._prompts(body.get("prompt"))
    k = self._int(body, "logprobs", None, 0, 20)
    pk = self._int(body, "prompt_logprobs", None, 0, 20)
    as_ids = bool(body.get("return_tokens_as_token_ids"))
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    gens, flat_prompts = self._generate(body, prompts, top=k or 0)
    n = len(gens) // len(prompts)
    prompt_rows = self._prompt_logprobs(prompts, pk, as_ids) if pk is not None else None
    choices, completion_tokens = [], 0
    for index, (gen, prompt) in enumerate(zip(gens, flat_prompts)):
      end, text, finish, stop_reason = self._cut_at_stop(gen, stop)
      tokens = gen.tokens[:end].tolist()
      completion_tokens += len(tokens)
      choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None,
                                "finish_reason": finish, "stop_reason": stop_reason}
      if k is not None:
        strs = [self._token_str(t, as_ids) for t in tokens]
        offsets, at = [], 0
        for t in tokens:
          offsets.append(at)
          at += len(self.tokenizer.decode([t]))
        tops = []
        for j, t in enumerate(tokens):
          row = {}
          if k:
            for tid, lp in zip(gen.top_ids[j].tolist(), gen.top_logprobs[j].tolist()):
              row[self._token_str(tid, as_ids)] = float(lp)
          row.setdefault(self._token_str(t, as_ids), float(gen.logprobs[j]))
          tops.append(row)
        choice["logprobs"] = {"text_offset": offsets,
                              "token_logprobs": [float(x) for x in gen.logprobs[:end]],
                              "tokens": strs, "top_logprobs": tops}
      if body.get("return_token_ids"):
        choice["token_ids"] = tokens
        choice["prompt_token_ids"] = prompt.tolist()
      if prompt_rows is not None:
        choice["prompt_logprobs"] = prompt_rows[index // n]
      choices.append(choice)
    prompt_tokens = sum(len(p) for p in prompts)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": self.backend.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}

  def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
    self._check_model(body)
    if body.get("stream"):
      raise RequestError("stream=true is not supported by rlds-lm serve", param="stream")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise RequestError("messages must be a non-empty list", param="messages")
    try:
      text = chat_prompt(messages)
    except ValueError as e:
      raise RequestError(str(e), param="messages") from e
    prompt = self.tokenizer.encode(text, add_bos=True)
    want = bool(body.get("logprobs"))
    top = self._int(body, "top_logprobs", 0, 0, 20) if want else 0
    request = dict(body, max_tokens=body.get("max_completion_tokens",
                                             body.get("max_tokens", 16)))
    gens, _ = self._generate(request, [prompt], top=top or 0)
    as_ids = bool(body.get("return_tokens_as_token_ids"))
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    choices, completion_tokens = [], 0
    for index, gen in enumerate(gens):
      end, content, finish, _ = self._cut_at_stop(gen, stop)
      tokens = gen.tokens[:end].tolist()
      completion_tokens += len(tokens)
      choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None,
                                "message": {"role": "assistant", "content": content}}
      if want:
        entries = []
        for j, t in enumerate(tokens):
          s = self._token_str(t, as_ids)
          alts = ([{"token": self._token_str(a, as_ids), "logprob": float(lp),
                    "bytes": list(self._token_str(a, as_ids).encode())}
                   for a, lp in zip(gen.top_ids[j].tolist(), gen.top_logprobs[j].tolist())]
                  if top else [])
          entries.append({"token": s, "logprob": float(gen.logprobs[j]),
                          "bytes": list(s.encode()), "top_logprobs": alts})
        choice["logprobs"] = {"content": entries}
      if body.get("return_token_ids"):
        choice["token_ids"] = tokens
      choices.append(choice)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": self.backend.name, "choices": choices,
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion_tokens,
                      "total_tokens": len(prompt) + completion_tokens}}


def make_app(server: Server, *, api_key_env: str = ""):
  """The FastAPI application over a :class:`Server`."""
  import fastapi  # pylint: disable=g-import-not-at-top
  from fastapi import responses  # pylint: disable=g-import-not-at-top

  app = fastapi.FastAPI(title="rlds-lm serve", docs_url=None, redoc_url=None)
  key = os.environ.get(api_key_env, "") if api_key_env else ""
  # Requests wait for the model thread in these threads (the batcher does the work); the
  # event loop's default pool has too few of them to let many requests meet in a batch.
  waiting = concurrent.futures.ThreadPoolExecutor(max_workers=256,
                                                  thread_name_prefix="rlds-lm-request")

  def error(status: int, message: str, param: str | None = None):
    kind = {400: "invalid_request_error", 401: "authentication_error",
            404: "not_found_error"}.get(status, "server_error")
    return responses.JSONResponse(status_code=status, content={
        "error": {"message": message, "type": kind, "param": param, "code": status}})

  def authorised(request: fastapi.Request) -> bool:
    return not key or request.headers.get("authorization", "") == f"Bearer {key}"

  async def handle(request: fastapi.Request, method):
    if not authorised(request):
      return error(401, "Incorrect API key provided.")
    try:
      body = await request.json()
    except ValueError:
      return error(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
      return error(400, "the request body must be a JSON object")
    try:
      result = await asyncio.get_running_loop().run_in_executor(waiting, method, body)
    except RequestError as e:
      return error(e.status, str(e), e.param)
    except ValueError as e:  # the model refused the input (too long, bad ids)
      return error(400, str(e))
    return responses.JSONResponse(result)

  @app.get("/health")
  async def health():
    return {"status": "ok"}

  @app.get("/v1/models")
  async def models(request: fastapi.Request):
    if not authorised(request):
      return error(401, "Incorrect API key provided.")
    return server.models()

  @app.post("/v1/completions")
  async def completions(request: fastapi.Request):
    return await handle(request, server.completions)

  @app.post("/v1/chat/completions")
  async def chat_completions(request: fastapi.Request):
    return await handle(request, server.chat_completions)

  return app


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="rlds-lm serve", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", help="rlds_lm checkpoint directory to serve")
  parser.add_argument("--tokenizer", default="byte",
                      help="'byte' or a SentencePiece .model file (default: %(default)s)")
  parser.add_argument("--gemma_model", default="",
                      help="serve a gemma-library checkpoint of this architecture (e.g. "
                           "Gemma3_1B; needs the gemma extra) instead of an rlds_lm one "
                           "(default: none)")
  parser.add_argument("--name", default="",
                      help="served model name (default: the checkpoint config's name)")
  parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
  parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
  parser.add_argument("--max_batch", type=int, default=64,
                      help="sequences per model call at most (default: %(default)s)")
  parser.add_argument("--max_wait_ms", type=float, default=5.0,
                      help="how long the model thread waits to fill a batch "
                           "(default: %(default)s)")
  parser.add_argument("--api_key_env", default="",
                      help="require 'Authorization: Bearer $NAME' (default: no key)")


def serve(args: argparse.Namespace) -> int:
  import uvicorn  # pylint: disable=g-import-not-at-top
  from rlds_lm.backends import local  # pylint: disable=g-import-not-at-top
  if args.gemma_model:
    backend = local.LocalBackend.from_gemma_checkpoint(
        args.checkpoint, gemma_model=args.gemma_model, tokenizer=args.tokenizer,
        name=args.name or None)
  else:
    backend = local.LocalBackend.from_checkpoint(args.checkpoint, tokenizer=args.tokenizer,
                                                 name=args.name or None)
  server = Server(backend, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
  print(f"serving {backend.name} ({backend.digest}) on http://{args.host}:{args.port}/v1",
        flush=True)
  uvicorn.run(make_app(server, api_key_env=args.api_key_env), host=args.host,
              port=args.port, log_level="warning")
  server.batcher.close()
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return serve(build_parser().parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
