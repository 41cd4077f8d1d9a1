"""Shared fixtures: small schemas and fake episodes, published once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from rlds_lm import publish as P  # noqa: E402
from rlds_lm import schema as S  # noqa: E402
from rlds_lm import testing as T  # noqa: E402
from rlds_lm import validate as V  # noqa: E402

ROLLOUT = S.SchemaConfig(vocab_size=259, teacher_top_k=4, teacher_sampled_k=6,
                         reward_names=("correct", "entailment"))
AGENTIC = S.SchemaConfig(vocab_size=259, reward_names=("correct",), image_channels=3)
PREFERENCE = S.SchemaConfig(kind=S.PREFERENCE, vocab_size=259)


def rollouts(n: int = 12):
  return [T.fake_rollout(ROLLOUT, seed=i, action_len=3 + i % 5) for i in range(n)]


def agentic(n: int = 6):
  return [T.fake_rollout(AGENTIC, seed=i, turns=1 + i % 3, thinking=True, with_image=True)
          for i in range(n)]


def preferences(n: int = 6):
  return [T.fake_preference(PREFERENCE, seed=i, candidates=2 + i % 3) for i in range(n)]


@pytest.fixture(scope="session")
def published(tmp_path_factory):
  """(dataset_dir, normalised episodes by id) for the rollout schema."""
  episodes = [V.validate_episode(e, ROLLOUT) for e in rollouts()]
  path = P.publish({"train": episodes}, data_dir=tmp_path_factory.mktemp("pub"),
                   name="fake_rollouts", config=ROLLOUT, lineage={"test": "fixture"})
  return path, {e[S.EPISODE_ID]: e for e in episodes}
