"""The ``rlds-lm`` command line: ``quickstart``, ``inspect``, ``export`` and ``import``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ chatter
os.environ.setdefault("GLOG_minloglevel", "2")  # Riegeli / envlogger C++ chatter
os.environ.setdefault("TQDM_DISABLE", "1")  # TFDS's array_record conversion bars


def _quiet_libraries() -> None:
  """Progress lines here are ours; silence TFDS progress bars and absl INFO/WARNING."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger().setLevel(logging.ERROR)  # e.g. Beam's "apitools not found"
  tfds.disable_progress_bar()


def _cmd_quickstart(args: argparse.Namespace) -> int:
  from rlds_lm import quickstart  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  config = quickstart.SIZES[args.size]
  overrides = {k: getattr(args, k) for k in ("iterations", "seed")
               if getattr(args, k) is not None}
  config = dataclasses.replace(config, **overrides)
  quickstart.run(args.workdir, config, overwrite=args.overwrite)
  return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
  from rlds_lm import inspect_data  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  where = inspect_data.Filter(min_reward=args.min_reward, max_reward=args.max_reward,
                              prompt_ids=tuple(args.prompt_id or ()))
  result = inspect_data.scan(args.path, split=args.split, show=args.show, where=where,
                             keep=args.limit if args.html else 0)
  if args.json:
    print(json.dumps(result.summary, indent=2, sort_keys=True))
  else:
    print(inspect_data.format_summary(result.summary))
  if args.html:
    from rlds_lm import viewer  # pylint: disable=g-import-not-at-top
    page = viewer.render(result.summary, result.episodes, result.config, result.tokenizer,
                         color=args.color)
    os.makedirs(os.path.dirname(os.path.abspath(args.html)), exist_ok=True)
    with open(args.html, "w", encoding="utf-8") as f:
      f.write(page)
    print(f"viewer: {args.html} ({len(result.episodes)} of {result.summary['episodes']} "
          f"episodes)", file=sys.stderr if args.json else sys.stdout)
  return 0


def _cmd_export(args: argparse.Namespace) -> int:
  from rlds_lm import interop  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  if args.jsonl:
    count = interop.export_jsonl(args.path, args.jsonl, args.format, args.split,
                                 tokenizer_model=args.tokenizer_model)
  else:
    count = interop.export_hf(args.path, args.hf, args.format, args.split,
                              tokenizer_model=args.tokenizer_model)
  print(f"{count} {args.format} rows written to {args.jsonl or args.hf}")
  return 0


def _cmd_import(args: argparse.Namespace) -> int:
  from rlds_lm import interop  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  path = interop.import_rows(args.source, args.format, data_dir=args.data_dir,
                             name=args.name, version=args.version)
  print(f"published {path}")
  return 0


def _cmd_verify(args: argparse.Namespace) -> int:
  from rlds_lm import integrity  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  report = integrity.verify(args.path, splits=args.split or None)
  print(integrity.format_report(report), file=sys.stdout if report.ok else sys.stderr)
  return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rlds-lm", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  q = sub.add_parser(
      "quickstart", help="the whole loop at toy scale: teacher, student, on-policy "
      "distillation through recorded and published datasets, report")
  q.add_argument("--workdir", default="rlds_lm_quickstart", help="output directory")
  q.add_argument("--size", choices=("default", "small"), default="default",
                 help="default: about 3 minutes on 2 cores; small: about a minute")
  q.add_argument("--iterations", type=int, default=None, help="on-policy iterations")
  q.add_argument("--seed", type=int, default=None)
  q.add_argument("--overwrite", action="store_true", help="replace an earlier run's output")
  q.set_defaults(func=_cmd_quickstart)
  i = sub.add_parser("inspect", help="summarise a published dataset or a Riegeli log")
  i.add_argument("path", help="dataset directory (…/name/version) or Riegeli log directory")
  i.add_argument("--split", default="train")
  i.add_argument("--show", type=int, default=3, help="episodes printed as text")
  i.add_argument("--json", action="store_true", help="print the summary as JSON")
  i.add_argument("--min_reward", type=float, default=None,
                 help="only episodes whose reward (summed over turns) is at least this")
  i.add_argument("--max_reward", type=float, default=None)
  i.add_argument("--prompt_id", action="append",
                 help="only this prompt's episodes (a Best-of-N group); repeatable")
  i.add_argument("--html", help="write a self-contained episode viewer page here")
  i.add_argument("--color", choices=("auto", "teacher", "reward", "none"), default="auto",
                 help="token colouring in the viewer (auto: teacher when stored)")
  i.add_argument("--limit", type=int, default=200, help="episodes on the viewer page")
  i.set_defaults(func=_cmd_inspect)
  formats = ("prompt_completion", "messages", "preference", "unpaired_preference", "distill")
  e = sub.add_parser("export", help="a published dataset as TRL-style JSONL or a Hugging "
                     "Face datasets directory (Arrow)")
  e.add_argument("path", help="dataset directory (…/name/version) or Riegeli log directory")
  e.add_argument("--format", choices=formats, required=True)
  e.add_argument("--split", default="train")
  e.add_argument("--tokenizer_model", help="SentencePiece model file of a spm: dataset")
  out = e.add_mutually_exclusive_group(required=True)
  out.add_argument("--jsonl", help="output JSONL file")
  out.add_argument("--hf", help="output directory for datasets.Dataset.save_to_disk")
  e.set_defaults(func=_cmd_export)
  m = sub.add_parser("import", help="JSONL or a Hugging Face datasets directory as a "
                     "published dataset of RLDS episodes")
  m.add_argument("source", help="JSONL file or datasets directory (save_to_disk)")
  m.add_argument("--format", choices=formats, required=True)
  m.add_argument("--data_dir", required=True, help="where to publish")
  m.add_argument("--name", required=True, help="dataset name")
  m.add_argument("--version", default="1.0.0")
  m.set_defaults(func=_cmd_import)
  c = sub.add_parser("verify", help="check every record of a published dataset (CRCs, "
                     "counts, decoding, schema); one line per problem, exit status 1 if any")
  c.add_argument("path", help="dataset directory (…/name/version)")
  c.add_argument("--split", action="append", help="only this split (repeatable; "
                 "default: all)")
  c.set_defaults(func=_cmd_verify)
  from rlds_lm import serve  # pylint: disable=g-import-not-at-top  (argparse only)
  v = sub.add_parser("serve", help="an OpenAI-compatible server over a checkpoint "
                     "(completions, chat, logprobs, prompt_logprobs)")
  serve.add_arguments(v)
  v.set_defaults(func=serve.serve)
  from rlds_lm import annotate  # pylint: disable=g-import-not-at-top  (argparse only)
  a = sub.add_parser("annotate", help="a local web app in which people judge the groups of "
                     "a rollout dataset and write demonstrations (recorded as episodes)")
  annotate.add_arguments(a)
  a.set_defaults(func=annotate.run)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"rlds-lm {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
