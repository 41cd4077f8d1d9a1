"""Central inference: many LmEnv conversations served by one batched policy, all logged."""

from __future__ import annotations

import os

import numpy as np

from rlds_lm import env as E
from rlds_lm import logs
from rlds_lm import schema as S
from rlds_lm import tokenizers
from rlds_lm import toy
from rlds_lm.models import config as mc
from rlds_lm.models import gemma
from rlds_lm.trainers import central


def _run(root, order, *, seed=0):
  tok = tokenizers.ByteTokenizer()
  config = S.SchemaConfig(vocab_size=tok.vocab_size, tokenizer=tok.name,
                          reward_names=(toy.REWARD_CORRECT,))
  problems = toy.arithmetic_problems(8, seed=1)
  envs = {}
  for i in order:
    lm_env = E.LmEnv(tok, E.ArithmeticTutor(problems[2 * i:2 * i + 2], max_attempts=2),
                     policy_name="tiny")
    envs[i] = E.lm_env_logger(lm_env, os.path.join(root, f"env{i}"), config)
  server = central.CentralInference(mc.TINY, gemma.init_params(mc.TINY, 0), tok,
                                    max_new_tokens=6, seed=seed)
  stats = central.run_environments([envs[i] for i in order], server, episodes_per_env=2,
                                   env_ids=list(order))
  for e in envs.values():
    e.close()
  episodes = {}
  for i in sorted(envs):
    directory = os.path.join(root, f"env{i}")
    for episode in logs.read_log(directory, logs.read_log_config(directory)):
      episodes[(i, episode[S.PROMPT_ID])] = episode
  return stats, episodes


def test_one_batched_call_serves_every_waiting_environment(tmp_path):
  stats, episodes = _run(tmp_path / "a", [0, 1, 2, 3])
  assert stats["episodes"] == 8 and len(episodes) == 8
  # Each round is one call for all waiting environments: at most 2 episodes x 2 attempts.
  assert stats["calls"] <= 4 < stats["turns"]
  for (i, _), episode in episodes.items():
    acting = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
    assert 1 <= len(acting) <= 2
    for step in acting:
      assert len(step[S.ACTION][S.ACT_TOKENS]) == len(step[S.ACTION_LOGPROBS])
      assert np.all(np.asarray(step[S.ACTION_LOGPROBS]) <= 0)


def test_logs_do_not_depend_on_order_or_neighbours(tmp_path):
  _, first = _run(tmp_path / "a", [0, 1, 2, 3])
  _, second = _run(tmp_path / "b", [3, 2, 1, 0])  # other batch rows
  _, alone = _run(tmp_path / "d", [2])  # no neighbours at all
  assert first.keys() == second.keys()
  for key, episode in alone.items():
    for a, b in zip(episode[S.STEPS], first[key][S.STEPS]):
      np.testing.assert_array_equal(a[S.ACTION][S.ACT_TOKENS], b[S.ACTION][S.ACT_TOKENS])
  for key, episode in first.items():
    for a, b in zip(episode[S.STEPS], second[key][S.STEPS]):
      np.testing.assert_array_equal(a[S.ACTION][S.ACT_TOKENS], b[S.ACTION][S.ACT_TOKENS])
  _, other_seed = _run(tmp_path / "c", [0, 1, 2, 3], seed=1)
  differs = [not np.array_equal(first[k][S.STEPS][0][S.ACTION][S.ACT_TOKENS],
                                other_seed[k][S.STEPS][0][S.ACTION][S.ACT_TOKENS])
             for k in first]
  assert any(differs)
