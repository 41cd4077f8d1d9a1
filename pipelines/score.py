"""Stage ``score``: rollouts -> named rewards from pluggable scorers.

Example::

    python -m pipelines.score --rollouts=work/rollouts_teacher \\
        --scorers=entailment,nli --nli_model=nli_model --output=work/scored

Rollouts are joined with their prompt records by ``prompt_id`` (``--prompts``; by default
the prompt source recorded in the rollouts' lineage), so scorers see the reference
answer, the document and its facts. Each scorer's value is stored under its name in the
``rewards`` of the acting step that it scores (the last one), and the ``--primary``
scorer's value also as that step's ``reward``. Rewards already in the rollouts are kept.

Dead letters: rollouts whose prompt is not in the prompt source, scorers that do not
apply to the task or lack a reference, and anything a scorer raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam

from pipelines import core
from pipelines import generate
from pipelines import scorers as SC
from rlds_lm import schema as S
from rlds_lm.cli_help import HelpFormatter

STAGE = "score"


def completion_text(episode: Mapping[str, Any]) -> str:
  """The text of the last action (what scorers judge)."""
  acting = [s for s in episode[S.STEPS] if not s[S.IS_LAST]]
  return acting[-1][S.ACTION][S.ACT_TEXT] if acting else ""


def with_rewards(episode: dict[str, Any], rewards: Mapping[str, float], *,
                 names: Sequence[str], primary: str) -> dict[str, Any]:
  """The episode with ``rewards`` on its last acting step (others get 0 for new names)."""
  steps = [dict(s) for s in episode[S.STEPS]]
  acting = [i for i, s in enumerate(steps) if not s[S.IS_LAST]]
  last = acting[-1] if acting else None
  for i, step in enumerate(steps):
    old = dict(step.get(S.REWARDS) or {})
    new = {name: float(old.get(name, 0.0)) for name in names}
    if i == last:
      new.update({k: float(v) for k, v in rewards.items()})
      step[S.REWARD] = float(rewards[primary])
    step[S.REWARDS] = new
  return {**episode, S.STEPS: steps}


def score_group(fns, element, *, names: Sequence[str], primary: str
                ) -> Iterator[tuple[str, Any]]:
  """One prompt's rollouts -> ("ok", episode) or ("dead", DeadLetter) items."""
  prompt_id, grouped = element
  prompts = list(grouped["prompts"])
  rollouts = sorted(grouped["rollouts"], key=lambda se: se[1][S.EPISODE_ID])
  if not rollouts:
    return
  if not prompts:
    for split, episode in rollouts:
      yield "dead", core.DeadLetter(STAGE, episode[S.EPISODE_ID], "unknown_prompt",
                                    f"prompt {prompt_id} is not in the prompt source",
                                    split)
    return
  prompt = prompts[0]
  try:
    values = SC.score_all(fns, prompt, [completion_text(e) for _, e in rollouts])
  except Exception as e:  # pylint: disable=broad-except
    reason = core.reason_of(e)
    for split, episode in rollouts:
      yield "dead", core.DeadLetter(STAGE, episode[S.EPISODE_ID], reason, str(e)[:2000],
                                    split)
    return
  for j, (split, episode) in enumerate(rollouts):
    rewards = {name: float(v[j]) for name, v in values.items()}
    yield "ok", (split, with_rewards(episode, rewards, names=names, primary=primary))


class _ScoreGroups(beam.DoFn):
  def __init__(self, spec: SC.ScorerSpec, names: Sequence[str], primary: str):
    super().__init__()
    self._spec = spec
    self._names = tuple(names)
    self._primary = primary
    self._fns = None

  def setup(self):
    self._fns = self._spec.load()

  def process(self, element):
    for kind, item in score_group(self._fns, element, names=self._names,
                                  primary=self._primary):
      if kind == "dead":
        core.counter(STAGE, "dropped").inc()
        core.counter(STAGE, f"dead_letter.{item.reason}").inc()
        yield beam.pvalue.TaggedOutput(core.DEAD_LETTER, item)
      else:
        core.counter(STAGE, "ok").inc()
        yield item


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m pipelines.score", description=__doc__,
                                   formatter_class=HelpFormatter)
  parser.add_argument("--rollouts", required=True, help="rollout dataset directory")
  parser.add_argument("--prompts", default="",
                      help="prompt source (default: the one in the rollouts' lineage)")
  parser.add_argument("--splits", default="", help="comma-separated splits (default: all)")
  parser.add_argument("--scorers", required=True,
                      help=f"comma-separated, from {list(SC.SCORERS)}")
  parser.add_argument("--primary", default="", help="scorer whose value is the step "
                                                    "reward (default: the first)")
  parser.add_argument("--nli_model", default="", help="model directory for the nli scorer "
                      "(default: none; needed by nli)")
  parser.add_argument("--external_nli", default="",
                      help="module:function for the external_nli scorer "
                           "(default: none; needed by external_nli)")
  core.add_common_flags(parser)
  return parser


def _prompt_source(args, source: core.DatasetInput) -> str:
  if args.prompts:
    return args.prompts
  lineage = source.upstream_lineage()
  while lineage and "prompts" not in lineage:  # walk back through teacher etc.
    lineage = lineage.get("upstream")
  if not lineage:
    raise core.PipelineError(f"{source.path}: its lineage names no prompt source; pass "
                             f"--prompts")
  return lineage["prompts"]["path"]


def run(argv: Sequence[str] | None = None) -> core.StageResult:
  args, beam_args = build_parser().parse_known_args(argv)
  started = time.perf_counter()
  spec = SC.ScorerSpec(tuple(n for n in args.scorers.split(",") if n), args.nli_model,
                       args.external_nli)
  primary = args.primary or spec.names[0]
  if primary not in spec.names:
    raise core.PipelineError(f"--primary={primary} is not one of --scorers={spec.names}")
  scorer_info = spec.describe()
  source = core.open_input(args.rollouts, [s for s in args.splits.split(",") if s] or None)
  schema_in = source.schema
  if schema_in.kind != S.ROLLOUT:
    raise core.PipelineError(f"{args.rollouts} holds {schema_in.kind} episodes, not rollouts")
  names = tuple(schema_in.reward_names) + tuple(n for n in spec.names
                                                if n not in schema_in.reward_names)
  schema = dataclasses.replace(schema_in, reward_names=names)
  prompt_path = _prompt_source(args, source)
  out = core.prepare_output(args.output, args.overwrite)
  total = sum(source.num_examples[s] for s in source.splits)
  stage_config = {"scorers": scorer_info, "primary": primary}
  digest = core.config_digest(stage_config)
  core.progress(STAGE, f"{total} rollouts from {source.path}; scorers {list(spec.names)} "
                       f"(primary {primary}); prompts from {prompt_path}")

  pipeline = beam.Pipeline(options=core.pipeline_options(beam_args, args.workers))
  prompts, dead_prompts, prompt_input, _, _ = generate.read_prompts(
      pipeline, prompt_path, None, None)
  rollouts = pipeline | "ReadRollouts" >> core.ReadRecords(source)
  grouped = ({"prompts": prompts | "PromptKey" >> beam.Map(lambda sp: (sp[1].prompt_id,
                                                                      sp[1])),
              "rollouts": rollouts | "RolloutKey" >> beam.Map(
                  lambda se: (se[1][S.PROMPT_ID], se))}
             | "JoinOnPrompt" >> beam.CoGroupByKey())
  scored = grouped | "Score" >> beam.ParDo(_ScoreGroups(spec, names, primary)).with_outputs(
      core.DEAD_LETTER, main="main")
  _, dead_write = scored.main | "Write" >> core.WriteEpisodes(
      out, "rollouts_scored", schema, source.splits, args.num_shards, STAGE)
  # Bad prompt records are the prompt source's problem, reported but not counted here.
  core.write_dead_letters([scored[core.DEAD_LETTER], dead_write] + list(dead_prompts), out)
  lineage = {"stage": STAGE, "rollouts": source.lineage(),
             "upstream": source.upstream_lineage(),
             "prompts": (prompt_input.lineage() if prompt_input else {"path": prompt_path}),
             "config": stage_config, "config_digest": digest,
             "code_version": core.code_version()}
  return core.finalize(
      result=pipeline.run(), out_dir=out, name="rollouts_scored", config=schema,
      splits=source.splits, stage=STAGE,
      description=f"{source.name} scored by {', '.join(spec.names)}", lineage=lineage,
      inputs_total=total, started=started, max_dropped_fraction=args.max_dropped_fraction,
      upstream=[source], stage_args=vars(args))


def main(argv: Sequence[str] | None = None) -> int:
  return core.main_wrapper(STAGE, run, argv)


if __name__ == "__main__":
  sys.exit(main())
