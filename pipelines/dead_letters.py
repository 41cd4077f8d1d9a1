"""Dead letters: the records a stage could not process, with their stage, key and reason.

A stage never fails on one bad record. Each per-record step emits one PCollection of
tagged ``(kind, value)`` pairs: ``(OK, output)`` for what goes on, ``(DEAD,
DeadLetter)`` for what was dropped; :class:`SplitTagged` separates them with two
filters. (Not a multi-output ``ParDo``: Beam's DaskRunner routes ``TaggedOutput``s to
the wrong consumer; plain filters run the same on every runner.)
Every drop increments the Beam counters ``<stage>/dropped`` and
``<stage>/dead_letter.<reason>``; :func:`write_dead_letters` stores the letters as JSON
lines under the output's temporary folder, where ``scaffold.finalize`` gathers them into
``dead_letter.jsonl`` and ``dead_letter_summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam

from pipelines.errors import RecordError

DEAD_LETTER = "dead_letter"  # label of the dead-letter output of a stage
DEAD_LETTER_FILE = "dead_letter.jsonl"  # the dropped records, next to the dataset
DEAD_LETTER_SUMMARY = "dead_letter_summary.json"  # counts by stage and reason
COUNTER_NAMESPACE = "rlds_lm"
TMP_DIR = "_rlds_lm_tmp"  # per-shard counts and dead letters, removed by finalize
OK = "ok"  # kind of a tagged element that goes on
DEAD = "dead"  # kind of a tagged element that was dropped (its value is a DeadLetter)
# The element type of a tagged PCollection. Declared on the DoFns that emit one: Beam's
# inference would otherwise merge (OK, (split, x)) and (DEAD, letter) into one tuple
# type and pick a coder that cannot hold the letter.
TAGGED = beam.typehints.Tuple[str, Any]


@dataclasses.dataclass(frozen=True)
class DeadLetter:
  """A record that a stage could not process.

  Attributes:
    stage: the stage that dropped it.
    key: the record's key (episode_id, prompt_id or input position).
    reason: a short machine-readable reason (the counter name).
    detail: the error message.
    split: the split the record belonged to.
  """

  stage: str
  key: str
  reason: str
  detail: str
  split: str = ""

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)


def reason_of(error: BaseException) -> str:
  """The counter name of an error: a RecordError's reason, else its type."""
  if isinstance(error, RecordError):
    return error.reason
  from rlds_lm import validate as V  # pylint: disable=g-import-not-at-top
  if isinstance(error, V.EpisodeValidationError):
    return "invalid_episode"
  return type(error).__name__


def counter(stage: str, name: str):
  return beam.metrics.Metrics.counter(f"{COUNTER_NAMESPACE}.{stage}", name)


def count_dropped(letter: DeadLetter) -> DeadLetter:
  """Increments the counters of a dropped record; returns the letter."""
  counter(letter.stage, "dropped").inc()
  counter(letter.stage, f"dead_letter.{letter.reason}").inc()
  return letter


class SplitTagged(beam.PTransform):
  """``(kind, value)`` pairs -> ``(values of kind OK, DeadLetters of kind DEAD)``."""

  def expand(self, tagged):
    main = tagged | "Ok" >> beam.FlatMap(lambda kv: [kv[1]] if kv[0] == OK else [])
    dead = tagged | "Dead" >> beam.FlatMap(lambda kv: [kv[1]] if kv[0] == DEAD else [])
    return main, dead


class SafeMap(beam.DoFn):
  """Applies ``fn(item) -> iterable of outputs``; failures become dead letters.

  Elements are ``(split, item)`` pairs: ``fn`` gets the item, and each of its outputs
  is emitted as ``(OK, (split, output))``. An exception from one element emits ``(DEAD,
  DeadLetter)`` (key from ``key_fn``) and increments the counters ``<stage>/dropped``
  and ``<stage>/dead_letter.<reason>``; elements that succeed increment ``<stage>/ok``.

  ``setup_fn`` (optional) runs once per worker and its result is passed to ``fn`` as
  its first argument (models are loaded there).
  """

  def __init__(self, stage: str, fn: Callable[..., Iterable[Any]],
               key_fn: Callable[[Any], str], setup_fn: Callable[[], Any] | None = None):
    super().__init__()
    self._stage = stage
    self._fn = fn
    self._key_fn = key_fn
    self._setup_fn = setup_fn
    self._state = None

  def setup(self):
    if self._setup_fn is not None:
      self._state = self._setup_fn()

  def process(self, element):
    split, item = element
    try:
      args = (item,) if self._setup_fn is None else (self._state, item)
      outputs = list(self._fn(*args))
    except Exception as e:  # pylint: disable=broad-except
      detail = str(e) or "".join(traceback.format_exception_only(type(e), e)).strip()
      try:
        key = str(self._key_fn(item))
      except Exception:  # pylint: disable=broad-except
        key = "?"
      yield DEAD, count_dropped(DeadLetter(self._stage, key, reason_of(e), detail[:2000],
                                           split))
      return
    counter(self._stage, "ok").inc()
    for output in outputs:
      yield OK, (split, output)


class SafeMapped(beam.PTransform):
  """``pcoll | SafeMapped(...)``: :class:`SafeMap`, split; ``(outputs, dead_letters)``."""

  def __init__(self, stage: str, fn: Callable[..., Iterable[Any]],
               key_fn: Callable[[Any], str], setup_fn: Callable[[], Any] | None = None):
    super().__init__()
    self._do_fn = SafeMap(stage, fn, key_fn, setup_fn)

  def expand(self, pcoll):
    return (pcoll
            | "Apply" >> beam.ParDo(self._do_fn).with_output_types(TAGGED)
            | "Split" >> SplitTagged())


def safe_map(pcoll, label: str, stage: str, fn, key_fn, setup_fn=None):
  """``pcoll | label >> SafeMapped(...)``; returns ``(main, dead_letters)``."""
  return pcoll | label >> SafeMapped(stage, fn, key_fn, setup_fn)


def write_dead_letters(pcolls: Sequence[Any], out_dir: str, label: str = "DeadLetters"):
  """Writes the dead letters of every PCollection in ``pcolls`` as JSON lines under the
  output's temporary folder (``finalize`` gathers them)."""
  from pipelines.dataset_io import WriteLines  # pylint: disable=g-import-not-at-top
  return (tuple(pcolls)
          | f"{label}Flatten" >> beam.Flatten()
          | f"{label}Json" >> beam.Map(lambda d: d.to_json())
          | f"{label}Write" >> WriteLines(os.path.join(out_dir, TMP_DIR,
                                                        f"dead_letter-{label}.jsonl")))
