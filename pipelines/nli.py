"""``python -m pipelines.nli train --out DIR``: trains the learned NLI scorer.

A thin entry point next to the stages; the model, its training and loading, and the
reward ``nli`` are :mod:`rlds_lm.tasks.nli`.
"""

import sys

from rlds_lm.tasks.nli import main

if __name__ == "__main__":
  sys.exit(main())
