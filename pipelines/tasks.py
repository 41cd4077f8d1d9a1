"""Moved to :mod:`rlds_lm.tasks`: prompt formats, task detection, prompt records.

A thin re-export while other branches still import ``pipelines.tasks``; new code imports
:mod:`rlds_lm.tasks`.
"""

from rlds_lm.tasks import ARITHMETIC  # noqa: F401
from rlds_lm.tasks import SOURCE_LINE  # noqa: F401
from rlds_lm.tasks import SUMMARIZATION  # noqa: F401
from rlds_lm.tasks import TASKS  # noqa: F401
from rlds_lm.tasks import Prompt  # noqa: F401
from rlds_lm.tasks import detect_task  # noqa: F401
from rlds_lm.tasks import parse_jsonl_line  # noqa: F401
from rlds_lm.tasks import prompt_text  # noqa: F401
from rlds_lm.tasks import record_key  # noqa: F401
from rlds_lm.tasks import to_prompt  # noqa: F401
