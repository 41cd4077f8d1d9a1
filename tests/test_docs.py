"""The docs stay true: docs/schema.md is generated from the code, and every command
block of the docs runs as written (``test_every_command_block_is_accounted_for`` says
which test runs each one)."""

import glob
import os
import re
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_schema_doc_matches_the_code():
  result = subprocess.run([sys.executable, os.path.join(REPO, "docs", "gen_schema_examples.py"),
                           "--check"], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def _bash_block(doc: str, first_line: str) -> str:
  with open(os.path.join(REPO, doc if doc == "README.md" else os.path.join("docs", doc))) as f:
    text = f.read()
  match = re.search(r"```(?:bash|sh)?\n(" + re.escape(first_line) + r".*?)```", text, re.S)
  assert match, f"{doc} has no command block starting with {first_line!r}"
  return match.group(1)


# Every command block (```bash, ```sh, or a bare ``` of commands) of README.md and docs/,
# by (file, first line): the test that runs it, or why none can.
COMMAND_BLOCKS = {
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -q -e . &&"):
        "test_quickstart_doc_commands_run (the quickstart part, --size small); the "
        "install is what .ci/run does",
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test,gemma]'"):
        ".ci/run runs it verbatim: it is the test run itself",
    ("pipelines.md", "# Prompt sources"): "test_pipelines_doc_full_run_works",
    ("pipelines.md", "python -m pipelines.generate --prompts=gs://"):
        "not run: needs a Google Cloud project, bucket and Dataflow",
    ("pipelines.md", "python -m pipelines.teacher --rollouts=gs://"):
        "not run: needs a Google Cloud project, bucket and Dataflow",
    ("pipelines.md", "python -m pipelines.score --rollouts=gs://"):
        "not run: needs a Google Cloud project, bucket and Dataflow",
    ("pipelines.md", "python -m pipelines.dask_cluster --workers 2"):
        "tests/pipelines/test_dask_runner.py (LocalDaskCluster runs it; a stage with "
        "--runner=DaskRunner --dask_client_address on it)",
    ("pipelines.md", "dask scheduler --port 8786 &"):
        "tests/pipelines/test_dask_runner.py::"
        "test_a_cluster_from_the_dask_command_lines_runs_a_stage (on a free port)",
    ("trainers.md", "# After the full run"): "test_pipelines_doc_full_run_works",
    ("multihost.md", "for i in 0 1; do"):
        "tests/trainers/test_multihost.py::test_distill_command_line_on_two_processes_"
        "trains_exactly_like_one runs these flags (a free port, a small published dataset "
        "and a one-layer student checkpoint)",
    ("schema.md", "python docs/gen_schema_examples.py"): "test_schema_doc_commands_run",
    ("benchmarks.md", "python -m benchmarks.record_throughput"):
        "test_benchmark_doc_commands_run (each with --quick)",
    ("install.md", "tfds build --imports builders.arithmetic"):
        "tests/test_cli.py::test_install_doc_tfds_build_commands_run",
    ("interop.md", "# On the quickstart's output"): "test_quickstart_doc_commands_run",
    ("interop.md", "rlds-lm export"): "test_quickstart_doc_commands_run",
    ("quickstart.md", "rlds-lm quickstart --workdir"): "test_quickstart_doc_commands_run "
    "(--size small)",
    ("quickstart.md", "# After a quickstart"): "test_quickstart_doc_commands_run",
    ("annotate.md", "rlds-lm annotate DATA/"):
        "tests/test_annotate.py runs `rlds-lm annotate DATASET --out OUT --port P "
        "--undo_window_s 1 --overlap 2` and drives it in Chromium",
    ("serving.md", "export OPENAI_API_KEY"):
        "tests/pipelines/test_pipeline_served.py runs generate -> teacher -> score -> "
        "judge -> publish with these endpoint flags against rlds-lm serve and scripted "
        "servers (vLLM itself cannot run here: no GPU, no model downloads)",
    ("serving.md", "rlds-lm serve ckpt/policy"):
        "tests/backends/test_serve.py's fixture runs `rlds-lm serve CKPT --port P --name N "
        "--api_key_env NAME` on a tiny checkpoint",
}


def _command_blocks():
  docs = sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))) + [
      os.path.join(REPO, "README.md")]
  for path in docs:
    with open(path) as f:
      text = f.read()
    # Every fenced block in order (a closing fence is never taken for an opening one).
    for match in re.finditer(r"^```(\w*)\n(.*?)^```[ \t]*$", text, re.S | re.M):
      language, body = match.groups()
      if language not in ("bash", "sh", ""):
        continue
      if language == "" and not re.search(r"^(python|rlds-lm|tfds) ", body, re.M):
        continue  # a bare block of something else (a diagram, a listing)
      yield os.path.basename(path), body.splitlines()[0]


def test_every_command_block_is_accounted_for():
  found = set()
  for doc, first in _command_blocks():
    keys = [k for k in COMMAND_BLOCKS if k[0] == doc and first.startswith(k[1])]
    assert keys, (f"{doc}: the command block starting {first!r} is run by no test: add "
                  f"it to a test and to COMMAND_BLOCKS")
    found.update(keys)
  assert found == set(COMMAND_BLOCKS), f"stale entries: {set(COMMAND_BLOCKS) - found}"


def _run_block(block: str, cwd, timeout: int = 900) -> str:
  bin_dir = os.path.dirname(sys.executable)
  env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
             PYTHONPATH=REPO)
  done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  return done.stdout


def test_schema_doc_commands_run():
  block = _bash_block("schema.md", "python docs/gen_schema_examples.py")
  commands = [line.split("#")[0].strip() for line in block.splitlines()]
  # --write rewrites docs/schema.md; --check (below, and in the test above) proves it
  # would write what is there.
  out = _run_block("\n".join(c for c in commands if "--write" not in c), REPO)
  assert "```yaml" in out or "SchemaConfig" in out


def test_quickstart_doc_commands_run(quickstart_small):
  """README's main job and docs/quickstart.md (at --size small, made by the fixture
  with the same command), then docs/quickstart.md's and docs/interop.md's commands on
  its output."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  cwd, workdir, _ = quickstart_small
  readme = _bash_block("README.md", "python3 -m venv .venv && .venv/bin/pip install -q -e . &&")
  assert "rlds-lm quickstart --workdir" in readme
  assert _bash_block("quickstart.md", "rlds-lm quickstart --workdir").startswith(
      "rlds-lm quickstart --workdir qs")
  out = _run_block(_bash_block("quickstart.md", "# After a quickstart"), cwd)
  assert "rollout episodes" in out
  out = _run_block(_bash_block("interop.md", "# On the quickstart's output"), cwd)
  assert (workdir / "viewer.html").stat().st_size > 1000 and "viewer:" in out
  out = _run_block(_bash_block("interop.md", "rlds-lm export"), cwd)
  for name in ("onpolicy_distill", "onpolicy_sft"):
    builder = tfds.builder_from_directory(os.fspath(workdir / "imported" / name / "1.0.0"))
    assert builder.info.splits["train"].num_examples > 0


def test_benchmark_doc_commands_run(tmp_path):
  """docs/benchmarks.md's commands, each as its --quick smoke run, two at a time, each
  writing its table into its own temporary folder."""
  block = _bash_block("benchmarks.md", "python -m benchmarks.record_throughput")
  commands = []
  for i, line in enumerate(l for l in block.splitlines() if l.strip()):
    out = tmp_path / str(i)
    out.mkdir()
    commands.append(line.split("#")[0].strip().replace("--out docs/", f"--out {out}")
                    + " --quick")
  (tmp_path / "commands").write_text("\n".join(commands) + "\n")
  _run_block(f"xargs -P 2 -d '\\n' -I CMD bash -c CMD < {tmp_path / 'commands'}", REPO,
             timeout=1200)
  for i in range(len(commands)):
    assert "quick" in (tmp_path / str(i) / "benchmarks.md").read_text()


def test_results_doc_commands_run(tmp_path):
  """docs/results.md's reproductions, each run by the command the doc gives (as its
  --quick smoke run, two at a time), each writing its section and its claims."""
  import json  # pylint: disable=g-import-not-at-top

  with open(os.path.join(REPO, "docs", "results.md"), encoding="utf-8") as f:
    text = f.read()
  names = re.findall(r"`python -m benchmarks\.(repro_\w+) --out docs/`", text)
  assert sorted(set(names)) == ["repro_gkd", "repro_jbond", "repro_rlef"]
  commands = []
  for name in sorted(set(names)):
    (tmp_path / name).mkdir()
    commands.append(f"python -m benchmarks.{name} --out {tmp_path / name} --quick")
  (tmp_path / "commands").write_text("\n".join(commands) + "\n")
  _run_block(f"xargs -P 2 -d '\\n' -I CMD bash -c CMD < {tmp_path / 'commands'}", REPO,
             timeout=1200)
  for name in sorted(set(names)):
    section = (tmp_path / name / "results.md").read_text()
    assert f"<!-- begin: {name} -->" in section and "uick" in section
    with open(os.path.join(REPO, "benchmarks", "results", f"{name}.quick.json"),
              encoding="utf-8") as f:
      claims = json.load(f)["claims"]
    assert claims and all({"claim", "measured", "reproduced"} <= set(c) for c in claims)


def _python_blocks(doc: str) -> list[str]:
  with open(os.path.join(REPO, "docs", doc)) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_overview_and_models_code_runs(tmp_path):
  """docs/overview.md's record -> publish -> replay snippets in sequence, then
  docs/models.md's sampling snippet (after a few lines that make its inputs)."""
  setup = ("from rlds_lm import models\n"
           "from rlds_lm.models import gemma\n"
           "config = models.get_config('tiny')\n"
           "params = gemma.init_params(config, 0)\n"
           "prompt_ids, seed = tok.encode('2+3=', add_bos=True), 7\n")
  code = "\n".join(_python_blocks("overview.md")) + "\n" + setup + \
      _python_blocks("models.md")[0] + "\nprint('steps', len(episode['steps']), " \
      "'batch', sorted(first), done[0].stop_reason)\n"
  script = tmp_path / "snippets.py"
  script.write_text(code)
  done = subprocess.run([sys.executable, os.fspath(script)], cwd=tmp_path, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO))
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  assert "steps 2 batch" in done.stdout
  assert (tmp_path / "datasets" / "my_rollouts" / "1.0.0" / "dataset_info.json").exists()


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
  # docs/trainers.md's RLEF and J-BOND snippets on the same files (2 steps each here).
  snippets = [b for b in _python_blocks("trainers.md")
              if "rlef.train(" in b or "bond.train(" in b]
  assert len(snippets) == 2
  code = "\n".join(re.sub(r"steps=\d+", "steps=2", b) for b in snippets)
  done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                        text=True, timeout=600, env=dict(env, PYTHONPATH=REPO))
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  for run in ("rlef", "jbond"):
    assert (tmp_path / "runs" / run / "metrics.jsonl").read_text().count("\n") == 2
