"""Tasks and rewards: prompt formats, exact checkers and oracles, the learned NLI scorer,
and the one reward registry.

A *task* is a kind of prompt record (``arithmetic``: ``question`` / ``answer``;
``summarization``: ``document`` / ``facts``): which field detects it and the prompt text
the policy sees. A *reward* maps a prompt record and its completions to one score per
completion (and per-token scores where it has them)::

    from rlds_lm import tasks
    reward = tasks.get_reward("arithmetic")
    reward({"question": "2+2?", "answer": "4"}, ["The answer is 4.", "5"]).values
    # array([1., 0.], dtype=float32)

The trainers (``bond``, ``rlef``, ``distill``'s evaluation through :mod:`rlds_lm.toy`),
the Beam ``score`` stage and the TFDS builders all use this package, which imports
neither the pipelines, the builders, TensorFlow nor Beam.

Every module of the package is imported with it, and modules register their tasks and
rewards with :func:`register_task` / :func:`register_reward`: a new task or reward is
one new module here (docs/tasks.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from rlds_lm.tasks.errors import RecordError
from rlds_lm.tasks.prompts import Prompt
from rlds_lm.tasks.prompts import SOURCE_LINE
from rlds_lm.tasks.prompts import detect_task
from rlds_lm.tasks.prompts import parse_jsonl_line
from rlds_lm.tasks.prompts import prompt_text
from rlds_lm.tasks.prompts import record_key
from rlds_lm.tasks.prompts import to_prompt
from rlds_lm.tasks.registry import REWARDS
from rlds_lm.tasks.registry import TASKS
from rlds_lm.tasks.registry import Reward
from rlds_lm.tasks.registry import Scores
from rlds_lm.tasks.registry import Task
from rlds_lm.tasks.registry import get_reward
from rlds_lm.tasks.registry import register_reward
from rlds_lm.tasks.registry import register_task

ARITHMETIC = "arithmetic"
SUMMARIZATION = "summarization"

# Every module registers what it defines (sorted: the same order on every machine).
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if not _module.startswith("_"):
    importlib.import_module(f"{__name__}.{_module}")
del _module
