"""Summaries of published datasets and Riegeli logs (``rlds-lm inspect``)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

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
  """Mean, std (the population standard deviation, ddof=0, as everywhere in rlds_lm's
  summaries), min, p10, median, p90 and max."""
  if not values:
    return {}
  array = np.asarray(values, np.float64)
  p10, p50, p90 = np.percentile(array, [10, 50, 90])
  return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()),
          "p10": float(p10), "median": float(p50), "p90": float(p90),
          "max": float(array.max())}


@dataclasses.dataclass(frozen=True)
class Filter:
  """Which episodes to look at: by primary reward (the sum over turns) and prompt."""

  min_reward: float | None = None
  max_reward: float | None = None
  prompt_ids: tuple[str, ...] = ()

  def __call__(self, episode: Mapping[str, Any]) -> bool:
    if self.prompt_ids and _text(episode[S.PROMPT_ID]) not in self.prompt_ids:
      return False
    if self.min_reward is None and self.max_reward is None:
      return True
    reward = S.episode_return(episode)
    return ((self.min_reward is None or reward >= self.min_reward) and
            (self.max_reward is None or reward <= self.max_reward))

  @property
  def active(self) -> bool:
    return self != Filter()


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


class Scan(NamedTuple):
  summary: dict[str, Any]
  config: S.SchemaConfig
  episodes: list[dict[str, Any]]  # whole prompt groups, at most ``keep`` episodes
  tokenizer: Any  # None when the dataset's tokenizer cannot be loaded


def scan(path: str | os.PathLike[str], split: str = "train", show: int = 3,
         where: Filter = Filter(), keep: int = 0, sort: str = "prompt") -> Scan:
  """Statistics of the episodes ``where`` matches, the first ``show`` of them as text,
  and up to ``keep`` of them as episodes for the viewer.

  The kept episodes are whole prompt groups (every matching sample of a prompt), the
  first groups in ``sort`` order (see :data:`rlds_lm.viewer.SORTS`) whose sizes add up
  to at most ``keep``, and at least one group; they come in that order, each group's
  episodes together. Reads every episode once, and the dataset a second time to collect
  the kept groups' episodes when ``keep`` is not 0.
  """
  from rlds_lm import viewer  # pylint: disable=g-import-not-at-top

  config, lineage, episodes, count = load_episodes(path, split)
  groups = viewer.GroupKeys()
  steps = obs_tokens = act_tokens = invalid = matched = 0
  rewards: dict[str, list[float]] = {"reward": []}
  per_prompt: dict[str, int] = {}
  shown, kept = [], []
  judgements = []  # preference datasets: who chose what, for the agreement report
  try:
    tokenizer = tokenizer_from_name(config.tokenizer)
  except ValueError:
    tokenizer = None
  for episode in episodes:
    if not where(episode):
      continue
    matched += 1
    steps += len(episode[S.STEPS])
    invalid += bool(episode[S.INVALID])
    prompt_id = _text(episode[S.PROMPT_ID])
    per_prompt[prompt_id] = per_prompt.get(prompt_id, 0) + 1
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
    if config.kind == S.PREFERENCE:
      judgements.append({S.PROMPT_ID: episode[S.PROMPT_ID], S.JUDGE: episode[S.JUDGE],
                         S.CANDIDATE_IDS: list(episode[S.CANDIDATE_IDS]),
                         S.STEPS: [{S.ACTION: {S.ACT_CHOICE: int(
                             episode[S.STEPS][0][S.ACTION][S.ACT_CHOICE])}}]})
    if len(shown) < show:
      shown.append(episode_text(episode, config, tokenizer))
    if keep:
      groups.add(episode)
  if keep:
    chosen = groups.choose(keep, sort)
    if not isinstance(episodes, list):  # a published dataset: read it again
      episodes = load_episodes(path, split)[2]
    members: dict[str, list[dict[str, Any]]] = {p: [] for p in chosen}
    for episode in episodes:
      prompt_id = _text(episode[S.PROMPT_ID])
      if prompt_id in members and where(episode):
        members[prompt_id].append(episode)
    kept = [e for group in members.values() for e in group]
  group_sizes = list(per_prompt.values())
  summary = {
      "path": os.fspath(path),
      "kind": config.kind,
      "schema": json.loads(config.to_json()),
      "episodes": matched,
      "episodes_in_split": count,
      "filter": dataclasses.asdict(where) if where.active else None,
      "prompts": len(per_prompt),
      "episodes_per_prompt": _stats(group_sizes),
      "steps": steps,
      "observation_tokens": obs_tokens,
      "action_tokens": act_tokens,
      "invalid_episodes": invalid,
      "fields": field_list(config),
      "rewards": {name: _stats(v) for name, v in rewards.items()},
      "lineage": lineage,
      "examples": shown,
  }
  if config.kind == S.PREFERENCE:
    from rlds_lm import annotate  # pylint: disable=g-import-not-at-top
    summary["judges"] = dict(collections.Counter(
        f"{_text(j[S.JUDGE][S.JUDGE_KIND])}:{_text(j[S.JUDGE][S.JUDGE_NAME])}"
        for j in judgements))
    summary["agreement"] = annotate.agreement(judgements)
  return Scan(summary, config, kept, tokenizer)


def summarize(path: str | os.PathLike[str], split: str = "train", show: int = 3,
              where: Filter = Filter()) -> dict[str, Any]:
  """Counts, fields, reward statistics, lineage and the first ``show`` episodes as text
  (of the episodes ``where`` matches)."""
  return scan(path, split, show, where).summary


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
  matched = ""
  if summary.get("filter"):
    active = {k: v for k, v in summary["filter"].items() if v not in (None, [], ())}
    matched = (f" (of {summary['episodes_in_split']}; filter "
               f"{json.dumps(active, sort_keys=True)})")
  out = [f"{summary['path']}: {summary['episodes']} {summary['kind']} episodes{matched}, "
         f"{summary['steps']} steps, {summary['observation_tokens']} observation tokens, "
         f"{summary['action_tokens']} action tokens, {summary['invalid_episodes']} invalid"]
  schema = summary["schema"]
  out.append(f"schema: vocab {schema['vocab_size']} ({schema['tokenizer']}), teacher top-k "
             f"{schema['teacher_top_k']}, sampled-k {schema['teacher_sampled_k']}, rewards "
             f"{schema['reward_names'] or '-'}, image channels {schema['image_channels']}")
  per_prompt = summary.get("episodes_per_prompt") or {}
  if per_prompt:
    out.append(f"prompts: {summary['prompts']}, episodes per prompt: mean "
               f"{per_prompt['mean']:.3g} (min {per_prompt['min']:.0f}, max "
               f"{per_prompt['max']:.0f})")
  out.append("rewards per episode:")
  for name, stats in summary["rewards"].items():
    if stats:
      out.append(f"  {name:>12}: mean {stats['mean']:.4g}  std {stats['std']:.4g}  "
                 f"min {stats['min']:.4g}  p10 {stats['p10']:.4g}  median "
                 f"{stats['median']:.4g}  p90 {stats['p90']:.4g}  max {stats['max']:.4g}")
  if "judges" in summary:
    out.append("judges: " + ", ".join(f"{k} ({n})" for k, n in sorted(
        summary["judges"].items())))
    agree = summary["agreement"]
    if agree["pairs_compared"]:
      out.append(f"agreement: {agree['agreement']:.3f} over {agree['pairs_compared']} "
                 f"pairs of judges on the same candidates")
      for pair, row in agree["by_pair"].items():
        out.append(f"  {pair}: {row['agree']} of {row['compared']} ({row['rate']:.3f})")
    else:
      out.append("agreement: no question answered by two judges")
  out.append(f"lineage: {json.dumps(summary['lineage'], sort_keys=True)}")
  out.append(f"fields ({len(summary['fields'])}): " + ", ".join(summary["fields"]))
  for text in summary["examples"]:
    out.append(text)
  return "\n".join(out)
