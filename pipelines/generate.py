"""Stage ``generate``: prompts + a policy checkpoint -> N sampled rollouts per prompt.

Example::

    python -m pipelines.generate --prompts=DATA/arithmetic/tiny/1.0.0 \\
        --policy=ckpt/policy --num_samples=4 --max_new_tokens=16 --output=work/rollouts

Each prompt becomes ``--num_samples`` single-turn rollout episodes. The seed of sample
``i`` of prompt ``p`` is :func:`sample_seed` of (``p``, ``i``, the policy digest, the
sampling config): never of worker order or time. A prompt's samples are drawn in one
batch of fixed shape, so the episodes (tokens and behaviour log-probs) are the same with
any number of workers and on every re-run.

Dead letters: unparseable JSON lines, records without the task's text, prompts too long
for the policy's context.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from pipelines import dataset_io
from pipelines import dead_letters
from pipelines import models
from pipelines import scaffold
from pipelines.errors import PipelineError
from pipelines.errors import RecordError
from rlds_lm.backends import BackendError
from rlds_lm import schema as S
from rlds_lm import tasks

STAGE = "generate"


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Everything that determines the generated episodes besides the prompts."""

  policy: models.ModelRef
  num_samples: int = 4
  max_new_tokens: int = 32
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0  # salt: a different seed gives a different, equally reproducible draw

  def sampling(self) -> dict[str, Any]:
    return {"num_samples": self.num_samples, "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
            "seed": self.seed}


def sample_seed(prompt_id: str, sample_index: int, policy_digest: str,
                sampling_digest: str) -> int:
  """Seed of one sample: a function of its prompt, index, policy and config only."""
  return S.content_seed(prompt_id, sample_index, policy_digest, sampling_digest)


def sample_request(tok, max_seq_len: int, prompt: tasks.Prompt, *, config: GenerateConfig,
                   policy_info: dict[str, Any]):
  """What the policy is asked for one prompt: ``(tokens, seeds, sampler)``."""
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  tokens = tok.encode(prompt.text, add_bos=True)
  budget = max_seq_len - config.max_new_tokens
  if len(tokens) > budget:
    raise RecordError(
        "prompt_too_long", f"prompt has {len(tokens)} tokens; the policy's context "
                           f"({max_seq_len}) leaves {budget} after "
                           f"max_new_tokens={config.max_new_tokens}")
  sampler = sampling.SamplerConfig(temperature=config.temperature, top_k=config.top_k,
                                   top_p=config.top_p)
  digest = scaffold.config_digest(config.sampling())
  seeds = [sample_seed(prompt.prompt_id, i, policy_info["digest"], digest)
           for i in range(config.num_samples)]
  return tokens, seeds, sampler


def episodes_for_prompt(tok, prompt: tasks.Prompt, tokens, seeds, sampler, completions, *,
                        schema: S.SchemaConfig, policy_info: dict[str, Any],
                        lineage: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """The rollout episodes of one prompt's completions."""
  for i, (seed, completion) in enumerate(zip(seeds, completions)):
    turn = S.Turn(observation=S.observation(schema, tokens, prompt.text, "prompt"),
                  action_tokens=completion.tokens,
                  action_text=tok.decode(completion.tokens),
                  action_logprobs=completion.logprobs)
    episode_lineage = {**lineage, "stop_reason": completion.stop_reason}
    if getattr(completion, "provenance", None):  # a served model: what answered, when
      episode_lineage["request"] = dict(completion.provenance)  # its "created": the time
    yield S.rollout_episode(
        schema, [turn], prompt_id=prompt.prompt_id, task=prompt.task, sample_index=i,
        policy_name=policy_info["name"], policy_digest=policy_info["digest"],
        seed=seed, lineage=episode_lineage, **sampler.to_dict())


def rollouts_for_prompt(state, prompt: tasks.Prompt, *, config: GenerateConfig,
                        schema: S.SchemaConfig, policy_info: dict[str, Any],
                        lineage: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """The ``num_samples`` rollout episodes of one prompt (runs on a worker)."""
  policy, tok = state
  tokens, seeds, sampler = sample_request(tok, policy.config.max_seq_len, prompt,
                                          config=config, policy_info=policy_info)
  try:
    completions = policy.sample([tokens] * config.num_samples, seeds, sampler,
                                config.max_new_tokens)
  except BackendError as e:  # a served policy that still fails after its retries
    raise RecordError("backend_error", str(e)) from e
  yield from episodes_for_prompt(tok, prompt, tokens, seeds, sampler, completions,
                                 schema=schema, policy_info=policy_info, lineage=lineage)


@dataclasses.dataclass(frozen=True)
class GenerateSetup:
  """What the stage needs besides its input and output, built by :func:`build_config`.

  Attributes:
    config: the sampling configuration.
    schema: the schema of the rollouts (the policy's vocabulary and tokenizer).
    policy_info: ``ModelRef.describe()`` of the policy (name, digest, vocabulary).
    stage_config: the settings that determine the output (its digest is in the lineage).
  """

  config: GenerateConfig
  schema: S.SchemaConfig
  policy_info: dict[str, Any]
  stage_config: dict[str, Any]

  @property
  def digest(self) -> str:
    return scaffold.config_digest(self.stage_config)

  @property
  def episode_lineage(self) -> dict[str, Any]:
    """The lineage stored in every episode."""
    return {"stage": STAGE, "config_digest": self.digest}


def build_config(args: argparse.Namespace) -> GenerateSetup:
  """The stage's setup from its parsed flags (:func:`build_parser`); checks them.

  Raises:
    PipelineError: for flags out of range or a policy checkpoint that cannot be read.
  """
  if args.num_samples < 1:
    raise PipelineError(f"--num_samples must be >= 1, found {args.num_samples}")
  if args.max_new_tokens < 1:
    raise PipelineError(f"--max_new_tokens must be >= 1, found {args.max_new_tokens}")
  from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
  sampling.SamplerConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  policy = models.model_ref(args, args.policy, args.tokenizer, args.policy_name)
  policy_info = policy.describe()
  config = GenerateConfig(policy=policy, num_samples=args.num_samples,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  schema = S.SchemaConfig(vocab_size=policy_info["vocab_size"],
                          tokenizer=policy_info["tokenizer"])
  stage_config = {"policy_digest": policy_info["digest"], **config.sampling(),
                  "task": args.task}
  return GenerateSetup(config=config, schema=schema, policy_info=policy_info,
                       stage_config=stage_config)


class Generate(beam.PTransform):
  """``(split, Prompt)`` -> ``(rollouts, dead_letters)``: ``(split, episode)`` pairs,
  ``num_samples`` per prompt; prompts too long for the policy, and requests a served
  policy could not answer, become dead letters.

  A checkpoint samples in a DoFn that loads it once per worker. A served policy is
  asked through ``RunInference`` (:mod:`pipelines.backends`): Beam batches the prompts,
  and each batch's samples go to the endpoint as concurrent requests.
  """

  def __init__(self, setup: GenerateSetup):
    super().__init__()
    self._setup = setup

  def expand(self, prompts):
    setup = self._setup
    if not setup.config.policy.is_endpoint:
      return prompts | "Sample" >> dead_letters.SafeMapped(
          STAGE, functools.partial(rollouts_for_prompt, config=setup.config,
                                   schema=setup.schema, policy_info=setup.policy_info,
                                   lineage=setup.episode_lineage),
          key_fn=lambda prompt: prompt.prompt_id, setup_fn=setup.config.policy.load)
    from pipelines import backends  # pylint: disable=g-import-not-at-top
    policy_info, config = setup.policy_info, setup.config
    max_seq_len = int(policy_info.get("max_seq_len") or 2**31 - 1)

    def to_request(tok, prompt):
      tokens, seeds, sampler = sample_request(tok, max_seq_len, prompt, config=config,
                                              policy_info=policy_info)
      yield (prompt, tokens, backends.SampleRequest(
          prompt.prompt_id, tokens, tuple(seeds), sampler, config.max_new_tokens))

    def to_episodes(tok, keyed):
      (prompt, tokens), result = keyed
      if isinstance(result.inference, backends.Failed):
        raise RecordError(result.inference.reason, result.inference.detail)
      yield from episodes_for_prompt(tok, prompt, tokens, result.example.seeds,
                                     result.example.sampler, result.inference,
                                     schema=setup.schema, policy_info=policy_info,
                                     lineage=setup.episode_lineage)

    requests, dead_request = dead_letters.safe_map(
        prompts, "ToRequests", STAGE, to_request, key_fn=lambda p: p.prompt_id,
        setup_fn=config.policy.load_tokenizer)
    answered = requests | "Ask" >> backends.Ask(
        config.policy, max_batch_size=max(1, config.policy.max_concurrency))
    episodes, dead_answer = dead_letters.safe_map(
        answered, "ToEpisodes", STAGE, to_episodes,
        key_fn=lambda keyed: keyed[0][0].prompt_id, setup_fn=config.policy.load_tokenizer)
    dead = (dead_request, dead_answer) | "DeadLetters" >> beam.Flatten()
    return episodes, dead


def read_prompts(pipeline, source: str, splits: Sequence[str] | None, task: str | None):
  """Prompts from a TFDS dataset directory or a ``.jsonl`` file.

  Returns ``(prompts, dead_letters, input_or_None, splits, total)``: a PCollection of
  ``(split, Prompt)``; JSON-lines files give one split (``train``, or the first of
  ``splits``).
  """
  if source.endswith(".jsonl"):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.io.gfile.exists(source):
      raise PipelineError(f"prompt file {source} does not exist")
    split = splits[0] if splits else dataset_io.TRAIN
    lines = dataset_io.read_jsonl(pipeline, source, split)
    records, dead_json = dead_letters.safe_map(lines, "ParseJson", STAGE,
                                       lambda line: [tasks.parse_jsonl_line(line)],
                                       key_fn=lambda line: f"line {line[0]}")
    with tf.io.gfile.GFile(source) as f:
      total = sum(1 for line in f if line.strip())
    dataset = None
    chosen = (split,)
  else:
    dataset = dataset_io.open_input(source, splits)
    records = pipeline | "ReadPrompts" >> dataset_io.ReadRecords(dataset, episodes=False)
    dead_json = None
    chosen = dataset.splits
    total = sum(dataset.num_examples[s] for s in chosen)
  prompts, dead_prompt = dead_letters.safe_map(
      records, "ToPrompt", STAGE, lambda r: [tasks.to_prompt(r, task)],
      key_fn=tasks.record_key)
  dead = [d for d in (dead_json, dead_prompt) if d is not None]
  return prompts, dead, dataset, chosen, total


def build_parser() -> argparse.ArgumentParser:
  from rlds_lm.cli_help import HelpFormatter  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m pipelines.generate",
                                   description=__doc__, formatter_class=HelpFormatter)
  parser.add_argument("--prompts", required=True,
                      help="TFDS dataset directory (…/name/[config/]version) or .jsonl file")
  parser.add_argument("--splits", default="", help="comma-separated splits (default: all)")
  parser.add_argument("--task", choices=tasks.TASKS, default=None,
                      help="prompt task (default: detected from the record fields)")
  parser.add_argument("--policy", required=True,
                      help="policy checkpoint directory, or an OpenAI-compatible API root "
                           "(http://host:port/v1) with --served_model")
  parser.add_argument("--policy_name", default="",
                      help="name recorded in episodes (default: the checkpoint's config "
                           "name, or the served model's name)")
  parser.add_argument("--tokenizer", default="byte",
                      help="'byte' or a SentencePiece .model file")
  parser.add_argument("--num_samples", type=int, default=4, help="samples per prompt (N)")
  parser.add_argument("--max_new_tokens", type=int, default=32,
                      help="most tokens sampled per completion")
  parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
  parser.add_argument("--top_k", type=int, default=0,
                      help="sample from the k most likely tokens (0: all)")
  parser.add_argument("--top_p", type=float, default=1.0,
                      help="nucleus sampling mass (1: all)")
  parser.add_argument("--seed", type=int, default=0, help="sampling salt")
  models.add_endpoint_flags(parser)
  scaffold.add_common_flags(parser)
  return parser


def run(argv: Sequence[str] | None = None) -> scaffold.StageResult:
  args, beam_args = build_parser().parse_known_args(argv)
  started = time.perf_counter()
  setup = build_config(args)
  policy_info = setup.policy_info
  options = scaffold.pipeline_options(beam_args, args.workers)  # checks the runner first
  out = scaffold.prepare_output(args.output, args.overwrite)
  splits = [s for s in args.splits.split(",") if s] or None

  pipeline = beam.Pipeline(options=options)
  prompts, dead, source, chosen, total = read_prompts(pipeline, args.prompts, splits,
                                                      args.task)
  scaffold.progress(STAGE, f"{total} prompts x {args.num_samples} samples from "
                           f"{args.prompts} ({', '.join(chosen)}), policy "
                           f"{policy_info['name']} {policy_info['digest']}")
  episodes, dead_generate = prompts | "Generate" >> Generate(setup)
  infos, dead_write = episodes | "Write" >> dataset_io.WriteEpisodes(
      out, "rollouts", setup.schema, chosen, args.num_shards, STAGE)
  dead_written = dead_letters.write_dead_letters(dead + [dead_generate, dead_write], out)
  lineage = scaffold.lineage(
      STAGE, setup.stage_config, policy=policy_info,
      prompts=(source.lineage() if source else {"path": args.prompts, "format": "jsonl"}))
  return scaffold.finalize(
      result=scaffold.run_pipeline(pipeline, [infos, dead_written]), out_dir=out,
      name="rollouts", config=setup.schema,
      splits=chosen, stage=STAGE,
      description=f"Rollouts of {policy_info['name']} on {args.prompts}", lineage=lineage,
      inputs_total=total, started=started, max_dropped_fraction=args.max_dropped_fraction,
      stage_args=vars(args))


def main(argv: Sequence[str] | None = None) -> int:
  return scaffold.main_wrapper(STAGE, run, argv)


if __name__ == "__main__":
  sys.exit(main())
