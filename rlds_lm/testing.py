"""Testing helpers that ship with the package: fake episodes and episode equality.

Use them to test your own pipelines::

    cfg = SchemaConfig(vocab_size=259, teacher_top_k=8, reward_names=("correct",))
    episodes = [fake_rollout(cfg, seed=i) for i in range(10)]
    assert_episodes_equal(episodes[0], read_back[0])
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rlds_lm import schema as S


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def fake_teacher(config: S.SchemaConfig, tokens: np.ndarray,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Teacher arrays drawn from a random full-vocabulary distribution per token."""
  length = tokens.shape[0]
  logprobs = _log_softmax(rng.normal(size=(length, config.vocab_size)) * 2.0)
  teacher = {S.TEACHER_TOKEN_LOGPROB:
             logprobs[np.arange(length), tokens].astype(np.float32)}
  if config.teacher_top_k:
    order = np.argsort(-logprobs, axis=-1, kind="stable")[:, :config.teacher_top_k]
    teacher[S.TEACHER_TOPK_IDS] = order.astype(np.int32)
    teacher[S.TEACHER_TOPK_LOGPROBS] = np.take_along_axis(logprobs, order, -1).astype(
        np.float32)
  if config.teacher_sampled_k:
    s = config.teacher_sampled_k
    ids = np.zeros((length, s), np.int32)
    counts = np.zeros((length, s), np.int32)
    probs = np.exp(logprobs)
    for t in range(length):
      draws = rng.choice(config.vocab_size, size=s, p=probs[t] / probs[t].sum())
      uniq, cnt = np.unique(draws, return_counts=True)
      ids[t, :len(uniq)] = uniq
      counts[t, :len(uniq)] = cnt
    teacher[S.TEACHER_SAMPLED_IDS] = ids
    teacher[S.TEACHER_SAMPLED_COUNTS] = counts
  return teacher


def fake_rollout(config: S.SchemaConfig, seed: int = 0, *, turns: int = 1,
                 prompt_len: int = 6, action_len: int = 8, thinking: bool = False,
                 with_image: bool = False) -> dict[str, Any]:
  """A random but valid rollout episode of ``config`` (deterministic in ``seed``)."""
  rng = np.random.default_rng(seed)
  roles = ("prompt",) + ("tool", "user") * turns
  steps = []
  for i in range(turns):
    obs_tokens = rng.integers(0, config.vocab_size, size=prompt_len, dtype=np.int32)
    act_tokens = rng.integers(0, config.vocab_size, size=action_len, dtype=np.int32)
    image = (rng.integers(0, 255, size=(4, 5, config.image_channels), dtype=np.uint8)
             if with_image and i == 0 else None)
    mask = np.zeros(action_len, bool)
    if thinking:
      mask[: action_len // 2] = True
    steps.append(S.Turn(
        observation=S.observation(config, obs_tokens, f"turn {i} of episode {seed}",
                                  roles[i], image=image),
        action_tokens=act_tokens,
        action_text=f"answer {i}",
        action_logprobs=-rng.exponential(size=action_len).astype(np.float32),
        thinking_mask=mask,
        reward=float(rng.random()),
        rewards={name: float(rng.random()) for name in config.reward_names},
        token_rewards=rng.normal(size=action_len).astype(np.float32),
        teacher=fake_teacher(config, act_tokens, rng) if config.has_teacher else None,
    ))
  return S.rollout_episode(
      config, steps, prompt_id=f"prompt-{seed // 4}", sample_index=seed % 4,
      task="fake", policy_name="fake-policy", policy_digest="0" * 16,
      temperature=1.0, top_k=0, top_p=1.0, seed=seed, lineage={"source": "fake"})


def fake_preference(config: S.SchemaConfig, seed: int = 0, candidates: int = 3) -> dict[str, Any]:
  """A random but valid preference episode of ``config``."""
  rng = np.random.default_rng(seed)
  tokens = [rng.integers(0, config.vocab_size, size=int(rng.integers(1, 9)), dtype=np.int32)
            for _ in range(candidates)]
  scores = rng.random(candidates).astype(np.float32)
  return S.preference_episode(
      config, S.observation(config, rng.integers(0, config.vocab_size, 5, dtype=np.int32),
                            "which is better?", "prompt"),
      [f"ep-{seed}-{c}" for c in range(candidates)], tokens, prompt_id=f"prompt-{seed}",
      choice=int(np.argmax(scores)), scores=scores, judge_name="fake-rm", task="fake")


def _to_python(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode()
  if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
    return [_to_python(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return value.item()
  return value


def assert_episodes_equal(actual: Mapping[str, Any], expected: Mapping[str, Any],
                          path: str = "", rtol: float = 0.0) -> None:
  """Asserts two episodes (or sub-trees) hold the same fields and values.

  Steps may be lists or any sequence of dicts; strings may be ``str`` or ``bytes``;
  arrays must match in shape and value (exactly, unless ``rtol``).
  """
  if isinstance(expected, Mapping):
    assert isinstance(actual, Mapping), f"{path}: expected a dict, found {type(actual)}"
    assert set(actual) == set(expected), (
        f"{path}: keys differ: extra {sorted(set(actual) - set(expected))}, "
        f"missing {sorted(set(expected) - set(actual))}")
    for key in expected:
      assert_episodes_equal(actual[key], expected[key], f"{path}/{key}", rtol)
    return
  if isinstance(expected, Sequence) and not isinstance(expected, (str, bytes)):
    actual = list(actual)
    assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
      assert_episodes_equal(a, e, f"{path}[{i}]", rtol)
    return
  a, e = _to_python(actual), _to_python(expected)
  if isinstance(e, list) or isinstance(a, list):
    assert list(a) == list(e), f"{path}: {a!r} != {e!r}"
    return
  if isinstance(e, np.ndarray) or isinstance(a, np.ndarray):
    a_arr, e_arr = np.asarray(a), np.asarray(e)
    assert a_arr.shape == e_arr.shape, f"{path}: shape {a_arr.shape} != {e_arr.shape}"
    if rtol:
      np.testing.assert_allclose(a_arr, e_arr, rtol=rtol, err_msg=path)
    else:
      np.testing.assert_array_equal(a_arr, e_arr, err_msg=path)
    return
  if isinstance(e, float) or isinstance(a, float):
    assert np.isclose(a, e, rtol=rtol or 1e-6, atol=1e-7), f"{path}: {a!r} != {e!r}"
    return
  assert a == e, f"{path}: {a!r} != {e!r}"


SCRIPTED_MODELS = {"object": "list", "data": [{"id": "policy", "object": "model",
                                               "root": "rev-1", "max_model_len": 512}]}


class ScriptedServer:
  """An OpenAI-compatible server on localhost that answers from a script, for testing
  code that talks to model endpoints (retries, timeouts, refusals, response shapes).

  ``script`` is a list of ``(status, body[, delay_s])`` steps taken one per POST (the last
  one repeats), or a function of the request body returning such a step; ``body`` is a
  JSON-able object or raw bytes. ``GET`` answers ``models`` (``/v1/models``). The server
  records every POST body in ``requests`` and every request's headers in ``headers``.

  Example::

      with ScriptedServer([(429, {"error": "busy"}), (200, completion)]) as server:
        backend = OpenAIBackend(server.url, "policy", api_key_env="")
        ...
  """

  def __init__(self, script, models: Mapping[str, Any] | None = None):
    import http.server  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top

    self.script = script if callable(script) else list(script)
    self.models = SCRIPTED_MODELS if models is None else models
    self.requests: list[dict[str, Any]] = []
    self.headers: list[dict[str, str]] = []
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):  # quiet
        pass

      def _send(self, status, body, delay=0.0):
        time.sleep(delay)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass

      def do_GET(self):  # noqa: N802
        outer.headers.append(dict(self.headers))
        self._send(200, outer.models)

      def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        outer.requests.append(json.loads(self.rfile.read(length)))
        outer.headers.append(dict(self.headers))
        if callable(outer.script):
          step = outer.script(outer.requests[-1])
        else:
          step = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
        self._send(*step)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self) -> ScriptedServer:
    self._thread.start()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@contextlib.contextmanager
def served_checkpoint(checkpoint: str, name: str, *, args: Sequence[str] = (),
                      env: Mapping[str, str] | None = None, log_path: str | None = None,
                      timeout_s: float = 180.0) -> Iterator[str]:
  """``rlds-lm serve CHECKPOINT`` in a subprocess on a free localhost port; yields its
  ``http://127.0.0.1:PORT/v1`` endpoint once ``/health`` answers and stops the server
  on exit (terminate, then kill after 30 s).

  Args:
    checkpoint: the checkpoint directory to serve.
    name: the served model name.
    args: more ``rlds-lm serve`` flags.
    env: extra environment variables of the server.
    log_path: where the server's output goes (default: ``serve_NAME.log`` beside the
      checkpoint); its tail is in the error when the server exits or never answers.
    timeout_s: how long to wait for ``/health``.
  """
  import requests  # pylint: disable=g-import-not-at-top

  port = free_port()
  log_path = log_path or os.path.join(os.path.dirname(os.path.abspath(checkpoint)),
                                      f"serve_{name}.log")
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlds_lm.cli", "serve", checkpoint, "--port", str(port),
         "--name", name, *args], env={**os.environ, **(env or {})}, stdout=log,
        stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + timeout_s
    while True:
      if proc.poll() is not None:
        with open(log_path, encoding="utf-8") as f:
          raise RuntimeError(f"rlds-lm serve exited:\n{f.read()[-3000:]}")
      try:
        if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
          break
      except requests.ConnectionError:
        pass
      if time.monotonic() > deadline:
        raise RuntimeError(f"rlds-lm serve did not answer within {timeout_s:g} s")
      time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
