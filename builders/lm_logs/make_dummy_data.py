"""Regenerates ``dummy_data/log``: the small Riegeli log of the ``dummy`` config.

Run from the repository root::

    python builders/lm_logs/make_dummy_data.py

The episodes are a pure function of the code here (``rlds_lm.testing.fake_rollout``
with fixed seeds), recorded with :class:`rlds_lm.recorder.Recorder` (Riegeli backend,
one flush per episode). envlogger names each writer session's shard directory after the
wall clock and stores timestamps in the records, so the script renames the shard to a
fixed name; the bytes still differ from run to run, the decoded episodes do not
(``lm_logs_dataset_builder_test`` checks the committed log against
:func:`dummy_episodes`).
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from rlds_lm import recorder
from rlds_lm import schema as S
from rlds_lm import testing as T

DUMMY_LOG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dummy_data", "log")
DUMMY_SCHEMA = S.SchemaConfig(vocab_size=259, teacher_top_k=4, reward_names=("correct",))
SHARD_NAME = "00000000T000000000000"  # envlogger's timestamped shard name, fixed


def dummy_episodes() -> list[dict[str, Any]]:
  """The episodes of the dummy log, in recording order (1, 2 and 1 turns)."""
  return [T.fake_rollout(DUMMY_SCHEMA, seed=seed, turns=1 + seed % 2, prompt_len=5,
                         action_len=4 + seed, thinking=(seed == 1))
          for seed in range(3)]


def write_dummy_log(log_dir: str = DUMMY_LOG_DIR) -> list[str]:
  """Writes :func:`dummy_episodes` as a fresh log in ``log_dir``; returns their ids.

  An existing ``log_dir`` is replaced (it must be a recorder log or empty).
  """
  if os.path.exists(log_dir):
    if os.listdir(log_dir) and not os.path.exists(os.path.join(log_dir, "metadata.riegeli")):
      raise FileExistsError(f"{log_dir} exists and is not a Riegeli log; not replacing it")
    shutil.rmtree(log_dir)
  with recorder.Recorder(log_dir, DUMMY_SCHEMA, backend=recorder.RIEGELI) as rec:
    ids = [rec.record(episode) for episode in dummy_episodes()]
  (shard,) = [d for d in os.listdir(log_dir) if os.path.isdir(os.path.join(log_dir, d))]
  os.rename(os.path.join(log_dir, shard), os.path.join(log_dir, SHARD_NAME))
  return ids


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--log_dir", default=DUMMY_LOG_DIR, help="where to write the log")
  args = parser.parse_args()
  ids = write_dummy_log(args.log_dir)
  size = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(args.log_dir) for name in names)
  print(f"wrote {len(ids)} episodes ({size} bytes) to {args.log_dir}: {', '.join(ids)}")


if __name__ == "__main__":
  main()
