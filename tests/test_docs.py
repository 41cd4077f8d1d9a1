"""The docs stay true: docs/schema.md is generated from the code, and the commands of
docs/pipelines.md and docs/trainers.md run as written."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_schema_doc_matches_the_code():
  result = subprocess.run([sys.executable, os.path.join(REPO, "docs", "gen_schema_examples.py"),
                           "--check"], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def _bash_block(doc: str, first_line: str) -> str:
  import re  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO, "docs", doc)) as f:
    text = f.read()
  match = re.search(r"```bash\n(" + re.escape(first_line) + r".*?)```", text, re.S)
  assert match, f"docs/{doc} has no bash block starting with {first_line!r}"
  return match.group(1)


def test_pipelines_doc_full_run_works(tmp_path):
  """The "full run on one machine" of docs/pipelines.md, as written (one worker process
  per stage to keep the suite fast; the docs' default is two)."""
  block = _bash_block("pipelines.md", "# Prompt sources")
  block = block.replace("tfds build builders/", f"tfds build {REPO}/builders/")
  lines = []
  for line in block.splitlines():  # one worker: add the flag to each stage command
    if line.startswith("python -m pipelines.") and "pipelines.models" not in line and (
        "pipelines.nli" not in line):
      line = line.rstrip("\\").rstrip() + " --workers=1 \\" if line.endswith("\\") else (
          line + " --workers=1")
    lines.append(line)
  script = "set -euo pipefail\n" + "\n".join(lines)
  bin_dir = os.path.dirname(sys.executable)
  env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
  done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  assert "published summaries_tiny 1.0.0" in done.stdout
  assert "rollout episodes" in done.stdout  # rlds-lm inspect's summary
  assert (tmp_path / "work" / "datasets" / "summaries_tiny" / "1.0.0" / "README.md").exists()
  # docs/trainers.md's distillation command trains on that dataset (3 steps here).
  command = _bash_block("trainers.md", "# After the full run").splitlines()[1:]
  command = " ".join(line.rstrip("\\").strip() for line in command if line.strip())
  done = subprocess.run(["bash", "-c", command + " --steps 3"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  assert (tmp_path / "runs" / "kd" / "student").is_dir()
