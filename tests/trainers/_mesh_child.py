"""Child of test_distill: the same run on 1 device and on a 4-way data mesh."""

import json
import os
import sys

import jax

from rlds_lm.trainers import common
from rlds_lm.trainers import distill


def main(dataset: str, root: str, out: str) -> None:
  curves = {"devices": len(jax.devices())}
  for name, data in (("mesh1", 1), ("mesh4", 4)):
    config = distill.DistillConfig(
        datasets={dataset: 1.0}, workdir=os.path.join(root, name), steps=8, batch_size=8,
        max_length=32, log_every=1, checkpoint_every=8, seed=3, mesh_data=data,
        optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=2))
    distill.train(config)
    with open(os.path.join(root, name, "metrics.jsonl")) as f:
      curves[name] = [json.loads(line)["loss"] for line in f]
  with open(out, "w") as f:
    json.dump(curves, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
