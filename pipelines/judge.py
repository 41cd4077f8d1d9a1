"""Stage ``judge``: scored rollouts -> preference episodes and Best-of-N statistics.

Example::

    python -m pipelines.judge --rollouts=work/scored --reward=entailment \\
        --mode=pairwise --output=work/preferences --bon_output=work/bon

Rollouts are grouped by ``prompt_id`` (the N samples of one prompt, ordered by episode
id). The judge is the agent of each preference episode:

* with ``--reward``, a reward-model or rule judge ranks candidates by that reward;
* with ``--judge_policy``, an LLM judge ranks them by the mean log-probability the judge
  model gives each completion after the prompt (length-normalised likelihood);
* with ``--judge_model`` (a checkpoint, or a served model at an OpenAI-compatible
  endpoint with ``--served_model``), an LLM is asked which candidate is best with the
  documented prompt of :mod:`rlds_lm.backends.judge` and must answer ``Verdict: K`` or
  ``Verdict: tie``; its answer is kept in the episode's lineage, and an answer without a
  verdict is a dead letter (``unparseable_verdict``) carrying what the judge said.

``--mode=pairwise`` writes one episode per pair of candidates (``--pairs=all`` or
``best_worst``), ``choice`` = the better one or -1 on a tie; ``--mode=ranked`` writes one
episode per prompt with all N candidates and their ranking.

``--bon_output`` also writes the rollouts with their Best-of-N quantile: for sample i of
a prompt with rewards r_1..r_N, the Monte Carlo estimate of the reference policy's reward
CDF at r_i, ``q_i = #{j : r_j <= r_i} / N`` (stored as reward ``<reward>_quantile``;
J-BOND's reward is ``log q_i``), plus ``bon_groups.jsonl`` with per-prompt statistics:
mean, std, quantiles and the expected best-of-k reward ``E[max of k draws]`` for
k = 1, 2, 4, ... <= N under the empirical distribution.

Dead letters: prompts with fewer than two candidates (no preference to state).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines import dataset_io
from pipelines import dead_letters
from pipelines import models
from pipelines import scaffold
from pipelines.errors import PipelineError
from pipelines.errors import RecordError
from rlds_lm.backends import BackendError
from rlds_lm import schema as S
from rlds_lm.cli_help import HelpFormatter

STAGE = "judge"
PAIRWISE = "pairwise"
RANKED = "ranked"
BON_GROUPS_FILE = "bon_groups.jsonl"
_RULE_REWARDS = ("arithmetic", "entailment")


# -- Best-of-N statistics (pure functions, tested against brute force) ---------------------


def mc_quantiles(rewards: Sequence[float]) -> np.ndarray:
  """``q_i = #{j : r_j <= r_i} / N``: the empirical CDF of the group at each reward."""
  r = np.asarray(rewards, np.float64)
  return (r[None, :] <= r[:, None]).sum(axis=1) / len(r)


def expected_best_of(rewards: Sequence[float], k: int) -> float:
  """E[max of k i.i.d. draws] from the empirical distribution of ``rewards``.

  With the rewards sorted ascending, the max of k draws is the i-th smallest with
  probability ``(i/N)^k - ((i-1)/N)^k``.
  """
  r = np.sort(np.asarray(rewards, np.float64))
  n = len(r)
  i = np.arange(1, n + 1)
  return float(np.sum(r * ((i / n) ** k - ((i - 1) / n) ** k)))


def group_stats(prompt_id: str, episode_ids: Sequence[str], rewards: Sequence[float]
                ) -> dict[str, Any]:
  r = np.asarray(rewards, np.float64)
  ks = [2**j for j in range(0, int(np.log2(len(r))) + 1)]
  best = int(np.argmax(r))
  return {
      "prompt_id": prompt_id, "n": len(r), "mean": float(r.mean()), "std": float(r.std()),
      "min": float(r.min()), "max": float(r.max()),
      "quantiles": {str(q): float(np.quantile(r, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
      "best_episode_id": episode_ids[best],
      "expected_best_of": {str(k): expected_best_of(r, k) for k in ks},
  }


# -- preference episodes ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  mode: str = PAIRWISE
  pairs: str = "all"
  reward: str = ""
  judge: models.ModelRef | None = None
  verdict: models.ModelRef | None = None  # an LLM asked for a verdict (--judge_model)
  max_new_tokens: int = 256  # of the verdict judge's answer
  judge_name: str = ""
  judge_kind: str = "reward_model"
  judge_digest: str = ""


def _candidate(episode: Mapping[str, Any]) -> np.ndarray:
  acting = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
  return np.asarray(acting[-1][S.ACTION][S.ACT_TOKENS], np.int32) if acting else np.zeros(
      0, np.int32)


def _reward_of(episode: Mapping[str, Any], name: str) -> float:
  acting = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
  return float(acting[-1][S.REWARDS][name])


def judge_scores(state, rollouts: Sequence[Mapping[str, Any]], config: JudgeConfig
                 ) -> np.ndarray:
  """One score per candidate: the reward, or the LLM judge's mean log-probability."""
  if config.judge is None:
    return np.asarray([_reward_of(e, config.reward) for e in rollouts], np.float64)
  policy, _ = state
  sequences, prompt_lengths = [], []
  for episode in rollouts:
    prompt = np.asarray(episode[S.STEPS][0][S.OBSERVATION][S.OBS_TOKENS], np.int32)
    sequences.append(np.concatenate([prompt, _candidate(episode)]))
    prompt_lengths.append(len(prompt))
  too_long = [len(s) for s in sequences if len(s) > policy.config.max_seq_len]
  if too_long:
    raise RecordError("too_long_for_judge", f"{max(too_long)} tokens > the judge's "
                                            f"context {policy.config.max_seq_len}")
  scored = policy.score(sequences, prompt_lengths)
  return np.asarray([float(s.logprobs.mean()) if len(s.logprobs) else -np.inf
                     for s in scored], np.float64)


def _text(episode: Mapping[str, Any], tokenizer) -> str:
  acting = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
  action = acting[-1][S.ACTION] if acting else {}
  return str(action.get(S.ACT_TEXT) or tokenizer.decode(_candidate(episode)))


def _verdict(state, prompt_id: str, candidates: Sequence[Mapping[str, Any]],
             config: JudgeConfig) -> tuple[int, str, dict[str, Any]]:
  """Asks the verdict judge about ``candidates``; (choice or -1, answer, provenance)."""
  from rlds_lm.backends import judge as judge_lib  # pylint: disable=g-import-not-at-top
  backend, tokenizer = state
  obs = candidates[0][S.STEPS][0][S.OBSERVATION]
  prompt = str(obs[S.OBS_TEXT] or tokenizer.decode(obs[S.OBS_TOKENS]))
  seed = S.content_seed("judge", prompt_id, [c[S.EPISODE_ID] for c in candidates],
                        config.judge_digest)
  try:
    return judge_lib.judge(backend, prompt, [_text(c, tokenizer) for c in candidates],
                           seed=seed, max_new_tokens=config.max_new_tokens)
  except judge_lib.VerdictError as e:
    raise RecordError("unparseable_verdict",
                      f"{e}; the judge said: {e.answer[:500]!r}") from e
  except BackendError as e:
    raise RecordError("backend_error", str(e)) from e


def _verdict_state(ref: models.ModelRef):
  """(backend, tokenizer) of a verdict judge, once per worker."""
  return ref.backend(), ref.load_tokenizer()


def preferences_for_group(state, element, *, config: JudgeConfig, schema: S.SchemaConfig
                          ) -> Iterator[dict[str, Any]]:
  """The preference episodes of one prompt's rollouts."""
  prompt_id, rollouts = element
  rollouts = sorted(rollouts, key=lambda e: e[S.EPISODE_ID])
  if len(rollouts) < 2:
    raise RecordError("too_few_candidates",
                      f"prompt {prompt_id} has {len(rollouts)} rollout(s); a "
                      f"preference needs two")
  scores = judge_scores(state, rollouts, config) if config.verdict is None else None
  first = rollouts[0][S.STEPS][0][S.OBSERVATION]
  prompt = S.observation(schema, np.asarray(first[S.OBS_TOKENS], np.int32),
                         first[S.OBS_TEXT], "prompt")
  task = rollouts[0].get(S.TASK, "")
  if config.mode == RANKED:
    groups = [list(range(len(rollouts)))]
  elif config.pairs == "best_worst":
    order = np.argsort(-scores, kind="stable")
    groups = [[int(order[0]), int(order[-1])]]
  else:
    groups = [list(p) for p in itertools.combinations(range(len(rollouts)), 2)]
  for members in groups:
    lineage: dict[str, Any] = {"stage": STAGE, "mode": config.mode}
    if config.verdict is not None:
      choice, lineage["judge_answer"], lineage["request"] = _verdict(
          state, prompt_id, [rollouts[i] for i in members], config)
      s = np.zeros(len(members), np.float64)
      if choice >= 0:
        s[choice] = 1.0
    else:
      s = scores[members]
      choice = -1 if np.all(s == s[0]) else int(np.argmax(s))
    yield S.preference_episode(
        schema, prompt, [rollouts[i][S.EPISODE_ID] for i in members],
        [_candidate(rollouts[i]) for i in members], prompt_id=prompt_id, choice=choice,
        ranking=np.argsort(-s, kind="stable").astype(np.int32),
        scores=s.astype(np.float32), judge_name=config.judge_name,
        judge_digest=config.judge_digest, judge_kind=config.judge_kind, task=task,
        lineage=lineage)


def bon_for_group(element, *, reward: str, names: Sequence[str]
                  ) -> Iterator[tuple[str, Any]]:
  """("episode", rollout with its quantile reward) items and one ("stats", json)."""
  prompt_id, items = element
  items = sorted(items, key=lambda se: se[1][S.EPISODE_ID])
  rewards = [_reward_of(e, reward) for _, e in items]
  quantiles = mc_quantiles(rewards)
  for (split, episode), q in zip(items, quantiles):
    steps = [dict(s) for s in episode[S.STEPS]]
    acting = [i for i, s in enumerate(steps) if not s[S.IS_LAST]]
    for i, step in enumerate(steps):
      values = {n: float(step[S.REWARDS].get(n, 0.0)) for n in names}
      values[f"{reward}_quantile"] = float(q) if acting and i == acting[-1] else 0.0
      step[S.REWARDS] = values
    yield "episode", (split, {**episode, S.STEPS: steps})
  stats = group_stats(prompt_id, [e[S.EPISODE_ID] for _, e in items], rewards)
  stats["split"] = items[0][0]
  yield "stats", json.dumps(stats, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class JudgeSetup:
  """What the stage needs besides its input and outputs, built by :func:`build_config`.

  Attributes:
    config: how candidates are judged and paired.
    reward: the reward that ranks candidates (and whose Best-of-N quantile is stored).
    schema: the schema of the preference episodes.
    bon_schema: the schema of the Best-of-N rollouts (the input's, plus the
      ``<reward>_quantile`` reward); None without ``--bon_output``.
    input_reward_names: the rewards of the input rollouts.
    stage_config: the settings that determine the output (its digest is in the lineage).
  """

  config: JudgeConfig
  reward: str
  schema: S.SchemaConfig
  bon_schema: S.SchemaConfig | None
  input_reward_names: tuple[str, ...]
  stage_config: dict[str, Any]


def build_config(args: argparse.Namespace, schema_in: S.SchemaConfig) -> JudgeSetup:
  """The stage's setup from its parsed flags and the rollouts' schema; checks them.

  Raises:
    PipelineError: for input that is not rollouts, a reward they do not have, or an LLM
      judge with another tokenizer.
  """
  if schema_in.kind != S.ROLLOUT:
    raise PipelineError(f"{args.rollouts} holds {schema_in.kind} episodes, not rollouts")
  reward = args.reward or (schema_in.reward_names[0] if schema_in.reward_names else "")
  if args.judge_model and args.judge_policy:
    raise PipelineError("--judge_model (a verdict judge) and --judge_policy (a likelihood "
                        "judge) exclude each other")
  if args.judge_model:
    return _verdict_setup(args, schema_in, reward)
  if not args.judge_policy or args.bon_output:
    if reward not in schema_in.reward_names:
      raise PipelineError(
          f"reward {reward!r} is not in the rollouts (they have "
          f"{list(schema_in.reward_names)}); run pipelines.score first or pass --reward")
  if args.judge_policy:
    judge = models.ModelRef(args.judge_policy, args.tokenizer)
    info = judge.describe()
    if info["tokenizer"] != schema_in.tokenizer:
      raise PipelineError(f"the judge's tokenizer {info['tokenizer']} is not the "
                          f"rollouts' ({schema_in.tokenizer})")
    config = JudgeConfig(mode=args.mode, pairs=args.pairs, judge=judge,
                         judge_name=info["name"], judge_kind="llm",
                         judge_digest=info["digest"])
    judge_info: dict[str, Any] = {"llm": info}
  else:
    config = JudgeConfig(mode=args.mode, pairs=args.pairs, reward=reward, judge_name=reward,
                         judge_kind="rule" if reward in _RULE_REWARDS else "reward_model")
    judge_info = {"reward": reward}
  return _setup(args, schema_in, reward, config, judge_info)


def _verdict_setup(args: argparse.Namespace, schema_in: S.SchemaConfig, reward: str
                   ) -> JudgeSetup:
  """The setup of an LLM asked for verdicts (``--judge_model``)."""
  if args.pairs == "best_worst" and args.mode == PAIRWISE:
    raise PipelineError("--pairs=best_worst needs scores to find the best and worst; a "
                        "verdict judge gives none: use --pairs=all or --mode=ranked")
  if args.bon_output and reward not in schema_in.reward_names:
    raise PipelineError(f"--bon_output needs reward {reward!r} in the rollouts (they have "
                        f"{list(schema_in.reward_names)})")
  ref = models.model_ref(args, args.judge_model, args.tokenizer)
  info = ref.describe()
  config = JudgeConfig(mode=args.mode, pairs=args.pairs, verdict=ref,
                       max_new_tokens=args.judge_max_new_tokens, judge_name=info["name"],
                       judge_kind="llm", judge_digest=info["digest"])
  from rlds_lm.backends import judge as judge_lib  # pylint: disable=g-import-not-at-top
  return _setup(args, schema_in, reward, config,
                {"verdict": info, "prompt": judge_lib.__name__,
                 "max_new_tokens": args.judge_max_new_tokens})


def _setup(args: argparse.Namespace, schema_in: S.SchemaConfig, reward: str,
           config: JudgeConfig, judge_info: dict[str, Any]) -> JudgeSetup:
  """The setup around a judge: the preference schema, Best-of-N's, the stage config."""
  schema = S.SchemaConfig(kind=S.PREFERENCE, vocab_size=schema_in.vocab_size,
                          tokenizer=schema_in.tokenizer)
  bon_schema = None
  if args.bon_output:
    bon_schema = dataclasses.replace(
        schema_in, reward_names=tuple(schema_in.reward_names) + (f"{reward}_quantile",))
  return JudgeSetup(config=config, reward=reward, schema=schema, bon_schema=bon_schema,
                    input_reward_names=tuple(schema_in.reward_names),
                    stage_config={"judge": judge_info, "mode": args.mode,
                                  "pairs": args.pairs})


class Judge(beam.PTransform):
  """``(split, rollout)`` -> ``(preferences, dead_letters)``: a prompt's rollouts (per
  split) judged together; prompts with fewer than two become dead letters."""

  def __init__(self, setup: JudgeSetup):
    super().__init__()
    self._setup = setup

  def expand(self, rollouts):
    config, schema = self._setup.config, self._setup.schema
    groups = (rollouts
              | "KeyByPrompt" >> beam.Map(lambda se: ((se[0], se[1][S.PROMPT_ID]), se[1]))
              | "GroupByPrompt" >> beam.GroupByKey()
              | "AsSplitItems" >> beam.MapTuple(
                  lambda key, eps: (key[0], (key[1], list(eps)))))
    return dead_letters.safe_map(
        groups, "Judge", STAGE,
        lambda state, element: preferences_for_group(state, element, config=config,
                                                     schema=schema),
        key_fn=lambda element: element[0],
        setup_fn=(config.judge.load if config.judge is not None else
                  functools.partial(_verdict_state, config.verdict)
                  if config.verdict is not None else lambda: None))


class BestOfN(beam.PTransform):
  """``(split, rollout)`` -> ``(rollouts with quantiles, stats)``: ``stats`` holds one
  string, the sorted JSON lines of the per-prompt statistics (``bon_groups.jsonl``)."""

  def __init__(self, setup: JudgeSetup):
    super().__init__()
    self._setup = setup

  def expand(self, rollouts):
    reward, names = self._setup.reward, self._setup.input_reward_names
    items = (rollouts
             | "BonKey" >> beam.Map(lambda se: ((se[0], se[1][S.PROMPT_ID]), se))
             | "BonGroup" >> beam.GroupByKey()
             | "BonItems" >> beam.FlatMapTuple(
                 lambda key, items: bon_for_group((key[1], list(items)), reward=reward,
                                                  names=names)))
    episodes = (items | "BonEpisodes" >> beam.Filter(lambda kv: kv[0] == "episode")
                | "BonEpisode" >> beam.Map(lambda kv: kv[1]))
    stats = (items
             | "BonStats" >> beam.Filter(lambda kv: kv[0] == "stats")
             | "BonStatLine" >> beam.Map(lambda kv: kv[1])
             | "BonStatsList" >> beam.combiners.ToList()
             | "BonStatsSorted" >> beam.Map(lambda lines: "\n".join(sorted(lines))))
    return episodes, stats


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m pipelines.judge", description=__doc__,
                                   formatter_class=HelpFormatter)
  parser.add_argument("--rollouts", required=True, help="scored rollout dataset directory")
  parser.add_argument("--splits", default="", help="comma-separated splits (default: all)")
  parser.add_argument("--reward", default="",
                      help="reward that ranks candidates (default: the first reward)")
  parser.add_argument("--judge_policy", default="",
                      help="checkpoint of an LLM judge (instead of --reward; "
                           "default: none)")
  parser.add_argument("--judge_model", default="",
                      help="an LLM asked which candidate is best (rlds_lm.backends.judge's "
                           "prompt, 'Verdict: K'): a checkpoint, or an OpenAI-compatible "
                           "API root with --served_model (default: none)")
  parser.add_argument("--judge_max_new_tokens", type=int, default=256,
                      help="length of the verdict judge's answer at most")
  parser.add_argument("--tokenizer", default="byte", help="the LLM judge's tokenizer")
  parser.add_argument("--mode", choices=(PAIRWISE, RANKED), default=PAIRWISE,
                      help="pairwise: one episode per pair; ranked: one per prompt")
  parser.add_argument("--pairs", choices=("all", "best_worst"), default="all",
                      help="which pairs in pairwise mode")
  parser.add_argument("--bon_output", default="",
                      help="also write rollouts with Best-of-N quantiles here "
                           "(default: not written)")
  models.add_endpoint_flags(parser)
  scaffold.add_common_flags(parser)
  return parser


def run(argv: Sequence[str] | None = None) -> dict[str, scaffold.StageResult]:
  args, beam_args = build_parser().parse_known_args(argv)
  started = time.perf_counter()
  source = dataset_io.open_input(args.rollouts,
                                 [s for s in args.splits.split(",") if s] or None)
  setup = build_config(args, source.schema)
  config, reward = setup.config, setup.reward
  options = scaffold.pipeline_options(beam_args, args.workers)  # checks the runner first
  out = scaffold.prepare_output(args.output, args.overwrite)
  bon_out = (scaffold.prepare_output(args.bon_output, args.overwrite) if args.bon_output
             else "")
  total = sum(source.num_examples[s] for s in source.splits)
  scaffold.progress(STAGE, f"{total} rollouts from {source.path}; judge "
                           f"{config.judge_name} ({config.judge_kind}), {args.mode}")

  pipeline = beam.Pipeline(options=options)
  rollouts = pipeline | "ReadRollouts" >> dataset_io.ReadRecords(source)
  preferences, dead = rollouts | "Judge" >> Judge(setup)
  infos, dead_write = preferences | "Write" >> dataset_io.WriteEpisodes(
      out, "preferences", setup.schema, source.splits, args.num_shards, STAGE)
  written = [infos, dead_letters.write_dead_letters([dead, dead_write], out)]
  lineage = scaffold.lineage(STAGE, setup.stage_config, rollouts=source.lineage(),
                             upstream=source.upstream_lineage())
  if bon_out:
    bon_episodes, bon_stats = rollouts | "BestOfN" >> BestOfN(setup)
    bon_infos, bon_dead = bon_episodes | "WriteBon" >> dataset_io.WriteEpisodes(
        bon_out, "rollouts_bon", setup.bon_schema, source.splits, args.num_shards, STAGE)
    written += [
        bon_infos,
        bon_stats | "WriteBonStats" >> dataset_io.WriteLines(
            os.path.join(bon_out, BON_GROUPS_FILE)),
        dead_letters.write_dead_letters([bon_dead], bon_out, label="BonDeadLetters")]

  result = scaffold.run_pipeline(pipeline, written)
  results = {"preferences": scaffold.finalize(
      result=result, out_dir=out, name="preferences", config=setup.schema,
      splits=source.splits, stage=STAGE,
      description=f"Preferences over {source.name} by {config.judge_name}",
      lineage=lineage, inputs_total=total, started=started,
      max_dropped_fraction=args.max_dropped_fraction, upstream=[source],
      stage_args=vars(args))}
  if bon_out:
    results["bon"] = scaffold.finalize(
        result=result, out_dir=bon_out, name="rollouts_bon", config=setup.bon_schema,
        splits=source.splits, stage=STAGE + ".bon",
        description=f"{source.name} with Best-of-N quantiles of {reward}",
        lineage={**lineage, "bon_reward": reward}, inputs_total=total, started=started,
        max_dropped_fraction=args.max_dropped_fraction, upstream=[source],
        stage_args=vars(args))
  return results


def main(argv: Sequence[str] | None = None) -> int:
  return scaffold.main_wrapper(STAGE, run, argv)


if __name__ == "__main__":
  sys.exit(main())
