"""lm_logs: recorder Riegeli logs published as a TFDS dataset with Apache Beam.

The input is one or more log directories written by :class:`rlds_lm.recorder.Recorder`
(envlogger's Riegeli layout, see :mod:`rlds_lm.logs`), for example one per recording
worker or host. The episode features come from the :class:`~rlds_lm.schema.SchemaConfig`
stored in the logs, which must all hold the same one. The Beam pipeline
(:mod:`builders.lm_logs.log_transforms`):

1. one element per log directory, redistributed so that each log is read by its own
   worker (``rlds_lm.logs.read_log``: complete episodes only);
2. every episode is validated against the schema (as :func:`rlds_lm.publish.publish`
   does) and keyed by its ``episode_id``;
3. episodes are grouped by ``episode_id`` and one copy is kept: the one from the
   earliest log directory in the configured order (then earliest in that log). Copies
   that differ in content (possible when only fields outside the content id differ,
   e.g. ``lineage``) are counted as ``conflicting_duplicates`` and logged;
4. TFDS encodes and writes the episodes keyed by ``episode_id``, so they land in the
   same order as :func:`rlds_lm.recorder.publish_log` writes the same episodes.

The dataset's ``metadata.json`` holds the SchemaConfig and the lineage (the log
directories), as published datasets do, so :mod:`rlds_lm.read` opens it.

Build with the ``tfds`` command, the logs given in a JSON config::

    tfds build builders/lm_logs \\
        --config='{"name": "my_logs", "log_dir": "/path/to/log"}' \\
        --data_dir=/path/to/tensorflow_datasets \\
        --beam_pipeline_options="runner=DirectRunner"

``log_dir`` is a path, a glob pattern (``"/logs/worker-*"``) or a list of them.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

from absl import logging
import tensorflow_datasets as tfds

# Absolute import on purpose: Beam workers unpickle these functions by module name.
from builders.lm_logs import log_transforms as LT
from rlds_lm import logs
from rlds_lm import publish as P
from rlds_lm import schema as S

# Used when download_and_prepare gets no Beam runner or options. DirectRunner in Beam
# 2.77 first tries Prism, a binary it downloads at run time; FnApiRunner runs in process
# (add --direct_running_mode=multi_processing --direct_num_workers=N for processes).
DEFAULT_BEAM_FLAGS = ("--runner=FnApiRunner",)
_GLOB_CHARS = frozenset("*?[")
_DUMMY_LOG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dummy_data",
                              "log")


@dataclasses.dataclass
class LmLogsConfig(tfds.core.BuilderConfig):
  """Which logs to publish, and as which split.

  Attributes:
    log_dir: a recorder log directory, a glob pattern matching several, or a list of
      paths / patterns (e.g. one log per recording worker). Relative paths are resolved
      against the working directory when the builder reads them.
    split: the split that receives every episode.
  """
  log_dir: str | Sequence[str] = ""
  split: str = "train"


def resolve_log_dirs(log_dir: str | os.PathLike[str] | Sequence[str]) -> tuple[str, ...]:
  """Absolute log directories of a config's ``log_dir``, in order, without repeats.

  Glob patterns expand in sorted order; a pattern that matches no directory is an error.
  """
  entries = [log_dir] if isinstance(log_dir, (str, os.PathLike)) else list(log_dir)
  entries = [os.fspath(e) for e in entries]
  if not entries or not all(entries):
    raise ValueError("LmLogsConfig.log_dir: expected a log directory, a glob pattern or "
                     f"a list of them, found {log_dir!r}")
  out: list[str] = []
  for entry in entries:
    path = os.path.abspath(os.path.expanduser(entry))
    if _GLOB_CHARS & set(entry):
      matches = sorted(m for m in glob.glob(path) if os.path.isdir(m))
      if not matches:
        raise FileNotFoundError(f"LmLogsConfig.log_dir: {entry!r} matches no directory")
    else:
      matches = [path]
    out.extend(m for m in matches if m not in out)
  return tuple(out)


def common_schema(log_dirs: Sequence[str]) -> S.SchemaConfig:
  """The SchemaConfig that every log in ``log_dirs`` stores.

  Raises:
    FileNotFoundError: a directory is not an rlds_lm Riegeli log.
    ValueError: the logs store different SchemaConfigs; the message lists every
      directory under its schema.
  """
  by_schema: dict[S.SchemaConfig, list[str]] = collections.defaultdict(list)
  for log_dir in log_dirs:
    by_schema[logs.read_log_config(log_dir)].append(log_dir)
  if len(by_schema) != 1:
    groups = "\n".join(f"  {schema}: {', '.join(dirs)}" for schema, dirs in by_schema.items())
    raise ValueError("lm_logs: the log directories do not share one SchemaConfig; "
                     f"publish them as separate datasets:\n{groups}")
  (schema,) = by_schema
  return schema


def _refuse_dask(download_config: tfds.download.DownloadConfig) -> None:
  """Raises ValueError for Beam's DaskRunner, before anything is written.

  TFDS's Beam writer sizes and assigns shards from side inputs built by global combines
  (``Top.Largest``, ``CombineGlobally``); Beam 2.77's DaskRunner hands them to the
  shard assignment empty (``IndexError`` in ``writer._assign_shard``), and its
  file sinks (the writer without shuffling) leave empty files.
  """
  runner = download_config.beam_runner
  if download_config.beam_options is not None:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    runner = runner or download_config.beam_options.view_as(
        pipeline_options.StandardOptions).runner
  name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
  if name.rsplit(".", 1)[-1] == "DaskRunner":
    raise ValueError(
        "lm_logs: TFDS's Beam writer does not run on Beam's DaskRunner (its shard "
        "assignment reads side inputs that the DaskRunner leaves empty, Beam 2.77); "
        "on Dask, publish the same logs with `python -m pipelines.publish --logs=...` "
        "(the same episodes through the stages' writer), or build with the local runner "
        "(--beam_pipeline_options=runner=DirectRunner) or Dataflow/Flink/Spark")


class Builder(tfds.core.GeneratorBasedBuilder):
  """Recorder Riegeli logs as RLDS episodes, built with Apache Beam."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      LmLogsConfig(
          name="dummy",
          description="The small committed log dummy_data/log (make_dummy_data.py): 3 "
                      "rollout episodes with teacher top-4 and a 'correct' reward.",
          log_dir=_DUMMY_LOG_DIR),
  ]
  DEFAULT_CONFIG_NAME = "dummy"

  def __init__(self, **kwargs: Any):
    self._log_dirs: tuple[str, ...] | None = None
    self._schema: S.SchemaConfig | None = None
    self.pipeline_counters: dict[str, int] = {}  # filled by a Beam build
    super().__init__(**kwargs)
    # The config name and the split become paths under data_dir: identifiers only.
    P.check_dataset_name(self.builder_config.name, what="lm_logs config name")
    P.check_dataset_name(self.builder_config.split, what="lm_logs split name")

  @property
  def log_dirs(self) -> tuple[str, ...]:
    """The resolved log directories of the builder config."""
    if self._log_dirs is None:
      self._log_dirs = resolve_log_dirs(self.builder_config.log_dir)
    return self._log_dirs

  @property
  def schema(self) -> S.SchemaConfig:
    """The SchemaConfig shared by every log (read from the logs)."""
    if self._schema is None:
      self._schema = common_schema(self.log_dirs)
    return self._schema

  def _info(self) -> tfds.core.DatasetInfo:
    lineage = {"builder": "lm_logs", "riegeli_logs": list(self.log_dirs)}
    return self.dataset_info_from_configs(
        features=S.episode_features(self.schema),
        metadata=tfds.core.MetadataDict({
            P.METADATA_SCHEMA: self.schema.to_json(),
            P.METADATA_LINEAGE: json.dumps(lineage, sort_keys=True),
        }),
        homepage=P.HOMEPAGE,
        citation=P.CITATION,
        license=P.LICENSE,
    )

  def download_and_prepare(self, *,
                           download_config: tfds.download.DownloadConfig | None = None,
                           **kwargs: Any) -> None:
    """As TFDS's, but runs Beam in process when no runner or options are given.

    Without ``beam_options`` or ``beam_runner``, TFDS would build ``PipelineOptions``
    from ``sys.argv`` and Beam would try to download Prism. Then this pins
    :data:`DEFAULT_BEAM_FLAGS`; explicit options (``tfds build
    --beam_pipeline_options=...``) are used as given.
    """
    if download_config is None:
      download_config = tfds.download.DownloadConfig()
    _refuse_dask(download_config)
    if download_config.beam_options is None and download_config.beam_runner is None:
      from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top

      download_config = dataclasses.replace(
          download_config,
          beam_options=pipeline_options.PipelineOptions(flags=list(DEFAULT_BEAM_FLAGS)))
    super().download_and_prepare(download_config=download_config, **kwargs)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the logs are local files: nothing to download
    return {self.builder_config.split: self._generate_examples(
        log_dirs=self.log_dirs, schema_json=self.schema.to_json())}

  def _generate_examples(self, log_dirs: Sequence[str], schema_json: str):
    """A Beam PTransform: () -> (episode_id, episode), one per distinct episode_id."""
    return LT.episodes_from_logs(log_dirs, schema_json)

  def _process_pipeline_result(self, pipeline_result) -> None:
    """Keeps the pipeline's counters in :attr:`pipeline_counters` and logs them."""
    beam = tfds.core.lazy_imports.apache_beam
    query = pipeline_result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(LT.METRICS_NAMESPACE))
    counters = dict.fromkeys(LT.COUNTERS, 0)
    for counter in query["counters"]:
      value = counter.committed if counter.committed is not None else counter.attempted
      counters[counter.key.metric.name] += int(value or 0)
    self.pipeline_counters = counters
    logging.info("lm_logs %s: %s", self.builder_config.name, counters)
    damage = {k: counters[k] for k in (LT.UNREADABLE_STEPS, LT.DAMAGED_EPISODES,
                                       LT.INDEXED_NOT_READ, LT.UNREACHABLE_STEPS,
                                       LT.UNOPENABLE_SHARDS, LT.ORPHAN_STEPS) if counters[k]}
    if damage:
      logging.warning("lm_logs %s: DAMAGED logs, the intact episodes were published: %s",
                      self.builder_config.name, damage)
    if counters[LT.CONFLICTING_DUPLICATES]:
      logging.warning("lm_logs: %d episode_id(s) had copies with different content; the "
                      "copy from the earliest log directory was kept",
                      counters[LT.CONFLICTING_DUPLICATES])
