"""The recorder: what a generation loop calls to log episodes as they happen.

::

    cfg = SchemaConfig(vocab_size=tok.vocab_size, reward_names=("correct",))
    with Recorder("/tmp/logs", cfg) as rec:
        for prompt in prompts:
            ...                                   # sample a completion
            rec.record(rollout_episode(cfg, [Turn(obs, ids, text, logprobs)],
                                       prompt_id=pid))
        # or turn by turn:
        with rec.episode(prompt_id="p1", task="chat") as ep:
            ep.add_turn(Turn(...)); ep.add_turn(Turn(...))
            ep.finish(final_observation)

Every episode is validated against the schema when it is recorded; a rejected episode
raises :class:`~rlds_lm.validate.EpisodeValidationError` and leaves the recorder usable
with everything recorded before it intact. Duplicate ``episode_id``\\ s are rejected,
across reopenings of the same directory too.

Backends:

* ``"riegeli"`` (default): envlogger's Riegeli writer, one flush per episode. A process
  killed with SIGKILL at any moment loses at most the episode being written; reopening
  the directory appends a new shard. Publish with :func:`publish_log`. With
  ``flush_every=N`` a kill may also lose up to N - 1 recorded episodes;
  :meth:`Recorder.flush` makes them durable at once. With the default
  ``writer="inline"`` writing happens in the caller's thread, nothing is left in flight
  when ``record`` returns. With ``writer="process"`` a writer process
  (:class:`~rlds_lm.logs.ProcessEpisodeWriter`, started with the Recorder) writes: when
  ``record`` returns the episode's bytes are in the kernel's pipe, so a SIGKILL of the
  recording process loses none of them (the writer process writes them, closes the
  files and exits; :func:`rlds_lm.logs.wait_for_writers` waits for it); a SIGKILL of
  both processes loses at most ``max_unflushed`` recorded episodes; ``flush`` returns
  once everything recorded before it is on disk; a failure of the writer process raises
  on the next call. Start-up costs about 0.3 s of one CPU, and only where a second core
  is free does it run beside the caller (docs/benchmarks.md measures both).
* ``"tfds"``: writes a TFDS dataset directly (``tfds.core.SequentialWriter``), no
  conversion step. Crash safety is per closed shard only: use it where the process is
  trusted to call :meth:`Recorder.close`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from absl import logging

from rlds_lm import logs
from rlds_lm import publish as P
from rlds_lm import schema as S
from rlds_lm import validate as V

RIEGELI = "riegeli"
TFDS = "tfds"
PROCESS = "process"  # riegeli writer: envlogger's writer in a writer process
INLINE = "inline"  # riegeli writer: in the caller's thread (default)
WRITER_WAIT_S = 60.0  # how long a new Recorder waits for another's writer process


class _TfdsBackend:
  """Appends episodes to a TFDS dataset with ``tfds.core.SequentialWriter``."""

  def __init__(self, directory: str, config: S.SchemaConfig, name: str, split: str,
               episodes_per_shard: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    from rlds_lm import read  # pylint: disable=g-import-not-at-top

    P.check_names(name, splits=[split])  # before anything is written
    builder = P.episode_builder(data_dir=directory, name=name, config=config)
    self.dataset_dir = os.fspath(builder.data_dir)
    exists = os.path.exists(os.path.join(self.dataset_dir, "dataset_info.json"))
    if exists:
      stored = read.schema_config(read.open_builder(self.dataset_dir))
      if stored != config:
        raise ValueError(f"{self.dataset_dir} holds episodes of another schema:\n  stored"
                         f"   {stored}\n  recorder {config}")
    os.makedirs(self.dataset_dir, exist_ok=True)
    self._writer = tfds.core.SequentialWriter(
        builder.info, max_examples_per_shard=episodes_per_shard, overwrite=not exists,
        file_format=P.TFRECORD)
    self._writer.initialize_splits([split], fail_if_exists=False)
    self._split = split

  def existing_ids(self) -> Iterable[str]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder_from_directory(self.dataset_dir)
    split = builder.info.splits.get(self._split)
    if split is None or not split.num_examples:
      return []  # a fresh dataset; any other read failure is an error, not "empty"
    ds = builder.as_dataset(self._split, decoders={S.STEPS: tfds.decode.SkipDecoding()})
    return [ex[S.EPISODE_ID].decode() for ex in tfds.as_numpy(ds)]

  def write(self, episode: Mapping[str, Any]) -> None:
    self._writer.add_examples({self._split: [episode]})

  def close(self) -> None:
    self._writer.close_all()


class Recorder:
  """Validates and logs episodes; see the module docstring.

  Args:
    directory: the log directory (Riegeli) or TFDS data directory (``backend="tfds"``).
    config: the schema every episode must match. Reopening a directory written with
      another schema is refused.
    backend: ``"riegeli"`` or ``"tfds"``.
    writer_options: Riegeli writer options (riegeli backend).
    name: dataset name (tfds backend), a TFDS-style identifier
      (:func:`rlds_lm.publish.check_dataset_name`).
    split: split to append to (tfds backend), an identifier too.
    episodes_per_shard: episodes per TFDS shard (tfds backend).
    writer: where the riegeli backend writes: ``"inline"`` (default), in the caller's
      thread, or ``"process"``, a writer process fed through a pipe
      (:class:`rlds_lm.logs.ProcessEpisodeWriter`). See the module docstring for what
      each guarantees.
    flush_every: ``writer="inline"``: flush the Riegeli log after every N-th episode.
      The default 1 gives the inline crash guarantee; N > 1 trades it (a kill may lose
      up to N - 1 closed episodes too) for fewer fsyncs.
    max_unflushed: ``writer="process"``: at most this many recorded episodes may be
      not yet flushed by the writer process (``record`` waits otherwise): what a SIGKILL
      of both processes can lose.
  """

  def __init__(self, directory: str | os.PathLike[str], config: S.SchemaConfig, *,
               backend: str = RIEGELI, writer_options: str = logs.DEFAULT_WRITER_OPTIONS,
               name: str = "lm_episodes", split: str = "train",
               episodes_per_shard: int = 1000, flush_every: int = 1,
               writer: str = INLINE,
               max_unflushed: int = logs.DEFAULT_MAX_UNFLUSHED):
    self.directory = os.fspath(directory)
    self.config = config
    self.backend = backend
    self.num_recorded = 0
    self.num_rejected = 0
    if flush_every < 1:
      raise ValueError(f"flush_every: expected >= 1, found {flush_every}")
    if writer not in (PROCESS, INLINE):
      raise ValueError(f"Recorder writer: expected {PROCESS!r} or {INLINE!r}, found "
                       f"{writer!r}")
    self.writer = writer if backend == RIEGELI else None
    self.writer_pid: int | None = None
    if backend == RIEGELI:
      self._seen = self._existing_riegeli_ids()
      if writer == PROCESS:
        self._backend: Any = logs.ProcessEpisodeWriter(
            self.directory, config, writer_options=writer_options,
            max_unflushed=max_unflushed)
        self.writer_pid = self._backend.pid
      else:
        self._backend = logs.RiegeliEpisodeWriter(
            self.directory, config, writer_options=writer_options,
            flush_every=flush_every)
    elif backend == TFDS:
      self._backend = _TfdsBackend(self.directory, config, name, split, episodes_per_shard)
      self._seen = set(self._backend.existing_ids())
    else:
      raise ValueError(f"Recorder backend: expected {RIEGELI!r} or {TFDS!r}, found {backend!r}")
    self._closed = False

  def _existing_riegeli_ids(self) -> set[str]:
    # A killed recorder's writer process may still be writing what its pipe held.
    if not logs.wait_for_writers(self.directory, timeout=WRITER_WAIT_S):
      raise RuntimeError(f"{self.directory}: a writer process is still writing there after "
                         f"{WRITER_WAIT_S:.0f} s (an open Recorder with writer='process'); "
                         "close it first")
    if not os.path.exists(os.path.join(self.directory, "metadata.riegeli")):
      return set()
    stored = logs.read_log_config(self.directory)
    if stored != self.config:
      raise ValueError(f"{self.directory} holds episodes of another schema:\n  stored   "
                       f"{stored}\n  recorder {self.config}")
    return {ep[S.EPISODE_ID] for ep in logs.read_log(self.directory, stored)}

  @property
  def dataset_dir(self) -> str:
    """The TFDS dataset directory (tfds backend only)."""
    return self._backend.dataset_dir

  def record(self, episode: Mapping[str, Any]) -> str:
    """Validates, de-duplicates and writes one episode; returns its id.

    Raises:
      EpisodeValidationError: the episode breaks the schema or repeats an id; nothing
        is written and the recorder stays usable.
    """
    if self._closed:
      raise RuntimeError("Recorder.record after close()")
    try:
      normalised = V.validate_episode(episode, self.config)
      episode_id = normalised[S.EPISODE_ID]
      if episode_id in self._seen:
        raise V.EpisodeValidationError(episode_id, S.EPISODE_ID, "an id not yet recorded",
                                       "a duplicate of an episode already recorded")
    except V.EpisodeValidationError:
      self.num_rejected += 1
      raise
    self._backend.write(normalised)
    self._seen.add(episode_id)
    self.num_recorded += 1
    return episode_id

  def flush(self) -> None:
    """Makes every episode recorded so far durable (riegeli backend).

    With ``writer="process"``: returns once the writer process has flushed every
    episode recorded before the call. With ``writer="inline"`` it is only needed with
    ``flush_every > 1``: with the default every ``record`` has flushed already, and a
    flush with nothing new to write does nothing. The tfds backend makes episodes
    durable per closed shard only; there it does nothing.

    Raises:
      RuntimeError: the writer process failed or died (naming the first episode not
        known to be on disk).
    """
    if self._closed:
      raise RuntimeError("Recorder.flush after close()")
    if self.backend == RIEGELI:
      self._backend.flush()

  def episode(self, **metadata: Any) -> EpisodeBuilder:
    """Starts an episode recorded turn by turn; see :class:`EpisodeBuilder`."""
    return EpisodeBuilder(self, metadata)

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._backend.close()

  def __enter__(self) -> Recorder:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


class EpisodeBuilder:
  """Collects turns of one open episode; records it on :meth:`finish`.

  Used as a context manager, an exception inside the block discards the open episode
  (nothing partial is ever written), and leaving the block without calling ``finish``
  records the episode as truncated (``is_terminal=False``); a ``finish`` that raised is
  not retried.
  """

  def __init__(self, recorder: Recorder, metadata: Mapping[str, Any]):
    self._recorder = recorder
    self._metadata = dict(metadata)
    self._turns: list[S.Turn] = []
    self._finish_called = False
    self.episode_id: str | None = None

  def add_turn(self, turn: S.Turn) -> None:
    if self.episode_id is not None:
      raise RuntimeError("add_turn after finish()")
    self._turns.append(turn)

  def finish(self, final_observation: Mapping[str, Any] | None = None, *,
             terminal: bool = True) -> str:
    self._finish_called = True
    episode = S.rollout_episode(self._recorder.config, self._turns, final_observation,
                                terminal=terminal, **self._metadata)
    self.episode_id = self._recorder.record(episode)
    return self.episode_id

  def __enter__(self) -> EpisodeBuilder:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None and not self._finish_called:
      self.finish(terminal=False)


class DamagedLogError(ValueError):
  """``publish_log(..., strict=True)`` found a damaged log; ``stats`` says what was skipped."""

  def __init__(self, log_dir: str, stats: logs.LogReadStats):
    self.stats = stats
    super().__init__(f"{log_dir}: the log is damaged, nothing was published: "
                     f"{_describe_skipped(stats)}")


def _describe_skipped(stats: logs.LogReadStats) -> str:
  return (f"{stats.episodes} intact episodes read; skipped {stats.damaged_episodes} "
          f"damaged episode(s) ({stats.unreadable_steps} unreadable step(s)), "
          f"{stats.indexed_not_read} indexed episode(s) not reached, "
          f"{stats.unreachable_steps} step(s) no offset reaches, "
          f"{stats.unopenable_shards} shard(s) that cannot be opened, "
          f"{stats.incomplete_episodes} incomplete episode(s), {stats.orphan_steps} "
          "orphan step(s)")


def publish_log(log_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str],
                name: str, version: str = "1.0.0", split: str = "train",
                description: str = "", lineage: Mapping[str, Any] | None = None,
                file_formats: tuple[str, ...] = P.DEFAULT_FILE_FORMATS,
                strict: bool = False, progress: bool | None = None) -> str:
  """Publishes every complete, intact episode of a Riegeli log as a TFDS dataset.

  The log is read twice: once to count what it holds (:func:`rlds_lm.logs.read_log`'s
  :class:`~rlds_lm.logs.LogReadStats`), then to publish. The counts are stored in the
  dataset lineage under ``"log_read"``, so a published dataset always says what its
  log held and what was skipped. Episodes left open by a crash are expected (at most
  one per writer session) and only recorded there. A *damaged* log (unreadable steps,
  episodes the index lists but the steps do not reach, orphan steps) is published with
  the intact episodes and a loud warning (``warnings.warn`` and the absl log), or, with
  ``strict=True``, refused before anything is written.

  Args:
    log_dir: the recorder's Riegeli log directory.
    data_dir: root TFDS data directory.
    name: dataset name (:func:`rlds_lm.publish.check_dataset_name`).
    version: dataset version, ``MAJOR.MINOR.PATCH``.
    split: the split receiving every episode.
    description: free text for the dataset card.
    lineage: extra lineage, merged after the log's.
    file_formats: as for :func:`rlds_lm.publish.publish`.
    strict: refuse a damaged log (raise :class:`DamagedLogError`) instead of warning.
    progress: show TFDS's progress bars (default: only when verbose).

  Returns:
    The dataset directory.

  Raises:
    DamagedLogError: ``strict`` and the log is damaged.
    ValueError: an invalid name, version or split.
  """
  P.check_names(name, version, [split])  # before anything is read or written
  log_dir = os.fspath(log_dir)
  config = logs.read_log_config(log_dir)
  counted = logs.LogReadStats()
  for _ in logs.read_log(log_dir, config, counted):
    pass
  if counted.damaged:
    if strict:
      raise DamagedLogError(log_dir, counted)
    message = (f"rlds_lm: publishing the DAMAGED log {log_dir} as {name} {version}: "
               f"{_describe_skipped(counted)}; the counts are in the lineage "
               "('log_read')")
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    logging.warning("%s", message)
  full_lineage = {"riegeli_log": os.path.abspath(log_dir), "log_read": counted.as_dict(),
                  **dict(lineage or {})}
  stats = logs.LogReadStats()
  path = P.publish({split: logs.read_log(log_dir, config, stats)}, data_dir=data_dir,
                   name=name, config=config, version=version, description=description,
                   lineage=full_lineage, file_formats=file_formats, progress=progress)
  if stats != counted:  # the log changed between the two reads
    raise RuntimeError(f"{log_dir} changed while it was published ({counted} before, "
                       f"{stats} during); {path} may not match the lineage: publish "
                       "again from a log no writer is appending to")
  return path
