"""envlogger.EnvLogger(LmEnv) logs a live conversation in the rlds_lm schema."""

import numpy as np
import tensorflow_datasets as tfds

from rlds_lm import env as E
from rlds_lm import logs
from rlds_lm import read as R
from rlds_lm import recorder
from rlds_lm import schema as S
from rlds_lm import toy
from rlds_lm import validate as V


def test_envlogger_conversation_becomes_a_tfds_dataset(tmp_path):
  tok = toy.ByteTokenizer()
  config = S.SchemaConfig(vocab_size=tok.vocab_size, reward_names=(toy.REWARD_CORRECT,))
  problems = toy.arithmetic_problems(4, seed=3)
  lm_env = E.LmEnv(tok, E.ArithmeticTutor(problems, max_attempts=2), "scripted", "d0")
  # A scripted policy: wrong first, right second on even episodes; always wrong on odd.
  turns = []
  with E.lm_env_logger(lm_env, str(tmp_path / "log"), config) as env:
    for i, problem in enumerate(problems):
      replies = iter(["0" if problem.answer != "0" else "1",
                      problem.answer if i % 2 == 0 else "x"])

      def act(observation, replies=replies):
        text = next(replies)
        ids = tok.encode(text)
        return {S.ACT_TOKENS: ids, S.ACT_TEXT: text,
                "logprobs": np.full(len(ids), -0.5, np.float32)}

      turns.append(E.run_episode(env, act))
  assert turns == [2, 2, 2, 2]
  episodes = [V.validate_episode(e, config) for e in logs.read_log(tmp_path / "log")]
  assert [e[S.PROMPT_ID] for e in episodes] == [p.prompt_id for p in problems]
  for i, episode in enumerate(episodes):
    steps = episode[S.STEPS]
    assert len(steps) == 3 and steps[-1][S.IS_TERMINAL]
    assert steps[0][S.OBSERVATION][S.OBS_TEXT] == problems[i].question
    assert steps[1][S.OBSERVATION][S.OBS_TEXT].startswith("wrong, try again")
    correct = [float(s[S.REWARDS][toy.REWARD_CORRECT]) for s in steps[:-1]]
    assert correct == ([0.0, 1.0] if i % 2 == 0 else [0.0, 0.0])
    np.testing.assert_array_equal(steps[0][S.ACTION_LOGPROBS],
                                  np.full(len(steps[0][S.ACTION][S.ACT_TOKENS]), -0.5))
    assert episode[S.POLICY][S.POLICY_NAME] == "scripted"
  path = recorder.publish_log(tmp_path / "log", data_dir=tmp_path / "data", name="chat")
  builder = tfds.builder_from_directory(path)
  assert builder.info.splits["train"].num_examples == 4
  assert R.schema_config(builder) == config
