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

from pipelines import dataset_io
from pipelines import dead_letters
from pipelines import generate
from pipelines import scaffold
from pipelines import scorers as SC
from pipelines.errors import PipelineError
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
      yield "dead", dead_letters.DeadLetter(
          STAGE, episode[S.EPISODE_ID], "unknown_prompt",
          f"prompt {prompt_id} is not in the prompt source", split)
    return
  prompt = prompts[0]
  try:
    values = SC.score_all(fns, prompt, [completion_text(e) for _, e in rollouts])
  except Exception as e:  # pylint: disable=broad-except
    reason = dead_letters.reason_of(e)
    for split, episode in rollouts:
      yield "dead", dead_letters.DeadLetter(STAGE, episode[S.EPISODE_ID], reason,
                                            str(e)[:2000], split)
    return
  for j, (split, episode) in enumerate(rollouts):
    rewards = {name: float(v[j]) for name, v in values.items()}
    yield "ok", (split, with_rewards(episode, rewards, names=names, primary=primary))


class _ScoreGroups(beam.DoFn):
  """One prompt's rollouts -> tagged (OK, (split, episode)) / (DEAD, DeadLetter) pairs."""

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
        yield dead_letters.DEAD, dead_letters.count_dropped(item)
      else:
        dead_letters.counter(STAGE, "ok").inc()
        yield dead_letters.OK, item


@dataclasses.dataclass(frozen=True)
class ScoreSetup:
  """What the stage needs besides its inputs and output, built by :func:`build_config`.

  Attributes:
    spec: the scorers (names, NLI model, external function).
    primary: the scorer whose value is also the step's ``reward``.
    schema: the output schema (the input's, with the scorers' reward names added).
    stage_config: the settings that determine the output (its digest is in the lineage).
  """

  spec: SC.ScorerSpec
  primary: str
  schema: S.SchemaConfig
  stage_config: dict[str, Any]

  @property
  def names(self) -> tuple[str, ...]:
    """Every reward name of the output (those of the input first)."""
    return tuple(self.schema.reward_names)


def build_config(args: argparse.Namespace, schema_in: S.SchemaConfig) -> ScoreSetup:
  """The stage's setup from its parsed flags and the rollouts' schema; checks them.

  Raises:
    PipelineError: for unknown scorers, a ``--primary`` that is not one of them, a
      scorer that cannot be loaded, or input that is not rollouts.
  """
  spec = SC.ScorerSpec(tuple(n for n in args.scorers.split(",") if n), args.nli_model,
                       args.external_nli)
  primary = args.primary or spec.names[0]
  if primary not in spec.names:
    raise PipelineError(f"--primary={primary} is not one of --scorers={spec.names}")
  scorer_info = spec.describe()
  if schema_in.kind != S.ROLLOUT:
    raise PipelineError(f"{args.rollouts} holds {schema_in.kind} episodes, not rollouts")
  names = tuple(schema_in.reward_names) + tuple(n for n in spec.names
                                                if n not in schema_in.reward_names)
  return ScoreSetup(spec=spec, primary=primary,
                    schema=dataclasses.replace(schema_in, reward_names=names),
                    stage_config={"scorers": scorer_info, "primary": primary})


class Score(beam.PTransform):
  """``{"prompts": (split, Prompt), "rollouts": (split, episode)}`` -> ``(scored,
  dead_letters)``: rollouts joined with their prompt and scored by every scorer, one
  prompt's rollouts together; rollouts of an unknown prompt, or that a scorer refuses,
  become dead letters."""

  def __init__(self, setup: ScoreSetup):
    super().__init__()
    self._setup = setup

  def expand(self, inputs):
    grouped = ({"prompts": inputs["prompts"] | "PromptKey" >> beam.Map(
                    lambda sp: (sp[1].prompt_id, sp[1])),
                "rollouts": inputs["rollouts"] | "RolloutKey" >> beam.Map(
                    lambda se: (se[1][S.PROMPT_ID], se))}
               | "JoinOnPrompt" >> beam.CoGroupByKey())
    return (grouped
            | "ScoreGroups" >> beam.ParDo(_ScoreGroups(
                self._setup.spec, self._setup.names, self._setup.primary)
                                         ).with_output_types(dead_letters.TAGGED)
            | "Split" >> dead_letters.SplitTagged())


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
  scaffold.add_common_flags(parser)
  return parser


def _prompt_source(args, source: dataset_io.DatasetInput) -> str:
  if args.prompts:
    return args.prompts
  lineage = source.upstream_lineage()
  while lineage and "prompts" not in lineage:  # walk back through teacher etc.
    lineage = lineage.get("upstream")
  if not lineage:
    raise PipelineError(f"{source.path}: its lineage names no prompt source; pass "
                        f"--prompts")
  return lineage["prompts"]["path"]


def run(argv: Sequence[str] | None = None) -> scaffold.StageResult:
  args, beam_args = build_parser().parse_known_args(argv)
  started = time.perf_counter()
  source = dataset_io.open_input(args.rollouts,
                                 [s for s in args.splits.split(",") if s] or None)
  setup = build_config(args, source.schema)
  prompt_path = _prompt_source(args, source)
  options = scaffold.pipeline_options(beam_args, args.workers)  # checks the runner first
  out = scaffold.prepare_output(args.output, args.overwrite)
  total = sum(source.num_examples[s] for s in source.splits)
  scaffold.progress(STAGE, f"{total} rollouts from {source.path}; scorers "
                           f"{list(setup.spec.names)} (primary {setup.primary}); prompts "
                           f"from {prompt_path}")

  pipeline = beam.Pipeline(options=options)
  prompts, dead_prompts, prompt_input, _, _ = generate.read_prompts(
      pipeline, prompt_path, None, None)
  rollouts = pipeline | "ReadRollouts" >> dataset_io.ReadRecords(source)
  scored, dead = {"prompts": prompts, "rollouts": rollouts} | "Score" >> Score(setup)
  infos, dead_write = scored | "Write" >> dataset_io.WriteEpisodes(
      out, "rollouts_scored", setup.schema, source.splits, args.num_shards, STAGE)
  # Bad prompt records are the prompt source's problem, reported but not counted here.
  dead_written = dead_letters.write_dead_letters([dead, dead_write] + list(dead_prompts),
                                                 out)
  lineage = scaffold.lineage(
      STAGE, setup.stage_config, rollouts=source.lineage(),
      upstream=source.upstream_lineage(),
      prompts=(prompt_input.lineage() if prompt_input else {"path": prompt_path}))
  return scaffold.finalize(
      result=scaffold.run_pipeline(pipeline, [infos, dead_written]), out_dir=out,
      name="rollouts_scored", config=setup.schema,
      splits=source.splits, stage=STAGE,
      description=f"{source.name} scored by {', '.join(setup.spec.names)}",
      lineage=lineage, inputs_total=total, started=started,
      max_dropped_fraction=args.max_dropped_fraction, upstream=[source],
      stage_args=vars(args))


def main(argv: Sequence[str] | None = None) -> int:
  return scaffold.main_wrapper(STAGE, run, argv)


if __name__ == "__main__":
  sys.exit(main())
