"""Any OpenAI-compatible HTTP endpoint as a backend (vLLM, SGLang, TGI, llama.cpp's server,
``rlds-lm serve``).

What is asked of the server, on ``POST {endpoint}/completions``:

========================  =================================================================
request field             why
========================  =================================================================
``prompt`` (token ids)    the prompt exactly as tokenised by us: no re-tokenisation drift
``seed``                  one per sample, derived from content (reproducible re-runs)
``temperature`` /         the sampler settings the episode records
``top_p`` / ``top_k``
``max_tokens``            ``max_new_tokens``
``logprobs: k``           behaviour log-prob of each sampled token, and k alternatives
``return_tokens_as_``     (vLLM) tokens come back as ``"token_id:N"``: exact ids, not text
``token_ids: true``
``prompt_logprobs: k``    (vLLM) teacher scoring of given tokens: the log-prob of every
                          prompt token and the top-k at its position (``annotate``)
========================  =================================================================

A server that cannot give exact token ids, behaviour log-probs or enough alternatives is
refused by :meth:`OpenAIBackend.check` with a message that names what it lacks, before any
work is done. The API key is read from an environment variable (``api_key_env``), never
from a flag, and is never written to a log line, an error or an episode.

Requests run concurrently, at most ``max_concurrency`` at a time, each with a timeout;
429, 5xx, connection errors, timeouts and unreadable bodies are retried with exponential
backoff and full jitter (``Retry-After`` honoured up to the cap); what still fails raises
:class:`~rlds_lm.backends.base.BackendError` naming the request. With ``cache_dir``, every
finished response is kept under a digest of its request, so a stage that is killed and
re-run repeats no finished request.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S
from rlds_lm.backends import base

TOKEN_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids spelling of a token
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_FINISH = {"stop": base.STOP_EOS, "length": base.STOP_LENGTH, "eos": base.STOP_EOS}


def _token_id(token: str, *, what: str) -> int:
  if not isinstance(token, str) or not token.startswith(TOKEN_ID_PREFIX):
    raise base.BackendError(
        f"the server returned {what} {token!r} as text, not as a token id: it cannot give "
        f"exact token ids (vLLM gives them with return_tokens_as_token_ids; other servers "
        f"may not). Record text-only or use a server that returns ids.")
  try:
    return int(token[len(TOKEN_ID_PREFIX):])
  except ValueError as e:
    raise base.BackendError(f"unreadable token id {token!r} in the response") from e


class _Retryable(Exception):
  """A failure worth another try (status, connection, timeout, unreadable body)."""


class OpenAIBackend(base.Backend):
  """A served model behind the backend interface.

  Args:
    endpoint: the API root, e.g. ``http://127.0.0.1:8000/v1``.
    model: the served model's name (``GET /v1/models`` lists them).
    tokenizer: the served model's tokenizer as rlds_lm knows it (``byte`` or a
      SentencePiece ``.model`` path): it decodes texts and is checked against the
      student's. The server itself is only ever sent ids.
    api_key_env: the environment variable holding the API key ("" for none).
    max_concurrency: requests in flight at once.
    timeout_s: per request.
    max_retries: tries after the first, for retryable failures.
    backoff_s / backoff_cap_s: the first backoff and its cap (full jitter).
    cache_dir: keep finished responses here (resume without repeating requests).
    max_seq_len / vocab_size: the model's, if known (for the stages' length checks).
  """

  def __init__(self, endpoint: str, model: str, *, tokenizer: Any = None,
               api_key_env: str = "OPENAI_API_KEY", max_concurrency: int = 8,
               timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 0.5,
               backoff_cap_s: float = 20.0, cache_dir: str | None = None,
               max_seq_len: int = 0, vocab_size: int = 0,
               sleep: Callable[[float], None] = time.sleep):
    if not endpoint.startswith(("http://", "https://")):
      raise base.BackendError(f"endpoint must be an http(s) URL such as "
                              f"http://127.0.0.1:8000/v1, found {endpoint!r}")
    if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
      raise base.BackendError("max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 "
                              "are required")
    self.endpoint = endpoint.rstrip("/")
    self.name = model
    self.tokenizer = tokenizer
    self.api_key_env = api_key_env
    self.max_concurrency = max_concurrency
    self.timeout_s = timeout_s
    self.max_retries = max_retries
    self.backoff_s = backoff_s
    self.backoff_cap_s = backoff_cap_s
    self.cache_dir = cache_dir
    self.max_seq_len = max_seq_len
    self.vocab_size = vocab_size
    self._sleep = sleep
    self._local = threading.local()
    self._revision = ""
    self._digest = ""
    self._identified = False
    self.stats = {"requests": 0, "retries": 0, "cached": 0}
    self._stats_lock = threading.Lock()

  # -- provenance --------------------------------------------------------------------------

  @property
  def digest(self) -> str:
    """What identifies the served parameters: the checkpoint digest where the server
    reports one (``rlds-lm serve`` does, so its episodes equal in-process ones), else a
    digest of the served name and revision (not of the endpoint: a model restarted on
    another port is the same model)."""
    self._identify()
    return self._digest or S.content_id(self.name, self._revision)[:16]

  def describe(self) -> dict[str, Any]:
    self._identify()
    return {"backend": "openai", "endpoint": self.endpoint, "model": self.name,
            "revision": self._revision, "digest": self.digest,
            "tokenizer": getattr(self.tokenizer, "name", ""),
            "max_seq_len": self.max_seq_len}

  # -- HTTP --------------------------------------------------------------------------------

  def _session(self):
    import requests  # pylint: disable=g-import-not-at-top
    session = getattr(self._local, "session", None)
    if session is None:
      session = self._local.session = requests.Session()
      key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
      if key:
        session.headers["Authorization"] = f"Bearer {key}"
    return session

  def _count(self, key: str) -> None:
    with self._stats_lock:
      self.stats[key] += 1

  def _once(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
    import requests  # pylint: disable=g-import-not-at-top
    url = f"{self.endpoint}{path}"
    self._count("requests")
    try:
      response = self._session().request(method, url, json=body, timeout=self.timeout_s)
    except requests.Timeout as e:
      raise _Retryable(f"no answer within {self.timeout_s:g} s") from e
    except requests.ConnectionError as e:
      raise _Retryable(f"cannot connect to {self.endpoint} ({type(e).__name__})") from e
    if response.status_code in _RETRY_STATUS:
      retry_after = response.headers.get("Retry-After", "")
      error = _Retryable(f"HTTP {response.status_code}: {_error_text(response)}")
      error.retry_after = float(retry_after) if retry_after.replace(".", "", 1).isdigit() \
          else None
      raise error
    if response.status_code in (401, 403):
      raise base.BackendError(
          f"{url}: the server refused the API key (HTTP {response.status_code}); it is "
          f"read from ${self.api_key_env}" if self.api_key_env else
          f"{url}: HTTP {response.status_code}: the server wants an API key (set "
          f"api_key_env)")
    if response.status_code == 404:
      raise base.BackendError(f"{url}: HTTP 404: {_error_text(response)} (is the model "
                              f"name {self.name!r} served? GET {self.endpoint}/models)")
    if response.status_code != 200:
      raise base.BackendError(f"{url}: HTTP {response.status_code}: {_error_text(response)}")
    try:
      return response.json()
    except ValueError as e:
      raise _Retryable(f"unreadable JSON body ({len(response.content)} bytes)") from e

  def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    """One request with retries; raises BackendError when it finally fails."""
    last = ""
    for attempt in range(self.max_retries + 1):
      try:
        return self._once(method, path, body)
      except _Retryable as e:
        last = str(e)
        if attempt == self.max_retries:
          break
        self._count("retries")
        delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_s * 2 ** attempt))
        if getattr(e, "retry_after", None) is not None:
          delay = min(self.backoff_cap_s, max(delay, e.retry_after))
        self._sleep(delay)
    raise base.BackendError(f"{method} {self.endpoint}{path} failed after "
                            f"{self.max_retries + 1} tries: {last}")

  def _cached_call(self, body: Mapping[str, Any], path: str = "/completions") -> Any:
    """POST ``path``, answered from ``cache_dir`` when the same request finished."""
    if not self.cache_dir:
      return self._call("POST", path, body)
    # The request body (model name, ids, seed, settings) is the key, not the endpoint:
    # a server restarted on another port still answers the same requests the same way.
    key = hashlib.sha256(json.dumps([path, body], sort_keys=True).encode())
    path = os.path.join(self.cache_dir, key.hexdigest()[:2], key.hexdigest() + ".json")
    if os.path.exists(path):
      try:
        with open(path, encoding="utf-8") as f:
          cached = json.load(f)
        self._count("cached")
        return cached
      except ValueError:
        pass  # a torn file from a killed run: ask again
    response = self._call("POST", path, body)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(response, f)
    os.replace(tmp, path)
    return response

  def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1 or self.max_concurrency == 1:
      return [fn(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(min(self.max_concurrency, len(items))) as ex:
      return list(ex.map(fn, items))

  # -- checks ------------------------------------------------------------------------------

  def _identify(self) -> None:
    """Reads the served model's revision, digest and context from ``GET /models`` once;
    refuses an endpoint that does not answer or does not serve ``model``."""
    if self._identified:
      return
    try:
      listing = self._call("GET", "/models")
    except base.BackendError as e:
      raise base.BackendError(f"the endpoint {self.endpoint} is not usable: {e}") from e
    data = listing.get("data") if isinstance(listing, dict) else None
    served = [m.get("id") for m in data or [] if isinstance(m, dict)]
    if self.name not in served:
      raise base.BackendError(f"the endpoint {self.endpoint} does not serve model "
                              f"{self.name!r}; it serves {served}")
    for m in data:
      if isinstance(m, dict) and m.get("id") == self.name:
        self._revision = str(m.get("revision") or m.get("root") or "")
        self._digest = str(m.get("rlds_lm_digest") or "")
        self.vocab_size = self.vocab_size or int(m.get("rlds_lm_vocab_size") or 0)
        self.max_seq_len = self.max_seq_len or int(m.get("max_model_len") or 0)
    self._identified = True

  def check(self, *, top_logprobs: int = 0, prompt_logprobs: int = 0) -> dict[str, Any]:
    """Refuses, with one clear message, an endpoint this backend cannot use.

    Checks that the server answers, serves ``model``, returns exact token ids and
    behaviour log-probs with ``top_logprobs`` alternatives, and (``prompt_logprobs``)
    scores given tokens. Returns ``describe()``.
    """
    self._identify()
    probe = [1] if not self.tokenizer else [int(getattr(self.tokenizer, "bos_id", 1))]
    gen = self._parse_sample(self._call("POST", "/completions", self._sample_body(
        probe, seed=0, sampler=None, max_new_tokens=1, top_logprobs=top_logprobs)),
        top_logprobs=top_logprobs)
    del gen
    if prompt_logprobs:
      self._parse_prompt_logprobs(self._call("POST", "/completions", self._score_body(
          probe + probe, prompt_logprobs)), 1, 2, prompt_logprobs)
    return self.describe()

  # -- sampling ----------------------------------------------------------------------------

  def _sample_body(self, prompt: Sequence[int], *, seed: int, sampler: Any,
                   max_new_tokens: int, top_logprobs: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": self.name, "prompt": [int(t) for t in prompt], "max_tokens": max_new_tokens,
        # logprobs=0: the sampled token's log-prob and no alternatives (OpenAI, vLLM).
        "seed": int(seed) % 2**63, "n": 1, "logprobs": int(top_logprobs),
        "return_tokens_as_token_ids": True,
    }
    if sampler is not None:
      body["temperature"] = float(sampler.temperature)
      body["top_p"] = float(sampler.top_p)
      if sampler.top_k:
        body["top_k"] = int(sampler.top_k)
    return body

  def _parse_sample(self, response: Any, *, top_logprobs: int) -> base.Generation:
    choice = _first_choice(response)
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("tokens"), list):
      raise base.BackendError("the server returned no log-probs for the sampled tokens "
                              "(asked with logprobs=k): behaviour log-probs are required")
    tokens = [_token_id(t, what="token") for t in logprobs["tokens"]]
    if isinstance(choice.get("token_ids"), list) and choice["token_ids"] != tokens:
      raise base.BackendError("the response's token_ids and logprobs.tokens disagree")
    lps = logprobs.get("token_logprobs") or []
    if len(lps) != len(tokens) or any(not isinstance(x, (int, float)) for x in lps):
      raise base.BackendError(f"the response has {len(lps)} token log-probs for "
                              f"{len(tokens)} tokens")
    top_ids = top_lps = None
    if top_logprobs > 0:
      rows = logprobs.get("top_logprobs") or []
      if len(rows) != len(tokens):
        raise base.BackendError(f"the response has top_logprobs for {len(rows)} of "
                                f"{len(tokens)} tokens")
      top_ids = np.zeros((len(tokens), top_logprobs), np.int32)
      top_lps = np.zeros((len(tokens), top_logprobs), np.float32)
      for t, row in enumerate(rows):
        items = sorted(((float(v), _token_id(k, what="alternative")) for k, v in
                        (row or {}).items()), key=lambda x: (-x[0], x[1]))
        if len(items) < top_logprobs:
          raise base.BackendError(
              f"the server returned {len(items)} alternatives per token, {top_logprobs} "
              f"were asked for: raise its limit (vLLM: --max-logprobs) or ask for fewer")
        top_ids[t] = [i for _, i in items[:top_logprobs]]
        top_lps[t] = [v for v, _ in items[:top_logprobs]]
    finish = choice.get("finish_reason")
    if finish not in _FINISH:
      raise base.BackendError(f"the server ended a completion with finish_reason "
                              f"{finish!r}")
    return base.Generation(
        tokens=np.asarray(tokens, np.int32), logprobs=np.asarray(lps, np.float32),
        stop_reason=_FINISH[finish], top_ids=top_ids, top_logprobs=top_lps,
        text=str(choice.get("text", "")),
        provenance={"response_id": str(response.get("id", "")),
                    "served_model": str(response.get("model", "")),
                    "created": int(response.get("created") or 0)})

  def sample(self, prompts: Sequence[np.ndarray], seeds: Sequence[int], sampler: Any,
             max_new_tokens: int, *, top_logprobs: int = 0) -> list[base.Generation]:
    if len(seeds) != len(prompts):
      raise base.BackendError(f"{len(prompts)} prompts need {len(prompts)} seeds, found "
                              f"{len(seeds)}")

    def one(i: int) -> base.Generation:
      body = self._sample_body(np.asarray(prompts[i]).tolist(), seed=seeds[i],
                               sampler=sampler, max_new_tokens=max_new_tokens,
                               top_logprobs=top_logprobs)
      gen = self._parse_sample(self._cached_call(body), top_logprobs=top_logprobs)
      text = gen.text
      if self.tokenizer is not None:
        text = self.tokenizer.decode(gen.tokens)
      provenance = {**gen.provenance, "seed": int(seeds[i]), "endpoint": self.endpoint,
                    "model": self.name, "sampler": {k: body[k] for k in
                                                    ("temperature", "top_p", "top_k")
                                                    if k in body}}
      return base.Generation(gen.tokens, gen.logprobs, gen.stop_reason, gen.top_ids,
                             gen.top_logprobs, text, provenance)

    return self._map(one, list(range(len(prompts))))

  # -- chat --------------------------------------------------------------------------------

  def chat(self, messages, *, seed: int, sampler: Any, max_new_tokens: int,
           text_only: bool = False) -> base.Generation:
    """One reply from ``POST /chat/completions`` (the server applies its chat template).

    Token ids come from the reply's log-probs (``return_tokens_as_token_ids``); a server
    that gives none is refused unless ``text_only`` (a judge needs only the text).
    """
    body: dict[str, Any] = {"model": self.name, "messages": list(messages),
                            "max_tokens": max_new_tokens, "seed": int(seed) % 2**63,
                            "logprobs": True, "return_tokens_as_token_ids": True}
    if sampler is not None:
      body["temperature"] = float(sampler.temperature)
      body["top_p"] = float(sampler.top_p)
      if sampler.top_k:
        body["top_k"] = int(sampler.top_k)
    response = self._cached_call(body, path="/chat/completions")
    choice = _first_choice(response)
    message = choice.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
      raise base.BackendError(f"the chat response has no message content: "
                              f"{str(choice)[:200]}")
    content = (choice.get("logprobs") or {}).get("content")
    if isinstance(content, list) and content:
      tokens = [_token_id(e.get("token"), what="token") for e in content]
      lps = [float(e.get("logprob")) for e in content]
    elif text_only:
      tokens, lps = [], []
    else:
      raise base.BackendError("the chat response has no per-token log-probs (asked with "
                              "logprobs=true): token ids and behaviour log-probs are "
                              "required unless text_only")
    finish = choice.get("finish_reason")
    return base.Generation(
        tokens=np.asarray(tokens, np.int32), logprobs=np.asarray(lps, np.float32),
        stop_reason=_FINISH.get(finish, base.STOP_EOS), text=message["content"],
        provenance={"response_id": str(response.get("id", "")),
                    "served_model": str(response.get("model", "")), "seed": int(seed),
                    "endpoint": self.endpoint, "model": self.name})

  # -- teacher scoring ---------------------------------------------------------------------

  def _score_body(self, sequence: Sequence[int], top_k: int) -> dict[str, Any]:
    return {"model": self.name, "prompt": [int(t) for t in sequence], "max_tokens": 1,
            "temperature": 1.0, "seed": 0, "prompt_logprobs": max(1, int(top_k)),
            "return_tokens_as_token_ids": True}

  @staticmethod
  def _parse_prompt_logprobs(response: Any, start: int, end: int, top_k: int
                             ) -> dict[str, np.ndarray]:
    choice = _first_choice(response)
    rows = choice.get("prompt_logprobs")
    if rows is None:
      rows = response.get("prompt_logprobs")  # some servers put it beside the choices
    if not isinstance(rows, list):
      raise base.BackendError("the server returned no prompt_logprobs: it cannot score "
                              "given tokens (the teacher stage needs vLLM's "
                              "prompt_logprobs extension or `rlds-lm serve`)")
    if len(rows) < end:
      raise base.BackendError(f"prompt_logprobs covers {len(rows)} positions, {end} "
                              f"were sent")
    n = end - start
    token_lp = np.zeros(n, np.float32)
    ids = np.zeros((n, top_k), np.int32)
    lps = np.zeros((n, top_k), np.float32)
    prompt_ids = choice.get("prompt_token_ids") or response.get("prompt_token_ids")
    for j, row in enumerate(rows[start:end]):
      if not isinstance(row, dict) or not row:
        raise base.BackendError(f"prompt_logprobs[{start + j}] is empty")
      # vLLM: {token id: {logprob, rank, decoded_token}}, the top-k by rank plus the
      # prompt token itself (listed first), whatever its rank.
      entries = {}
      for key, value in row.items():
        token = int(key) if str(key).lstrip("-").isdigit() else _token_id(key, what="id")
        entries[token] = float(value.get("logprob") if isinstance(value, dict) else value)
      actual = (int(prompt_ids[start + j]) if prompt_ids is not None
                else next(iter(entries)))
      if actual not in entries:
        raise base.BackendError(f"prompt_logprobs[{start + j}] lacks the prompt token")
      token_lp[j] = entries[actual]
      # The prompt token, when outside the top-k, is less likely than all of it, so the
      # k most likely entries are the top-k (ties: lower id first, as our top-k does).
      ranked = sorted(entries.items(), key=lambda e: (-e[1], e[0]))
      if len(ranked) < top_k:
        raise base.BackendError(
            f"the server returned {len(ranked)} prompt alternatives, {top_k} were asked "
            f"for: raise its limit (vLLM: --max-logprobs) or ask for fewer")
      ids[j] = [t for t, _ in ranked[:top_k]]
      lps[j] = [lp for _, lp in ranked[:top_k]]
    out = {S.TEACHER_TOKEN_LOGPROB: token_lp}
    if top_k:
      out[S.TEACHER_TOPK_IDS], out[S.TEACHER_TOPK_LOGPROBS] = ids, lps
    return out

  def annotate(self, sequences: Sequence[np.ndarray], prompt_lengths: Sequence[int], *,
               top_k: int) -> list[dict[str, np.ndarray]]:
    def one(i: int) -> dict[str, np.ndarray]:
      seq = np.asarray(sequences[i]).tolist()
      out = self._parse_prompt_logprobs(self._cached_call(self._score_body(seq, top_k)),
                                        int(prompt_lengths[i]), len(seq), max(1, top_k))
      if not top_k:
        out = {S.TEACHER_TOKEN_LOGPROB: out[S.TEACHER_TOKEN_LOGPROB]}
      return out

    return self._map(one, list(range(len(sequences))))


def _first_choice(response: Any) -> dict[str, Any]:
  choices = response.get("choices") if isinstance(response, dict) else None
  if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
    raise base.BackendError(f"the response has no choices: {str(response)[:200]}")
  return choices[0]


def _error_text(response: Any) -> str:
  try:
    body = response.json()
  except ValueError:
    return response.text[:200]
  if isinstance(body, dict):
    error = body.get("error", body)
    if isinstance(error, dict):
      return str(error.get("message", error))[:300]
    return str(error)[:300]
  return str(body)[:300]
