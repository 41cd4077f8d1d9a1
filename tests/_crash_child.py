"""Child process for test_crash.py: records episodes forever, announcing each closed one.

Prints ``writer <pid>`` first (the writer process's pid, or 0 inline), then each episode
id once ``record`` has returned, and ``flushed`` after every ``Recorder.flush`` (every
``flush_each`` episodes; 0: never).
"""

import sys

from conftest import ROLLOUT
from rlds_lm import recorder
from rlds_lm import testing as T


def main(log_dir: str, start: int, writer: str, flush_each: int, max_unflushed: int) -> None:
  with recorder.Recorder(log_dir, ROLLOUT, writer=writer,
                         max_unflushed=max_unflushed) as rec:
    print(f"writer {rec.writer_pid or 0}", flush=True)
    i = start
    while True:
      episode_id = rec.record(T.fake_rollout(ROLLOUT, seed=i, turns=1 + i % 3,
                                             action_len=16))
      print(episode_id, flush=True)  # printed only after record() returned
      i += 1
      if flush_each and (i - start) % flush_each == 0:
        rec.flush()
        print("flushed", flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
