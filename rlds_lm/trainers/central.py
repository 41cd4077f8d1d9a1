"""Central inference: one batched policy serves many concurrent environments (SEED RL).

Actors do not hold a model. Each round, every environment that is waiting for the
model's turn contributes its context (all observations and actions of its episode so
far); :class:`CentralInference` samples all of them in **one** batched call and hands each
environment its turn. With ``lm_env_logger`` around the environments every step is
logged as it happens, so the generations of every iteration are recorded episodes.

Determinism: the seed of a turn is ``content_id(run seed, environment index, episode
index, turn)``, and the sampler gives a row the same tokens in any batch
(``rlds_lm.models.sampling``), so the logs do not depend on how many environments run
together or in what order they finish.

Example::

    envs = [env.lm_env_logger(env.LmEnv(tok, ArithmeticTutor(problems)), f"logs/{i}", cfg)
            for i in range(16)]
    server = CentralInference(model_config, params, tok, max_new_tokens=16)
    stats = run_environments(envs, server, episodes_per_env=4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import dm_env
import numpy as np

from rlds_lm import schema as S
from rlds_lm.models import sampling


def turn_seed(seed: int, env_index: int, episode: int, turn: int) -> int:
  return S.content_seed(seed, env_index, episode, turn)


@dataclasses.dataclass
class Request:
  """One environment waiting for the model: its index, episode, turn and context."""

  env_index: int
  episode: int
  turn: int
  context: np.ndarray


class CentralInference:
  """A model and its parameters, answering batches of :class:`Request`s."""

  def __init__(self, config, params, tokenizer, *, max_new_tokens: int = 16,
               sampler: sampling.SamplerConfig | None = None, seed: int = 0,
               max_context: int | None = None):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.max_new_tokens = max_new_tokens
    self.sampler = sampler or sampling.SamplerConfig()
    self.seed = seed
    self.max_context = max_context or (config.max_seq_len - max_new_tokens)
    self.calls = 0  # batched model calls served
    self.requests = 0  # environment turns served

  def set_params(self, params) -> None:
    """New policy parameters (after a training phase)."""
    self.params = params

  def act(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
    """One batched sampling call for every request; returns LmEnv actions in order."""
    contexts = [r.context[-self.max_context:] for r in requests]
    seeds = [turn_seed(self.seed, r.env_index, r.episode, r.turn) for r in requests]
    completions = sampling.sample(
        self.config, self.params, contexts, seeds, self.sampler, self.max_new_tokens,
        eos_id=self.tokenizer.eos_id).completions()
    self.calls += 1
    self.requests += len(requests)
    actions = []
    for completion in completions:
      tokens, logprobs = completion.tokens, completion.logprobs
      if tokens.size == 0:  # an immediate EOS: LmEnv needs a non-empty turn
        tokens = np.asarray([self.tokenizer.eos_id], np.int32)
        logprobs = np.zeros(1, np.float32)
      actions.append({S.ACT_TOKENS: tokens, S.ACT_TEXT: self.tokenizer.decode(tokens),
                      "logprobs": logprobs})
    return actions


@dataclasses.dataclass
class _Actor:
  env: dm_env.Environment
  index: int
  episodes_left: int
  episode: int = -1
  turn: int = 0
  context: list[np.ndarray] = dataclasses.field(default_factory=list)
  timestep: dm_env.TimeStep | None = None

  def start(self, tokenizer) -> None:
    self.timestep = self.env.reset()
    self.episode += 1
    self.turn = 0
    bos = np.asarray([tokenizer.bos_id], np.int32)
    self.context = [bos, np.asarray(self.timestep.observation[S.OBS_TOKENS], np.int32)]


def run_environments(envs: Sequence[dm_env.Environment], server: CentralInference, *,
                     episodes_per_env: int = 1, max_turns: int = 8,
                     env_ids: Sequence[int] | None = None) -> dict[str, Any]:
  """Runs ``episodes_per_env`` episodes in every environment, all turns served centrally.

  ``env_ids`` (default ``0..len(envs)-1``) name the environments in the seeds, so an
  environment's turns do not depend on its place in the list or on its neighbours. An
  episode still open after ``max_turns`` turns is abandoned (readers skip it: it has no
  last step). Returns counts: ``episodes``, ``turns``, ``calls`` (batched model calls),
  ``rewards`` (sum of step rewards per finished episode, in finishing order).
  """
  ids = list(range(len(envs))) if env_ids is None else list(env_ids)
  if len(ids) != len(envs) or len(set(ids)) != len(ids):
    raise ValueError(f"env_ids must be {len(envs)} distinct ids, found {ids}")
  actors = [_Actor(env, i, episodes_per_env) for i, env in zip(ids, envs)]
  for actor in actors:
    actor.start(server.tokenizer)
  rewards: list[float] = []
  episode_reward = {a.index: 0.0 for a in actors}
  turns = 0
  calls_before = server.calls
  while True:
    waiting = [a for a in actors if a.episodes_left > 0]
    if not waiting:
      break
    requests = [Request(a.index, a.episode, a.turn, np.concatenate(a.context))
                for a in waiting]
    for actor, action in zip(waiting, server.act(requests)):
      actor.context.append(np.asarray(action[S.ACT_TOKENS], np.int32))
      actor.timestep = actor.env.step(action)
      actor.turn += 1
      turns += 1
      episode_reward[actor.index] += float(actor.timestep.reward or 0.0)
      actor.context.append(np.asarray(actor.timestep.observation[S.OBS_TOKENS], np.int32))
      if actor.timestep.last() or actor.turn >= max_turns:
        rewards.append(episode_reward[actor.index])
        episode_reward[actor.index] = 0.0
        actor.episodes_left -= 1
        if actor.episodes_left > 0:
          actor.start(server.tokenizer)
  return {"episodes": len(rewards), "turns": turns, "calls": server.calls - calls_before,
          "rewards": rewards}
