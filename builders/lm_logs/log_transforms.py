"""The Beam half of the lm_logs builder: read recorder logs, keep one copy per episode.

Kept apart from ``lm_logs_dataset_builder.py`` and imported by its absolute name
(``builders.lm_logs.log_transforms``) because Beam pickles these functions by module
name: ``tfds build builders/lm_logs`` imports the builder module as
``lm_logs.lm_logs_dataset_builder``, a name that multi-process workers
(``direct_running_mode=multi_processing``, Dataflow, Flink ...) cannot import. No builder
object is pickled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from absl import logging

from rlds_lm import logs
from rlds_lm import schema as S
from rlds_lm import validate as V

METRICS_NAMESPACE = "lm_logs"
# Beam counters (namespace METRICS_NAMESPACE); `Builder.pipeline_counters` after a build.
EPISODES_READ = "episodes_read"  # complete episodes read from all logs
INCOMPLETE_EPISODES = "incomplete_episodes"  # episodes without a LAST step (a crash)
ORPHAN_STEPS = "orphan_steps"  # steps before any FIRST step
UNREADABLE_STEPS = "unreadable_steps"  # damaged steps (see rlds_lm.logs.LogReadStats)
DAMAGED_EPISODES = "damaged_episodes"  # episodes dropped for an unreadable step
INDEXED_NOT_READ = "indexed_not_read"  # indexed episodes the step stream does not reach
UNREACHABLE_STEPS = "unreachable_steps"  # steps in steps.riegeli no offset reaches
UNOPENABLE_SHARDS = "unopenable_shards"  # shard directories envlogger cannot open
DUPLICATES_DROPPED = "duplicates_dropped"  # extra copies of an episode_id, dropped
CONFLICTING_DUPLICATES = "conflicting_duplicates"  # ids whose copies differ in content
EPISODES_WRITTEN = "episodes_written"  # distinct episode_ids, one episode each
COUNTERS = (EPISODES_READ, INCOMPLETE_EPISODES, ORPHAN_STEPS, UNREADABLE_STEPS,
            DAMAGED_EPISODES, INDEXED_NOT_READ, UNREACHABLE_STEPS, UNOPENABLE_SHARDS,
            DUPLICATES_DROPPED, CONFLICTING_DUPLICATES, EPISODES_WRITTEN)

# (log_index, position in that log, log_dir, episode)
Copy = tuple[int, int, str, dict[str, Any]]


def _beam():
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  return beam


def _counter(name: str):
  return _beam().metrics.Metrics.counter(METRICS_NAMESPACE, name)


def episodes_from_logs(log_dirs: Sequence[str], schema_json: str):
  """A PTransform ``() -> (episode_id, episode)``, one element per distinct episode_id.

  One element per log directory, redistributed so that each log is read by its own
  worker; episodes are grouped by ``episode_id`` and :func:`keep_first_copy` picks one.
  """
  beam = _beam()
  return (
      "ListLogs" >> beam.Create(list(enumerate(log_dirs)))
      | "OneLogPerWorker" >> beam.Reshuffle()
      | "ReadLogs" >> beam.FlatMap(read_log_dir, schema_json=schema_json)
      | "GroupByEpisodeId" >> beam.GroupByKey()
      | "KeepOneCopy" >> beam.Map(keep_first_copy)
  )


def read_log_dir(indexed_log_dir: tuple[int, str], schema_json: str
                 ) -> Iterator[tuple[str, Copy]]:
  """Reads one log; yields ``(episode_id, (log_index, position, log_dir, episode))``.

  Only complete episodes are read (see :func:`rlds_lm.logs.read_log`); each is
  validated against the schema, and an invalid one fails the build naming its log.

  Raises:
    ValueError: the log stores another SchemaConfig than ``schema_json`` (it changed
      after the builder read it), or an episode is invalid.
  """
  log_index, log_dir = indexed_log_dir
  config = S.SchemaConfig.from_json(schema_json)
  stored = logs.read_log_config(log_dir)
  if stored != config:
    raise ValueError(f"{log_dir}: the log stores another SchemaConfig than the dataset:\n"
                     f"  log     {stored}\n  dataset {config}")
  stats = logs.LogReadStats()
  episodes_read = _counter(EPISODES_READ)
  for position, episode in enumerate(logs.read_log(log_dir, config, stats)):
    try:
      episode = V.validate_episode(episode, config)
    except V.EpisodeValidationError as err:
      raise ValueError(f"{log_dir}: episode {position} of the log is invalid: {err}") from err
    episodes_read.inc()
    yield episode[S.EPISODE_ID], (log_index, position, log_dir, episode)
  _counter(INCOMPLETE_EPISODES).inc(stats.incomplete_episodes)
  _counter(ORPHAN_STEPS).inc(stats.orphan_steps)
  _counter(UNREADABLE_STEPS).inc(stats.unreadable_steps)
  _counter(DAMAGED_EPISODES).inc(stats.damaged_episodes)
  _counter(INDEXED_NOT_READ).inc(stats.indexed_not_read)
  _counter(UNREACHABLE_STEPS).inc(stats.unreachable_steps)
  _counter(UNOPENABLE_SHARDS).inc(stats.unopenable_shards)
  log = logging.warning if stats.damaged else logging.info
  log("lm_logs: %s%s: %s", "DAMAGED log " if stats.damaged else "", log_dir,
      stats.as_dict())


def keep_first_copy(id_and_copies: tuple[str, Iterable[Copy]]) -> tuple[str, dict[str, Any]]:
  """Keeps the copy from the earliest log directory (then earliest in that log).

  The choice depends on the configured order of the log directories only, never on
  worker timing. Copies that differ in content are counted and logged.
  """
  episode_id, copies = id_and_copies
  copies = sorted(copies, key=lambda copy: copy[:2])
  _counter(EPISODES_WRITTEN).inc()
  if len(copies) > 1:
    _counter(DUPLICATES_DROPPED).inc(len(copies) - 1)
    if len({S.content_id(copy[3]) for copy in copies}) > 1:
      _counter(CONFLICTING_DUPLICATES).inc()
      logging.warning("lm_logs: episode %s has copies with different content in %s; "
                      "keeping the one from %s", episode_id,
                      sorted({copy[2] for copy in copies}), copies[0][2])
  return episode_id, copies[0][3]
