"""The stages with served models: `rlds-lm serve` over real HTTP (localhost) gives the
same episodes as the in-process checkpoints; retries, refusals, the verdict judge and a
killed-and-rerun stage against scripted servers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipelines import generate
from pipelines import judge
from pipelines import publish
from pipelines import score
from pipelines import teacher
from pipelines.errors import PipelineError
from rlds_lm import schema as S
from rlds_lm import testing

from pipeline_testlib import MAX_NEW_TOKENS  # pylint: disable=g-bad-import-order
from pipeline_testlib import by_id  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONE_WORKER = ["--workers=1", "--num_shards=2"]
FIXTURES = os.path.join(REPO, "tests", "backends", "fixtures")


def _chain(assets, work, policy, teacher_model, extra_policy=(), extra_teacher=()):
  out = {k: os.fspath(work / k) for k in ("rollouts", "teacher", "scored", "prefs")}
  generate.run([f"--prompts={assets['arithmetic']}", f"--policy={policy}",
                "--num_samples=2", f"--max_new_tokens={MAX_NEW_TOKENS}",
                "--temperature=1.0", "--policy_name=tiny", f"--output={out['rollouts']}",
                *extra_policy, *ONE_WORKER])
  teacher.run([f"--rollouts={out['rollouts']}", f"--teacher={teacher_model}",
               "--top_k=4", "--sampled_k=0", "--teacher_name=teacher",
               f"--output={out['teacher']}", *extra_teacher, *ONE_WORKER])
  score.run([f"--rollouts={out['teacher']}", "--scorers=arithmetic",
             f"--output={out['scored']}", *ONE_WORKER])
  judge.run([f"--rollouts={out['scored']}", "--mode=pairwise", f"--output={out['prefs']}",
             *ONE_WORKER])
  out["published"] = publish.run([f"--input={out['scored']}",
                                  f"--data_dir={work / 'datasets'}", "--name=served",
                                  *ONE_WORKER]).path
  return out


@pytest.fixture(scope="module")
def served_chain(assets, tmp_path_factory):
  """The five stages twice: in process, and with policy and teacher behind rlds-lm serve."""
  env = {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  with testing.served_checkpoint(assets["policy"], "tiny", env=env) as policy_url, \
       testing.served_checkpoint(assets["teacher"], "teacher", env=env) as teacher_url:
    endpoint = ["--api_key_env=", "--max_concurrency=4"]
    served = _chain(assets, tmp_path_factory.mktemp("served"), policy_url, teacher_url,
                    ["--served_model=tiny", *endpoint],
                    ["--served_model=teacher", *endpoint])
  local = _chain(assets, tmp_path_factory.mktemp("local"), assets["policy"],
                 assets["teacher"])
  return local, served


@pytest.mark.parametrize("stage", ["rollouts", "teacher", "scored", "prefs", "published"])
def test_served_stages_give_the_in_process_episodes(served_chain, stage):
  local, served = served_chain
  for split in ("train", "test"):
    a, b = by_id(local[stage], split), by_id(served[stage], split)
    assert sorted(a) == sorted(b) and a  # same episode ids (content: tokens, policy, seeds)
    for episode_id, x in a.items():
      y = b[episode_id]
      for sx, sy in zip(x[S.STEPS], y[S.STEPS]):
        np.testing.assert_array_equal(sx[S.ACTION].get(S.ACT_TOKENS, []),
                                      sy[S.ACTION].get(S.ACT_TOKENS, []))
        if S.ACTION_LOGPROBS in sx:
          np.testing.assert_allclose(sx[S.ACTION_LOGPROBS], sy[S.ACTION_LOGPROBS],
                                     atol=1e-5)
        if sx.get(S.TEACHER):
          np.testing.assert_array_equal(sx[S.TEACHER][S.TEACHER_TOPK_IDS],
                                        sy[S.TEACHER][S.TEACHER_TOPK_IDS])
          for key in (S.TEACHER_TOKEN_LOGPROB, S.TEACHER_TOPK_LOGPROBS):
            np.testing.assert_allclose(sx[S.TEACHER][key], sy[S.TEACHER][key], atol=1e-5)


def test_served_episodes_record_their_provenance(served_chain):
  _, served = served_chain
  episode = next(iter(by_id(served["rollouts"]).values()))
  lineage = json.loads(episode[S.LINEAGE])
  assert lineage["request"]["model"] == "tiny" and lineage["request"]["endpoint"]
  assert lineage["request"]["seed"] == int(episode[S.SAMPLER][S.SAMPLER_SEED])
  stats = json.load(open(os.path.join(served["rollouts"], "rlds_lm_stage.json")))
  described = json.dumps(stats)
  assert '"backend": "openai"' in described and "OPENAI_API_KEY" not in described


def _completion():
  with open(os.path.join(FIXTURES, "vllm_completion_logprobs.json"), encoding="utf-8") as f:
    return json.load(f)


def _generate(assets, url, out, cache="", extra=()):
  return generate.run([f"--prompts={assets['arithmetic']}", f"--policy={url}",
                       "--served_model=policy", "--api_key_env=", "--num_samples=2",
                       "--max_new_tokens=4", "--max_retries=0", f"--request_cache={cache}",
                       f"--output={out}", "--overwrite", *extra, *ONE_WORKER])


def test_a_stage_killed_midway_reruns_without_repeating_finished_requests(assets, tmp_path):
  ok = (200, _completion())
  with testing.ScriptedServer([ok]) as server:  # the reference: an uninterrupted run
    _generate(assets, server.url, tmp_path / "reference")
    total = len(server.requests) - 1  # the capability probe is not a sample
  # The server dies after 10 answers: the stage fails, nothing is published as whole.
  answers = iter(range(10 ** 6))
  dies = lambda body: ok if next(answers) < 11 else (503, {"error": "gone"})
  cache = str(tmp_path / "cache")
  with testing.ScriptedServer(dies) as server:
    with pytest.raises(PipelineError, match="dropped"):
      _generate(assets, server.url, tmp_path / "out", cache, ["--max_dropped_fraction=0"])
  # The rerun asks only for what did not finish and writes the reference's episodes.
  with testing.ScriptedServer([ok]) as server:
    _generate(assets, server.url, tmp_path / "out", cache)
    repeated = [r for r in server.requests if r.get("max_tokens") == 4]
  assert len(repeated) == total - 10
  for split in ("train", "test"):
    a, b = by_id(tmp_path / "reference", split), by_id(tmp_path / "out", split)
    assert sorted(a) == sorted(b)


def test_retries_and_dead_letters_of_a_flaky_server(assets, tmp_path):
  ok = (200, _completion())
  calls = iter(range(10 ** 6))
  # Every third answer is a 429 or a 500: retried, so nothing is lost.
  flaky = lambda body: ((429, {"error": {"message": "slow down"}}) if next(calls) % 3 == 1
                        else ok)
  with testing.ScriptedServer(flaky) as server:
    result = generate.run([f"--prompts={assets['arithmetic']}", f"--policy={server.url}",
                           "--served_model=policy", "--api_key_env=", "--num_samples=2",
                           "--max_new_tokens=4", "--max_retries=3",
                           f"--output={tmp_path / 'flaky'}", *ONE_WORKER])
  assert sum(len(by_id(tmp_path / "flaky", s)) for s in ("train", "test")) == 24
  assert result is not None


@pytest.mark.parametrize("bad,message", [
    ("unreachable", "not usable.*cannot connect"),
    ("model", "does not serve model 'policy'"),
    ("no_logprobs", "no log-probs"),
])
def test_bad_endpoints_are_refused_before_any_work(assets, tmp_path, bad, message):
  ok = _completion()
  models = testing.SCRIPTED_MODELS
  if bad == "model":
    models = {"object": "list", "data": [{"id": "other"}]}
  body = dict(ok, choices=[dict(ok["choices"][0], logprobs=None)]) if bad == "no_logprobs" \
      else ok
  with testing.ScriptedServer([(200, body)], models=models) as server:
    url = server.url
    if bad == "unreachable":
      server.httpd.server_close()
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match=message):
      generate.run([f"--prompts={assets['arithmetic']}", f"--policy={url}",
                    "--served_model=policy", "--api_key_env=", "--max_retries=0",
                    f"--output={out}", *ONE_WORKER])
  assert not os.path.exists(out) or not os.listdir(out)


def test_llm_judge_through_an_endpoint_with_verdicts_and_dead_letters(served_chain,
                                                                       tmp_path):
  _, served = served_chain

  def reply(body):
    if "messages" not in body:  # the capability probe on /v1/completions
      return (200, _completion())
    content = body["messages"][0]["content"]
    # Candidates are listed as "Candidate K:"; answer 2 unless a candidate says "!".
    verdict = "Verdict: 2" if "!" not in content else "no idea"
    return (200, {"id": "chatcmpl-x", "object": "chat.completion", "created": 1,
                  "model": "judge", "choices": [{
                      "index": 0, "finish_reason": "stop", "logprobs": None,
                      "message": {"role": "assistant", "content": verdict}}]})

  models = {"object": "list", "data": [{"id": "judge", "max_model_len": 4096}]}
  with testing.ScriptedServer(reply, models=models) as server:
    result = judge.run([f"--rollouts={served['scored']}", f"--judge_model={server.url}",
                        "--served_model=judge", "--api_key_env=", "--mode=pairwise",
                        f"--output={tmp_path / 'prefs'}", "--max_dropped_fraction=1",
                        *ONE_WORKER])
  prefs = list(by_id(tmp_path / "prefs").values())
  assert prefs and all(int(p[S.STEPS][0][S.ACTION][S.ACT_CHOICE]) == 1 for p in prefs)
  assert all(p[S.JUDGE][S.JUDGE_KIND] == "llm" and p[S.JUDGE][S.JUDGE_NAME] == "judge"
             for p in prefs)
  assert json.loads(prefs[0][S.LINEAGE])["judge_answer"] == "Verdict: 2"
  assert result is not None
