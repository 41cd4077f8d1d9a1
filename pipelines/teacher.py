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
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines import core
from pipelines import models
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
  contexts = turn_contexts(episode)
  limit = teacher.config.max_seq_len
  for i, sequence, context_length in contexts:
    if len(sequence) > limit:
      raise core.RecordError("too_long_for_teacher",
                             f"turn {i} needs {len(sequence)} tokens of context; the "
                             f"teacher's is {limit}")
    if context_length < 1:
      raise core.RecordError("empty_context", f"turn {i} has no tokens before its action")
  results = []
  if contexts:
    results = teacher_scoring.annotate(
        teacher.config, teacher.params, [c[1] for c in contexts], [c[2] for c in contexts],
        top_k=config.top_k, sampled=config.sampled_k, temperature=config.temperature,
        seeds=[turn_seed(episode_id, i, teacher_info["digest"], digest)
               for i, _, _ in contexts])
  by_step = {i: arrays for (i, _, _), arrays in zip(contexts, results)}
  yield {**episode, S.STEPS: [_with_teacher(step, by_step.get(i), config)
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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m pipelines.teacher", description=__doc__,
                                   formatter_class=HelpFormatter)
  parser.add_argument("--rollouts", required=True, help="rollout dataset directory")
  parser.add_argument("--splits", default="", help="comma-separated splits (default: all)")
  parser.add_argument("--teacher", required=True, help="teacher checkpoint directory")
  parser.add_argument("--teacher_name", default="", help="name recorded in the "
                      "teacher's lineage (default: the checkpoint's config name)")
  parser.add_argument("--tokenizer", default="byte",
                      help="'byte' or a SentencePiece .model file (must match the rollouts)")
  parser.add_argument("--top_k", type=int, default=8, help="K of the stored top-k (0: none)")
  parser.add_argument("--sampled_k", type=int, default=0,
                      help="S teacher draws per token, Gemma-3-style (0: none)")
  parser.add_argument("--temperature", type=float, default=1.0,
                      help="temperature of the teacher's distribution")
  core.add_common_flags(parser)
  return parser


def run(argv: Sequence[str] | None = None) -> core.StageResult:
  args, beam_args = build_parser().parse_known_args(argv)
  started = time.perf_counter()
  if args.top_k < 0 or args.sampled_k < 0 or not (args.top_k or args.sampled_k):
    raise core.PipelineError("--top_k and --sampled_k must be >= 0 and not both 0")
  if not args.temperature > 0:
    raise core.PipelineError(f"--temperature must be > 0, found {args.temperature}")
  source = core.open_input(args.rollouts, [s for s in args.splits.split(",") if s] or None)
  schema_in = source.schema
  teacher = models.ModelRef(args.teacher, args.tokenizer, args.teacher_name)
  info = teacher.describe()
  if schema_in.kind != S.ROLLOUT:
    raise core.PipelineError(f"{args.rollouts} holds {schema_in.kind} episodes, not rollouts")
  if info["tokenizer"] != schema_in.tokenizer or info["vocab_size"] != schema_in.vocab_size:
    raise core.PipelineError(
        f"the teacher ({info['tokenizer']}, vocabulary {info['vocab_size']}) does not share "
        f"the rollouts' tokenizer ({schema_in.tokenizer}, vocabulary "
        f"{schema_in.vocab_size}); cross-tokenizer distillation is not supported")
  if args.top_k > info["vocab_size"]:
    raise core.PipelineError(f"--top_k={args.top_k} exceeds the vocabulary "
                             f"({info['vocab_size']})")
  config = TeacherConfig(teacher=teacher, top_k=args.top_k, sampled_k=args.sampled_k,
                         temperature=args.temperature)
  schema = dataclasses.replace(schema_in, teacher_top_k=args.top_k,
                               teacher_sampled_k=args.sampled_k)
  stage_config = {"teacher_digest": info["digest"], **config.settings()}
  digest = core.config_digest(stage_config)
  out = core.prepare_output(args.output, args.overwrite)
  total = sum(source.num_examples[s] for s in source.splits)
  core.progress(STAGE, f"{total} rollouts from {source.path}; teacher {info['name']} "
                       f"{info['digest']}, top-k {args.top_k}, sampled-k {args.sampled_k}")

  pipeline = beam.Pipeline(options=core.pipeline_options(beam_args, args.workers))
  episodes = pipeline | "ReadRollouts" >> core.ReadRecords(source)
  annotated, dead = core.safe_map(
      episodes, "Annotate", STAGE,
      lambda state, episode: annotate_episode(state, episode, config=config,
                                              teacher_info=info, digest=digest),
      key_fn=lambda episode: episode[S.EPISODE_ID], setup_fn=teacher.load)
  _, dead_write = annotated | "Write" >> core.WriteEpisodes(
      out, "rollouts_teacher", schema, source.splits, args.num_shards, STAGE)
  core.write_dead_letters([dead, dead_write], out)
  lineage = {"stage": STAGE, "rollouts": source.lineage(),
             "upstream": source.upstream_lineage(), "teacher": info,
             "config": stage_config, "config_digest": digest,
             "code_version": core.code_version()}
  return core.finalize(
      result=pipeline.run(), out_dir=out, name="rollouts_teacher", config=schema,
      splits=source.splits, stage=STAGE,
      description=f"{source.name} annotated by teacher {info['name']}", lineage=lineage,
      inputs_total=total, started=started, max_dropped_fraction=args.max_dropped_fraction,
      upstream=[source], stage_args=vars(args))


def main(argv: Sequence[str] | None = None) -> int:
  return core.main_wrapper(STAGE, run, argv)


if __name__ == "__main__":
  sys.exit(main())
