"""The ``rlds-lm`` command line: ``quickstart``, ``inspect``, ``export`` and ``import``.

Quiet by default: the dependency stack's start-up lines and TFDS's progress bars are
hidden (``rlds_lm._compat.quiet``); ``--verbose`` on any command brings them back,
with Python tracebacks of errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

import rlds_lm
from rlds_lm import _compat
from rlds_lm.cli_help import HelpFormatter


class _Parser(argparse.ArgumentParser):
  """Every command and subcommand: defaults in ``--help``, and ``--verbose``."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", HelpFormatter)
    super().__init__(*args, **kwargs)
    self.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                      help="show the libraries' log lines, progress bars and Python "
                           "tracebacks (default: quiet)")


def _verbose(args: argparse.Namespace) -> bool:
  return bool(getattr(args, "verbose", False))


def _quiet_libraries() -> None:
  """Progress lines here are ours: no TFDS progress bars, absl/Python logging at ERROR.

  The known start-up noise is already hidden by ``import rlds_lm``; with ``--verbose``
  (see :func:`main`) this does nothing.
  """
  if os.environ.get(_compat.VERBOSE_ENV, "0") not in ("", "0"):
    return
  os.environ.setdefault("TQDM_DISABLE", "1")  # TFDS's array_record conversion bars
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger().setLevel(logging.ERROR)
  tfds.disable_progress_bar()


def _add_filter_flags(parser: argparse.ArgumentParser) -> None:
  """``inspect``'s and ``export``'s episode filters (``inspect_data.Filter``)."""
  parser.add_argument("--min_reward", type=float, default=None,
                      help="only episodes whose reward (summed over turns) is at least "
                           "this (default: no lower bound)")
  parser.add_argument("--max_reward", type=float, default=None,
                      help="only episodes whose reward (summed over turns) is at most "
                           "this (default: no upper bound)")
  parser.add_argument("--prompt_id", action="append",
                      help="only this prompt's episodes (a Best-of-N group); repeatable "
                           "(default: every prompt)")


def _filter(args: argparse.Namespace):
  from rlds_lm import inspect_data  # pylint: disable=g-import-not-at-top

  return inspect_data.Filter(min_reward=args.min_reward, max_reward=args.max_reward,
                             prompt_ids=tuple(args.prompt_id or ()))


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
  result = inspect_data.scan(args.path, split=args.split, show=args.show,
                             where=_filter(args), keep=args.limit if args.html else 0,
                             sort=args.sort)
  if args.json:
    print(json.dumps(result.summary, indent=2, sort_keys=True))
  else:
    print(inspect_data.format_summary(result.summary))
  if args.html:
    from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
    from rlds_lm import viewer  # pylint: disable=g-import-not-at-top
    page = viewer.render(result.summary, result.episodes, result.config, result.tokenizer,
                         color=args.color, sort=args.sort)
    os.makedirs(os.path.dirname(os.path.abspath(args.html)), exist_ok=True)
    with open(args.html, "w", encoding="utf-8") as f:
      f.write(page)
    groups = len({e[S.PROMPT_ID] for e in result.episodes})
    print(f"viewer: {args.html} ({groups} of {result.summary['prompts']} prompt groups, "
          f"{len(result.episodes)} of {result.summary['episodes']} episodes)",
          file=sys.stderr if args.json else sys.stdout)
  return 0


def _cmd_export(args: argparse.Namespace) -> int:
  from rlds_lm import interop  # pylint: disable=g-import-not-at-top

  out = args.jsonl or args.hf
  if os.path.exists(out) and not args.overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  _quiet_libraries()
  export = interop.export_jsonl if args.jsonl else interop.export_hf
  count = export(args.path, out, args.format, args.split,
                 tokenizer_model=args.tokenizer_model, where=_filter(args))
  print(f"{count} {args.format} rows written to {out}")
  return 0


def _cmd_import(args: argparse.Namespace) -> int:
  from rlds_lm import interop  # pylint: disable=g-import-not-at-top
  from rlds_lm import read  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  path = interop.import_rows(args.source, args.format, data_dir=args.data_dir,
                             name=args.name, version=args.version)
  splits = read.open_builder(path).info.splits
  counts = ", ".join(f"{name} {split.num_examples}" for name, split in sorted(splits.items()))
  total = sum(split.num_examples for split in splits.values())
  print(f"published {total} episodes ({counts}) to {path}")
  return 0


def _cmd_verify(args: argparse.Namespace) -> int:
  from rlds_lm import integrity  # pylint: disable=g-import-not-at-top

  _quiet_libraries()
  report = integrity.verify(args.path, splits=args.split or None)
  print(integrity.format_report(report), file=sys.stdout if report.ok else sys.stderr)
  return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="rlds-lm", description=(
      "LM post-training data as RLDS episodes: run the toy loop, look at a dataset, "
      "leave for\nor arrive from TRL-style JSONL and Hugging Face datasets. Quiet by "
      "default: --verbose\non any command shows the libraries' log lines and progress "
      "bars."))
  parser.add_argument("--version", action="version",
                      version=f"%(prog)s {rlds_lm.__version__}",
                      help="print the rlds_lm version and exit")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  q = sub.add_parser(
      "quickstart", help="the whole loop at toy scale: teacher, student, on-policy "
      "distillation through recorded and published datasets, report")
  q.add_argument("--workdir", default="rlds_lm_quickstart", help="output directory")
  q.add_argument("--size", choices=("default", "small"), default="default",
                 help="default: about 3 minutes on 2 cores; small: about a minute")
  q.add_argument("--iterations", type=int, default=None,
                 help="on-policy iterations (default: the --size's)")
  q.add_argument("--seed", type=int, default=None,
                 help="seed of every model, split and sampler (default: the --size's)")
  q.add_argument("--overwrite", action="store_true", help="replace an earlier run's output")
  q.set_defaults(func=_cmd_quickstart)
  i = sub.add_parser("inspect", help="summarise a published dataset or a Riegeli log",
                     description="Counts, fields, reward statistics (std: the population "
                     "standard deviation, ddof=0),\nlineage and the first episodes as "
                     "text; --html writes an episode viewer page.")
  i.add_argument("path", help="dataset directory (…/name/version) or Riegeli log directory")
  i.add_argument("--split", default="train", help="split of a published dataset")
  i.add_argument("--show", type=int, default=3, help="episodes printed as text")
  i.add_argument("--json", action="store_true", help="print the summary as JSON")
  _add_filter_flags(i)
  i.add_argument("--html", help="write a self-contained episode viewer page here "
                 "(default: no page)")
  i.add_argument("--color", choices=("auto", "teacher", "reward", "none"), default="auto",
                 help="token colouring in the viewer (auto: teacher when stored)")
  i.add_argument("--limit", type=int, default=200,
                 help="episodes on the viewer page, in whole prompt groups (a group "
                      "larger than the limit is shown alone)")
  i.add_argument("--sort", choices=("prompt", "reward", "gap", "storage"),
                 default="prompt",
                 help="viewer group order: prompt id, best reward first, largest "
                      "teacher-student gap first (mean log p_student - log p_teacher "
                      "per token), or as stored")
  i.set_defaults(func=_cmd_inspect)
  formats = ("prompt_completion", "messages", "preference", "unpaired_preference", "distill")
  e = sub.add_parser("export", help="a published dataset as TRL-style JSONL or a Hugging "
                     "Face datasets directory (Arrow)")
  e.add_argument("path", help="dataset directory (…/name/version) or Riegeli log directory")
  e.add_argument("--format", choices=formats, required=True, help="TRL row layout")
  e.add_argument("--split", default="train", help="split of a published dataset")
  e.add_argument("--tokenizer_model", help="SentencePiece model file of a spm: dataset "
                 "(default: none; byte datasets need none)")
  _add_filter_flags(e)
  out = e.add_mutually_exclusive_group(required=True)
  out.add_argument("--jsonl", help="output JSONL file")
  out.add_argument("--hf", help="output directory for datasets.Dataset.save_to_disk")
  e.add_argument("--overwrite", action="store_true",
                 help="replace an existing --jsonl file or --hf directory")
  e.set_defaults(func=_cmd_export)
  m = sub.add_parser("import", help="JSONL or a Hugging Face datasets directory as a "
                     "published dataset of RLDS episodes")
  m.add_argument("source", help="JSONL file or datasets directory (save_to_disk)")
  m.add_argument("--format", choices=formats, required=True, help="TRL row layout")
  m.add_argument("--data_dir", required=True, help="where to publish")
  m.add_argument("--name", required=True, help="dataset name")
  m.add_argument("--version", default="1.0.0", help="dataset version, MAJOR.MINOR.PATCH")
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
  if _verbose(args):
    _compat.set_verbose(True)
  for name in ("path", "source"):  # the input of every command that reads one
    given = getattr(args, name, None)
    if given is not None and not os.path.exists(given):
      print(f"rlds-lm {args.command}: error: {given} does not exist", file=sys.stderr)
      return 2
  try:
    return args.func(args)
  except (OSError, ValueError) as e:  # every refusal of ours is a ValueError
    if _verbose(args):
      raise
    print(f"rlds-lm {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
