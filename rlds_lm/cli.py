"""The ``rlds-lm`` command line: ``quickstart`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ chatter
os.environ.setdefault("GLOG_minloglevel", "2")  # Riegeli / envlogger C++ chatter


def _quiet_libraries() -> None:
  """Progress lines here are ours; silence TFDS progress bars and absl INFO/WARNING."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  absl_logging.set_verbosity(absl_logging.ERROR)
  os.environ.setdefault("TQDM_DISABLE", "1")  # the array_record conversion's bars
  tfds.disable_progress_bar()


def _progress(message: str) -> None:
  print(f"[rlds-lm] {message}", flush=True)


def _teacher_arrays(teacher, prev_tokens, tokens, k: int):
  """Top-k rows and the sampled token's log-prob from a bigram teacher."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top

  rows = teacher.log_probs[prev_tokens]  # [T, V], normalised over the full vocabulary
  top = np.argsort(-rows, axis=-1, kind="stable")[:, :k]
  return {
      S.TEACHER_TOPK_IDS: top.astype(np.int32),
      S.TEACHER_TOPK_LOGPROBS: np.take_along_axis(rows, top, -1).astype(np.float32),
      S.TEACHER_TOKEN_LOGPROB: rows[np.arange(len(tokens)), tokens].astype(np.float32),
  }


def quickstart(workdir: str, *, prompts: int = 100, samples: int = 3, top_k: int = 8,
               seed: int = 0, overwrite: bool = False) -> dict:
  """Record rollouts from a tiny policy, publish them to TFDS, read them back."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from rlds_lm import inspect_data  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import recorder  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  start = time.perf_counter()
  log_dir = os.path.join(workdir, "logs", "rollouts")
  data_dir = os.path.join(workdir, "datasets")
  for path in (log_dir, data_dir):
    if os.path.exists(path):
      if not overwrite:
        raise SystemExit(f"{path} exists from an earlier run; pass --overwrite to replace it")
      shutil.rmtree(path)

  _progress("1/4 fitting a byte-bigram policy and a teacher on arithmetic text")
  train_problems = toy.arithmetic_problems(2000, seed=seed + 1)
  policy = toy.NgramPolicy.fit(toy.training_corpus(train_problems, noise=0.5, seed=seed),
                               name="bigram-policy")
  teacher = toy.NgramPolicy.fit(toy.training_corpus(train_problems, noise=0.0, seed=seed),
                                name="bigram-teacher")
  tok = policy.tokenizer
  config = S.SchemaConfig(vocab_size=tok.vocab_size, tokenizer=tok.name, teacher_top_k=top_k,
                          reward_names=(toy.REWARD_CORRECT,))

  problems = toy.arithmetic_problems(prompts, seed=seed)
  total = prompts * samples
  _progress(f"2/4 recording {total} rollouts ({prompts} prompts x {samples} samples) "
            f"to {log_dir}")
  sampler = {"temperature": 1.0, "top_k": 0, "top_p": 0.95}
  with recorder.Recorder(log_dir, config) as rec:
    for n, problem in enumerate(problems):
      prompt = tok.encode(problem.question, add_bos=True)
      for i in range(samples):
        sample_seed = toy.sample_seed(problem.prompt_id, i, policy.digest)
        tokens, logprobs = policy.sample(prompt, seed=sample_seed, max_new_tokens=6,
                                         **sampler)
        text = tok.decode(tokens)
        correct = toy.check_answer(problem, text)
        prev = np.concatenate([prompt[-1:], tokens[:-1]])
        turn = S.Turn(
            observation=S.observation(config, prompt, problem.question, "prompt"),
            action_tokens=tokens, action_text=text, action_logprobs=logprobs,
            reward=correct, rewards={toy.REWARD_CORRECT: correct},
            teacher=_teacher_arrays(teacher, prev, tokens, top_k))
        rec.record(S.rollout_episode(
            config, [turn], prompt_id=problem.prompt_id, sample_index=i,
            task=toy.ARITHMETIC, policy_name=policy.name, policy_digest=policy.digest,
            seed=sample_seed, lineage={"teacher": teacher.name,
                                       "teacher_digest": teacher.digest},
            **sampler))
      if (n + 1) % max(1, prompts // 5) == 0:
        _progress(f"    {rec.num_recorded}/{total} episodes recorded")

  _progress(f"3/4 publishing the log as a TFDS dataset under {data_dir}")
  dataset_dir = recorder.publish_log(
      log_dir, data_dir=data_dir, name="arithmetic_rollouts",
      description="Quickstart: byte-bigram rollouts on synthetic arithmetic.",
      lineage={"command": "rlds-lm quickstart", "seed": seed})

  _progress("4/4 reading it back (Grain, no TensorFlow) and summarising")
  batches = R.grain_batches(dataset_dir, batch_size=min(32, total), max_length=16, seed=seed,
                            with_teacher=True)
  first = batches[0]
  summary = inspect_data.summarize(dataset_dir, show=2)
  print(inspect_data.format_summary(summary))
  print(f"first Grain batch: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in first.items()))
  elapsed = time.perf_counter() - start
  _progress(f"done in {elapsed:.1f}s")
  _progress(f"Riegeli log:     {log_dir}")
  _progress(f"TFDS dataset:    {dataset_dir}")
  _progress(f"open it with:    tfds.builder_from_directory({dataset_dir!r})")
  return {"dataset_dir": dataset_dir, "log_dir": log_dir, "episodes": summary["episodes"],
          "seconds": elapsed}


def _cmd_quickstart(args: argparse.Namespace) -> int:
  quickstart(args.workdir, prompts=args.prompts, samples=args.samples, seed=args.seed,
             overwrite=args.overwrite)
  return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
  from rlds_lm import inspect_data  # pylint: disable=g-import-not-at-top

  summary = inspect_data.summarize(args.path, split=args.split, show=args.show)
  if args.json:
    print(json.dumps(summary, indent=2, sort_keys=True))
  else:
    print(inspect_data.format_summary(summary))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rlds-lm", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  q = sub.add_parser("quickstart", help="record, publish and read back toy rollouts")
  q.add_argument("--workdir", default="rlds_lm_quickstart", help="output directory")
  q.add_argument("--prompts", type=int, default=100)
  q.add_argument("--samples", type=int, default=3, help="samples per prompt")
  q.add_argument("--seed", type=int, default=0)
  q.add_argument("--overwrite", action="store_true", help="replace an earlier run's output")
  q.set_defaults(func=_cmd_quickstart)
  i = sub.add_parser("inspect", help="summarise a published dataset or a Riegeli log")
  i.add_argument("path", help="dataset directory (…/name/version) or Riegeli log directory")
  i.add_argument("--split", default="train")
  i.add_argument("--show", type=int, default=3, help="episodes printed as text")
  i.add_argument("--json", action="store_true", help="print the summary as JSON")
  i.set_defaults(func=_cmd_inspect)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"rlds-lm {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
