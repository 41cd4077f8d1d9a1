"""``rlds-lm serve`` over real HTTP on localhost, against the in-process backend."""

from __future__ import annotations

import concurrent.futures
import json
import os

import numpy as np
import pytest
import requests

from rlds_lm import schema as S
from rlds_lm import tokenizers
from rlds_lm.backends import BackendError
from rlds_lm.backends import local
from rlds_lm.backends import openai_compat
from rlds_lm.models import checkpoint
from rlds_lm.models import config as model_config
from rlds_lm.models import gemma
from rlds_lm.models import sampling
from rlds_lm import testing as T

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """(endpoint, in-process backend) for a tiny checkpoint served by `rlds-lm serve`."""
  path = str(tmp_path_factory.mktemp("serve") / "ckpt")
  config = model_config.get_config("tiny")
  checkpoint.save(path, config, gemma.init_params(config, 3))
  env = {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "RLDS_LM_SERVE_TEST_KEY": "sk-test", "JAX_PLATFORMS": "cpu"}
  with T.served_checkpoint(path, "tiny-policy", env=env,
                           args=["--api_key_env", "RLDS_LM_SERVE_TEST_KEY"]) as endpoint:
    yield endpoint, local.LocalBackend.from_checkpoint(path, name="tiny-policy")


def _client(endpoint, **kwargs):
  tok = tokenizers.ByteTokenizer()
  return openai_compat.OpenAIBackend(endpoint, "tiny-policy", tokenizer=tok,
                                     api_key_env="RLDS_LM_SERVE_TEST_KEY", **kwargs)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
  monkeypatch.setenv("RLDS_LM_SERVE_TEST_KEY", "sk-test")


def _prompts(n):
  tok = tokenizers.ByteTokenizer()
  return [tok.encode(f"{i} + {2 * i} = ", add_bos=True) for i in range(n)]


def test_http_samples_equal_in_process_samples(served):
  endpoint, inproc = served
  client = _client(endpoint, max_concurrency=8)
  assert client.check(top_logprobs=4, prompt_logprobs=4)["revision"] == inproc.digest
  prompts, seeds = _prompts(12), [S.content_seed("t", i) for i in range(12)]
  sampler = sampling.SamplerConfig(temperature=0.8, top_p=0.95)
  over_http = client.sample(prompts, seeds, sampler, 12, top_logprobs=4)
  in_process = inproc.sample(prompts, seeds, sampler, 12, top_logprobs=4)
  for h, p in zip(over_http, in_process):
    np.testing.assert_array_equal(h.tokens, p.tokens)
    np.testing.assert_allclose(h.logprobs, p.logprobs, atol=1e-5)
    np.testing.assert_array_equal(h.top_ids, p.top_ids)
    np.testing.assert_allclose(h.top_logprobs, p.top_logprobs, atol=1e-5)
    assert h.stop_reason == p.stop_reason and h.text == p.text


def test_http_teacher_scores_equal_in_process_annotation(served):
  endpoint, inproc = served
  prompts = _prompts(5)
  sequences = [np.concatenate([p, p[1:4]]) for p in prompts]
  lengths = [len(p) for p in prompts]
  over_http = _client(endpoint).annotate(sequences, lengths, top_k=6)
  in_process = inproc.annotate(sequences, lengths, top_k=6)
  for h, p in zip(over_http, in_process):
    np.testing.assert_array_equal(h[S.TEACHER_TOPK_IDS], p[S.TEACHER_TOPK_IDS])
    for key in (S.TEACHER_TOKEN_LOGPROB, S.TEACHER_TOPK_LOGPROBS):
      np.testing.assert_allclose(h[key], p[key], atol=1e-5)


def test_concurrent_requests_are_batched_and_answered_alike(served):
  endpoint, _ = served
  prompts = _prompts(24)
  body = lambda i: {"model": "tiny-policy", "prompt": prompts[i].tolist(), "seed": i,
                    "max_tokens": 6, "temperature": 0.9, "logprobs": 0,
                    "return_tokens_as_token_ids": True}
  headers = {"Authorization": "Bearer sk-test"}
  post = lambda i: requests.post(f"{endpoint}/completions", json=body(i), headers=headers,
                                 timeout=120).json()["choices"][0]["logprobs"]["tokens"]
  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    together = list(pool.map(post, range(24)))
  alone = [post(i) for i in (0, 7, 23)]
  assert [together[i] for i in (0, 7, 23)] == alone


def test_chat_completions_in_the_openai_shape(served):
  endpoint, _ = served
  reply = requests.post(f"{endpoint}/chat/completions", headers={
      "Authorization": "Bearer sk-test"}, json={
          "model": "tiny-policy", "seed": 1, "max_tokens": 5, "logprobs": True,
          "top_logprobs": 2, "return_tokens_as_token_ids": True,
          "messages": [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "hi"}]}, timeout=120).json()
  choice = reply["choices"][0]
  assert choice["message"]["role"] == "assistant"
  content = choice["logprobs"]["content"]
  assert len(content) == reply["usage"]["completion_tokens"] > 0
  assert all(e["token"].startswith("token_id:") and len(e["top_logprobs"]) == 2
             for e in content)


def test_refusals_are_openai_errors(served):
  endpoint, _ = served
  headers = {"Authorization": "Bearer sk-test"}
  wrong_model = requests.post(f"{endpoint}/completions", headers=headers, json={
      "model": "other", "prompt": [1, 2]}, timeout=60)
  assert wrong_model.status_code == 404 and "does not exist" in wrong_model.json()[
      "error"]["message"]
  too_long = requests.post(f"{endpoint}/completions", headers=headers, json={
      "model": "tiny-policy", "prompt": [1] * 10, "max_tokens": 10 ** 6}, timeout=60)
  assert too_long.status_code == 400 and "context length" in too_long.json()["error"][
      "message"]
  no_key = requests.post(f"{endpoint}/completions", json={
      "model": "tiny-policy", "prompt": [1]}, timeout=60)
  assert no_key.status_code == 401
  with pytest.raises(BackendError, match="refused the API key"):
    os.environ["RLDS_LM_SERVE_TEST_KEY"] = "wrong"
    _client(endpoint, max_retries=0).check()


def test_rollouts_helper_gives_the_same_episodes_over_http_and_in_process(served, tmp_path):
  from rlds_lm import recorder as recorder_lib  # pylint: disable=g-import-not-at-top
  from rlds_lm.backends import episodes  # pylint: disable=g-import-not-at-top
  endpoint, inproc = served
  tok = tokenizers.ByteTokenizer()
  config = S.SchemaConfig(vocab_size=tok.vocab_size, teacher_top_k=4)
  prompts = {f"p-{i}": f"{i} * 3 =" for i in range(3)}
  kwargs = dict(tokenizer=tok, num_samples=2, max_new_tokens=8,
                sampler=sampling.SamplerConfig(temperature=0.9))
  client = _client(endpoint)
  over_http = list(episodes.rollouts(client, prompts, config, teacher=client, **kwargs))
  in_process = list(episodes.rollouts(inproc, prompts, config, teacher=inproc, **kwargs))
  assert [e[S.EPISODE_ID] for e in over_http] == [e[S.EPISODE_ID] for e in in_process]
  for h, p in zip(over_http, in_process):
    hs, ps = h[S.STEPS][0], p[S.STEPS][0]
    np.testing.assert_array_equal(hs[S.ACTION][S.ACT_TOKENS], ps[S.ACTION][S.ACT_TOKENS])
    np.testing.assert_allclose(hs[S.ACTION_LOGPROBS], ps[S.ACTION_LOGPROBS], atol=1e-5)
    teacher_h, teacher_p = hs[S.TEACHER], ps[S.TEACHER]
    np.testing.assert_array_equal(teacher_h[S.TEACHER_TOPK_IDS], teacher_p[S.TEACHER_TOPK_IDS])
    lineage = h[S.LINEAGE]
    lineage = json.loads(lineage) if isinstance(lineage, str) else lineage
    assert lineage["request"]["endpoint"] == endpoint
    assert lineage["policy"]["backend"] == "openai" and "sk-test" not in json.dumps(lineage)
  # They record and publish like any episodes.
  with recorder_lib.Recorder(tmp_path / "log", config) as rec:
    for episode in over_http:
      rec.record(episode)
  path = recorder_lib.publish_log(tmp_path / "log", data_dir=tmp_path / "data",
                                  name="served_rollouts")
  assert os.path.isdir(path)


def test_chat_over_http_equals_chat_in_process(served):
  endpoint, inproc = served
  messages = [{"role": "system", "content": "terse"}, {"role": "user", "content": "2+2?"}]
  sampler = sampling.SamplerConfig(temperature=0.8)
  over_http = _client(endpoint).chat(messages, seed=5, sampler=sampler, max_new_tokens=6)
  in_process = inproc.chat(messages, seed=5, sampler=sampler, max_new_tokens=6)
  np.testing.assert_array_equal(over_http.tokens, in_process.tokens)
  np.testing.assert_allclose(over_http.logprobs, in_process.logprobs, atol=1e-5)
