"""Stage ``publish``: a stage's output -> the final, versioned TFDS dataset with its card.

Example::

    python -m pipelines.publish --input=work/scored --data_dir=datasets \\
        --name=arith_rollouts --version=1.0.0 --description="..."

Writes ``DATA_DIR/NAME/VERSION``: tfrecord shards (``as_dataset``, ``rlds``) plus an
``array_record`` copy (Grain and random access, no TensorFlow), ``metadata.json`` with the
schema and the lineage (input datasets and versions, the whole chain of stages with
their config digests, the code version), ``dead_letter_summary.json`` with what every
stage dropped, and a generated dataset card ``README.md``. Every episode is validated
again; invalid ones go to the dead-letter output. A version that exists is never
overwritten: publish a new version. While a publish runs, the directory holds a
``_PUBLISHING`` marker; a publish that failed (marker left behind) can simply be re-run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines import dataset_io
from pipelines import dead_letters as DL
from pipelines import scaffold
from pipelines.errors import PipelineError
from rlds_lm import publish as P
from rlds_lm import schema as S
from rlds_lm.cli_help import HelpFormatter

STAGE = "publish"
CARD_FILE = "README.md"
IN_PROGRESS_FILE = "_PUBLISHING"  # present until the publish completed
STATS_FILE = "stats.json"


class EpisodeStats(beam.CombineFn):
  """Episodes per split and task, invalid count, and per-reward mean / min / max."""

  def create_accumulator(self):
    return {"episodes": {}, "tasks": {}, "invalid": 0, "rewards": {}}

  def add_input(self, acc, element):
    split, episode = element
    acc["episodes"][split] = acc["episodes"].get(split, 0) + 1
    task = episode.get(S.TASK, "") or "-"
    acc["tasks"][task] = acc["tasks"].get(task, 0) + 1
    acc["invalid"] += int(bool(episode.get(S.INVALID, False)))
    totals: dict[str, float] = {}
    for step in episode[S.STEPS]:
      for name, value in (step.get(S.REWARDS) or {}).items():
        totals[name] = totals.get(name, 0.0) + float(value)
    if S.REWARDS not in episode[S.STEPS][0]:
      totals["reward"] = sum(float(s[S.REWARD]) for s in episode[S.STEPS])
    for name, value in totals.items():
      n, total, lo, hi = acc["rewards"].get(name, (0, 0.0, np.inf, -np.inf))
      acc["rewards"][name] = (n + 1, total + value, min(lo, value), max(hi, value))
    return acc

  def merge_accumulators(self, accumulators):
    out = self.create_accumulator()
    for acc in accumulators:
      for key in ("episodes", "tasks"):
        for k, v in acc[key].items():
          out[key][k] = out[key].get(k, 0) + v
      out["invalid"] += acc["invalid"]
      for name, (n, total, lo, hi) in acc["rewards"].items():
        n0, t0, l0, h0 = out["rewards"].get(name, (0, 0.0, np.inf, -np.inf))
        out["rewards"][name] = (n0 + n, t0 + total, min(l0, lo), max(h0, hi))
    return out

  def extract_output(self, acc):
    rewards = {name: {"episodes": n, "mean": total / n, "min": lo, "max": hi}
               for name, (n, total, lo, hi) in sorted(acc["rewards"].items()) if n}
    return json.dumps({"episodes": acc["episodes"], "tasks": acc["tasks"],
                       "invalid": acc["invalid"], "rewards": rewards}, sort_keys=True)


def _stage_chain(lineage: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The stages that produced a dataset, oldest first, from nested lineage."""
  chain = []
  node: Mapping[str, Any] | None = lineage
  while node:
    chain.append({k: node.get(k) for k in ("stage", "config_digest", "code_version")
                  if k in node})
    for key in ("prompts", "policy", "teacher", "config"):
      if key in node:
        chain[-1][key] = node[key]
    node = node.get("upstream")
  return list(reversed(chain))


def dataset_card(*, name: str, version: str, description: str, schema: S.SchemaConfig,
                 stats: Mapping[str, Any], lineage: Mapping[str, Any],
                 dead_letters: Mapping[str, Any] | None, path: str) -> str:
  """The README.md of a published dataset (Markdown)."""
  lines = [f"# {name} {version}", "", description or f"rlds_lm {schema.kind} episodes.", ""]
  lines += ["## Contents", "", "| split | episodes |", "| --- | ---: |"]
  lines += [f"| {split} | {n} |" for split, n in sorted(stats.get("episodes", {}).items())]
  lines += ["", f"Episode kind: **{schema.kind}**; tasks: " + ", ".join(
      f"{task} ({n})" for task, n in sorted(stats.get("tasks", {}).items()))
            + f"; invalid (not for training): {stats.get('invalid', 0)}.", ""]
  lines += ["Schema (`metadata.json` key `rlds_lm_schema`):", "", "```json",
            json.dumps(json.loads(schema.to_json()), indent=2, sort_keys=True), "```", ""]
  if stats.get("rewards"):
    lines += ["## Rewards (sum per episode)", "",
              "| reward | episodes | mean | min | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for reward, r in stats["rewards"].items():
      lines.append(f"| {reward} | {r['episodes']} | {r['mean']:.4f} | {r['min']:.4f} | "
                   f"{r['max']:.4f} |")
    lines.append("")
  lines += ["## Lineage", "", "Stages, oldest first (full record: `metadata.json` key "
            "`rlds_lm_lineage`):", ""]
  for i, stage in enumerate(_stage_chain(lineage), 1):
    extras = []
    if "policy" in stage:
      extras.append(f"policy {stage['policy'].get('name')} {stage['policy'].get('digest')}")
    if "teacher" in stage:
      extras.append(f"teacher {stage['teacher'].get('name')} "
                    f"{stage['teacher'].get('digest')}")
    if "prompts" in stage:
      extras.append(f"prompts {stage['prompts'].get('name', '')} "
                    f"{stage['prompts'].get('version', '')}".strip())
    lines.append(f"{i}. `{stage.get('stage')}` config {stage.get('config_digest', '-')}, "
                 f"code {stage.get('code_version', '-')}"
                 + (f": {'; '.join(extras)}" if extras else ""))
  lines.append("")
  if dead_letters:
    lines += ["## Dropped records", "", "| stage | inputs | written | dropped | reasons |",
              "| --- | ---: | ---: | ---: | --- |"]
    for s in dead_letters.get("stages", []):
      reasons = ", ".join(f"{k} x{v}" for k, v in s.get("by_reason", {}).items()) or "-"
      lines.append(f"| {s['stage']} | {s['inputs']} | {s['written']} | {s['dropped']} | "
                   f"{reasons} |")
    lines += ["", f"Details: `{DL.DEAD_LETTER_SUMMARY}`, `{DL.DEAD_LETTER_FILE}`.", ""]
  lines += ["## License and citation", "", f"License: {P.LICENSE} (rlds_lm's; the data keeps "
            "the terms of its sources).", "", "```bibtex", P.CITATION, "```", ""]
  lines += ["## Reading it", "", "```python", "import tensorflow_datasets as tfds",
            f"builder = tfds.builder_from_directory({path!r})",
            "ds = builder.as_dataset(split='train')  # tf.data; rlds.transformations apply",
            "", "from rlds_lm import read  # no TensorFlow: array_record + Grain",
            f"source = read.data_source({path!r}, 'train')", "```", ""]
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PublishSetup:
  """What the stage needs besides its input, built by :func:`build_config`.

  Attributes:
    name: the dataset name (snake_case).
    version: ``MAJOR.MINOR.PATCH``.
    description: the first paragraph of the card.
    file_formats: tfrecord first, then the formats added as copies.
    out_dir: ``DATA_DIR/NAME/VERSION``.
  """

  name: str
  version: str
  description: str
  file_formats: tuple[str, ...]
  out_dir: str

  @property
  def config_digest(self) -> str:
    return scaffold.config_digest({"name": self.name, "version": self.version})


def build_config(args: argparse.Namespace) -> PublishSetup:
  """The stage's setup from its parsed flags (:func:`build_parser`); checks them.

  Raises:
    PipelineError: for a name, version or file formats that are not allowed.
  """
  try:  # the one name check of every publish path (rlds_lm.publish.check_names)
    P.check_names(args.name, args.version)
  except ValueError as err:
    raise PipelineError(f"--name / --version: {err}") from err
  formats = tuple(f for f in args.file_formats.split(",") if f)
  if not formats or formats[0] != P.TFRECORD or not set(formats) <= {P.TFRECORD,
                                                                     P.ARRAY_RECORD}:
    raise PipelineError(f"--file_formats must start with tfrecord and may add "
                        f"array_record; found {formats}")
  return PublishSetup(name=args.name, version=args.version, description=args.description,
                      file_formats=formats,
                      out_dir=os.path.join(dataset_io.absolute(args.data_dir), args.name,
                                           args.version))


class PublishEpisodes(beam.PTransform):
  """``(split, episode)`` -> ``(shard_infos, dead_letters, stats)``: writes the episodes
  as the shards of ``out_dir`` (validated again) and computes :class:`EpisodeStats` (one
  JSON string)."""

  def __init__(self, setup: PublishSetup, schema: S.SchemaConfig, splits: Sequence[str],
               num_shards: int):
    super().__init__()
    self._setup = setup
    self._schema = schema
    self._splits = tuple(splits)
    self._num_shards = num_shards

  def expand(self, episodes):
    infos, dead = episodes | "Write" >> dataset_io.WriteEpisodes(
        self._setup.out_dir, self._setup.name, self._schema, self._splits,
        self._num_shards, STAGE)
    stats = episodes | "Stats" >> beam.CombineGlobally(EpisodeStats())
    return infos, dead, stats


class LogsInput:
  """Recorder logs as the input of ``publish`` (``--logs``), the episodes that ``tfds
  build builders/lm_logs`` publishes: every complete episode of every log, validated,
  one copy per ``episode_id`` (the one from the earliest log in the given order).

  TFDS's own Beam writer, which ``tfds build`` uses, does not run on Beam's DaskRunner
  (its shard assignment reads side inputs that the DaskRunner leaves empty); this path
  reads the logs with the same transforms and writes with the stages' writer, which
  needs no side inputs, so it runs on every runner.
  """

  def __init__(self, logs: str, splits: str):
    from builders.lm_logs import lm_logs_dataset_builder as LB  # pylint: disable=g-import-not-at-top

    names = [s for s in splits.split(",") if s] or ["train"]
    if len(names) != 1:
      raise PipelineError(f"--splits: with --logs, one split receives every episode; "
                          f"found {names}")
    try:
      self.log_dirs = LB.resolve_log_dirs([p for p in logs.split(",") if p])
      self.schema = LB.common_schema(self.log_dirs)
    except (OSError, ValueError) as err:
      raise PipelineError(f"--logs={logs}: {err}") from err
    self.splits = tuple(names)
    self.path = ",".join(self.log_dirs)
    self.num_examples = {names[0]: 0}  # known once the pipeline has read the logs

  def reader(self) -> beam.PTransform:
    """() -> ``(split, episode)``, one per distinct episode_id."""
    return _ReadLogs(self.log_dirs, self.schema.to_json(), self.splits[0])

  def lineage(self) -> dict[str, Any]:
    return {"logs": list(self.log_dirs), "splits": dict(self.num_examples)}

  def upstream_lineage(self) -> dict[str, Any]:
    """Logs have no producing stage of ours: nothing upstream."""
    return {}


def _to_split(id_and_episode: tuple[str, Any], split: str) -> tuple[str, Any]:
  return split, id_and_episode[1]


class _ReadLogs(beam.PTransform):
  """() -> ``(split, episode)`` from Recorder logs (``builders.lm_logs``' transforms)."""

  def __init__(self, log_dirs: Sequence[str], schema_json: str, split: str):
    super().__init__()
    self._log_dirs, self._schema_json, self._split = tuple(log_dirs), schema_json, split

  def expand(self, pbegin):
    from builders.lm_logs import log_transforms as LT  # pylint: disable=g-import-not-at-top

    return (pbegin
            | "Episodes" >> LT.episodes_from_logs(self._log_dirs, self._schema_json)
            | "ToSplit" >> beam.Map(_to_split, split=self._split))


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m pipelines.publish", description=__doc__,
                                   formatter_class=HelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--input", help="a stage's output dataset directory")
  source.add_argument("--logs", help="Recorder log directories instead (comma-separated "
                      "paths or glob patterns, e.g. 'logs/worker-*'): what `tfds build "
                      "builders/lm_logs` publishes, on any runner, the DaskRunner included")
  parser.add_argument("--splits", default="", help="comma-separated splits (default: all); "
                      "with --logs, the one split that receives every episode (default: "
                      "train)")
  parser.add_argument("--data_dir", required=True, help="TFDS data directory")
  parser.add_argument("--name", required=True, help="dataset name (snake_case)")
  parser.add_argument("--version", default="1.0.0", help="MAJOR.MINOR.PATCH")
  parser.add_argument("--description", default="", help="first paragraph of the card "
                      "(default: 'rlds_lm KIND episodes.')")
  parser.add_argument("--file_formats", default=",".join(P.DEFAULT_FILE_FORMATS),
                      help="tfrecord first; array_record added as an alternative")
  parser.add_argument("--num_shards", type=int, default=scaffold.DEFAULT_NUM_SHARDS,
                      help="output shards per split")
  parser.add_argument("--workers", type=int, default=2,
                      help="DirectRunner worker processes (ignored by other runners)")
  parser.add_argument("--max_dropped_fraction", type=float,
                      default=scaffold.DEFAULT_MAX_DROPPED_FRACTION,
                      help="fail if more than this fraction of the input is dropped")
  return parser


def run(argv: Sequence[str] | None = None) -> scaffold.StageResult:
  args, beam_args = build_parser().parse_known_args(argv)
  started = time.perf_counter()
  setup = build_config(args)
  if args.logs:
    source = LogsInput(args.logs, args.splits)
  else:
    source = dataset_io.open_input(args.input,
                                   [s for s in args.splits.split(",") if s] or None)
  schema = source.schema
  out = setup.out_dir
  options = scaffold.pipeline_options(beam_args, args.workers)  # checks the runner first
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  marker = os.path.join(out, IN_PROGRESS_FILE)
  if (tf.io.gfile.exists(os.path.join(out, "dataset_info.json"))
      and not tf.io.gfile.exists(marker)):
    raise PipelineError(f"{out} is already published; versions are immutable: "
                        f"publish a new --version")
  # Anything else there is the leftover of a failed publish (it still has the marker).
  out = scaffold.prepare_output(out, overwrite=True)
  with tf.io.gfile.GFile(marker, "w") as f:
    f.write("publishing; this version is incomplete until this file is removed\n")
  if args.logs:
    scaffold.progress(STAGE, f"{len(source.log_dirs)} log(s) {source.path} -> {out}")
  else:
    total = sum(source.num_examples[s] for s in source.splits)
    scaffold.progress(STAGE, f"{total} episodes from {source.path} -> {out}")

  pipeline = beam.Pipeline(options=options)
  episodes = pipeline | "Read" >> (source.reader() if args.logs
                                   else dataset_io.ReadRecords(source))
  infos, dead, stats = episodes | "Publish" >> PublishEpisodes(setup, schema, source.splits,
                                                               args.num_shards)
  written = [infos, stats | "WriteStats" >> dataset_io.WriteLines(
      os.path.join(out, DL.TMP_DIR, STATS_FILE)), DL.write_dead_letters([dead], out)]
  lineage = {"stage": STAGE, "input": source.lineage(),
             "upstream": source.upstream_lineage(), "name": args.name,
             "version": args.version, "config_digest": setup.config_digest,
             "code_version": scaffold.code_version()}
  result = scaffold.run_pipeline(pipeline, written)
  result.wait_until_finish()
  with tf.io.gfile.GFile(os.path.join(out, DL.TMP_DIR, STATS_FILE)) as f:
    stats = json.loads(f.read())
  if args.logs:  # the distinct episodes of the logs (copies in several logs count once)
    total = sum(stats["episodes"].values())
    source.num_examples = dict(stats["episodes"])
    lineage["input"] = source.lineage()
  stage_result = scaffold.finalize(
      result=result, out_dir=out, name=args.name, config=schema, splits=source.splits,
      stage=STAGE, description=args.description, lineage=lineage, inputs_total=total,
      started=started, max_dropped_fraction=args.max_dropped_fraction,
      upstream=[] if args.logs else [source],
      stage_args=vars(args))
  for file_format in setup.file_formats[1:]:
    scaffold.progress(STAGE, f"adding the {file_format} copy")
    P.add_file_format(out, file_format)
  card = dataset_card(name=args.name, version=args.version, description=args.description,
                      schema=schema, stats=stats, lineage=lineage,
                      dead_letters=scaffold.read_dead_letter_summary(out), path=out)
  with tf.io.gfile.GFile(os.path.join(out, CARD_FILE), "w") as f:
    f.write(card)
  tf.io.gfile.remove(marker)
  scaffold.progress(STAGE, f"published {args.name} {args.version}: {out} (card: "
                           f"{CARD_FILE})")
  return stage_result


def main(argv: Sequence[str] | None = None) -> int:
  return scaffold.main_wrapper(STAGE, run, argv)


if __name__ == "__main__":
  sys.exit(main())
