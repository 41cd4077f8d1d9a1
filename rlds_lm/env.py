"""``LmEnv``: a ``dm_env.Environment`` for multi-turn text interaction.

The policy is the agent: observations are user / tool turns, actions are the model's
turns. Wrapped in ``envlogger.EnvLogger`` (see :func:`lm_env_logger`) a live
conversation is logged in the same Riegeli format as :class:`~rlds_lm.recorder.Recorder`
writes, so :func:`rlds_lm.logs.read_log` and ``publish_log`` turn it into a TFDS
dataset with the same schema.

Observation: ``{"tokens": int32[T_obs], "text": str, "role": str}``.
Action: ``{"tokens": int32[T], "text": str, "thinking_mask": bool[T],
"logprobs": float32[T]}`` (``text``, ``thinking_mask`` and ``logprobs`` optional);
the behaviour log-probs become the step's ``action_logprobs``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import dm_env
import numpy as np
from dm_env import specs

from rlds_lm import logs
from rlds_lm import schema as S
from rlds_lm import toy
from rlds_lm.tokenizers import Tokenizer


class Conversation(Protocol):
  """The other side of the dialogue (user, tool or grader)."""

  def start(self, episode_index: int) -> tuple[str, str, dict[str, Any]]:
    """Returns (first message, its role, episode metadata such as prompt_id, task)."""

  def respond(self, reply: str) -> tuple[str, str, dict[str, float], bool]:
    """Reacts to the model's reply: (message, role, named rewards, episode done)."""


class ArithmeticTutor:
  """Asks an arithmetic question and gives ``max_attempts`` tries; reward 1 if right."""

  def __init__(self, problems: list[toy.Problem], max_attempts: int = 2):
    self.problems = problems
    self.max_attempts = max_attempts
    self._problem: toy.Problem | None = None
    self._attempts = 0

  def start(self, episode_index: int) -> tuple[str, str, dict[str, Any]]:
    self._problem = self.problems[episode_index % len(self.problems)]
    self._attempts = 0
    return (self._problem.question, "user",
            {S.PROMPT_ID: self._problem.prompt_id, S.TASK: toy.ARITHMETIC})

  def respond(self, reply: str) -> tuple[str, str, dict[str, float], bool]:
    assert self._problem is not None
    self._attempts += 1
    correct = toy.check_answer(self._problem, reply)
    done = bool(correct) or self._attempts >= self.max_attempts
    message = "correct" if correct else ("wrong" if done else "wrong, try again: " +
                                         self._problem.question)
    return message, "user", {toy.REWARD_CORRECT: correct}, done


class LmEnv(dm_env.Environment):
  """Multi-turn text environment; see the module docstring."""

  def __init__(self, tokenizer: Tokenizer, conversation: Conversation,
               policy_name: str = "", policy_digest: str = ""):
    self.tokenizer = tokenizer
    self.conversation = conversation
    self._episode_index = -1
    self._metadata: dict[str, Any] = {}
    self._policy = {S.POLICY_NAME: policy_name, S.POLICY_DIGEST: policy_digest}
    self._last_rewards: dict[str, float] = {}
    self._reset_next = True

  def _obs(self, text: str, role: str) -> dict[str, Any]:
    return {S.OBS_TOKENS: self.tokenizer.encode(text), S.OBS_TEXT: text, S.OBS_ROLE: role}

  def reset(self) -> dm_env.TimeStep:
    self._episode_index += 1
    text, role, metadata = self.conversation.start(self._episode_index)
    self._metadata = {**metadata, S.POLICY: dict(self._policy)}
    self._last_rewards = {}
    self._reset_next = False
    return dm_env.restart(self._obs(text, role))

  def step(self, action: Mapping[str, Any]) -> dm_env.TimeStep:
    if self._reset_next:
      return self.reset()
    tokens = np.asarray(action[S.ACT_TOKENS], np.int32)
    if tokens.size == 0:
      raise ValueError("LmEnv.step: the model's turn is empty (0 tokens)")
    reply = action.get(S.ACT_TEXT) or self.tokenizer.decode(tokens)
    text, role, rewards, done = self.conversation.respond(reply)
    self._last_rewards = rewards
    reward = float(sum(rewards.values()))
    if done:
      self._reset_next = True
      return dm_env.termination(reward, self._obs(text, "final" if not text else role))
    return dm_env.transition(reward, self._obs(text, role))

  @property
  def last_rewards(self) -> dict[str, float]:
    return dict(self._last_rewards)

  @property
  def episode_metadata(self) -> dict[str, Any]:
    return dict(self._metadata)

  def observation_spec(self):
    return {S.OBS_TOKENS: specs.Array((0,), np.int32, S.OBS_TOKENS),
            S.OBS_TEXT: specs.Array((), object, S.OBS_TEXT),
            S.OBS_ROLE: specs.Array((), object, S.OBS_ROLE)}

  def action_spec(self):
    return {S.ACT_TOKENS: specs.BoundedArray((0,), np.int32, 0,
                                             self.tokenizer.vocab_size - 1, S.ACT_TOKENS),
            S.ACT_TEXT: specs.Array((), object, S.ACT_TEXT)}


def lm_step_fn(timestep: dm_env.TimeStep, action: Any, env: LmEnv) -> dict[str, Any] | None:
  """EnvLogger ``step_fn``: logs behaviour log-probs, named rewards and, on the last
  step, the episode metadata (so a crash loses at most the open episode)."""
  if action is None or timestep.first():
    return None
  data: dict[str, Any] = {S.REWARDS: {k: np.float32(v) for k, v in env.last_rewards.items()}}
  if isinstance(action, Mapping) and action.get("logprobs") is not None:
    data[S.ACTION_LOGPROBS] = np.asarray(action["logprobs"], np.float32).tobytes()
  if timestep.last():
    data[logs.EPISODE_METADATA_KEY] = env.episode_metadata
  return data


def lm_env_logger(env: LmEnv, data_directory: str, config: S.SchemaConfig, *,
                  writer_options: str = logs.DEFAULT_WRITER_OPTIONS):
  """``envlogger.EnvLogger(env)`` writing an rlds_lm Riegeli log to ``data_directory``.

  Every step is flushed when its episode ends, as the Recorder does.
  """
  from rlds_lm import _compat  # pylint: disable=g-import-not-at-top

  envlogger = _compat.import_envlogger()
  from envlogger.backends import riegeli_backend_writer  # pylint: disable=g-import-not-at-top

  os.makedirs(data_directory, exist_ok=True)
  backend = riegeli_backend_writer.RiegeliBackendWriter(
      data_directory, writer_options=writer_options,
      flush_scheduler=lambda data: data.timestep.last(),
      metadata={logs.SCHEMA_KEY: config.to_json()})
  return envlogger.EnvLogger(env, step_fn=lm_step_fn, backend=backend)


def run_episode(env: dm_env.Environment,
                act: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> int:
  """Runs one episode with ``act(observation) -> action``; returns the number of turns."""
  timestep = env.reset()
  turns = 0
  while not timestep.last():
    timestep = env.step(act(timestep.observation))
    turns += 1
  return turns
