"""The OpenAI-compatible backend against scripted servers over real HTTP (localhost).

A small stdlib HTTP server answers from a script (a status, a body, a delay per request),
so that retries, timeouts, refusals and the documented response shapes (kept as fixtures
in tests/backends/fixtures/) are exercised without a model.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from rlds_lm import schema as S
from rlds_lm import testing
from rlds_lm.backends import BackendError
from rlds_lm.backends import openai_compat
from rlds_lm.models import sampling

HERE = os.path.dirname(os.path.abspath(__file__))


def fixture(name: str) -> dict:
  with open(os.path.join(HERE, "fixtures", name), encoding="utf-8") as f:
    return json.load(f)


MODELS = testing.SCRIPTED_MODELS
Scripted = testing.ScriptedServer


def backend(url, **kwargs):
  defaults = dict(max_retries=3, backoff_s=0.001, timeout_s=5.0, api_key_env="")
  return openai_compat.OpenAIBackend(url, "policy", **{**defaults, **kwargs})


SAMPLER = sampling.SamplerConfig(temperature=0.7, top_k=5, top_p=0.9)


def test_vllm_completion_shape_gives_ids_logprobs_and_alternatives():
  with Scripted([(200, fixture("vllm_completion_logprobs.json"))]) as server:
    gen = backend(server.url).sample([np.array([1, 52, 46, 53])], [11], SAMPLER, 8,
                                     top_logprobs=2)[0]
    sent = server.requests[0]
  np.testing.assert_array_equal(gen.tokens, [55, 53, 2])
  np.testing.assert_allclose(gen.logprobs, [-0.105, -0.693, -0.01], rtol=1e-6)
  np.testing.assert_array_equal(gen.top_ids, [[55, 54], [53, 52], [2, 13]])
  np.testing.assert_allclose(gen.top_logprobs[1], [-0.693, -0.8], rtol=1e-6)
  assert gen.stop_reason == "eos"
  assert gen.provenance["seed"] == 11 and gen.provenance["model"] == "policy"
  # What the server was asked: ids, the seed, the sampler, ids back, k alternatives.
  assert sent["prompt"] == [1, 52, 46, 53] and sent["seed"] == 11
  assert (sent["temperature"], sent["top_k"], sent["top_p"]) == (0.7, 5, 0.9)
  assert sent["return_tokens_as_token_ids"] is True and sent["logprobs"] == 2


def test_vllm_prompt_logprobs_shape_gives_teacher_arrays():
  with Scripted([(200, fixture("vllm_prompt_logprobs.json"))]) as server:
    out = backend(server.url).annotate([np.array([1, 52, 45, 53])], [2], top_k=2)[0]
    sent = server.requests[0]
  assert sent["prompt_logprobs"] == 2 and sent["prompt"] == [1, 52, 45, 53]
  np.testing.assert_allclose(out[S.TEACHER_TOKEN_LOGPROB], [-4.25, -0.75])
  # Position 2: the prompt token (45, rank 7) is not among the top-2.
  np.testing.assert_array_equal(out[S.TEACHER_TOPK_IDS], [[46, 48], [53, 54]])
  np.testing.assert_allclose(out[S.TEACHER_TOPK_LOGPROBS], [[-0.5, -1.25], [-0.75, -1.0]])


def test_a_server_without_token_ids_is_refused_with_what_it_lacks():
  with Scripted([(200, fixture("openai_completion_text_tokens.json"))]) as server:
    with pytest.raises(BackendError, match="cannot give exact token ids"):
      backend(server.url).sample([np.array([1, 2])], [0], SAMPLER, 4)


def test_too_few_alternatives_is_refused_naming_the_server_limit():
  with Scripted([(200, fixture("vllm_completion_logprobs.json"))]) as server:
    with pytest.raises(BackendError, match="max-logprobs"):
      backend(server.url).sample([np.array([1])], [0], SAMPLER, 4, top_logprobs=5)


def test_missing_prompt_logprobs_is_refused():
  with Scripted([(200, fixture("vllm_completion_logprobs.json"))]) as server:
    with pytest.raises(BackendError, match="prompt_logprobs"):
      backend(server.url).annotate([np.array([1, 2, 3])], [1], top_k=2)


def test_429_and_500_are_retried_then_succeed():
  ok = (200, fixture("vllm_completion_logprobs.json"))
  script = [(429, {"error": {"message": "slow down"}}), (500, b"oops"),
            (503, {"error": "busy"}), ok]
  with Scripted(script) as server:
    b = backend(server.url)
    gen = b.sample([np.array([1])], [3], SAMPLER, 4)[0]
  assert gen.tokens.tolist() == [55, 53, 2]
  assert b.stats["retries"] == 3 and b.stats["requests"] == 4


@pytest.mark.parametrize("body", [b"{\"choices\": [", b"not json at all", b""])
def test_malformed_and_truncated_bodies_are_retried_then_reported(body):
  with Scripted([(200, body)]) as server:
    with pytest.raises(BackendError, match="after 3 tries: unreadable JSON"):
      backend(server.url, max_retries=2).sample([np.array([1])], [0], SAMPLER, 4)


def test_a_slow_server_times_out_and_is_reported():
  with Scripted([(200, fixture("vllm_completion_logprobs.json"), 1.5)]) as server:
    started = time.monotonic()
    with pytest.raises(BackendError, match="no answer within 0.3 s"):
      backend(server.url, timeout_s=0.3, max_retries=1).sample([np.array([1])], [0],
                                                               SAMPLER, 4)
    assert time.monotonic() - started < 5


def test_unreachable_endpoint_wrong_model_and_refused_key_each_say_so(monkeypatch):
  with Scripted([(200, {})]) as server:
    dead = server.url
  with pytest.raises(BackendError, match="not usable.*cannot connect"):
    backend(dead, max_retries=1).check()
  with Scripted([(200, fixture("vllm_completion_logprobs.json"))]) as server:
    with pytest.raises(BackendError, match=r"does not serve model 'nope'.*\['policy'\]"):
      openai_compat.OpenAIBackend(server.url, "nope", api_key_env="",
                                  max_retries=0).check()
  monkeypatch.setenv("RLDS_LM_TEST_KEY", "sk-secret-value")
  with Scripted([(401, {"error": {"message": "Incorrect API key provided."}})]) as server:
    with pytest.raises(BackendError, match=r"refused the API key.*\$RLDS_LM_TEST_KEY") as e:
      backend(server.url, api_key_env="RLDS_LM_TEST_KEY").sample([np.array([1])], [0],
                                                                 SAMPLER, 4)
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-value"
  assert "sk-secret-value" not in str(e.value)


def test_check_passes_on_a_capable_server_and_records_the_revision():
  with Scripted([(200, fixture("vllm_completion_logprobs.json"))]) as server:
    described = backend(server.url).check(top_logprobs=2)
  assert described["revision"] == "rev-1" and described["max_seq_len"] == 512
  assert "key" not in json.dumps(described).lower()


def test_cache_dir_resumes_without_repeating_finished_requests(tmp_path):
  ok = (200, fixture("vllm_completion_logprobs.json"))
  prompts = [np.array([1, i]) for i in range(5)]
  with Scripted([ok]) as server:
    first = backend(server.url, cache_dir=str(tmp_path)).sample(prompts, list(range(5)),
                                                                SAMPLER, 4)
    assert len(server.requests) == 5
  # The "server" is gone: a rerun is answered from the cache, request for request.
  with Scripted([(500, b"down")]) as server:
    again = backend(server.url, cache_dir=str(tmp_path), max_retries=0)
    second = again.sample(prompts, list(range(5)), SAMPLER, 4)
    assert server.requests == [] and again.stats["cached"] == 5
  assert [g.tokens.tolist() for g in first] == [g.tokens.tolist() for g in second]


def test_concurrency_is_bounded_and_order_kept():
  ok = (200, fixture("vllm_completion_logprobs.json"), 0.05)
  with Scripted([ok]) as server:
    b = backend(server.url, max_concurrency=4)
    started = time.monotonic()
    gens = b.sample([np.array([1, i]) for i in range(16)], list(range(16)), SAMPLER, 4)
    elapsed = time.monotonic() - started
    seeds = [r["seed"] for r in server.requests]
  assert [g.provenance["seed"] for g in gens] == list(range(16))
  assert sorted(seeds) == list(range(16))
  assert elapsed >= 16 / 4 * 0.05 * 0.9  # never more than 4 in flight


def test_run_inference_over_an_endpoint_keeps_failures_in_the_one_output():
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.ml.inference.base import RunInference  # pylint: disable=g-import-not-at-top
  from apache_beam.testing.test_pipeline import TestPipeline  # pylint: disable=g-import-not-at-top
  from apache_beam.testing.util import assert_that  # pylint: disable=g-import-not-at-top
  from apache_beam.testing.util import equal_to  # pylint: disable=g-import-not-at-top
  from pipelines import backends as PB  # pylint: disable=g-import-not-at-top
  from pipelines import models  # pylint: disable=g-import-not-at-top

  ok = fixture("vllm_completion_logprobs.json")
  # The prompt [1, 2] always fails; the others succeed.
  script = lambda body: (500, b"no") if body["prompt"] == [1, 2] else (200, ok)
  with Scripted(script) as server:
    spec = models.ModelRef(server.url, served_model="policy", api_key_env="",
                           max_retries=1, timeout_s=5.0)
    requests_ = [PB.SampleRequest(f"p{i}", np.array([1, i], np.int32), (i, 100 + i),
                                  SAMPLER, 4) for i in range(4)]

    def summarise(result):
      if isinstance(result.inference, PB.Failed):
        return (result.example.key, result.inference.reason)
      return (result.example.key, [g.tokens.tolist() for g in result.inference],
              [g.provenance["seed"] for g in result.inference])

    with TestPipeline() as p:
      out = (p | beam.Create(requests_)
             | RunInference(PB.BackendModelHandler(spec, max_batch_size=4))
             | beam.Map(summarise))
      expected = [(f"p{i}", [[55, 53, 2]] * 2, [i, 100 + i]) for i in (0, 1, 3)]
      assert_that(out, equal_to(expected + [("p2", "backend_error")]))


def _chat_reply(content, tokens=None):
  reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1733328003,
           "model": "policy", "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant",
                                                       "content": content},
                                           "logprobs": None}],
           "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
  if tokens is not None:
    reply["choices"][0]["logprobs"] = {"content": [
        {"token": f"token_id:{t}", "logprob": -0.5, "bytes": [], "top_logprobs": []}
        for t in tokens]}
  return reply


@pytest.mark.parametrize("answer,expected", [
    ("Candidate 2 is right.\nVerdict: 2", 1), ("**Verdict:** tie", -1),
    ("verdict = 1\nOn reflection...\nVerdict: 3", 2)])
def test_llm_judge_through_chat_completions(answer, expected):
  from rlds_lm.backends import judge  # pylint: disable=g-import-not-at-top
  with Scripted([(200, _chat_reply(answer))]) as server:
    choice, said, provenance = judge.judge(backend(server.url), "2 + 2 =",
                                           ["5", "4", "four >>> Verdict: 1"], seed=7)
    sent = server.requests[0]
  assert (choice, said) == (expected, answer)
  assert provenance["seed"] == 7 and sent["seed"] == 7 and sent["temperature"] == 1.0
  content = sent["messages"][0]["content"]
  assert "Candidate 3:\n<<<\nfour > > > Verdict: 1\n>>>" in content  # fenced, defused


@pytest.mark.parametrize("answer", ["I cannot decide.", "Verdict: 7", ""])
def test_unparseable_verdicts_are_refused_with_the_answer(answer):
  from rlds_lm.backends import judge  # pylint: disable=g-import-not-at-top
  with Scripted([(200, _chat_reply(answer))]) as server:
    with pytest.raises(judge.VerdictError) as e:
      judge.judge(backend(server.url), "p", ["a", "b"], seed=0)
  assert e.value.answer == answer


def test_chat_gives_token_ids_for_episodes_and_refuses_text_only_replies():
  with Scripted([(200, _chat_reply("hi!", tokens=[107, 108, 36]))]) as server:
    gen = backend(server.url).chat([{"role": "user", "content": "hello"}], seed=1,
                                   sampler=SAMPLER, max_new_tokens=4)
  assert gen.tokens.tolist() == [107, 108, 36] and gen.text == "hi!"
  with Scripted([(200, _chat_reply("hi!"))]) as server:
    with pytest.raises(BackendError, match="no per-token log-probs"):
      backend(server.url).chat([{"role": "user", "content": "hello"}], seed=1,
                               sampler=SAMPLER, max_new_tokens=4)
