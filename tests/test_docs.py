"""docs/schema.md is generated from the code; this fails when the two drift apart."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_schema_doc_matches_the_code():
  result = subprocess.run([sys.executable, os.path.join(REPO, "docs", "gen_schema_examples.py"),
                           "--check"], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
