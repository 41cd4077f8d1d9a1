"""Stage ``teacher``: rollouts + a teacher checkpoint -> teacher top-k / sampled-k per token.

Example::

    python -m pipelines.teacher --rollouts=work/rollouts --teacher=ckpt/teacher \\
        --top_k=8 --sampled_k=16 --output=work/rollouts_teacher

Every action token of every turn gets the teacher's distribution given everything before
it in the episode (all earlier observations and actions, then this turn's observation):
the ``top_k`` most likely ids with log-probs over the full vocabulary, the log-prob of
the sampled token, and (``--sampled_k``) Gemma-3-style sampled-k counts. The draws of a
turn use a seed derived from (episode id, turn, teacher digest, config), and each episode
is scored in its own batch, so the output does not depend on workers or order.
Episode ids do not change (they do not depend on teacher data).

Dead letters: episodes longer than the teacher's context, or whose tokens fall outside
its vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from rlds_lm import schema as S
from rlds_lm.cli_help import HelpFormatter

STAGE = "teacher"


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  teacher: models.ModelRef
  top_k: int = 8
  sampled_k: int = 0
  temperature: float = 1.0

  def settings(self) -> dict[str, Any]:
    return {"top_k": self.top_k, "sampled_k": self.sampled_k,
            "temperature": self.temperature}


def turn_seed(episode_id: str, turn: int, teacher_digest: str, config_digest: str) -> int:
  return S.content_seed(episode_id, turn, teacher_digest, config_digest)


def turn_contexts(episode: Mapping[str, Any]) -> list[tuple[int, np.ndarray, int]]:
  """``(step index, context + action tokens, context length)`` of each acting step."""
  out = []
  history: list[np.ndarray] = []
  for i, step in enumerate(episode[S.STEPS]):
    if step[S.IS_LAST]:
      break
    history.append(np.asarray(step[S.OBSERVATION][S.OBS_TOKENS], np.int32))
    action = np.asarray(step[S.ACTION][S.ACT_TOKENS], np.int32)
    context = np.concatenate(history) if history else np.zeros(0, np.int32)
    out.append((i, np.concatenate([context, action]), len(context)))
    history.append(action)
  return out


def annotate_episode(state, episode: dict[str, Any], *, config: TeacherConfig,
                     teacher_info: Mapping[str, Any], digest: str) -> Iterator[dict[str, Any]]:
  """The episode with ``teacher`` arrays on every acting step (runs on a worker)."""
  from rlds_lm.models import teacher_scoring  # pylint: disable=g-import-not-at-top
  teacher, _ = state
  episode_id = episode[S.EPISODE_ID]
  contexts = checked_contexts(episode, teacher.config.max_seq_len)
  results = []
  if contexts:
    results = teacher_scoring.annotate(
        teacher.config, teacher.params, [c[1] for c in contexts], [c[2] for c in contexts],
        top_k=config.top_k, sampled=config.sampled_k, temperature=config.temperature,
        seeds=[turn_seed(episode_id, i, teacher_info["digest"], digest)
               for i, _, _ in contexts])
  yield with_teacher(episode, contexts, results, config)


def checked_contexts(episode: Mapping[str, Any], limit: int
                     ) -> list[tuple[int, np.ndarray, int]]:
  """:func:`turn_contexts`, refusing turns the teacher cannot score."""
  contexts = turn_contexts(episode)
  for i, sequence, context_length in contexts:
    if len(sequence) > limit:
      raise RecordError("too_long_for_teacher",
                        f"turn {i} needs {len(sequence)} tokens of context; the "
                        f"teacher's is {limit}")
    if context_length < 1:
      raise RecordError("empty_context", f"turn {i} has no tokens before its action")
  return contexts


def with_teacher(episode: Mapping[str, Any], contexts, results, config: TeacherConfig
                 ) -> dict[str, Any]:
  """The episode with each acting step's teacher arrays (``results`` by context)."""
  by_step = {i: arrays for (i, _, _), arrays in zip(contexts, results)}
  return {**episode, S.STEPS: [_with_teacher(step, by_step.get(i), config)
                               for i, step in enumerate(episode[S.STEPS])]}


def _with_teacher(step: Mapping[str, Any], teacher: Mapping[str, Any] | None,
                  config: TeacherConfig) -> dict[str, Any]:
  """The step with its teacher arrays (empty ones on the final, action-less step)."""
  if teacher is None:
    length = len(np.asarray(step[S.ACTION][S.ACT_TOKENS]))
    teacher = {S.TEACHER_TOKEN_LOGPROB: np.zeros(length, np.float32)}
    if config.top_k:
      teacher[S.TEACHER_TOPK_IDS] = np.zeros((length, config.top_k), np.int32)
      teacher[S.TEACHER_TOPK_LOGPROBS] = np.zeros((length, config.top_k), np.float32)
    if config.sampled_k:
      teacher[S.TEACHER_SAMPLED_IDS] = np.zeros((length, config.sampled_k), np.int32)
      teacher[S.TEACHER_SAMPLED_COUNTS] = np.zeros((length, config.sampled_k), np.int32)
  return {**step, S.TEACHER: dict(teacher)}


@dataclasses.dataclass(frozen=True)
class TeacherSetup:
  """What the stage needs besides its input and output, built by :func:`build_config`.

  Attributes:
    config: the teacher and what to store of its distribution.
    schema: the output schema (the input's, with the teacher's top-k / sampled-k).
    teacher_info: ``ModelRef.describe()`` of the teacher.
    stage_config: the settings that determine the output (its digest is in the lineage
      and seeds the sampled-k draws).
  """

  config: TeacherConfig
  schema: S.SchemaConfig
  teacher_info: dict[str, Any]
  stage_config: dict[str, Any]

  @property
  def digest(self) -> str:
    return scaffold.config_digest(self.stage_config)


def check_flags(args: argparse.Namespace) -> None:
  """The checks of the flags alone (before any input is opened)."""
  if args.top_k < 0 or args.sampled_k < 0 or not (args.top_k or args.sampled_k):
    raise PipelineError("--top_k and --sampled_k must be >= 0 and not both 0")
  if not args.temperature > 0:
    raise PipelineError(f"--temperature must be > 0, found {args.temperature}")


def build_config(args: argparse.Namespace, schema_in: S.SchemaConfig) -> TeacherSetup:
  """The stage's setup from its parsed flags and the rollouts' schema; checks them.

  Raises:
    PipelineError: for bad flags, a teacher that cannot be read, input that is not
      rollouts, or a teacher whose tokenizer is not the rollouts'.
  """
  check_flags(args)
  teacher = models.model_ref(args, args.teacher, args.tokenizer, args.teacher_name)
  if teacher.is_endpoint and (args.sampled_k or args.temperature != 1.0):
    raise PipelineError(
        "a served teacher gives its top-k log-probs at temperature 1 (prompt_logprobs), "
        "not the full distribution: --sampled_k must be 0 and --temperature 1.0 with an "
        "endpoint (use a checkpoint for sampled-k)")
  info = teacher.describe(prompt_logprobs=max(1, args.top_k))
  if schema_in.kind != S.ROLLOUT:
    raise PipelineError(f"{args.rollouts} holds {schema_in.kind} episodes, not rollouts")
  if info["tokenizer"] != schema_in.tokenizer or info["vocab_size"] != schema_in.vocab_size:
    raise PipelineError(
        f"the teacher ({info['tokenizer']}, vocabulary {info['vocab_size']}) does not share "
        f"the rollouts' tokenizer ({schema_in.tokenizer}, vocabulary "
        f"{schema_in.vocab_size}); cross-tokenizer distillation is not supported")
  if args.top_k > info["vocab_size"]:
    raise PipelineError(f"--top_k={args.top_k} exceeds the vocabulary "
                        f"({info['vocab_size']})")
  config = TeacherConfig(teacher=teacher, top_k=args.top_k, sampled_k=args.sampled_k,
                         temperature=args.temperature)
  schema = dataclasses.replace(schema_in, teacher_top_k=args.top_k,
                               teacher_sampled_k=args.sampled_k)
  stage_config = {"teacher_digest": info["digest"], **config.settings()}
  return TeacherSetup(config=config, schema=schema, teacher_info=info,
                      stage_config=stage_config)


class Annotate(beam.PTransform):
  """``(split, rollout)`` -> ``(annotated, dead_letters)``: each rollout with the
  teacher's arrays on its acting steps; episodes too long for the teacher, with an
  empty context, or that a served teacher could not score, become dead letters.

  A checkpoint scores in a DoFn that loads it once per worker; a served teacher is asked
  through ``RunInference`` (``prompt_logprobs``; :mod:`pipelines.backends`).
  """

  def __init__(self, setup: TeacherSetup):
    super().__init__()
    self._setup = setup

  def expand(self, rollouts):
    setup = self._setup
    config = setup.config
    key_fn = lambda episode: episode[S.EPISODE_ID]
    if not config.teacher.is_endpoint:
      return rollouts | "Score" >> dead_letters.SafeMapped(
          STAGE, functools.partial(annotate_episode, config=config,
                                   teacher_info=setup.teacher_info, digest=setup.digest),
          key_fn=key_fn, setup_fn=config.teacher.load)
    from pipelines import backends  # pylint: disable=g-import-not-at-top
    limit = int(setup.teacher_info.get("max_seq_len") or 2**31 - 1)

    def to_requests(episode):
      contexts = checked_contexts(episode, limit)
      yield episode, contexts, tuple(
          backends.ScoreRequest(episode[S.EPISODE_ID], sequence, length, config.top_k)
          for _, sequence, length in contexts)

    def annotated(keyed):
      (episode, contexts), result = keyed
      failed = [r for r in result.inference if isinstance(r, backends.Failed)]
      if failed:
        raise RecordError(failed[0].reason, failed[0].detail)
      yield with_teacher(episode, contexts, result.inference, config)

    requests, dead_request = dead_letters.safe_map(rollouts, "ToRequests", STAGE,
                                                   to_requests, key_fn=key_fn)
    answered = requests | "Ask" >> backends.Ask(
        config.teacher, max_batch_size=max(1, config.teacher.max_concurrency))
    episodes, dead_answer = dead_letters.safe_map(
        answered, "WithTeacher", STAGE, annotated, key_fn=lambda keyed: key_fn(keyed[0][0]))
    dead = (dead_request, dead_answer) | "DeadLetters" >> beam.Flatten()
    return episodes, dead


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m pipelines.teacher", description=__doc__,
                                   formatter_class=HelpFormatter)
  parser.add_argument("--rollouts", required=True, help="rollout dataset directory")
  parser.add_argument("--splits", default="", help="comma-separated splits (default: all)")
  parser.add_argument("--teacher", required=True,
                      help="teacher checkpoint directory, or an OpenAI-compatible API root "
                           "(http://host:port/v1) serving prompt_logprobs, with "
                           "--served_model")
  parser.add_argument("--teacher_name", default="", help="name recorded in the "
                      "teacher's lineage (default: the checkpoint's config name)")
  parser.add_argument("--tokenizer", default="byte",
                      help="'byte' or a SentencePiece .model file (must match the rollouts)")
  parser.add_argument("--top_k", type=int, default=8, help="K of the stored top-k (0: none)")
  parser.add_argument("--sampled_k", type=int, default=0,
                      help="S teacher draws per token, Gemma-3-style (0: none)")
  parser.add_argument("--temperature", type=float, default=1.0,
                      help="temperature of the teacher's distribution")
  models.add_endpoint_flags(parser)
  scaffold.add_common_flags(parser)
  return parser


def run(argv: Sequence[str] | None = None) -> scaffold.StageResult:
  args, beam_args = build_parser().parse_known_args(argv)
  started = time.perf_counter()
  check_flags(args)
  source = dataset_io.open_input(args.rollouts,
                                 [s for s in args.splits.split(",") if s] or None)
  setup = build_config(args, source.schema)
  info = setup.teacher_info
  options = scaffold.pipeline_options(beam_args, args.workers)  # checks the runner first
  out = scaffold.prepare_output(args.output, args.overwrite)
  total = sum(source.num_examples[s] for s in source.splits)
  scaffold.progress(STAGE, f"{total} rollouts from {source.path}; teacher {info['name']} "
                           f"{info['digest']}, top-k {args.top_k}, sampled-k "
                           f"{args.sampled_k}")

  pipeline = beam.Pipeline(options=options)
  episodes = pipeline | "ReadRollouts" >> dataset_io.ReadRecords(source)
  annotated, dead = episodes | "Annotate" >> Annotate(setup)
  infos, dead_write = annotated | "Write" >> dataset_io.WriteEpisodes(
      out, "rollouts_teacher", setup.schema, source.splits, args.num_shards, STAGE)
  dead_written = dead_letters.write_dead_letters([dead, dead_write], out)
  lineage = scaffold.lineage(STAGE, setup.stage_config, rollouts=source.lineage(),
                             upstream=source.upstream_lineage(), teacher=info)
  return scaffold.finalize(
      result=scaffold.run_pipeline(pipeline, [infos, dead_written]), out_dir=out,
      name="rollouts_teacher", config=setup.schema,
      splits=source.splits, stage=STAGE,
      description=f"{source.name} annotated by teacher {info['name']}", lineage=lineage,
      inputs_total=total, started=started, max_dropped_fraction=args.max_dropped_fraction,
      upstream=[source], stage_args=vars(args))


def main(argv: Sequence[str] | None = None) -> int:
  return scaffold.main_wrapper(STAGE, run, argv)


if __name__ == "__main__":
  sys.exit(main())
