"""Summaries of published datasets and Riegeli logs (``rlds-lm inspect``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rlds_lm import logs
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm.tokenizers import tokenizer_from_name


def _is_log(path: str) -> bool:
  return os.path.exists(os.path.join(path, "metadata.riegeli"))


def load_episodes(path: str | os.PathLike[str], split: str = "train"
                  ) -> tuple[S.SchemaConfig, dict[str, Any], Iterable[dict[str, Any]], int]:
  """(schema, lineage, episodes, count) of a published dataset or a Riegeli log."""
  path = os.fspath(path)
  if _is_log(path):
    config = logs.read_log_config(path)
    episodes = list(logs.read_log(path, config))
    return config, {"riegeli_log": os.path.abspath(path)}, episodes, len(episodes)
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    raise FileNotFoundError(f"{path}: neither a published dataset (dataset_info.json) nor "
                            "a Riegeli log (metadata.riegeli)")
  builder = R.open_builder(path)
  config = R.schema_config(builder)
  count, records = R.iter_records(path, split)
  return (config, R.dataset_lineage(builder), (R.materialize(r) for r in records), count)


def _stats(values: list[float]) -> dict[str, float]:
  if not values:
    return {}
  array = np.asarray(values, np.float64)
  return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()),
          "max": float(array.max())}


def summarize(path: str | os.PathLike[str], split: str = "train", show: int = 3
              ) -> dict[str, Any]:
  """Counts, fields, reward statistics, lineage and the first ``show`` episodes as text."""
  config, lineage, episodes, count = load_episodes(path, split)
  steps = obs_tokens = act_tokens = invalid = 0
  rewards: dict[str, list[float]] = {"reward": []}
  shown = []
  try:
    tokenizer = tokenizer_from_name(config.tokenizer)
  except ValueError:
    tokenizer = None
  for episode in episodes:
    steps += len(episode[S.STEPS])
    invalid += bool(episode[S.INVALID])
    totals = {"reward": 0.0}
    for step in episode[S.STEPS]:
      obs_tokens += len(step[S.OBSERVATION][S.OBS_TOKENS])
      totals["reward"] += float(step[S.REWARD])
      if config.kind == S.ROLLOUT:
        act_tokens += len(step[S.ACTION][S.ACT_TOKENS])
        if not step[S.IS_LAST]:
          for name, value in step.get(S.REWARDS, {}).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    for name, value in totals.items():
      rewards.setdefault(name, []).append(value)
    if len(shown) < show:
      shown.append(episode_text(episode, config, tokenizer))
  return {
      "path": os.fspath(path),
      "kind": config.kind,
      "schema": json.loads(config.to_json()),
      "episodes": count,
      "steps": steps,
      "observation_tokens": obs_tokens,
      "action_tokens": act_tokens,
      "invalid_episodes": invalid,
      "fields": field_list(config),
      "rewards": {name: _stats(v) for name, v in rewards.items()},
      "lineage": lineage,
      "examples": shown,
  }


def field_list(config: S.SchemaConfig) -> list[str]:
  meta = [p for p, _ in S.iter_specs(S.episode_metadata_specs(config))]
  steps = [f"{S.STEPS}/{p}" for p, _ in S.iter_specs(S.step_specs(config))]
  return meta + steps


def episode_text(episode: Mapping[str, Any], config: S.SchemaConfig, tokenizer=None) -> str:
  """A readable rendering of one episode: one line per observation / action."""
  lines = [f"episode {episode[S.EPISODE_ID]}  prompt {episode[S.PROMPT_ID]}  "
           f"task {episode[S.TASK] or '-'}{'  INVALID' if episode[S.INVALID] else ''}"]
  for i, step in enumerate(episode[S.STEPS]):
    obs = step[S.OBSERVATION]
    text = obs[S.OBS_TEXT] or (tokenizer.decode(obs[S.OBS_TOKENS]) if tokenizer else "")
    lines.append(f"  [{i}] {obs[S.OBS_ROLE]:>6}: {text!r}")
    if step[S.IS_LAST]:
      break
    action = step[S.ACTION]
    if config.kind == S.ROLLOUT:
      act = action[S.ACT_TEXT] or (tokenizer.decode(action[S.ACT_TOKENS]) if tokenizer else "")
      named = " ".join(f"{k}={float(v):g}" for k, v in step.get(S.REWARDS, {}).items())
      lines.append(f"  [{i}]  model: {act!r}  ({len(action[S.ACT_TOKENS])} tokens, "
                   f"reward {float(step[S.REWARD]):g}{' ' + named if named else ''})")
    else:
      lines.append(f"  [{i}]  judge: choice {action[S.ACT_CHOICE]}, ranking "
                   f"{list(np.asarray(action[S.ACT_RANKING]))}")
  return "\n".join(lines)


def format_summary(summary: Mapping[str, Any]) -> str:
  out = [f"{summary['path']}: {summary['episodes']} {summary['kind']} episodes, "
         f"{summary['steps']} steps, {summary['observation_tokens']} observation tokens, "
         f"{summary['action_tokens']} action tokens, {summary['invalid_episodes']} invalid"]
  schema = summary["schema"]
  out.append(f"schema: vocab {schema['vocab_size']} ({schema['tokenizer']}), teacher top-k "
             f"{schema['teacher_top_k']}, sampled-k {schema['teacher_sampled_k']}, rewards "
             f"{schema['reward_names'] or '-'}, image channels {schema['image_channels']}")
  out.append("rewards per episode:")
  for name, stats in summary["rewards"].items():
    if stats:
      out.append(f"  {name:>12}: mean {stats['mean']:.4g}  std {stats['std']:.4g}  "
                 f"min {stats['min']:.4g}  max {stats['max']:.4g}")
  out.append(f"lineage: {json.dumps(summary['lineage'], sort_keys=True)}")
  out.append(f"fields ({len(summary['fields'])}): " + ", ".join(summary["fields"]))
  for text in summary["examples"]:
    out.append(text)
  return "\n".join(out)
