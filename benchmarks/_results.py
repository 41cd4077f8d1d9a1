"""What the reproductions (``repro_gkd``, ``repro_jbond``, ``repro_rlef``) share: their
page (docs/results.md), their plots and their ``main``.

Each reproduction writes its raw numbers to ``benchmarks/results/<name>.json`` and
regenerates its own section of docs/results.md (``benchmarks._common.run_benchmark``);
this module adds the page's introduction, the figure names and files, and restoring the
checkpoints the runs leave behind.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks import _common as C

DOC_NAME = "results.md"
DOC_INTRO = """\
# Results

Experiments run with rlds_lm's own trainers on data published as rollout datasets, as
opposed to the throughput measurements of [benchmarks.md](benchmarks.md). Each one is a
script in `benchmarks/` that writes its raw numbers to `benchmarks/results/<name>.json`
and regenerates its own section of this file between `<!-- begin: <name> -->` /
`<!-- end: <name> -->` markers (plots next to it); everything outside the markers is
written by hand. They are toy-scale, CPU-sized replications of published claims: they
check that the code paths behave as the papers describe, not that the claims hold at
scale.

"""


def restore(path: str):
  """``(config, params)`` of a checkpoint a run wrote."""
  from rlds_lm.models import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  restored = ckpt_lib.restore(path)
  return restored.config, restored.params


def plot_name(quick: bool, name: str) -> str:
  """The figure's file name next to docs/results.md (``.quick`` for smoke runs)."""
  return f"{name}{'.quick' if quick else ''}.png"


def save_figure(fig, path: str) -> str:
  """Writes a results figure (PNG) and releases it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def results_main(name: str, args, run, markdown, plot) -> int:
  """The shared ``main`` body of the reproductions: run (or reload), plot next to
  docs/results.md, and regenerate the section ``name`` there."""

  def render(data: dict[str, Any]) -> str:
    if args.out:
      os.makedirs(args.out, exist_ok=True)
      path = plot(data, os.path.join(args.out, plot_name(data["quick"], name)))
      print(f"wrote {path}")
    return markdown(data)

  return C.run_benchmark(name, args, run, render, doc_name=DOC_NAME, intro=DOC_INTRO)
