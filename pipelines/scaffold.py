"""Stage scaffolding: the flags, Beam options, output folder and the end of a stage's run.

A stage's ``run(argv)`` parses its flags (:func:`add_common_flags` plus its own),
builds its configuration, prepares the output (:func:`prepare_output`), builds a Beam
pipeline with :func:`pipeline_options`, applies its PTransforms, runs it, and calls
:func:`finalize`, which writes the TFDS metadata with the schema and the lineage
(:func:`lineage`: what produced the dataset, with the config digest and code version),
the dead letters and their summary, and ``rlds_lm_stage.json``. :func:`main_wrapper` is
the ``python -m pipelines.<stage>`` entry point.

Runner: ``--runner=DirectRunner --direct_running_mode=multi_processing`` unless the
caller passes other Beam flags (see :func:`pipeline_options` and docs/pipelines.md).
On Beam's DaskRunner (``--runner=DaskRunner`` is accepted here as a short name) the
scheduler is checked before anything is written, :func:`run_pipeline` waits for the
cluster and releases it, and the counters come from the written files.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options import pipeline_options as beam_options

from pipelines.dataset_io import DatasetInput
from pipelines.dataset_io import absolute
from pipelines.dead_letters import COUNTER_NAMESPACE
from pipelines.dead_letters import DEAD_LETTER_FILE
from pipelines.dead_letters import DEAD_LETTER_SUMMARY
from pipelines.dead_letters import TMP_DIR
from pipelines.errors import PipelineError
from rlds_lm import publish as P
from rlds_lm import schema as S

STAGE_FILE = "rlds_lm_stage.json"  # what produced the dataset (stage, args, counts)
DEFAULT_NUM_SHARDS = 4
DEFAULT_MAX_DROPPED_FRACTION = 0.5
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # not a Beam short name
DASK_CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler before a stage fails


# --------------------------------------------------------------------------------------
# Options and command lines.
# --------------------------------------------------------------------------------------


def add_common_flags(parser: argparse.ArgumentParser) -> None:
  """Flags every stage shares; unknown flags are passed to Beam."""
  parser.add_argument("--output", required=True,
                      help="output dataset directory (created; refused if it holds data "
                           "unless --overwrite)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the output directory if it exists")
  parser.add_argument("--num_shards", type=int, default=DEFAULT_NUM_SHARDS,
                      help="output shards per split (part of the output's identity: "
                           "the same value gives byte-identical files)")
  parser.add_argument("--workers", type=int, default=2,
                      help="DirectRunner worker processes (ignored by other runners)")
  parser.add_argument("--max_dropped_fraction", type=float,
                      default=DEFAULT_MAX_DROPPED_FRACTION,
                      help="fail the stage if more than this fraction of its input "
                           "went to the dead-letter output")


def pipeline_options(beam_args: Sequence[str], workers: int = 2
                     ) -> beam_options.PipelineOptions:
  """Beam options: the caller's flags; by default the local runner, multi-process.

  The default is ``FnApiRunner``, the batch engine of Beam's DirectRunner, in
  multi-processing mode with ``workers`` processes. It is named directly because
  ``--runner=DirectRunner`` (Beam 2.77) first tries the Prism runner, a binary downloaded
  at run time, and only falls back to FnApiRunner when that fails. With ``--runner``
  given, the flags are used as they are.
  """
  flags = [f"--runner={DASK_RUNNER}" if f in ("--runner=DaskRunner", "--runner=dask")
           else f for f in beam_args]
  if not any(f.startswith("--runner") for f in flags):
    flags += ["--runner=FnApiRunner"]
    if not any(f.startswith("--default_sdk_harness_log_level") for f in flags):
      flags += ["--default_sdk_harness_log_level=ERROR"]
    if workers > 1:
      flags += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    else:
      flags += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
  options = beam_options.PipelineOptions(flags, save_main_session=False)
  if is_dask(options):
    threads = check_dask_scheduler(options)
    # The DaskRunner puts up to 128 elements of a Create in one bag partition, one task:
    # a stage that reads 4 shard files would run on one worker. One partition per
    # worker thread instead (a stage's input parallelism is still its shard files).
    if threads and not any(f.startswith(("--dask_npartitions", "--dask_partition_size"))
                           for f in flags):
      options = beam_options.PipelineOptions([*flags, f"--dask_npartitions={threads}"],
                                             save_main_session=False)
  return options


def is_dask(options: beam_options.PipelineOptions) -> bool:
  """Whether ``options`` run the pipeline on Beam's DaskRunner."""
  runner = options.view_as(beam_options.StandardOptions).runner
  return isinstance(runner, str) and runner.rsplit(".", 1)[-1] == "DaskRunner"


def check_dask_scheduler(options: beam_options.PipelineOptions,
                         timeout: float = DASK_CONNECT_TIMEOUT) -> int:
  """Fails fast, before anything is written, when the Dask scheduler does not answer.

  Returns the number of worker threads on the cluster.

  Beam's DaskRunner connects only when the pipeline runs, and ``distributed`` keeps
  retrying an unreachable address for its connect timeout (30 s by default).

  Raises:
    PipelineError: ``distributed`` is not installed, no ``--dask_client_address`` /
      ``--dask_scheduler_file`` was given, or the scheduler does not answer.
  """
  try:
    import distributed  # pylint: disable=g-import-not-at-top
    # Registers the --dask_* flags (DaskOptions) with Beam's option parser.
    from apache_beam.runners.dask import dask_runner  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise PipelineError("--runner=DaskRunner needs dask and distributed (pip install "
                        "'rlds_lm[dask]')") from e
  flags = options.get_all_options(drop_default=True)
  address = flags.get("address") or flags.get("scheduler_file")
  if not address:
    raise PipelineError("--runner=DaskRunner needs --dask_client_address=tcp://HOST:PORT "
                        "(start a local cluster with `python -m pipelines.dask_cluster`); "
                        "without it Beam would start a throwaway cluster in this process")
  kwargs = ({"address": flags["address"]} if flags.get("address")
            else {"scheduler_file": flags["scheduler_file"]})
  try:
    client = distributed.Client(**kwargs, timeout=timeout, set_as_default=False)
  except (OSError, TimeoutError, ValueError) as e:
    raise PipelineError(f"the Dask scheduler at {address} did not answer within "
                        f"{timeout:.0f}s ({type(e).__name__}: {e}); is it running? "
                        f"(`python -m pipelines.dask_cluster --workers N` prints the "
                        f"address of a local one)") from e
  try:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
  finally:
    client.close()
  if not workers:
    raise PipelineError(f"the Dask scheduler at {address} has no workers")
  return sum(int(w.get("nthreads", 1)) for w in workers.values())


def code_version() -> str:
  """The rlds_lm version plus the git commit of this checkout (when there is one)."""
  from rlds_lm import __version__  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True, timeout=10, check=True
                            ).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True
                           ).stdout.strip()
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
  except (OSError, subprocess.SubprocessError):
    return __version__


def config_digest(config: Mapping[str, Any]) -> str:
  """A short digest of a stage's configuration (the flags that change its output)."""
  text = json.dumps(config, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def progress(stage: str, message: str) -> None:
  print(f"[{stage}] {message}", flush=True)


def quiet_logs() -> None:
  """Our progress lines only: Beam, absl and TFDS INFO chatter off (warnings stay)."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("apache_beam").setLevel(logging.ERROR)
  absl_logging.set_verbosity(absl_logging.ERROR)
  os.environ.setdefault("TQDM_DISABLE", "1")  # the array_record conversion's bars
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def prepare_output(path: str, overwrite: bool) -> str:
  """Creates the output directory; refuses a non-empty one unless ``overwrite``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  path = absolute(path)
  if tf.io.gfile.exists(path) and tf.io.gfile.listdir(path):
    if not overwrite:
      raise PipelineError(f"{path} is not empty; pass --overwrite to replace it")
    tf.io.gfile.rmtree(path)
  tf.io.gfile.makedirs(path)
  return path

def run_pipeline(pipeline, written: Sequence[Any]):
  """Runs ``pipeline``; ``written`` are the PCollections of every write (shard infos,
  written paths).

  They are joined into one last transform first: Beam's DaskRunner computes only what
  the pipeline's last transform depends on, and would skip the other writes.
  """
  _ = tuple(written) | "AllWritten" >> beam.Flatten()
  result = pipeline.run()
  if not hasattr(result, "client"):  # not the DaskRunner: finalize waits
    return result
  return _finish_dask(result)


class FinishedResult:
  """A DaskRunner result that has finished and released its client.

  ``finalize`` (called once per output) waits on it; the DaskRunner reports no
  metrics, so :meth:`metrics` raises as the DaskRunner's own result does.
  """

  def __init__(self, state):
    self.state = state

  def wait_until_finish(self, duration=None):
    del duration
    return self.state

  def metrics(self):
    raise NotImplementedError("the DaskRunner reports no metrics (Beam 2.77)")


def _finish_dask(result) -> FinishedResult:
  """Waits for a DaskRunner pipeline, closes its client, names a lost worker."""
  try:
    state = result.wait_until_finish()
  except Exception as e:  # pylint: disable=broad-except
    import distributed  # pylint: disable=g-import-not-at-top
    if isinstance(e, distributed.KilledWorker):
      raise PipelineError(
          f"a Dask worker died while running the pipeline and the task failed on every "
          f"retry ({e}); nothing was published: rerun the stage with --overwrite") from e
    if isinstance(e, (distributed.comm.CommClosedError, OSError, TimeoutError)):
      raise PipelineError(f"lost the Dask scheduler while running the pipeline "
                          f"({type(e).__name__}: {e}); nothing was published: rerun the "
                          f"stage with --overwrite") from e
    raise
  finally:
    result.client.close()
  return FinishedResult(state)


def lineage(stage: str, config: Mapping[str, Any], **sources: Any) -> dict[str, Any]:
  """The lineage a stage stores with its output: its inputs (``sources``, e.g. the
  input's ``DatasetInput.lineage()`` and ``upstream_lineage()``), its config, the
  config's digest and the code version."""
  return {"stage": stage, **sources, "config": dict(config),
          "config_digest": config_digest(config), "code_version": code_version()}


# --------------------------------------------------------------------------------------
# After the run.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageResult:
  """What a stage wrote: the dataset directory and counts."""

  path: str
  num_examples: dict[str, int]
  dropped: dict[str, int]  # reason -> count (this stage)
  seconds: float
  counters: dict[str, int]

  @property
  def total_examples(self) -> int:
    return sum(self.num_examples.values())

  @property
  def total_dropped(self) -> int:
    return sum(self.dropped.values())


def _metrics(result) -> dict[str, int] | None:
  """The stage's Beam counters; None when the runner reports none (DaskRunner)."""
  from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=g-import-not-at-top
  out: dict[str, int] = collections.Counter()
  try:
    query = result.metrics().query(MetricsFilter())
  except Exception:  # pylint: disable=broad-except  (some runners report no metrics)
    return None
  for c in query["counters"]:
    namespace = c.key.metric.namespace
    if not namespace.startswith(COUNTER_NAMESPACE):
      continue
    value = c.committed if c.committed is not None else c.attempted
    out[f"{namespace[len(COUNTER_NAMESPACE) + 1:]}/{c.key.metric.name}"] += value or 0
  return dict(sorted(out.items()))


def finalize(*, result, out_dir: str, name: str, config: S.SchemaConfig,
             splits: Sequence[str], stage: str, description: str,
             lineage: Mapping[str, Any], inputs_total: int, started: float,
             max_dropped_fraction: float, upstream: Sequence[DatasetInput] = (),
             stage_args: Mapping[str, Any] | None = None,
             extra_metadata: Mapping[str, str] | None = None) -> StageResult:
  """Waits for the pipeline, writes the TFDS metadata and the dead-letter summary.

  The summary accumulates: the dead letters of every upstream stage (read from each
  input's ``dead_letter_summary.json``) are listed next to this stage's own, so the
  published dataset says what was dropped on the whole way.

  Raises:
    PipelineError: when more than ``max_dropped_fraction`` of the input was dropped
      (the dataset is still written, for inspection).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  result.wait_until_finish()
  tmp = os.path.join(out_dir, TMP_DIR)
  shard_infos = []
  dead: list[dict[str, Any]] = []
  for filename in sorted(tf.io.gfile.listdir(tmp)):
    if filename.startswith("shard-") and filename.endswith(".json"):
      with tf.io.gfile.GFile(os.path.join(tmp, filename)) as f:
        shard_infos.append(json.loads(f.read()))
    elif filename.startswith("dead_letter") and filename.endswith(".jsonl"):
      with tf.io.gfile.GFile(os.path.join(tmp, filename)) as f:
        dead.extend(json.loads(line) for line in f if line.strip())
  dead.sort(key=lambda d: (d["stage"], d["split"], d["key"], d["reason"]))

  split_infos = []
  num_examples = {}
  for split in splits:
    infos = sorted((i for i in shard_infos if i["split"] == split), key=lambda i: i["shard"])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[i["num_examples"] for i in infos],
        num_bytes=sum(i["num_bytes"] for i in infos)))
    num_examples[split] = sum(i["num_examples"] for i in infos)
  metadata = {P.METADATA_SCHEMA: config.to_json(),
              P.METADATA_LINEAGE: json.dumps(dict(lineage), sort_keys=True)}
  metadata.update(extra_metadata or {})
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=S.episode_features(config), split_infos=split_infos,
      filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      check_data=False, description=description, homepage=P.HOMEPAGE, citation=P.CITATION,
      license=P.LICENSE, metadata=tfds.core.MetadataDict(metadata))

  dropped = dict(collections.Counter(d["reason"] for d in dead))
  counters = _metrics(result)
  if counters is None:  # the runner reports no counters: the ones the files give
    own = [d for d in dead if d["stage"] == stage]
    counters = {f"{stage}/written": sum(num_examples.values())}
    if own:
      counters[f"{stage}/dropped"] = len(own)
      for reason, n in collections.Counter(d["reason"] for d in own).items():
        counters[f"{stage}/dead_letter.{reason}"] = n
    counters = dict(sorted(counters.items()))
  seconds = time.perf_counter() - started
  summary = {"stages": [], "total_dropped": 0}
  for source in upstream:
    previous = _read_json(os.path.join(source.path, DEAD_LETTER_SUMMARY))
    for entry in (previous or {}).get("stages", []):
      if entry not in summary["stages"]:
        summary["stages"].append(entry)
  summary["stages"].append({
      "stage": stage, "output": out_dir, "inputs": inputs_total,
      "written": sum(num_examples.values()), "dropped": sum(dropped.values()),
      "by_reason": dict(sorted(dropped.items())),
      "examples": [{k: d[k] for k in ("key", "reason", "detail", "split")}
                   for d in dead[:5]]})
  summary["total_dropped"] = sum(s["dropped"] for s in summary["stages"])
  _write_json(os.path.join(out_dir, DEAD_LETTER_SUMMARY), summary)
  with tf.io.gfile.GFile(os.path.join(out_dir, DEAD_LETTER_FILE), "w") as f:
    for d in dead:
      f.write(json.dumps(d, sort_keys=True) + "\n")
  _write_json(os.path.join(out_dir, STAGE_FILE), {
      "stage": stage, "args": dict(stage_args or {}), "num_examples": num_examples,
      "dropped": dropped, "lineage": dict(lineage), "seconds": round(seconds, 3),
      "counters": counters})
  tf.io.gfile.rmtree(tmp)

  total = sum(num_examples.values())
  progress(stage, f"wrote {total} episodes ({', '.join(f'{s}: {n}' for s, n in num_examples.items())}) "
                  f"to {out_dir} in {seconds:.1f}s")
  if dead:
    progress(stage, f"dead letters: {len(dead)} record(s) dropped: " + ", ".join(
        f"{reason} x{n}" for reason, n in sorted(dropped.items()))
             + f" (details in {os.path.join(out_dir, DEAD_LETTER_FILE)})")
    for d in dead[:3]:
      progress(stage, f"  {d['reason']}: {d['key']}: {d['detail'][:160]}")
  else:
    progress(stage, "dead letters: none")
  if inputs_total and len(dead) > max_dropped_fraction * inputs_total:
    raise PipelineError(
        f"{stage}: {len(dead)} of {inputs_total} input records were dropped (more than "
        f"--max_dropped_fraction={max_dropped_fraction}); see "
        f"{os.path.join(out_dir, DEAD_LETTER_FILE)}")
  return StageResult(path=out_dir, num_examples=num_examples, dropped=dropped,
                     seconds=seconds, counters=counters)


def _read_json(path: str) -> Any:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


def _write_json(path: str, value: Any) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_dead_letter_summary(dataset_dir: str) -> dict[str, Any] | None:
  """The ``dead_letter_summary.json`` stored with a stage's output (or None)."""
  return _read_json(os.path.join(dataset_dir, DEAD_LETTER_SUMMARY))


def main_wrapper(stage: str, run: Callable[[Sequence[str] | None], Any],
                 argv: Sequence[str] | None = None) -> int:
  """Runs a stage's ``run(argv)``; known errors print one line and exit 2."""
  quiet_logs()
  try:
    run(argv)
  except (PipelineError, FileNotFoundError, ValueError) as e:
    print(f"pipelines.{stage}: error: {e}", file=sys.stderr)
    return 2
  return 0
