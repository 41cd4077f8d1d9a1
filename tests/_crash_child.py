"""Child process for test_crash.py: records episodes forever, announcing each closed one."""

import sys

from conftest import ROLLOUT
from rlds_lm import recorder
from rlds_lm import testing as T


def main(log_dir: str, start: int) -> None:
  with recorder.Recorder(log_dir, ROLLOUT) as rec:
    i = start
    while True:
      episode_id = rec.record(T.fake_rollout(ROLLOUT, seed=i, turns=1 + i % 3,
                                             action_len=16))
      print(episode_id, flush=True)  # printed only after record() returned (flushed)
      i += 1


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
