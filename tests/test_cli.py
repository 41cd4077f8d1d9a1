"""The rlds-lm command line, run as a user runs it."""

import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from rlds_lm import cli


def _run(*args, check=True):
  result = subprocess.run([sys.executable, "-m", "rlds_lm.cli", *args], capture_output=True,
                          text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_small_quickstart_runs_the_whole_loop_then_inspect(quickstart_small):
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top

  _, workdir, out = quickstart_small
  for stage in ("1/5 data", "2/5 teacher", "3/5 student", "4/5 on-policy", "5/5 report"):
    assert stage in out
  last = out.strip().splitlines()[-3:]  # where things are
  assert last[0].endswith(str(workdir / "datasets")) and "checkpoints:" in last[1]
  assert last[2].endswith(str(workdir / "report.md"))
  result = json.loads((workdir / "quickstart.json").read_text())
  assert len(result["iterations"]) == 2
  report = (workdir / "report.md").read_text()
  for name in ("accuracy.png", "divergence.png", "reward.png"):
    assert (workdir / name).stat().st_size > 5000 and f"]({name})" in report
  assert f"| student after SFT | {result['student_sft']['accuracy']:.3f} |" in report
  # The report points to the papers' reproductions, with each claim's verdict.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  assert f"]({os.path.join(repo, 'docs', 'results.md')})" in report
  for name in ("repro_gkd", "repro_jbond", "repro_rlef"):
    assert f"`python -m benchmarks.{name} --out docs/`" in report
    saved = os.path.join(repo, "benchmarks", "results", name + ".json")
    if os.path.exists(saved):
      with open(saved, encoding="utf-8") as f:
        for claim in json.load(f).get("claims", []):
          verdict = "reproduced" if claim["reproduced"] else "not reproduced"
          assert f"  - {claim['claim']}: **{verdict}**" in report
  for it in result["iterations"]:
    # Each iteration's generations are a published TFDS dataset; its episodes' rewards
    # are the exact-answer check, and their mean is the reported reward.
    builder = tfds.builder_from_directory(it["dataset"])
    assert builder.info.splits["train"].num_examples == it["episodes"] > 0
    _, records = R.iter_records(it["dataset"], "train")
    rewards = [float(R.materialize(r)[S.STEPS][0][S.REWARD]) for r in records]
    assert set(rewards) <= {0.0, 1.0}
    assert np.mean(rewards) == pytest.approx(it["reward"])
    assert R.dataset_lineage(builder)["loop_iteration"] == it["iteration"] - 1
    assert f"| student after iteration {it['iteration']} | {it['accuracy']:.3f} |" in report
  again = _run("quickstart", "--workdir", str(workdir), "--size", "small", check=False)
  assert again.returncode == 2 and "--overwrite" in again.stderr

  dataset = result["iterations"][-1]["dataset"]
  shown = _run("inspect", dataset, "--show", "1").stdout
  assert f"{result['iterations'][-1]['episodes']} rollout episodes" in shown
  assert "teacher top-k 8" in shown and "steps/teacher/topk_logprobs" in shown
  assert "prompt:" in shown and "model:" in shown
  log = _run("inspect", str(workdir / "onpolicy" / "iter_0" / "generations"), "--json").stdout
  assert f'"episodes": {result["iterations"][0]["episodes"]}' in log


def test_inspect_a_missing_path_is_a_clear_error(tmp_path, in_process_cli):
  assert cli.main(["inspect", str(tmp_path / "nope")]) == 2


def _actions(parser):
  """(command path, action, required, parser) of every flag of ``parser`` and of its
  subcommands; ``required`` includes one of a required mutually exclusive group."""
  import argparse  # pylint: disable=g-import-not-at-top
  one_of = {id(a) for g in parser._mutually_exclusive_groups if g.required  # pylint: disable=protected-access
            for a in g._group_actions}  # pylint: disable=protected-access
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      for name, child in action.choices.items():
        for path, child_action, required, owner in _actions(child):
          yield (name, *path), child_action, required, owner
    else:
      yield (), action, action.required or id(action) in one_of, parser


def _assert_help_and_defaults(parser):
  """Every flag says what it does; every optional flag shows its default in --help."""
  import argparse  # pylint: disable=g-import-not-at-top
  checked = 0
  for path, action, required, owner in _actions(parser):
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):  # pylint: disable=protected-access
      continue
    where = f"{parser.prog} {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
    assert action.help, f"{where}: no help text"
    if action.option_strings and not required:
      shown = owner._get_formatter()._expand_help(action)  # pylint: disable=protected-access
      assert "default" in shown, f"{where}: no default in {shown!r}"
    checked += 1
  return checked


def test_every_flag_of_every_command_has_help_and_a_shown_default():
  assert _assert_help_and_defaults(cli.build_parser()) > 30


@pytest.mark.parametrize("stage", ["generate", "teacher", "score", "judge", "publish",
                                   "models", "nli"])
def test_every_pipeline_flag_has_help_and_a_shown_default(stage, monkeypatch):
  """``python -m pipelines.<stage> --help``: the parser each ``main`` builds."""
  import argparse  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top

  class Built(Exception):
    pass

  def capture(parser, *args, **kwargs):
    raise Built(parser)

  monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
  module = importlib.import_module(f"pipelines.{stage}")
  with pytest.raises(Built) as built:
    module.main([])
  assert _assert_help_and_defaults(built.value.args[0]) >= 3


def test_version():
  import rlds_lm  # pylint: disable=g-import-not-at-top
  assert _run("--version").stdout.strip() == f"rlds-lm {rlds_lm.__version__}"


@pytest.fixture
def in_process_cli():
  """Puts back what a command run in this process sets for the process (log levels,
  progress bars), so later tests see the defaults."""
  import logging  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  root, absl_level = logging.getLogger().level, absl_logging.get_verbosity()
  tqdm = os.environ.get("TQDM_DISABLE")
  yield
  logging.getLogger().setLevel(root)
  absl_logging.set_verbosity(absl_level)
  if tqdm is None:
    os.environ.pop("TQDM_DISABLE", None)
  tfds.enable_progress_bar()


def test_export_refuses_to_overwrite_takes_filters_and_import_says_what_it_published(
    published, tmp_path, capsys, in_process_cli):
  import json  # pylint: disable=g-import-not-at-top

  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  path, episodes = published
  out = tmp_path / "rows.jsonl"
  assert cli.main(["export", path, "--format", "prompt_completion", "--jsonl", str(out),
                   "--prompt_id", "prompt-1", "--min_reward", "0.5"]) == 0
  expected = [e for e in episodes.values() if e[S.PROMPT_ID] == "prompt-1"
              and S.episode_return(e) >= 0.5]
  assert 0 < len(expected) < 4
  assert f"{len(expected)} prompt_completion rows written to {out}" in capsys.readouterr().out
  rows = out.read_text().splitlines()
  assert len(rows) == len(expected)
  before = out.read_text()
  assert cli.main(["export", path, "--format", "prompt_completion", "--jsonl",
                   str(out)]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  assert out.read_text() == before
  assert cli.main(["export", path, "--format", "prompt_completion", "--jsonl", str(out),
                   "--overwrite"]) == 0
  assert len(out.read_text().splitlines()) == len(episodes)
  capsys.readouterr()
  for command in (["inspect", str(tmp_path / "nope")],
                  ["export", str(tmp_path / "nope"), "--format", "distill", "--jsonl",
                   str(tmp_path / "x.jsonl")],
                  ["import", str(tmp_path / "nope.jsonl"), "--format", "distill",
                   "--data_dir", str(tmp_path), "--name", "x"]):
    assert cli.main(command) == 2
    assert capsys.readouterr().err.strip().endswith(f"{command[1]} does not exist")

  result = _run("import", str(out), "--format", "prompt_completion", "--data_dir",
                str(tmp_path / "data"), "--name", "imported")
  dataset = tmp_path / "data" / "imported" / "1.0.0"
  assert result.stdout.strip() == (f"published {len(episodes)} episodes (train "
                                   f"{len(episodes)}) to {dataset}")
  assert json.loads((dataset / "dataset_info.json").read_text())["splits"]


# What the stack prints that says nothing to a user (issue 16 item 10).
NOISE = ("InitGoogleLogging", "absl::InitializeLog", "oneDNN", "cuda", "cpu_feature_guard",
         "is deprecated", "apitools", "Empty steps")


def _clean_env():
  import os  # pylint: disable=g-import-not-at-top
  hidden = ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel", "TQDM_DISABLE", "RLDS_LM_VERBOSE")
  return {k: v for k, v in os.environ.items() if k not in hidden}


def test_the_command_line_is_quiet_unless_verbose(published, tmp_path):
  path, episodes = published
  rows = tmp_path / "rows.jsonl"
  env = _clean_env()
  for args in (("export", path, "--format", "prompt_completion", "--jsonl", str(rows)),
               ("import", str(rows), "--format", "prompt_completion", "--data_dir",
                str(tmp_path), "--name", "quiet"),
               ("inspect", str(tmp_path / "quiet" / "1.0.0"), "--show", "1")):
    result = subprocess.run([sys.executable, "-m", "rlds_lm.cli", *args], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [n for n in NOISE if n in result.stderr], result.stderr[-3000:]
    assert result.stderr.strip() == "", result.stderr[-3000:]
  verbose = subprocess.run(
      [sys.executable, "-m", "rlds_lm.cli", "import", str(rows), "--format",
       "prompt_completion", "--data_dir", str(tmp_path), "--name", "loud", "--verbose"],
      env=env, capture_output=True, text=True, timeout=600)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert "Generating splits" in verbose.stderr  # TFDS's progress bars
  assert [n for n in NOISE if n in verbose.stderr]  # the stack's own lines


def test_the_library_is_quiet_by_default(tmp_path):
  """Record a Riegeli log, publish it, read it back with TFDS's tf.data reader: the
  stack's start-up and deprecation lines are hidden; RLDS_LM_VERBOSE=1 shows them."""
  script = f"""
import sys
sys.path.insert(0, {str(__import__("os").path.dirname(__file__))!r})
import rlds_lm
from conftest import ROLLOUT, rollouts
with rlds_lm.Recorder({str(tmp_path / "log")!r}, ROLLOUT) as rec:
  for episode in rollouts(4):
    rec.record(episode)
import tensorflow_datasets as tfds
from rlds_lm import publish
path = publish.publish({{"train": rollouts(4)}}, data_dir={str(tmp_path / "data")!r},
                       name="quiet", config=ROLLOUT)
for episode in tfds.builder_from_directory(path).as_dataset(split="train").take(1):
  pass
print("ok")
"""
  env = _clean_env()
  env["TQDM_DISABLE"] = "1"  # publish's own progress bars are not the subject here
  quiet = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
  assert quiet.returncode == 0 and quiet.stdout.strip() == "ok", quiet.stderr[-3000:]
  assert not [n for n in NOISE if n in quiet.stderr], quiet.stderr[-3000:]
  loud = subprocess.run([sys.executable, "-c", script.replace("quiet", "loud")],
                        env={**env, "RLDS_LM_VERBOSE": "1"}, capture_output=True,
                        text=True, timeout=600)
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert "is deprecated" in loud.stderr and "InitGoogleLogging" in loud.stderr


def test_install_doc_tfds_build_commands_run(tmp_path):
  """docs/install.md's `tfds build --imports builders....` block, run outside the
  checkout with the repository on the path as an install puts it (the arithmetic and
  gsm8k lines: the other two have the same forms)."""
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "docs", "install.md")) as f:
    block = re.search(r"```bash\n(tfds build --imports builders\.arithmetic.*?)```",
                      f.read(), re.S).group(1)
  commands = block.replace("\\\n", " ").splitlines()
  assert len(commands) == 4
  env = dict(_clean_env(), PYTHONPATH=repo,
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  for command, name in ((commands[0], "arithmetic"), (commands[2], "gsm8k")):
    command = command.replace("/tmp/tfds", str(tmp_path / "data")).replace(
        "/path/to/gsm8k_files", os.path.join(repo, "builders", "gsm8k", "dummy_data"))
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    built = tfds.builder_from_directory(
        str(next((tmp_path / "data" / name).glob("**/dataset_info.json")).parent))
    assert built.info.splits["train"].num_examples > 0
