"""Shared fixtures: small schemas and fake episodes, published once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from rlds_lm import publish as P  # noqa: E402
from rlds_lm import schema as S  # noqa: E402
from rlds_lm import testing as T  # noqa: E402
from rlds_lm import validate as V  # noqa: E402

ROLLOUT = S.SchemaConfig(vocab_size=259, teacher_top_k=4, teacher_sampled_k=6,
                         reward_names=("correct", "entailment"))
AGENTIC = S.SchemaConfig(vocab_size=259, reward_names=("correct",), image_channels=3)
PREFERENCE = S.SchemaConfig(kind=S.PREFERENCE, vocab_size=259)


def rollouts(n: int = 12):
  return [T.fake_rollout(ROLLOUT, seed=i, action_len=3 + i % 5) for i in range(n)]


def agentic(n: int = 6):
  return [T.fake_rollout(AGENTIC, seed=i, turns=1 + i % 3, thinking=True, with_image=True)
          for i in range(n)]


def preferences(n: int = 6):
  return [T.fake_preference(PREFERENCE, seed=i, candidates=2 + i % 3) for i in range(n)]


@pytest.fixture(autouse=True)
def _restore_log_levels():
  """Puts back the root logger's level and absl's verbosity after every test: an
  in-process CLI call (``cli.main``) quiets the libraries process-wide, as a command line
  should, and must not change what later tests of the same worker see."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  root, absl_level = logging.getLogger().level, absl_logging.get_verbosity()
  yield
  logging.getLogger().setLevel(root)
  absl_logging.set_verbosity(absl_level)


@pytest.fixture(scope="session")
def published(tmp_path_factory):
  """(dataset_dir, normalised episodes by id) for the rollout schema."""
  episodes = [V.validate_episode(e, ROLLOUT) for e in rollouts()]
  path = P.publish({"train": episodes}, data_dir=tmp_path_factory.mktemp("pub"),
                   name="fake_rollouts", config=ROLLOUT, lineage={"test": "fixture"})
  return path, {e[S.EPISODE_ID]: e for e in episodes}


def _build_prompts(builder_cls, config: str, data_dir: str) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = builder_cls(config=config, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return os.fspath(builder.data_dir)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
  """For the pipeline tests: policy / teacher checkpoints (tiny), arithmetic and
  summarization prompt datasets (tiny configs, built), a trained NLI model."""
  from pipelines import models  # pylint: disable=g-import-not-at-top
  from rlds_lm.tasks import nli  # pylint: disable=g-import-not-at-top
  from builders.arithmetic import arithmetic_dataset_builder  # pylint: disable=g-import-not-at-top
  from builders.grounded_summarization import grounded_summarization_dataset_builder  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("pipeline_assets")
  paths = {
      "policy": os.fspath(root / "policy"),
      "teacher": os.fspath(root / "teacher"),
      "nli": os.fspath(root / "nli"),
  }
  models.init_checkpoint(paths["policy"], "tiny", seed=0)
  models.init_checkpoint(paths["teacher"], "tiny", seed=1)
  weights, bias, report = nli.train(count=600, seed=0, steps=200)
  nli.NliClassifier(weights, bias, report).save(paths["nli"])
  data_dir = os.fspath(root / "data")
  paths["arithmetic"] = _build_prompts(arithmetic_dataset_builder.Builder, "tiny", data_dir)
  paths["summarization"] = _build_prompts(
      grounded_summarization_dataset_builder.Builder, "tiny", data_dir)
  return paths


@pytest.fixture(scope="session")
def quickstart_small(tmp_path_factory):
  """docs/quickstart.md's first command (``rlds-lm quickstart --workdir qs --size
  small``, about a minute), run as written: (working directory, the ``qs`` workdir, its
  stdout)."""
  import re  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "docs", "quickstart.md"), encoding="utf-8") as f:
    block = re.search(r"```bash\n(rlds-lm quickstart .*?)\n", f.read()).group(1)
  command = block.split("#")[0].strip()
  assert command == "rlds-lm quickstart --workdir qs --size small", command
  cwd = tmp_path_factory.mktemp("quickstart")
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ.get("PATH", ""))
  result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return cwd, cwd / "qs", result.stdout
