"""Constants and readers shared by the pipeline tests (not a conftest: tests/ has one)."""

from __future__ import annotations

from rlds_lm import read as R
from rlds_lm import schema as S

MAX_NEW_TOKENS = 8  # tokens sampled per completion in the pipeline tests


def episodes(path: str, split: str = "train") -> list[dict]:
  """The decoded episodes of one split of a stage output or published dataset."""
  _, records = R.iter_records(path, split)
  return [R.materialize(r) for r in records]


def by_id(path: str, split: str = "train") -> dict[str, dict]:
  return {e[S.EPISODE_ID]: e for e in episodes(path, split)}
