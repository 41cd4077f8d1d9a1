"""Read throughput into padded ``[batch, length]`` training batches, by reader.

One run publishes the same synthetic episodes twice with ``rlds_lm.publish.publish``
(tfrecord + array_record): without teacher data and with teacher top-64 (vocabulary
32,000). The reference padded arrays are ``rlds_lm.read.episode_to_sequence`` of the
in-memory episodes. Every reader yields batches of the same fields (``tokens``,
``loss_mask``, ``behaviour_logprobs``, ``reward`` and, with teacher data,
``teacher_topk_ids`` / ``teacher_topk_logprobs``) for one epoch in shuffled order:

* ``tf.data + Python``: ``rlds_lm.transforms.as_dataset`` (tfrecord), shuffled
  (buffer of 256 episodes), each episode's nested steps pulled through ``tfds.as_numpy``
  and flattened by ``episode_to_sequence`` in Python. It is slow (a nested-dataset
  iterator per episode), so it is timed on its first 4 batches per run.
* ``tf.data graph``: the same dataset flattened in-graph (``ragged_batch`` of the steps,
  concat, pad, scatter of the teacher rows), ``map(num_parallel_calls=AUTOTUNE)``,
  ``batch``, ``prefetch``.
* ``Grain, training view``: ``rlds_lm.read.grain_batches`` as trainers use it by default:
  batches gathered from the dataset's training view (``rlds_lm.view``: memory-mapped
  columns, built once before the timed runs; its build time is reported), iterated as a
  user would (``for batch in ds``: the dataset reads in the calling thread).
* ``Grain, decoder``: ``grain_batches(training_view=False)``: each record's
  ``tf.train.Example`` parsed by ``rlds_lm.read.RawSequenceDecoder``.
* Worker processes: each of the two above through
  ``rlds_lm.loading.multiprocess_batches`` with 1 and 2 workers (batches gathered by the
  workers into a ring of reused shared-memory slots and copied out once; for the view
  with 2 workers also ``copy=False``: views of the slots), and the view through Grain's own
  ``.to_iter_dataset().mp_prefetch(2 workers)`` (fresh shared memory per array per
  batch), the way this benchmark measured Grain's workers before. Worker rows run one
  iterator over at least ``repeats + 1`` epochs and ``STREAM_MIN_BATCHES`` timed batches
  (as a trainer would), report its start-up (to the first batch) separately, time the
  epochs after the first (their mean) and report CPU time per batch in the trainer's
  process and in the workers (from ``/proc``).
* ``numpy memmap``: the reference arrays saved once as ``.npy`` and opened with
  ``mmap_mode="r"``; a batch is a fancy-indexed copy of 32 random rows.
* ``HF datasets``: the reference arrays in Arrow (``Dataset.from_dict(...).save_to_disk``
  with fixed-shape features), ``load_from_disk(...).with_format("numpy")``,
  ``shuffle(seed)`` then ``iter(batch_size)``.

Tokens/s counts ``batch * length`` per batch (what a trainer consumes); "real" counts
action (loss-mask) tokens. Every reader's first (warm-up) epoch is checked against the
reference: its first batches row by row, a full epoch's sums over every field. All data
sits in the page cache (warm reads).

    python -m benchmarks.read_throughput --out docs/
    python -m benchmarks.read_throughput --quick
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks import _episodes as E

NAME = "read_throughput"
VOCAB_SIZE = 32_000
TEACHER_TOP_K = 64
GOAL_TOKENS_PER_S = 540_000  # one H100 training a 110M-parameter decoder, per host
RLDS_LM_READERS = ("tf_python", "tf_graph", "grain_view", "grain_decoder",
                   "pipeline_view", "pipeline_decoder",
                   "grain_view_mp1", "grain_view_mp2", "grain_decoder_mp1",
                   "grain_decoder_mp2", "grain_view_mp2_views",
                   "grain_view_mp2_plain")  # through rlds_lm
GOAL_VIEW_OVER_HF = 2.0  # issue 15: the view at least 2x HF datasets
GOAL_VIEW_OVER_MEMMAP = 0.3  # ... and at least 0.3x numpy memmap
GOAL_MP2_OVER_ONE = 1.5  # 2 worker processes at least 1.5x one process
TF_SHUFFLE_BUFFER = 256  # episodes; the other readers shuffle globally
TF_MAX_STEPS = 16  # ragged_batch width for an episode's steps (these have 2)
TF_PYTHON_MAX_BATCHES = 4  # the tf.data + Python reader is timed on this many batches
VERIFY_BATCHES = 4  # batches checked row by row against the reference arrays
STREAM_MIN_BATCHES = 1024  # worker rows: timed batches at least (over whole epochs)


def _quiet() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  logging.getLogger("absl").setLevel(logging.ERROR)
  logging.getLogger("datasets").setLevel(logging.ERROR)
  try:
    from absl import flags  # pylint: disable=g-import-not-at-top
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

    absl_logging.set_verbosity(absl_logging.ERROR)
    if not flags.FLAGS.is_parsed():  # Grain's multiprocessing reads absl flags
      flags.FLAGS.mark_as_parsed()
  except ImportError:
    pass
  try:
    import datasets  # pylint: disable=g-import-not-at-top

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
  except ImportError:
    pass


# --------------------------------------------------------------------------------------
# Readers. Each is a function epoch(seed) -> iterator of batch dicts.
# --------------------------------------------------------------------------------------


def tf_python_reader(path: str, length: int, k: int, batch: int) -> Callable:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm import transforms as TR  # pylint: disable=g-import-not-at-top

  def epoch(seed: int) -> Iterator[dict[str, np.ndarray]]:
    ds = TR.as_dataset(path).shuffle(TF_SHUFFLE_BUFFER, seed=seed).prefetch(
        tf.data.AUTOTUNE)
    pending = []
    for ex in tfds.as_numpy(ds):
      pending.append(R.episode_to_sequence({S.STEPS: list(ex[S.STEPS])}, length,
                                           teacher_top_k=k))
      if len(pending) == batch:
        yield R.stack_sequences(pending)
        pending = []

  return epoch


def tf_graph_to_sequence(length: int, k: int):
  """The in-graph equivalent of ``rlds_lm.read.episode_to_sequence`` (pad id 0)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top

  def pad(flat, shape_tail=()):
    flat = flat[:length]
    n = tf.shape(flat)[0]
    paddings = [[0, length - n]] + [[0, 0]] * len(shape_tail)
    out = tf.pad(flat, paddings)
    return tf.ensure_shape(out, (length,) + tuple(shape_tail))

  def fn(episode):
    # ragged_batch preallocates its batch width: keep it small (1 << 20 takes seconds
    # per episode, see docs/benchmarks.md).
    turns = episode[S.STEPS].ragged_batch(TF_MAX_STEPS).get_single_element()
    obs = turns[S.OBSERVATION][S.OBS_TOKENS]
    act = turns[S.ACTION][S.ACT_TOKENS]
    tokens = tf.concat([obs, act], axis=1).flat_values  # obs_0, act_0, obs_1, ...
    mask = tf.concat([tf.zeros_like(obs, tf.bool), tf.ones_like(act, tf.bool)],
                     axis=1).flat_values
    logprobs = tf.concat([tf.zeros_like(obs, tf.float32), turns[S.ACTION_LOGPROBS]],
                         axis=1).flat_values
    out = {
        R.SEQ_TOKENS: pad(tokens), R.SEQ_LOSS_MASK: pad(mask),
        R.SEQ_LOGPROBS: pad(logprobs), R.SEQ_REWARD: tf.reduce_sum(turns[S.REWARD]),
    }
    if k:
      positions = tf.where(mask)[:, 0]  # where the action tokens sit in the sequence
      keep = positions < length
      index = tf.boolean_mask(positions, keep)[:, None]
      for key, field in ((R.SEQ_TOPK_IDS, S.TEACHER_TOPK_IDS),
                         (R.SEQ_TOPK_LOGPROBS, S.TEACHER_TOPK_LOGPROBS)):
        rows = tf.boolean_mask(turns[S.TEACHER][field].flat_values, keep)
        out[key] = tf.ensure_shape(
            tf.scatter_nd(index, rows, tf.constant([length, k], tf.int64)), (length, k))
    return out

  return fn


def tf_graph_reader(path: str, length: int, k: int, batch: int) -> Callable:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from rlds_lm import transforms as TR  # pylint: disable=g-import-not-at-top

  fn = tf_graph_to_sequence(length, k)

  def epoch(seed: int) -> Iterator[dict[str, np.ndarray]]:
    ds = (TR.as_dataset(path).shuffle(TF_SHUFFLE_BUFFER, seed=seed)
          .map(fn, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    yield from tfds.as_numpy(ds)

  return epoch


def grain_reader(path: str, length: int, k: int, batch: int, *,
                 view: bool = True) -> Callable:
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  built = {}

  def prepare(seed: int) -> None:
    """Opens the dataset for epoch ``seed`` (untimed: a trainer opens it once)."""
    built[seed] = R.grain_batches(path, batch_size=batch, max_length=length, seed=seed,
                                  with_teacher=bool(k), training_view=view)

  def epoch(seed: int) -> Iterator[dict[str, np.ndarray]]:
    if seed not in built:
      prepare(seed)
    yield from built.pop(seed)

  epoch.prepare = prepare
  return epoch


def pipeline_reader(path: str, length: int, k: int, batch: int, *,
                    view: bool = True) -> Callable:
  """The trainers' input pipeline (``DataPipeline``, padding), its batches cut to the
  fields the other readers yield."""
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import data as D  # pylint: disable=g-import-not-at-top

  keys = (R.SEQ_TOKENS, R.SEQ_LOSS_MASK, R.SEQ_LOGPROBS, R.SEQ_REWARD) + (
      (R.SEQ_TOPK_IDS, R.SEQ_TOPK_LOGPROBS) if k else ())
  built = {}

  def prepare(seed: int) -> None:
    built[seed] = D.DataPipeline(
        path, D.DataConfig(batch_size=batch, max_length=length, seed=seed), optional=(),
        require=(S.TEACHER_TOPK_IDS,) if k else (), training_view=view)

  def epoch(seed: int) -> Iterator[dict[str, np.ndarray]]:
    if seed not in built:
      prepare(seed)
    pipeline = built.pop(seed)
    for step in range(pipeline.units_per_epoch(0)[0] // batch):
      out = pipeline.batch(step)
      yield {key: out[key] for key in keys}

  epoch.prepare = prepare
  return epoch


def _children_cpu_s() -> float:
  """CPU seconds (user + system) used so far by this process's live child processes
  (Grain's workers), from /proc; 0 where there is no /proc."""
  import multiprocessing  # pylint: disable=g-import-not-at-top

  total, tick = 0, os.sysconf("SC_CLK_TCK")
  for child in multiprocessing.active_children():
    try:
      with open(f"/proc/{child.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
      continue
  return total / tick


def grain_workers_stream(path: str, length: int, k: int, batch: int, *, view: bool,
                         workers: int, plain: bool = False, copy: bool = True) -> Callable:
  """stream(epochs) -> one iterator over ``epochs`` epochs in worker processes."""
  import grain  # pylint: disable=g-import-not-at-top

  from rlds_lm import loading  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  def stream(epochs: int):
    ds = R.grain_batches(path, batch_size=batch, max_length=length, seed=0,
                         with_teacher=bool(k), training_view=view).repeat(epochs)
    if plain:
      return iter(ds.to_iter_dataset().mp_prefetch(
          grain.MultiprocessingOptions(num_workers=workers)))
    return loading.multiprocess_batches(ds, workers=workers, copy=copy)

  return stream


def memmap_reader(directory: str, n: int, batch: int) -> Callable:
  arrays = {name[:-4]: np.load(os.path.join(directory, name), mmap_mode="r")
            for name in sorted(os.listdir(directory)) if name.endswith(".npy")}

  def epoch(seed: int) -> Iterator[dict[str, np.ndarray]]:
    order = np.random.default_rng(seed).permutation(n)
    for start in range(0, n - batch + 1, batch):
      index = np.sort(order[start:start + batch])
      yield {key: arr[index] for key, arr in arrays.items()}

  return epoch


def hf_reader(directory: str, batch: int) -> Callable:
  import datasets  # pylint: disable=g-import-not-at-top

  ds = datasets.load_from_disk(directory).with_format("numpy")

  def epoch(seed: int) -> Iterator[dict[str, np.ndarray]]:
    yield from ds.shuffle(seed=seed).iter(batch_size=batch, drop_last_batch=True)

  return epoch


# --------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------


def hf_features(length: int, k: int):
  import datasets  # pylint: disable=g-import-not-at-top

  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  features = {
      R.SEQ_TOKENS: datasets.Sequence(datasets.Value("int32"), length=length),
      R.SEQ_LOSS_MASK: datasets.Sequence(datasets.Value("bool"), length=length),
      R.SEQ_LOGPROBS: datasets.Sequence(datasets.Value("float32"), length=length),
      R.SEQ_REWARD: datasets.Value("float32"),
  }
  if k:
    features[R.SEQ_TOPK_IDS] = datasets.Array2D((length, k), "int32")
    features[R.SEQ_TOPK_LOGPROBS] = datasets.Array2D((length, k), "float32")
  return datasets.Features(features)


def checksums(batch: dict[str, np.ndarray]) -> dict[str, float]:
  """Sums over every field, to check that a full epoch saw every episode once."""
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

  out = {
      "real_tokens": int(np.count_nonzero(batch[R.SEQ_LOSS_MASK])),
      "token_sum": int(np.asarray(batch[R.SEQ_TOKENS], np.int64).sum()),
      "logprob_sum": float(np.asarray(batch[R.SEQ_LOGPROBS], np.float64).sum()),
      "reward_sum": float(np.asarray(batch[R.SEQ_REWARD], np.float64).sum()),
  }
  if R.SEQ_TOPK_IDS in batch:
    out["topk_id_sum"] = int(np.asarray(batch[R.SEQ_TOPK_IDS], np.int64).sum())
    out["topk_logprob_sum"] = float(np.asarray(batch[R.SEQ_TOPK_LOGPROBS],
                                               np.float64).sum())
  return out


def _same_sums(a: dict[str, float], b: dict[str, float]) -> bool:
  if set(a) != set(b):
    return False
  return all(np.isclose(a[key], b[key], rtol=1e-6, atol=1e-3) for key in a)


class Verifier:
  """Checks batches row by row against the reference arrays (rows found by content)."""

  def __init__(self, reference: dict[str, np.ndarray], batch: int):
    from rlds_lm import read as R  # pylint: disable=g-import-not-at-top

    self.reference = reference
    self.key = R.SEQ_TOKENS
    self.rows = {reference[self.key][i].tobytes(): i
                 for i in range(reference[self.key].shape[0])}
    self.shapes = {key: (batch,) + value.shape[1:] for key, value in reference.items()}
    self.totals = checksums(reference)

  def check_batch(self, batch: dict[str, np.ndarray]) -> None:
    if set(batch) != set(self.shapes):
      raise AssertionError(f"fields {sorted(batch)}, expected {sorted(self.shapes)}")
    for key, shape in self.shapes.items():
      got = tuple(np.shape(batch[key]))
      if got != shape:
        raise AssertionError(f"field {key}: shape {got}, expected {shape}")
    tokens = np.asarray(batch[self.key], self.reference[self.key].dtype)
    for j in range(tokens.shape[0]):
      i = self.rows.get(tokens[j].tobytes())
      if i is None:
        raise AssertionError(f"row {j}: tokens match no reference episode")
      for key, ref in self.reference.items():
        if not np.array_equal(np.asarray(batch[key][j]), ref[i]):
          raise AssertionError(f"row {j} (reference episode {i}): field {key} differs")


def run_stream(stream: Callable, epochs: int, per_epoch: int,
               verifier: Verifier) -> dict[str, Any]:
  """One iterator over ``epochs`` epochs: the first checked (its first batches row by
  row, its sums), the others timed one by one; start-up = time to the first batch."""
  start = time.perf_counter()
  iterator = stream(epochs)
  marks, cpu, real, sums, batches = [], [], 0, {}, 0
  try:
    for batch in iterator:
      if batches == 0:
        startup = time.perf_counter() - start
      batches += 1
      if batches <= per_epoch:
        if batches <= VERIFY_BATCHES:
          verifier.check_batch(batch)
        for key, value in checksums(batch).items():
          sums[key] = sums.get(key, 0) + value
      else:
        real += int(np.count_nonzero(batch["loss_mask"]))
      if batches % per_epoch == 0:
        marks.append(time.perf_counter())
        cpu.append((time.process_time(), _children_cpu_s()))
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  if batches != epochs * per_epoch:
    raise AssertionError(f"{batches} batches, expected {epochs} x {per_epoch}")
  timed = (epochs - 1) * per_epoch
  return {"startup_s": startup, "seconds": list(np.diff(marks)), "sums": sums,
          "real_tokens": real // max(1, epochs - 1),
          "consumer_cpu_us_per_batch": (cpu[-1][0] - cpu[0][0]) / timed * 1e6,
          "worker_cpu_us_per_batch": (cpu[-1][1] - cpu[0][1]) / timed * 1e6}


def run_epoch(epoch: Callable, seed: int, *, max_batches: int | None = None,
              verifier: Verifier | None = None) -> dict[str, Any]:
  """Pulls one epoch (or ``max_batches``) of batches; checks them if given a verifier."""
  batches = real = 0
  sums: dict[str, float] = {}
  iterator = epoch(seed)
  try:
    for batch in iterator:
      batches += 1
      real += int(np.count_nonzero(batch["loss_mask"]))
      if verifier is not None:
        if batches <= VERIFY_BATCHES:
          verifier.check_batch(batch)
        for key, value in checksums(batch).items():
          sums[key] = sums.get(key, 0) + value
      if max_batches is not None and batches >= max_batches:
        break
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  return {"batches": batches, "real_tokens": real, "sums": sums}


# --------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------


def run(args) -> dict[str, Any]:
  _quiet()
  import datasets  # pylint: disable=g-import-not-at-top

  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top

  n = 256 if args.quick else args.episodes
  batch, length = args.batch, args.length
  repeats = args.repeats or (1 if args.quick else 3)
  n -= n % batch  # whole batches only, so every reader's epoch covers every episode
  prompt_len, action_len = (24, 40), (104, 152)
  scratch = args.workdir or tempfile.mkdtemp(prefix="rlds_lm_bench_read_")
  os.makedirs(scratch, exist_ok=True)
  settings = {
      "episodes": n, "batch_size": batch, "length": length, "turns_per_episode": 1,
      "prompt_tokens_range": list(prompt_len), "action_tokens_range": list(action_len),
      "vocab_size": VOCAB_SIZE, "teacher_top_k": TEACHER_TOP_K, "repeats": repeats,
      "warmup_epochs": 1, "tf_shuffle_buffer": TF_SHUFFLE_BUFFER,
      "tf_max_steps": TF_MAX_STEPS, "tf_python_max_batches": TF_PYTHON_MAX_BATCHES,
      "verify_batches": VERIFY_BATCHES, "stream_min_batches": STREAM_MIN_BATCHES,
      "goal_tokens_per_s": GOAL_TOKENS_PER_S, "reward_names": [E.REWARD_NAME],
      "scratch_dir": scratch,
  }
  rows: list[dict[str, Any]] = []
  datasets_info: list[dict[str, Any]] = []
  try:
    for k in (0, TEACHER_TOP_K):
      config = S.SchemaConfig(vocab_size=VOCAB_SIZE, teacher_top_k=k,
                              reward_names=(E.REWARD_NAME,))
      t0 = time.perf_counter()
      episodes = E.make_rollouts(config, n, prompt_len=prompt_len, action_len=action_len,
                                 seed=7 + k)
      build_s = time.perf_counter() - t0

      t0 = time.perf_counter()
      path = P.publish({"train": episodes}, data_dir=os.path.join(scratch, f"tfds-k{k}"),
                       name=f"bench_read_k{k}", config=config)
      publish_s = time.perf_counter() - t0

      reference = R.stack_sequences([R.episode_to_sequence(ep, length, teacher_top_k=k)
                                     for ep in episodes])
      del episodes
      verifier = Verifier(reference, batch)
      ref_sums = verifier.totals

      memmap_dir = os.path.join(scratch, f"memmap-k{k}")
      os.makedirs(memmap_dir)
      for key, value in reference.items():
        np.save(os.path.join(memmap_dir, f"{key}.npy"), value)

      t0 = time.perf_counter()
      hf_dir = os.path.join(scratch, f"hf-k{k}")
      datasets.Dataset.from_dict(
          {key: value for key, value in reference.items()},
          features=hf_features(length, k)).save_to_disk(hf_dir)
      hf_build_s = time.perf_counter() - t0

      t0 = time.perf_counter()
      view = R.open_training_view(R.open_builder(path), "train")
      view_build_s = time.perf_counter() - t0
      if view is None:
        raise RuntimeError(f"{path}: no training view could be built")
      sizes = {
          "training_view": C.disk_usage(view.directory)["du_bytes"],
          "tfds_tfrecord": C.disk_usage_by_format(path).get("tfrecord", 0),
          "tfds_array_record": C.disk_usage_by_format(path).get("array_record", 0),
          "memmap_npy": C.disk_usage(memmap_dir)["du_bytes"],
          "hf_arrow": C.disk_usage(hf_dir)["du_bytes"],
      }
      datasets_info.append({
          "teacher_top_k": k, "episodes": n, "real_tokens": ref_sums["real_tokens"],
          "build_s": build_s, "publish_s": publish_s, "hf_build_s": hf_build_s,
          "view_build_s": view_build_s,
          "bytes": sizes, "reference_sums": ref_sums,
      })
      print(f"[top-k {k}] {n} episodes, {ref_sums['real_tokens']} action tokens; "
            f"published in {publish_s:.1f} s; view built in {view_build_s:.2f} s; sizes "
            + ", ".join(f"{key} {v / 2**20:.1f} MiB" for key, v in sizes.items()),
            flush=True)

      full = n // batch
      readers = [
          ("tf.data + Python episode_to_sequence", "tf_python",
           tf_python_reader(path, length, k, batch)),
          ("tf.data graph (map+batch+prefetch)", "tf_graph",
           tf_graph_reader(path, length, k, batch)),
          ("Grain grain_batches, training view (default)", "grain_view",
           grain_reader(path, length, k, batch)),
          ("Grain grain_batches, decoder (training_view=False)", "grain_decoder",
           grain_reader(path, length, k, batch, view=False)),
          ("trainers' DataPipeline, training view (default)", "pipeline_view",
           pipeline_reader(path, length, k, batch)),
          ("trainers' DataPipeline, decoder (training_view=False)", "pipeline_decoder",
           pipeline_reader(path, length, k, batch, view=False)),
          ("numpy memmap (.npy)", "memmap", memmap_reader(memmap_dir, n, batch)),
          ("HF datasets (Arrow, numpy format)", "hf_datasets", hf_reader(hf_dir, batch)),
      ]
      streams = [
          (f"training view, multiprocess_batches({w} worker{'s' * (w > 1)})",
           f"grain_view_mp{w}", grain_workers_stream(path, length, k, batch, view=True,
                                                     workers=w)) for w in (1, 2)
      ] + [
          (f"decoder, multiprocess_batches({w} worker{'s' * (w > 1)})",
           f"grain_decoder_mp{w}", grain_workers_stream(path, length, k, batch, view=False,
                                                        workers=w)) for w in (1, 2)
      ] + [
          ("training view, multiprocess_batches(2 workers, copy=False: views of the slots)",
           "grain_view_mp2_views", grain_workers_stream(path, length, k, batch, view=True,
                                                        workers=2, copy=False)),
          ("training view, Grain mp_prefetch(2 workers) as before", "grain_view_mp2_plain",
           grain_workers_stream(path, length, k, batch, view=True, workers=2, plain=True)),
      ]
      only = set(args.only.split(",")) if args.only else None
      readers = [r for r in readers if only is None or r[1] in only]
      streams = [r for r in streams if only is None or r[1] in only]
      for label, key, stream in streams:
        try:
          # At least STREAM_MIN_BATCHES timed batches: the workers' CPU time comes
          # from /proc in clock ticks (10 ms).
          res = run_stream(stream, max(repeats, -(-STREAM_MIN_BATCHES // full)) + 1,
                           full, verifier)
          if not _same_sums(res["sums"], ref_sums):
            raise AssertionError(f"epoch sums {res['sums']} != reference {ref_sums}")
          # The mean epoch: workers hand over several batches per element, so single
          # epochs are lumpy (an element can straddle an epoch's end).
          median = float(np.mean(res["seconds"]))
          row = {
              "teacher_top_k": k, "reader": label, "key": key, "seconds": res["seconds"],
              "median_s": median, "mean_s": median, "batches_per_run": full, "full_epoch": True,
              "startup_s": res["startup_s"], "tokens_per_s": full * batch * length / median,
              "consumer_cpu_us_per_batch": res["consumer_cpu_us_per_batch"],
              "worker_cpu_us_per_batch": res["worker_cpu_us_per_batch"],
              "real_tokens_per_s": res["real_tokens"] / median,
              "batches_per_s": full / median, "verified": True,
          }
          print(f"  {label}: {C.fmt_rate(row['tokens_per_s'])} tok/s "
                f"(start-up {res['startup_s']:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - a failing reader is a result too
          row = {"teacher_top_k": k, "reader": label, "key": key,
                 "error": f"{type(e).__name__}: {e}"[:500]}
          print(f"  {label}: FAILED {row['error']}", flush=True)
        rows.append(row)
      for label, key, epoch in readers:
        max_batches = min(full, TF_PYTHON_MAX_BATCHES) if key == "tf_python" else full
        try:
          warm = run_epoch(epoch, 0, max_batches=max_batches, verifier=verifier)
          if warm["batches"] != max_batches:
            raise AssertionError(f"{warm['batches']} batches, expected {max_batches}")
          if max_batches == full and not _same_sums(warm["sums"], ref_sums):
            raise AssertionError(f"epoch sums {warm['sums']} != reference {ref_sums}")
          seconds, open_s, cpu_s, timed_batches = [], [], 0.0, 0
          for rep in range(repeats):
            if hasattr(epoch, "prepare"):
              start = time.perf_counter()
              epoch.prepare(rep + 1)
              open_s.append(time.perf_counter() - start)
            start, cpu_start = time.perf_counter(), time.process_time()
            res = run_epoch(epoch, rep + 1, max_batches=max_batches)
            seconds.append(time.perf_counter() - start)
            cpu_s += time.process_time() - cpu_start
            timed_batches += res["batches"]
          median = float(np.median(seconds))
          padded = res["batches"] * batch * length
          row = {
              "teacher_top_k": k, "reader": label, "key": key, "seconds": seconds,
              "median_s": median, "batches_per_run": res["batches"],
              "full_epoch": max_batches == full,
              "tokens_per_s": padded / median,
              "real_tokens_per_s": res["real_tokens"] / median,
              "batches_per_s": res["batches"] / median, "verified": True,
              "consumer_cpu_us_per_batch": cpu_s / max(1, timed_batches) * 1e6,
          }
          if open_s:  # opening the dataset, not timed (once per run for a trainer)
            row["open_s"] = float(np.median(open_s))
          print(f"  {label}: {C.fmt_rate(row['tokens_per_s'])} tok/s "
                f"({C.fmt_rate(row['real_tokens_per_s'])} real)", flush=True)
        except Exception as e:  # noqa: BLE001 - a failing reader is a result too
          row = {"teacher_top_k": k, "reader": label, "key": key,
                 "error": f"{type(e).__name__}: {e}"[:500]}
          print(f"  {label}: FAILED {row['error']}", flush=True)
        rows.append(row)
      del reference, verifier

      memmap = next((r for r in rows if r["teacher_top_k"] == k and r["key"] == "memmap"
                     and "error" not in r), None)
      hf = next((r for r in rows if r["teacher_top_k"] == k and r["key"] == "hf_datasets"
                 and "error" not in r), None)
      for row in rows:
        if row["teacher_top_k"] != k or "error" in row:
          continue
        row["ratio_to_memmap"] = row["tokens_per_s"] / memmap["tokens_per_s"] if memmap \
            else None
        row["beats_hf_datasets"] = row["tokens_per_s"] > hf["tokens_per_s"] if hf else None
        row["meets_goal"] = row["tokens_per_s"] >= GOAL_TOKENS_PER_S
      by_key = {r["key"]: r for r in rows if r["teacher_top_k"] == k and "error" not in r}
      ratios = {}
      if "grain_view" in by_key:
        view_rate = by_key["grain_view"]["tokens_per_s"]
        if hf:
          ratios["view_over_hf_datasets"] = view_rate / hf["tokens_per_s"]
        if memmap:
          ratios["view_over_memmap"] = view_rate / memmap["tokens_per_s"]
        if "grain_decoder" in by_key:
          ratios["view_over_decoder"] = view_rate / by_key["grain_decoder"]["tokens_per_s"]
      if "pipeline_view" in by_key and "pipeline_decoder" in by_key:
        ratios["pipeline_view_over_decoder"] = (by_key["pipeline_view"]["tokens_per_s"]
                                                / by_key["pipeline_decoder"]["tokens_per_s"])
      if "pipeline_view" in by_key and hf:
        ratios["pipeline_view_over_hf_datasets"] = (by_key["pipeline_view"]["tokens_per_s"]
                                                    / hf["tokens_per_s"])
      if "pipeline_view" in by_key and memmap:
        ratios["pipeline_view_over_memmap"] = (by_key["pipeline_view"]["tokens_per_s"]
                                               / memmap["tokens_per_s"])
      for kind in ("view", "decoder"):
        two, one = by_key.get(f"grain_{kind}_mp2"), by_key.get(f"grain_{kind}_mp1")
        alone = by_key.get(f"grain_{kind}")
        if two and one:
          ratios[f"{kind}_mp2_over_mp1"] = two["tokens_per_s"] / one["tokens_per_s"]
        if two and alone:
          ratios[f"{kind}_mp2_over_in_process"] = two["tokens_per_s"] / alone["tokens_per_s"]
      views = by_key.get("grain_view_mp2_views")
      if views and "grain_view" in by_key:
        ratios["view_mp2_views_over_in_process"] = (views["tokens_per_s"]
                                                    / by_key["grain_view"]["tokens_per_s"])
      if views and "grain_view_mp1" in by_key:
        ratios["view_mp2_views_over_mp1"] = (views["tokens_per_s"]
                                             / by_key["grain_view_mp1"]["tokens_per_s"])
      plain = by_key.get("grain_view_mp2_plain")
      if plain and "grain_view" in by_key:
        ratios["view_plain_mp2_over_in_process"] = (plain["tokens_per_s"]
                                                    / by_key["grain_view"]["tokens_per_s"])
      datasets_info[-1]["ratios"] = ratios
      print("  ratios: " + ", ".join(f"{key} {v:.2f}" for key, v in ratios.items()),
            flush=True)
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(scratch, ignore_errors=True)
  return {"benchmark": NAME, "quick": bool(args.quick), "machine": C.machine_info(),
          "settings": settings, "datasets": datasets_info, "rows": rows}


def markdown(data: dict[str, Any]) -> str:
  s = data["settings"]
  lines = [f"## Read throughput (`{NAME}`)", ""]
  if data["quick"]:
    lines += ["**Quick run (`--quick`): small sizes, not representative.**", ""]
  lines += [
      f"`python -m benchmarks.{NAME} --out docs/` — {s['episodes']:,} single-turn "
      f"episodes ({s['prompt_tokens_range'][0]}-{s['prompt_tokens_range'][1]} prompt + "
      f"{s['action_tokens_range'][0]}-{s['action_tokens_range'][1]} action tokens), "
      f"published once with `rlds_lm.publish.publish`; batches `[{s['batch_size']}, "
      f"{s['length']}]`, one shuffled epoch per run, median of {s['repeats']} runs after "
      f"one warm-up epoch that is checked against the reference arrays. Tokens/s counts "
      f"batch x length per batch; real = action (loss-mask) tokens; spread is the "
      f"slowest over the fastest timed run. Warm page cache. "
      f"Machine: {C.machine_line(data['machine'])}.",
      "",
      "Readers (all yield the same fields: tokens, loss mask, behaviour log-probs, "
      "reward and, with teacher data, the `[batch, length, 64]` top-k ids and "
      "log-probs):",
      "",
      "- tf.data + Python: `rlds_lm.transforms.as_dataset` (tfrecord), "
      f"`shuffle({s['tf_shuffle_buffer']})`, each episode's nested `steps` pulled "
      "through `tfds.as_numpy` and flattened by `rlds_lm.read.episode_to_sequence`; "
      f"timed on {s['tf_python_max_batches']} batches per run (a nested-dataset "
      "iterator per episode makes it too slow for whole epochs).",
      "- tf.data graph: the same dataset flattened in-graph (`ragged_batch` of the "
      "steps, concat, pad, scatter of the teacher rows) in "
      "`map(num_parallel_calls=AUTOTUNE)`, then `batch`, `prefetch`.",
      "- Grain, training view: `rlds_lm.read.grain_batches` as of the commit below, "
      "its default: batches gathered from the dataset's training view "
      "(`rlds_lm.view`, memory-mapped columns; built once before the timed runs, see "
      "the build time below), one element per batch, iterated as a user would "
      "(`for batch in ds`: the dataset reads in the calling thread). No TensorFlow.",
      "- Grain, decoder: `grain_batches(training_view=False)`: array_record through "
      "`as_data_source`, each record parsed by `RawSequenceDecoder`.",
      "- Worker processes: each of those through `rlds_lm.loading.multiprocess_batches` "
      "(1 and 2 workers; the workers gather batches straight into a ring of reused "
      "shared-memory slots, several batches per Grain element, and the trainer's process "
      "copies each out once; with `copy=False` it hands out views of the slots instead), "
      "and the view through Grain's own `.to_iter_dataset().mp_prefetch(2 workers)` "
      "(fresh shared memory per array per batch) as this benchmark measured workers "
      "before. These rows run one iterator over all epochs, as a trainer does: the "
      "start-up column is the time to its first batch (spawning the workers), the rate "
      "is over all the epochs after the first (their mean: a worker hands over several "
      "batches at once, so single epochs are lumpy), at least "
      f"{s.get('stream_min_batches', 0):,} timed batches.",
      "- trainers' DataPipeline: `rlds_lm.trainers.data.DataPipeline` (padding, its "
      "own Philox epoch order), `batch(step)` for one epoch, with the training view "
      "(default) and without; its extra keys (segment ids, positions, record indices) "
      "dropped. Opened before the timed epoch, like the Grain readers.",
      "- numpy memmap: the padded arrays saved once as `.npy`, opened with "
      "`mmap_mode='r'`; a batch is a fancy-indexed copy of 32 random rows.",
      "- HF datasets: the padded arrays in Arrow (`Dataset.from_dict` with fixed-shape "
      "`Sequence`/`Array2D` features, `save_to_disk`), `load_from_disk(...)"
      ".with_format('numpy')`, `shuffle(seed)`, `iter(batch_size)`.",
      "",
      f"Goal: {s['goal_tokens_per_s'] // 1000}k tokens/s per host (what one H100 "
      "consumes training a 110M-parameter decoder); the column compares padded "
      "tokens/s on this 2-CPU machine.",
      "",
  ]
  table = []
  for r in data["rows"]:
    teacher = f"top-{r['teacher_top_k']}" if r["teacher_top_k"] else "none"
    if "error" in r:
      table.append([teacher, r["reader"], "failed", "—", "—", "—", "—",
                    r["error"][:80].replace("|", "/"), "—", "—"])
      continue
    reader = r["reader"] + ("" if r["full_epoch"] else
                            f" ({r['batches_per_run']} batches per run)")
    table.append([
        teacher, reader, C.fmt_rate(r["tokens_per_s"]),
        C.fmt_rate(r["real_tokens_per_s"]), f"{r['batches_per_s']:,.1f}",
        f"{r['ratio_to_memmap']:.3g}" if r.get("ratio_to_memmap") is not None else "—",
        "yes" if r.get("beats_hf_datasets") else ("—" if r["key"] == "hf_datasets"
                                                  else "no"),
        "yes" if r["meets_goal"] else f"no ({r['tokens_per_s'] / s['goal_tokens_per_s']:.2f}x)",
        C.spread(r["seconds"]),
        f"{r['startup_s']:.1f} s" if "startup_s" in r else (
            f"{r['open_s'] * 1000:.0f} ms open" if "open_s" in r else "—"),
    ])
  lines.append(C.markdown_table(
      ["teacher", "reader", "tokens/s", "real tokens/s", "batches/s", "ratio to memmap",
       "beats HF datasets", f"meets {s['goal_tokens_per_s'] // 1000}k tok/s", "spread",
       "start-up"],
      table, ["l", "l", "r", "r", "r", "r", "l", "l", "r", "r"]))
  lines += ["", "Issue 15's goals, as ratios measured in this run:", ""]
  goals = [
      ("view_over_hf_datasets", "grain_batches, view / HF datasets", GOAL_VIEW_OVER_HF),
      ("view_over_memmap", "grain_batches, view / numpy memmap", GOAL_VIEW_OVER_MEMMAP),
      ("view_mp2_over_mp1", "view, 2 workers / 1 worker", GOAL_MP2_OVER_ONE),
      ("view_mp2_over_in_process", "view, 2 workers / in process", GOAL_MP2_OVER_ONE),
      ("view_mp2_views_over_mp1", "view, 2 workers (copy=False) / 1 worker", None),
      ("view_mp2_views_over_in_process", "view, 2 workers (copy=False) / in process",
       None),
      ("decoder_mp2_over_mp1", "decoder, 2 workers / 1 worker", GOAL_MP2_OVER_ONE),
      ("decoder_mp2_over_in_process", "decoder, 2 workers / in process", GOAL_MP2_OVER_ONE),
      ("view_plain_mp2_over_in_process", "view, Grain mp_prefetch(2) / in process", None),
      ("view_over_decoder", "grain_batches, view / decoder (in process)", None),
      ("pipeline_view_over_hf_datasets", "DataPipeline, view / HF datasets",
       GOAL_VIEW_OVER_HF),
      ("pipeline_view_over_memmap", "DataPipeline, view / numpy memmap",
       GOAL_VIEW_OVER_MEMMAP),
      ("pipeline_view_over_decoder", "DataPipeline, view / decoder", None),
  ]
  table = []
  for key, label, goal in goals:
    cells = [label]
    for d in data["datasets"]:
      value = d.get("ratios", {}).get(key)
      cells.append("—" if value is None else f"{value:.2f}x")
    cells.append("—" if goal is None else f">= {goal}x")
    table.append(cells)
  lines.append(C.markdown_table(
      ["ratio"] + [f"top-{d['teacher_top_k']}" if d["teacher_top_k"] else "no teacher"
                   for d in data["datasets"]] + ["goal"], table))
  lines += [""]
  for k in sorted({r["teacher_top_k"] for r in data["rows"]}):
    ok = [r for r in data["rows"] if r["teacher_top_k"] == k and "error" not in r]
    ours = [r for r in ok if r["key"] in RLDS_LM_READERS]
    hf = next((r for r in ok if r["key"] == "hf_datasets"), None)
    if not ours:
      continue
    best = max(ours, key=lambda r: r["tokens_per_s"])
    teacher = f"top-{k} teacher" if k else "no teacher"
    text = (f"- {teacher}: the fastest rlds_lm reader is {best['reader']} at "
            f"{C.fmt_rate(best['tokens_per_s'])} tokens/s, "
            f"{best['tokens_per_s'] / s['goal_tokens_per_s']:.2f}x the "
            f"{s['goal_tokens_per_s'] // 1000}k goal")
    if hf:
      text += (f"; HF datasets reads the same data at {C.fmt_rate(hf['tokens_per_s'])} "
               f"tokens/s ({hf['tokens_per_s'] / best['tokens_per_s']:.1f}x faster)"
               if hf["tokens_per_s"] > best["tokens_per_s"] else
               f"; it beats HF datasets ({C.fmt_rate(hf['tokens_per_s'])} tokens/s)")
    lines.append(text + ".")
  cpu_rows = []
  for r in data["rows"]:
    if "error" in r or r["key"] not in ("grain_view", "grain_view_mp1", "grain_view_mp2",
                                        "grain_view_mp2_views"):
      continue
    if "consumer_cpu_us_per_batch" not in r:
      continue
    worker = r.get("worker_cpu_us_per_batch")
    total = r["consumer_cpu_us_per_batch"] + (worker or 0)
    cpu_rows.append([
        f"top-{r['teacher_top_k']}" if r["teacher_top_k"] else "none", r["reader"],
        f"{1e6 / r['batches_per_s']:,.0f}", f"{r['consumer_cpu_us_per_batch']:,.0f}",
        "—" if worker is None else f"{worker:,.0f}", f"{total:,.0f}",
        f"{2e6 / total:,.0f}"])
  if cpu_rows:
    lines += ["", "CPU time per batch (the timed epochs; workers' from /proc, their "
              "start-up excluded). With 2 CPUs shared by the workers and the trainer's "
              "process, no reader can exceed 2 CPUs / (CPU per batch) batches/s:", ""]
    lines.append(C.markdown_table(
        ["teacher", "reader", "wall us/batch", "trainer's process CPU us/batch",
         "workers' CPU us/batch", "total CPU us/batch", "bound on 2 CPUs, batches/s"],
        cpu_rows, ["l", "l", "r", "r", "r", "r", "r"]))
  lines += ["", "On disk and build time (same data):", ""]
  table = []
  for d in data["datasets"]:
    b = d["bytes"]
    table.append([
        f"top-{d['teacher_top_k']}" if d["teacher_top_k"] else "none",
        f"{d['publish_s']:.1f}", f"{d['view_build_s']:.2f}",
        f"{b['tfds_tfrecord'] / 2**20:.1f}", f"{b['tfds_array_record'] / 2**20:.1f}",
        f"{b['training_view'] / 2**20:.1f}", f"{b['memmap_npy'] / 2**20:.1f}",
        f"{b['hf_arrow'] / 2**20:.1f}",
    ])
  lines.append(C.markdown_table(
      ["teacher", "publish s (tfrecord + array_record)", "view build s", "tfrecord MiB",
       "array_record MiB", "training view MiB", "memmap .npy MiB", "HF Arrow MiB"], table))
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--episodes", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=192)
  parser.add_argument("--only", default=None,
                      help="comma-separated reader keys to run (e.g. grain_view,memmap)")
  args = parser.parse_args(argv)
  return C.run_benchmark(NAME, args, run, markdown)


if __name__ == "__main__":
  sys.exit(main())
