"""``--help`` for every command line of the project (``rlds-lm``, ``python -m pipelines.*``).

Imports nothing of ours, so every layer may use it.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Descriptions as written, and every flag's default: `` (default: X)`` is added to
  the help text unless it already says what the default is, as it must where the
  default is ``None`` or ``""`` (that is, "not given": the text says what happens then).
  """

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if ("default" not in text and action.option_strings and not action.required
        and action.default not in (None, "", argparse.SUPPRESS)):
      text += " (default: %(default)s)"
    return text
