"""Our Riegeli logs through the upstream readers: decoding ``envlogger.Reader`` episodes.

A log written by :class:`rlds_lm.recorder.Recorder` is an ordinary envlogger log, so
``envlogger.Reader(LOG_DIR)`` opens it. What the reader gives back is the log as
stored, not episodes in our schema (docs/interop.md, "Upstream readers"):

* per-token arrays (``observation/tokens``, ``action/tokens``, log-probs, teacher
  rows, ...) are raw little-endian ``bytes``: their dtype and width are in the schema,
  which the reader returns as JSON in ``reader.metadata()["rlds_lm_schema"]``;
* log step ``j`` holds observation ``j`` but the action, reward and step metadata of
  RLDS step ``j - 1`` (dm_env order), and the last log step's ``custom_data`` also holds
  a copy of the episode metadata;
* ``tfds.rlds``'s ``envlogger_reader.generate_episodes`` (what
  ``tfds.rlds.rlds_base.generate_examples`` uses) pairs each observation with the
  ``custom_data`` of the same log step, so on our logs the step-metadata lists are one
  entry shorter than the steps and shifted by one, and a multi-turn episode fails with a
  ``KeyError`` on that metadata copy.

:func:`episodes` and :func:`decode_episode` turn what ``envlogger.Reader`` returns into
the episodes :func:`rlds_lm.logs.read_log` gives (same fields, dtypes and shapes), using
the schema stored in the log. Example::

    from rlds_lm import _compat, upstream
    envlogger = _compat.import_envlogger()
    with envlogger.Reader(log_dir) as reader:
      for episode in upstream.episodes(reader):
        print(episode["episode_id"], episode["steps"][0]["action"]["tokens"])

``envlogger.Reader`` lists only the episodes of its index, which envlogger writes when
the next episode starts or the writer closes; :func:`rlds_lm.logs.read_log` reads the
step stream instead and also recovers the episodes of a writer that was killed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rlds_lm import logs
from rlds_lm import schema as S


def schema_config(reader: Any) -> S.SchemaConfig:
  """The :class:`SchemaConfig` stored in the log that ``reader`` (an
  ``envlogger.Reader``) reads.

  Raises:
    ValueError: the log was not written by rlds_lm (no stored schema).
  """
  metadata = reader.metadata() or {}
  if logs.SCHEMA_KEY not in metadata:
    raise ValueError(f"the log has no {logs.SCHEMA_KEY!r} metadata (found "
                     f"{sorted(metadata)}): not written by rlds_lm; pass the SchemaConfig "
                     f"the log was written with")
  return S.SchemaConfig.from_json(metadata[logs.SCHEMA_KEY])


def decode_episode(steps: Sequence[Any], config: S.SchemaConfig,
                   episode_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """One episode of ``envlogger.Reader`` (its list of ``StepData``, e.g.
  ``reader.episodes[i]``) as a canonical rlds_lm episode.

  Args:
    steps: the episode's log steps, FIRST to LAST.
    config: the log's schema (:func:`schema_config`).
    episode_metadata: ``reader.episode_metadata()[i]``; used only where the last step
      holds no copy of the metadata (logs of a bare ``EnvLogger(LmEnv)``).

  Raises:
    ValueError: ``steps`` is empty or does not start with a FIRST step.
  """
  steps = list(steps)
  if not steps or not steps[0].timestep.first():
    raise ValueError("decode_episode: expected an episode's log steps starting with its "
                     f"FIRST step, found {len(steps)} steps"
                     + (f" starting with {steps[0].timestep.step_type}" if steps else ""))
  return logs.log_steps_to_episode(steps, config, episode_metadata)


def episodes(reader: Any, config: S.SchemaConfig | None = None
             ) -> Iterator[dict[str, Any]]:
  """Every episode that ``reader`` (an ``envlogger.Reader``) indexes, decoded with the
  log's schema (or ``config``), in write order."""
  config = config or schema_config(reader)
  metadata = reader.episode_metadata()
  for index in range(len(reader.episodes)):
    yield decode_episode(reader.episodes[index], config,
                         metadata[index] if index < len(metadata) else None)


def read(log_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
  """Opens ``log_dir`` with ``envlogger.Reader`` and yields its decoded episodes."""
  from rlds_lm import _compat  # pylint: disable=g-import-not-at-top

  envlogger = _compat.import_envlogger()
  with envlogger.Reader(os.fspath(log_dir)) as reader:
    yield from episodes(reader)
