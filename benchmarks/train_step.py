"""Training step time, time waiting for data, and model FLOPs utilisation (MFU).

One training step is the distillation trainer's (``rlds_lm.trainers.distill``): the
student's forward pass over a padded ``[batch, length]`` batch, the top-k KD loss
against stored teacher top-k (K = 64) with the tail bucket, the backward pass, gradient
clipping and AdamW (``rlds_lm.trainers.common.make_train_step``), parameters and
optimizer state donated. Parameters are randomly initialised.

Two data sources:

* ``pipeline`` (the real path, CPU machines): synthetic rollout episodes with teacher
  top-k are published once (``rlds_lm.publish``) and read by
  ``rlds_lm.trainers.data.DataPipeline`` (array_record, no TensorFlow, one prefetch
  thread). Per step: the time blocked in ``next(iterator)`` (waiting for data) and the
  total step time (data + host-to-device + compute, ``block_until_ready``).
* ``synthetic``: the same batch shapes drawn once and kept on the device, for
  accelerator hosts without TensorFlow Datasets (the GPU machine here has JAX only):
  the step's compute alone.

MFU = model FLOPs per second / the device's peak: model FLOPs per token are
``rlds_lm.models.config.flops_per_token(config, length, training=True)`` (3x the
forward matmuls and attention, PaLM-style); peak dense bf16 FLOP/s: H100 / H200 SXM
989 TFLOP/s. No peak is claimed for CPUs (no MFU there).

    python -m benchmarks.train_step --out docs/                   # CPU, real data path
    python -m benchmarks.train_step --tag gpu --data synthetic \\
        --model gemma_100m --batch 32 --length 1024 --dtype bfloat16 --out docs/
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks import _common as C

NAME = "train_step"
TOP_K = 64
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense, SXM


def _peak(device_kind: str) -> float | None:
  for name, flops in PEAK_BF16_FLOPS.items():
    if name in device_kind:
      return flops
  return None


def _synthetic_batch(rng: np.random.Generator, batch: int, length: int, vocab: int
                     ) -> dict[str, np.ndarray]:
  """A padded batch: prompt = first quarter, completion (trained) = the rest."""
  from rlds_lm.trainers import data as D  # pylint: disable=g-import-not-at-top
  tokens = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
  mask = np.zeros((batch, length), bool)
  mask[:, length // 4:] = True
  ids = np.stack([np.stack([rng.choice(vocab, TOP_K, replace=False) for _ in range(length)])
                  for _ in range(batch)]).astype(np.int32)
  p = -np.sort(-rng.dirichlet(np.ones(TOP_K), size=(batch, length)), axis=-1) * 0.9
  return {D.TOKENS: tokens, D.LOSS_MASK: mask,
          D.SEGMENT_IDS: np.ones((batch, length), np.int32),
          D.TEACHER_TOPK_IDS: ids, D.TEACHER_TOPK_LOGPROBS: np.log(p).astype(np.float32)}


def _publish_episodes(directory: str, count: int, length: int, vocab: int) -> str:
  """Rollouts whose prompt + completion fill ``length`` tokens, with teacher top-k."""
  from rlds_lm import publish as P  # pylint: disable=g-import-not-at-top
  from rlds_lm import schema as S  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  config = S.SchemaConfig(vocab_size=vocab, teacher_top_k=TOP_K)
  episodes = []
  prompt_len = length // 4
  for i in range(count):
    prompt = rng.integers(3, vocab, size=prompt_len).astype(np.int32)
    action = rng.integers(3, vocab, size=length - prompt_len).astype(np.int32)
    t = len(action)
    ids = np.argsort(rng.random((t, vocab)), axis=1)[:, :TOP_K].astype(np.int32)
    p = -np.sort(-rng.dirichlet(np.ones(TOP_K), size=t), axis=-1) * 0.9  # most likely first
    teacher = {S.TEACHER_TOPK_IDS: ids, S.TEACHER_TOPK_LOGPROBS: np.log(p).astype(np.float32),
               S.TEACHER_TOKEN_LOGPROB: np.log(p[:, 0]).astype(np.float32)}
    turn = S.Turn(S.observation(config, prompt), action_tokens=action,
                  action_logprobs=np.full(t, -1.0, np.float32), teacher=teacher)
    episodes.append(S.rollout_episode(config, [turn], prompt_id=f"p{i}", seed=i))
  return P.publish({"train": episodes}, data_dir=directory, name="train_step_bench",
                   config=config)


def run(args) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  from rlds_lm.models import config as mc  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import common  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import data as D  # pylint: disable=g-import-not-at-top
  from rlds_lm.trainers import distill  # pylint: disable=g-import-not-at-top

  quick = args.quick
  model = mc.get_config("tiny" if quick else args.model, dtype=args.dtype)
  if args.attention != "xla":
    model = dataclasses.replace(model, attention=args.attention, **(
        {"attn_logit_softcap": None} if quick else {}))
  batch, length = (4, 64) if quick else (args.batch, args.length)
  steps = 3 if quick else args.steps
  params = gemma.init_params(model, seed=0)
  optimizer = common.make_optimizer(common.OptimConfig(total_steps=1000))
  loss_fn = distill.off_policy_loss(
      distill.DistillConfig(datasets={"-": 1.0}, workdir="-", loss="topk_kd"), model)
  step_fn = common.make_train_step(lambda p, b, e: loss_fn(p, b, e), optimizer)
  params = jax.tree.map(jax.numpy.asarray, params)
  opt_state = jax.jit(optimizer.init)(params)

  scratch = None
  iterator = None
  if args.data == "pipeline":
    scratch = tempfile.mkdtemp(prefix="train_step_")
    path = _publish_episodes(scratch, count=max(2 * batch, 64), length=length,
                             vocab=model.vocab_size)
    pipeline = D.DataPipeline({path: 1.0}, D.DataConfig(batch_size=batch, max_length=length),
                              require=(), optional=("topk_ids", "topk_logprobs"),
                              vocab_size=model.vocab_size)
    iterator = pipeline.iterator()
    next_batch = lambda: next(iterator)  # noqa: E731
  else:
    fixed = {k: jax.device_put(v) for k, v in _synthetic_batch(
        np.random.default_rng(0), batch, length, model.vocab_size).items()}
    next_batch = lambda: fixed  # noqa: E731

  try:
    start = time.perf_counter()
    params, opt_state, metrics = step_fn(params, opt_state, next_batch(), {})
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - start
    waits, totals = [], []
    for _ in range(steps):
      t0 = time.perf_counter()
      b = next_batch()
      t1 = time.perf_counter()
      params, opt_state, metrics = step_fn(params, opt_state, b, {})
      jax.block_until_ready(metrics["loss"])
      t2 = time.perf_counter()
      waits.append(t1 - t0)
      totals.append(t2 - t0)
  finally:
    if iterator is not None:
      iterator.close()
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)

  device = jax.devices()[0]
  step_s = float(np.median(totals))
  tokens_per_s = batch * length / step_s
  flops = mc.flops_per_token(model, length, training=True) * batch * length / step_s
  peak = _peak(device.device_kind)
  return {
      "benchmark": NAME, "quick": quick, "tag": args.tag, "machine": C.machine_info(),
      "jax_backend": jax.default_backend(), "device_kind": device.device_kind,
      "jax_version": jax.__version__,
      "model": model.name, "dtype": model.dtype, "attention": model.attention,
      "params": mc.count_params(model),
      "batch": batch, "length": length, "loss": f"topk_kd (K={TOP_K})", "data": args.data,
      "steps": steps, "compile_s": compile_s, "step_seconds": totals,
      "data_wait_seconds": waits, "median_step_s": step_s,
      "data_wait_fraction": float(np.sum(waits) / np.sum(totals)),
      "tokens_per_s": tokens_per_s, "model_flops_per_s": flops,
      "peak_flops": peak, "mfu": (flops / peak) if peak else None,
      "final_loss": float(metrics["loss"]),
  }


def markdown(data: dict) -> str:
  mfu = f"{100 * data['mfu']:.1f} %" if data["mfu"] is not None else "— (no peak for CPUs)"
  data_line = ("the real data path (`DataPipeline`, array_record, 1 prefetch thread)"
               if data["data"] == "pipeline" else "one batch kept on the device (compute only)")
  lines = [
      f"## Training step (`{NAME}`{', ' + data['tag'] if data['tag'] else ''})", "",
      f"Distillation step (forward, top-k KD loss with K = {TOP_K}, backward, clipping, "
      f"AdamW) of model `{data['model']}` ({data['params'] / 1e6:.1f} M parameters, "
      f"activations {data['dtype']}, attention `{data.get('attention', 'xla')}`) on batch {data['batch']} x {data['length']} tokens, "
      f"data from {data_line}. JAX {data['jax_version']} backend `{data['jax_backend']}`, "
      f"device {data['device_kind']}. Median of {data['steps']} steps after the compiling "
      f"one. {C.machine_line(data['machine'])}", "",
      C.markdown_table(
          ["step time", "tokens/s", "waiting for data", "model TFLOP/s", "MFU",
           "first step (compile)"],
          [[f"{1e3 * data['median_step_s']:.1f} ms", C.fmt_rate(data["tokens_per_s"]),
            f"{100 * data['data_wait_fraction']:.1f} %",
            f"{data['model_flops_per_s'] / 1e12:.2f}", mfu, f"{data['compile_s']:.1f} s"]]),
  ]
  if data["mfu"] is not None:
    lines += ["", f"Reference: a plain JAX 110M decoder step reaches about 42 % MFU on one "
                  f"H100 with cuDNN attention; this step measures "
                  f"{100 * data['mfu']:.1f} % with attention "
                  f"`{data.get('attention', 'xla')}`."]
  lines += C.run_footer(data)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = C.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="small")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--data", default="pipeline", choices=("pipeline", "synthetic"))
  parser.add_argument("--attention", default="xla", choices=("xla", "fused", "cudnn"),
                      help="ModelConfig.attention (cudnn: GPUs, bfloat16)")
  parser.add_argument("--tag", default="", help="results name suffix (e.g. gpu)")
  args = parser.parse_args(argv)
  name = NAME + (f"_{args.tag}" if args.tag else "")
  return C.run_benchmark(name, args, run, markdown)


if __name__ == "__main__":
  sys.exit(main())
