"""Crash safety: SIGKILL at random moments.

* Inline writer: a kill loses at most the open episode.
* Writer process (``writer="process"``): a kill of the recording process loses nothing whose
  ``record`` returned (the writer process drains the pipe, closes the files and exits);
  a kill of both loses nothing before the last ``flush()`` and at most ``max_unflushed``
  recorded episodes.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROLLOUT
from rlds_lm import logs
from rlds_lm import recorder
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import validate as V

HERE = os.path.dirname(os.path.abspath(__file__))


def _gone(pid, timeout=60.0):
  """Whether process ``pid`` exits (or is a zombie) within ``timeout`` seconds."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
          return True
    except FileNotFoundError:
      return True
    time.sleep(0.05)
  return False


def _run_and_kill(log_dir, start, delay, writer, flush_each=0, max_unflushed=64,
                  kill_writer=False):
  """Starts a recording child, SIGKILLs it (and its writer process with ``kill_writer``)
  after ``delay`` s of recording; returns (the child's announcements, writer pid)."""
  env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
  child = subprocess.Popen([sys.executable, os.path.join(HERE, "_crash_child.py"),
                            str(log_dir), str(start), writer, str(flush_each),
                            str(max_unflushed)], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=env, text=True)
  lines = []
  first = threading.Event()

  def pump():
    for line in child.stdout:
      lines.append(line.strip())
      if len(lines) > 1:
        first.set()

  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  assert first.wait(120), "child never recorded an episode"
  writer_pid = int(lines[0].split()[1])
  time.sleep(delay)
  if kill_writer:  # both at once, the writer first: nothing drains the pipe
    os.kill(writer_pid, signal.SIGKILL)
  child.send_signal(signal.SIGKILL)
  child.wait()
  reader.join(10)
  return lines[1:], writer_pid


@pytest.mark.parametrize("writer", [recorder.INLINE, recorder.PROCESS])
def test_sigkill_of_the_recorder_loses_at_most_the_open_episode(tmp_path, writer):
  rng = random.Random(1234)
  log_dir = tmp_path / "log"
  announced = []
  start = 0
  for _ in range(4):
    closed, writer_pid = _run_and_kill(log_dir, start, rng.uniform(0.0, 0.6), writer)
    assert closed, "nothing recorded before the kill"
    announced += closed
    start += 100_000  # new seeds: reopening must not collide with old ids
    if writer == recorder.PROCESS:
      # The orphaned writer process writes what the pipe held, then exits.
      logs.wait_for_writers(log_dir)
      assert _gone(writer_pid), "the writer process outlived its work"
    stats = logs.LogReadStats()
    found = [e[S.EPISODE_ID] for e in logs.read_log(log_dir, stats=stats)]
    # Every episode announced as closed is readable; at most one more per kill (the one
    # written after the announcement was printed but before the kill) may also be there.
    assert set(announced) <= set(found)
    assert len(found) - len(announced) <= 4
    if writer == recorder.PROCESS:
      assert stats.incomplete_episodes == 0  # a partial frame is never written
    assert stats.incomplete_episodes <= 4
    assert not stats.damaged, stats  # a kill is not damage: nothing else is skipped
  # Reopening continues without overwriting, and every episode decodes and validates.
  extra = T.fake_rollout(ROLLOUT, seed=999_999)
  with recorder.Recorder(log_dir, ROLLOUT, writer=writer) as rec:
    rec.record(extra)
  episodes = list(logs.read_log(log_dir))
  ids = [e[S.EPISODE_ID] for e in episodes]
  assert set(announced) <= set(ids) and ids[-1] == extra[S.EPISODE_ID]
  assert len(ids) == len(set(ids))
  for episode in episodes:
    V.validate_episode(episode, ROLLOUT)


def test_sigkill_of_recorder_and_writer_loses_at_most_max_unflushed(tmp_path):
  rng = random.Random(4321)
  log_dir = tmp_path / "log"
  max_unflushed, flush_each = 8, 5
  durable, announced = [], []
  start = 0
  for _ in range(4):
    lines, writer_pid = _run_and_kill(log_dir, start, rng.uniform(0.0, 0.6),
                                      recorder.PROCESS, flush_each, max_unflushed,
                                      kill_writer=True)
    assert _gone(writer_pid)
    ids = [line for line in lines if line != "flushed"]
    assert ids, "nothing recorded before the kill"
    last_flush = max((i for i, line in enumerate(lines) if line == "flushed"), default=0)
    durable += [line for line in lines[:last_flush] if line != "flushed"]
    announced += ids
    start += 100_000
    logs.wait_for_writers(log_dir)  # nothing left to wait for: the writer is dead
    stats = logs.LogReadStats()
    found = set()  # a kill before the writer process opened the log leaves none
    if os.path.exists(log_dir / "metadata.riegeli"):
      found = set(e[S.EPISODE_ID] for e in logs.read_log(log_dir, stats=stats))
    assert set(durable) <= found  # everything before a returned flush()
    lost = [i for i in ids if i not in found]
    assert len(lost) <= max_unflushed, (len(lost), max_unflushed)
    assert not stats.damaged, stats


def test_no_writer_process_is_left_after_close_or_exit(tmp_path):
  with recorder.Recorder(tmp_path / "a", ROLLOUT, writer=recorder.PROCESS) as rec:
    rec.record(T.fake_rollout(ROLLOUT, seed=1))
    pid = rec.writer_pid
    assert pid and not _gone(pid, timeout=0.1)
  assert _gone(pid, timeout=5)
  # A recording process that exits without close(): its writer process still finishes.
  code = ("import sys; from conftest import ROLLOUT; from rlds_lm import recorder, testing"
          " as T; rec = recorder.Recorder(sys.argv[1], ROLLOUT, writer='process'); "
          "print(rec.writer_pid, flush=True); rec.record(T.fake_rollout(ROLLOUT, seed=2)); "
          "sys.exit(0)")
  env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
  done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], env=env,
                        capture_output=True, text=True, timeout=120, check=True)
  assert _gone(int(done.stdout.split()[0]), timeout=30)
  logs.wait_for_writers(tmp_path / "b")
  assert len(list(logs.read_log(tmp_path / "b"))) == 1


def test_a_dead_writer_process_is_reported_on_the_next_call(tmp_path):
  rec = recorder.Recorder(tmp_path, ROLLOUT, writer=recorder.PROCESS)
  first = rec.record(T.fake_rollout(ROLLOUT, seed=1))
  rec.flush()
  os.kill(rec.writer_pid, signal.SIGKILL)
  assert _gone(rec.writer_pid)
  with pytest.raises(RuntimeError, match="writer process"):
    for seed in range(2, 200):  # the death shows at the latest when the pipe breaks
      rec.record(T.fake_rollout(ROLLOUT, seed=seed))
      rec.flush()
  with pytest.raises(RuntimeError, match="writer process"):
    rec.close()
  assert [e[S.EPISODE_ID] for e in logs.read_log(tmp_path)][:1] == [first]


def test_reopening_while_a_writer_process_is_open_is_refused_after_a_wait(tmp_path,
                                                                          monkeypatch):
  monkeypatch.setattr(recorder, "WRITER_WAIT_S", 0.2)
  with recorder.Recorder(tmp_path, ROLLOUT, writer=recorder.PROCESS) as rec:
    rec.record(T.fake_rollout(ROLLOUT, seed=1))
    assert not logs.wait_for_writers(tmp_path, timeout=0.1)
    with pytest.raises(RuntimeError, match="still writing"):
      recorder.Recorder(tmp_path, ROLLOUT)
  assert logs.wait_for_writers(tmp_path, timeout=0.1)
  with recorder.Recorder(tmp_path, ROLLOUT) as rec:  # closed: reopening works
    with pytest.raises(V.EpisodeValidationError, match="duplicate"):
      rec.record(T.fake_rollout(ROLLOUT, seed=1))


def test_a_writer_process_that_fails_names_the_first_episode_not_on_disk(tmp_path):
  # envlogger's native writer aborts the process on unknown options: with a writer
  # process, the recording process survives and is told which episodes are lost.
  rec = recorder.Recorder(tmp_path, ROLLOUT, writer=recorder.PROCESS,
                          writer_options="no_such_option:7")
  first = T.fake_rollout(ROLLOUT, seed=1)
  lost = f"writer process.*from episode '{first[S.EPISODE_ID]}'"
  with pytest.raises(RuntimeError, match=lost):
    rec.record(first)
    rec.flush()
  with pytest.raises(RuntimeError, match="writer process"):
    rec.record(T.fake_rollout(ROLLOUT, seed=2))
  with pytest.raises(RuntimeError, match="writer process"):
    rec.close()
  assert _gone(rec.writer_pid)
