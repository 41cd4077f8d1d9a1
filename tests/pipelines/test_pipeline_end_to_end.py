"""generate -> teacher -> score -> judge -> publish on tiny data, read back with TFDS + RLDS.

Expected values are recomputed independently of the stages: rewards with the checkers
on the decoded text, teacher log-probs by teacher-forced scoring with the teacher model,
preferences from the stored rewards.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from pipelines import core
from pipelines import generate
from pipelines import judge
from pipelines import publish
from pipelines import score
from pipelines import teacher
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm.models import sampling

from pipeline_testlib import MAX_NEW_TOKENS  # pylint: disable=g-bad-import-order
from pipeline_testlib import episodes as _episodes  # pylint: disable=g-bad-import-order

NUM_SAMPLES = 3
ONE_WORKER = ["--workers=1", "--num_shards=2"]


@pytest.fixture(scope="module")
def chain(assets, tmp_path_factory):
  """Runs the five stages on the arithmetic prompts; returns the stage outputs."""
  work = tmp_path_factory.mktemp("chain")
  out = {k: os.fspath(work / k) for k in ("rollouts", "teacher", "scored", "prefs", "bon")}
  generate.run([f"--prompts={assets['arithmetic']}", f"--policy={assets['policy']}",
                f"--num_samples={NUM_SAMPLES}", f"--max_new_tokens={MAX_NEW_TOKENS}",
                "--temperature=1.0", f"--output={out['rollouts']}", *ONE_WORKER])
  teacher.run([f"--rollouts={out['rollouts']}", f"--teacher={assets['teacher']}",
               "--top_k=4", "--sampled_k=8", f"--output={out['teacher']}", *ONE_WORKER])
  score.run([f"--rollouts={out['teacher']}", "--scorers=arithmetic",
             f"--output={out['scored']}", *ONE_WORKER])
  judge.run([f"--rollouts={out['scored']}", "--mode=pairwise",
             f"--output={out['prefs']}", f"--bon_output={out['bon']}", *ONE_WORKER])
  result = publish.run([f"--input={out['scored']}", f"--data_dir={work / 'datasets'}",
                        "--name=arith_rollouts", "--version=1.2.0",
                        "--description=End-to-end test.", *ONE_WORKER])
  out["published"] = result.path
  return out


def test_published_dataset_opens_with_tfds_and_rlds(chain, assets):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from rlds_lm import transforms  # pylint: disable=g-import-not-at-top
  rlds = transforms.rlds()

  builder = tfds.builder_from_directory(chain["published"])
  assert builder.name == "arith_rollouts" and str(builder.version) == "1.2.0"
  assert builder.info.splits["train"].num_examples == 8 * NUM_SAMPLES
  assert builder.info.splits["test"].num_examples == 4 * NUM_SAMPLES
  ds = builder.as_dataset(split="train")
  # rlds.transformations on the nested steps: total action tokens, via RLDS.
  lengths = ds.map(lambda ep: rlds.transformations.sum_dataset(
      ep[rlds.STEPS], lambda step: {"n": tf_size(step["action"]["tokens"])})["n"])
  from_rlds = sorted(int(n) for n in lengths.as_numpy_iterator())
  from_python = sorted(sum(len(s[S.ACTION][S.ACT_TOKENS]) for s in e[S.STEPS])
                       for e in _episodes(chain["published"], "train"))
  assert from_rlds == from_python
  assert all(0 < n <= MAX_NEW_TOKENS for n in from_rlds)
  # The array_record copy reads without TensorFlow and holds the same episodes.
  source = R.data_source(chain["published"], "train")
  assert len(source) == 8 * NUM_SAMPLES
  config = R.schema_config(builder)
  assert config.reward_names == ("arithmetic",)
  assert (config.teacher_top_k, config.teacher_sampled_k) == (4, 8)


def tf_size(x):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.size(x)


def test_rollouts_are_what_the_policy_samples(chain, assets):
  from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
  episodes = _episodes(chain["rollouts"], "test")
  by_prompt = {}
  for e in episodes:
    by_prompt.setdefault(e[S.PROMPT_ID], []).append(e)
  assert len(by_prompt) == 4
  assert all(sorted(e[S.SAMPLE_INDEX] for e in group) == list(range(NUM_SAMPLES))
             for group in by_prompt.values())
  policy = sampling.Policy.from_checkpoint(assets["policy"], eos_id=2)
  tok = tokenizers.ByteTokenizer()
  episode = episodes[0]
  step = episode[S.STEPS][0]
  prompt = np.asarray(step[S.OBSERVATION][S.OBS_TOKENS])
  assert tok.decode(prompt).endswith("\nAnswer:")
  # Re-sampling with the recorded seed reproduces the stored tokens and log-probs.
  again = policy.sample([prompt], [int(episode[S.SAMPLER][S.SAMPLER_SEED])],
                        sampling.SamplerConfig(), MAX_NEW_TOKENS)[0]
  np.testing.assert_array_equal(again.tokens, step[S.ACTION][S.ACT_TOKENS])
  np.testing.assert_allclose(again.logprobs, step[S.ACTION_LOGPROBS], rtol=1e-5, atol=1e-5)
  assert episode[S.POLICY][S.POLICY_DIGEST] == policy.digest
  assert episode[S.EPISODE_ID] == S.rollout_episode_id(episode)


def test_teacher_logprobs_match_teacher_forced_scoring(chain, assets):
  model = sampling.Policy.from_checkpoint(assets["teacher"], eos_id=2)
  for episode in _episodes(chain["teacher"], "test")[:4]:
    step = episode[S.STEPS][0]
    prompt = np.asarray(step[S.OBSERVATION][S.OBS_TOKENS])
    tokens = np.asarray(step[S.ACTION][S.ACT_TOKENS])
    scored = model.score([np.concatenate([prompt, tokens])], [len(prompt)],
                         return_logits=True)[0]
    t = step[S.TEACHER]
    np.testing.assert_allclose(t[S.TEACHER_TOKEN_LOGPROB], scored.logprobs, atol=2e-4)
    logp = scored.logits - np.logaddexp.reduce(scored.logits, axis=-1, keepdims=True)
    expected_top = np.argsort(-logp, axis=-1, kind="stable")[:, :4]
    np.testing.assert_array_equal(np.sort(t[S.TEACHER_TOPK_IDS], -1),
                                  np.sort(expected_top, -1))
    np.testing.assert_allclose(t[S.TEACHER_TOPK_LOGPROBS],
                               np.take_along_axis(logp, t[S.TEACHER_TOPK_IDS], -1),
                               atol=2e-4)
    assert np.all(t[S.TEACHER_SAMPLED_COUNTS].sum(-1) == 8)


def test_rewards_recomputed_from_text(chain):
  from rlds_lm.tasks import arithmetic as problems  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  answers = {}
  # The prompt source, found through the scored dataset's lineage.
  lineage = R.dataset_lineage(tfds.builder_from_directory(chain["scored"]))
  prompts = tfds.builder_from_directory(lineage["prompts"]["path"])
  for split in ("train", "test"):
    for ex in prompts.as_dataset(split=split).as_numpy_iterator():
      answers[ex["prompt_id"].decode()] = ex["answer"].decode()
  for split in ("train", "test"):
    for episode in _episodes(chain["scored"], split):
      step = episode[S.STEPS][0]
      expected = float(problems.check(answers[episode[S.PROMPT_ID]],
                                      step[S.ACTION][S.ACT_TEXT]))
      assert step[S.REWARDS]["arithmetic"] == expected
      assert step[S.REWARD] == expected
      assert episode[S.STEPS][1][S.REWARDS]["arithmetic"] == 0.0


def test_preferences_follow_rewards(chain):
  rollouts = {e[S.EPISODE_ID]: e for split in ("train", "test")
              for e in _episodes(chain["scored"], split)}
  prefs = _episodes(chain["prefs"], "train")
  assert len(prefs) == 8 * len(list(itertools.combinations(range(NUM_SAMPLES), 2)))
  for p in prefs:
    ids = list(p[S.CANDIDATE_IDS])
    rewards = [rollouts[i][S.STEPS][0][S.REWARDS]["arithmetic"] for i in ids]
    action = p[S.STEPS][0][S.ACTION]
    expected = -1 if rewards[0] == rewards[1] else int(np.argmax(rewards))
    assert int(action[S.ACT_CHOICE]) == expected
    np.testing.assert_allclose(action[S.ACT_SCORES], rewards)
    assert p[S.JUDGE][S.JUDGE_KIND] == "rule"
    assert all(rollouts[i][S.PROMPT_ID] == p[S.PROMPT_ID] for i in ids)
    tokens = p[S.STEPS][0][S.OBSERVATION][S.OBS_CANDIDATE_TOKENS]
    np.testing.assert_array_equal(tokens, np.concatenate(
        [rollouts[i][S.STEPS][0][S.ACTION][S.ACT_TOKENS] for i in ids]))


def test_bon_quantiles_and_group_stats(chain):
  episodes = _episodes(chain["bon"], "train")
  groups = {}
  for e in episodes:
    groups.setdefault(e[S.PROMPT_ID], []).append(e)
  for group in groups.values():
    r = [e[S.STEPS][0][S.REWARDS]["arithmetic"] for e in group]
    for e, ri in zip(group, r):
      below = sum(x <= ri for x in r) / len(r)
      assert e[S.STEPS][0][S.REWARDS]["arithmetic_quantile"] == pytest.approx(below)
  with open(os.path.join(chain["bon"], judge.BON_GROUPS_FILE)) as f:
    stats = [json.loads(line) for line in f]
  assert len(stats) == 12
  assert all(s["n"] == NUM_SAMPLES and s["min"] <= s["mean"] <= s["max"] for s in stats)


def test_card_lineage_and_dead_letter_summary(chain, assets):
  path = chain["published"]
  card = open(os.path.join(path, publish.CARD_FILE)).read()
  assert "# arith_rollouts 1.2.0" in card and "End-to-end test." in card
  for stage in ("generate", "teacher", "score", "publish"):
    assert f"`{stage}`" in card
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  lineage = R.dataset_lineage(tfds.builder_from_directory(path))
  chain_stages = []
  node = lineage
  while node:
    chain_stages.append(node["stage"])
    assert node["code_version"]
    node = node.get("upstream")
  assert chain_stages == ["publish", "score", "teacher", "generate"]
  generate_lineage = lineage["upstream"]["upstream"]["upstream"]
  assert generate_lineage["prompts"]["name"] == "arithmetic"
  assert generate_lineage["prompts"]["version"] == "1.0.0"
  summary = core.read_dead_letter_summary(path)
  assert [s["stage"] for s in summary["stages"]] == ["generate", "teacher", "score",
                                                     "publish"]
  assert summary["total_dropped"] == 0


def test_a_failed_publish_can_be_rerun(chain, tmp_path):
  data_dir = tmp_path / "ds"
  with pytest.raises(core.PipelineError, match="dropped"):  # fails after finalize
    publish.run([f"--input={chain['scored']}", f"--data_dir={data_dir}", "--name=again",
                 "--max_dropped_fraction=-1", *ONE_WORKER])
  path = data_dir / "again" / "1.0.0"
  assert (path / publish.IN_PROGRESS_FILE).exists()
  result = publish.run([f"--input={chain['scored']}", f"--data_dir={data_dir}",
                        "--name=again", *ONE_WORKER])
  assert not (path / publish.IN_PROGRESS_FILE).exists()
  assert (path / publish.CARD_FILE).exists() and result.total_examples == 12 * NUM_SAMPLES


def test_publish_refuses_an_existing_version(chain, tmp_path):
  data_dir = os.path.dirname(os.path.dirname(chain["published"]))
  with pytest.raises(core.PipelineError, match="already published"):
    publish.run([f"--input={chain['scored']}", f"--data_dir={data_dir}",
                 "--name=arith_rollouts", "--version=1.2.0", *ONE_WORKER])
  with pytest.raises(core.PipelineError, match="snake_case"):
    publish.run([f"--input={chain['scored']}", f"--data_dir={tmp_path}",
                 "--name=Bad-Name", *ONE_WORKER])
