"""The Recorder's Riegeli writer against envlogger's own: the same log, the same dataset."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import AGENTIC, PREFERENCE, ROLLOUT, agentic, preferences, rollouts
from rlds_lm import _compat
from rlds_lm import logs
from rlds_lm import recorder
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import validate as V

HERE = os.path.dirname(os.path.abspath(__file__))


def _codec():
  _compat.patch_numpy_for_envlogger()
  from envlogger.converters import codec
  from envlogger.proto import storage_pb2
  return codec, storage_pb2


def _odd_episode():
  """A rollout with multi-turn steps, non-ASCII text, a negative seed and buffers longer
  than the small-length table (16 KiB)."""
  episode = T.fake_rollout(ROLLOUT, seed=7, turns=2, action_len=3000)
  episode[S.STEPS][0][S.OBSERVATION][S.OBS_TEXT] = "héllo \u2603 " * 50
  episode[S.SAMPLER][S.SAMPLER_SEED] = -(2**40)
  episode[S.TASK] = ""
  return episode


@pytest.mark.parametrize("config,episodes", [
    (ROLLOUT, lambda: rollouts(4) + [_odd_episode()]), (AGENTIC, lambda: agentic(3)),
    (PREFERENCE, lambda: preferences(3))], ids=["rollout-teacher", "agentic-image",
                                                "preference"])
def test_wire_bytes_decode_to_what_envloggers_codec_encodes(config, episodes):
  codec, storage_pb2 = _codec()
  for episode in episodes():
    episode = V.validate_episode(episode, config)
    reference = logs.episode_to_log_steps(episode)
    fast = logs.episode_to_log_steps(episode, buffers=True)
    assert len(reference) == len(fast) >= 2
    for ref, mine in zip(reference, fast):
      assert storage_pb2.Data.FromString(logs._serialized(mine)) == codec.encode(ref)


def test_wire_bytes_of_every_value_kind():
  codec, storage_pb2 = _codec()
  value = {"i64": np.int64(-5), "big": np.int64(2**62), "f64": np.float64(-1.5),
           "t": True, "f": np.bool_(False), "int": -300, "zero": 0, "s": "é\u2603",
           "empty_list": [], "empty_dict": {}, "none": None, "strs": ["a", "", "b"],
           "long": b"\x01" * 20_000, "view": memoryview(np.arange(5000, dtype=np.int32)
                                                        ).cast("B"),
           "tuple": (1, None, {"x": np.float64(2.0)}), "f32": np.float32(0.5),
           "image": np.zeros((2, 3, 3), np.uint8)}
  expected = dict(value, view=np.arange(5000, dtype=np.int32).tobytes())
  assert storage_pb2.Data.FromString(logs._serialized(value)) == codec.encode(expected)


def _reference_log(log_dir, config, episodes):
  """The log as envlogger's own writer (RiegeliBackendWriter, codec.encode) writes it."""
  _compat.patch_numpy_for_envlogger()
  from envlogger import step_data
  from envlogger.backends import riegeli_backend_writer

  os.makedirs(log_dir)
  writer = riegeli_backend_writer.RiegeliBackendWriter(
      str(log_dir), max_episodes_per_file=100_000, writer_options=logs.DEFAULT_WRITER_OPTIONS,
      flush_scheduler=lambda _: False, metadata={logs.SCHEMA_KEY: config.to_json()})
  for episode in episodes:
    episode = V.validate_episode(episode, config)
    for j, triple in enumerate(logs.episode_to_log_steps(episode)):
      writer.record_step(step_data.StepData(*triple), is_new_episode=(j == 0))
    writer.set_episode_metadata(
        logs._encode_tree({k: v for k, v in episode.items() if k != S.STEPS}))
    writer._data_writer.flush()
  writer.close()


def _records(dataset_dir):
  import tensorflow as tf
  files = sorted(glob.glob(os.path.join(dataset_dir, "*.tfrecord*")))
  assert files
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


@pytest.mark.parametrize("config,make", [(ROLLOUT, lambda: rollouts(6) + [_odd_episode()]),
                                         (AGENTIC, agentic), (PREFERENCE, preferences)],
                         ids=["rollout-teacher", "agentic-image", "preference"])
def test_published_dataset_is_identical_to_envloggers_own_writers(tmp_path, config, make):
  episodes = make()
  _reference_log(tmp_path / "reference", config, episodes)
  for writer in (recorder.INLINE, recorder.PROCESS):
    with recorder.Recorder(tmp_path / writer, config, writer=writer) as rec:
      for episode in episodes:
        rec.record(episode)
  paths = [recorder.publish_log(tmp_path / log, data_dir=tmp_path / f"data-{log}",
                                name="same")
           for log in ("reference", recorder.INLINE, recorder.PROCESS)]
  reference, inline, process = (_records(p) for p in paths)
  assert len(inline) == len(episodes)
  assert inline == reference  # record for record, byte for byte
  assert process == reference


_CHILD = """
import sys
from conftest import ROLLOUT, rollouts
from rlds_lm import recorder
with recorder.Recorder(sys.argv[1], ROLLOUT, flush_every=2) as rec:
  for e in rollouts(3):
    rec.record(e)
  rec.flush()
  print("MARK flushes", file=sys.stderr, flush=True)
  for _ in range(5):
    rec.flush()
  print("MARK end", file=sys.stderr, flush=True)
"""


def _child_stderr(log_dir, writer="inline", **extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLOG_minloglevel", "RLDS_LM_VERBOSE")}
  env.update(extra, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
  code = _CHILD.replace("flush_every=2", f"flush_every=2, writer={writer!r}")
  done = subprocess.run([sys.executable, "-c", code, str(log_dir)], env=env,
                        capture_output=True, text=True, timeout=300, check=True)
  return done.stderr


def test_flush_with_nothing_new_writes_nothing_and_no_empty_steps_lines(tmp_path):
  quiet = _child_stderr(tmp_path / "quiet")
  assert "Empty steps" not in quiet, quiet
  # Everything native shown (glog INFO): a flush with nothing new is not passed on.
  verbose = _child_stderr(tmp_path / "verbose", RLDS_LM_VERBOSE="1")
  between = verbose.split("MARK flushes", 1)[1].split("MARK end", 1)[0]
  assert "Empty steps" not in between, between
  assert len(list(logs.read_log(tmp_path / "verbose"))) == 3


def test_a_writer_process_is_as_quiet(tmp_path):
  quiet = _child_stderr(tmp_path / "quiet", writer=recorder.PROCESS)
  assert "Empty steps" not in quiet, quiet
  assert len(list(logs.read_log(tmp_path / "quiet"))) == 3


def test_flush_makes_batched_episodes_readable_before_close(tmp_path):
  episodes = rollouts(5)
  with recorder.Recorder(tmp_path, ROLLOUT, flush_every=100) as rec:
    for e in episodes:
      rec.record(e)
    rec.flush()
    assert [e[S.EPISODE_ID] for e in logs.read_log(tmp_path)] == [
        e[S.EPISODE_ID] for e in episodes]
  with pytest.raises(RuntimeError, match="after close"):
    rec.flush()


# Scalars given as Python values skip numpy in validation (validate._Checker._py_scalar);
# they must be judged and normalised exactly as the same values as 0-d arrays are.
_SCALAR_CASES = [
    (S.SAMPLER, S.SAMPLER_TEMPERATURE, [0.1, 0.0, 1, -0.5, 1e39, float("nan"), True, 7]),
    (S.SAMPLER, S.SAMPLER_TOP_P, [0.3, 1, 0, 1.0000001, -1e-9, 2, False]),
    (S.SAMPLER, S.SAMPLER_TOP_K, [0, 5, -1, 2**31, 2**31 - 1, 1.0, True]),
    (S.SAMPLER, S.SAMPLER_SEED, [0, -(2**63), 2**63, 2**63 - 1, 3.0, True]),
    ("", S.SAMPLE_INDEX, [0, 3, -4, 2**40, 0.5]),
    ("", S.INVALID, [True, False, 0, 1, 0.0]),
]


def _outcome(episode):
  try:
    return "ok", V.validate_episode(episode, ROLLOUT)
  except V.EpisodeValidationError as err:
    return "error", str(err)


@pytest.mark.parametrize("group,field,values", _SCALAR_CASES,
                         ids=[c[1] for c in _SCALAR_CASES])
def test_python_scalars_validate_as_numpy_scalars_do(group, field, values):
  base = rollouts(1)[0]
  for value in values:
    outcomes = []
    for given in (value, np.asarray(value)):  # a 0-d array takes numpy's path
      episode = dict(base)
      if group:
        episode[group] = dict(base[group], **{field: given})
      else:
        episode[field] = given
      outcomes.append(_outcome(episode))
    (kind, fast), (slow_kind, slow) = outcomes
    assert kind == slow_kind, (field, value, fast, slow)
    if kind == "error":
      assert fast == slow
    else:
      got = fast[group][field] if group else fast[field]
      want = slow[group][field] if group else slow[field]
      assert type(got) is type(want) and got == want, (field, value, got, want)


def test_a_binding_that_refuses_serialized_bytes_gets_parsed_messages(tmp_path):
  writer = logs.RiegeliEpisodeWriter(tmp_path, ROLLOUT)
  refused = []

  def not_a_message(data):
    refused.append(data)
    return object()  # what the binding takes for no message at all: TypeError

  writer._message = not_a_message
  episodes = [V.validate_episode(e, ROLLOUT) for e in rollouts(3)]
  for episode in episodes:
    writer.write(episode)
  writer.close()
  assert len(refused) == 1 and writer._message is logs._data_message
  back = list(logs.read_log(tmp_path))
  for got, want in zip(back, episodes, strict=True):
    T.assert_episodes_equal(got, want)


def test_top_k_mass_check_decides_as_float64_does_at_the_limit():
  # Validation settles most rows with a float32 sum and re-sums rows near the limit
  # in float64: the decision must be the float64 one, right at the limit too.
  episode = T.fake_rollout(ROLLOUT, seed=3)
  teacher = episode[S.STEPS][0][S.TEACHER]
  length, k = teacher[S.TEACHER_TOPK_LOGPROBS].shape
  limit = 1.0 + V._MASS_SLACK
  for offset in (-3e-4, -1e-4, -2e-5, -1e-6, 0.0, 1e-6, 2e-5, 1e-4, 3e-4):
    row = np.full(k, np.log((limit + offset) / k), np.float32)
    teacher[S.TEACHER_TOPK_LOGPROBS] = np.tile(row, (length, 1))
    too_much = np.exp(row.astype(np.float64)).sum() > limit
    outcome, message = _outcome(episode)
    assert outcome == ("error" if too_much else "ok"), (offset, message)
    if too_much:
      assert "summing to <= 1" in message


@pytest.mark.parametrize("config,episodes", [
    (ROLLOUT, lambda: rollouts(3) + [_odd_episode()]), (AGENTIC, lambda: agentic(2)),
    (PREFERENCE, lambda: preferences(2))], ids=["rollout-teacher", "agentic-image",
                                                "preference"])
def test_encode_episode_is_what_envloggers_codec_encodes(config, episodes):
  codec, storage_pb2 = _codec()
  for episode in episodes():
    episode = V.validate_episode(episode, config)
    reference = logs.episode_to_log_steps(episode)
    records, metadata = logs.encode_episode(episode)
    assert len(records) == len(reference)
    for ref, record in zip(reference, records):
      assert storage_pb2.Data.FromString(record) == codec.encode(ref)
    assert storage_pb2.Data.FromString(metadata) == codec.encode(
        reference[-1][2][logs.EPISODE_METADATA_KEY])
    # Byte for byte what _wire writes of episode_to_log_steps' steps.
    assert records == [logs._serialized(step)
                       for step in logs.episode_to_log_steps(episode, buffers=True)]
