"""Model backends as Apache Beam model handlers (``apache_beam.ml.inference``).

A stage names its model with one flag: an rlds_lm checkpoint directory, or the root of an
OpenAI-compatible API (``http://host:port/v1``, with ``--served_model`` naming the model
there). :class:`pipelines.models.ModelRef` is that choice, picklable for workers;
:class:`BackendModelHandler` loads it once per worker (Beam's model sharing) and answers
batches of :class:`SampleRequest` / :class:`ScoreRequest` through ``RunInference``.

A request that fails (an endpoint that keeps answering 5xx, a refused prompt) does not
fail the bundle: its result is a :class:`Failed` carrying the reason, which the stage
sends to its dead-letter output. Keeping failures in the one output PCollection (instead
of ``RunInference(...).with_exception_handling()``'s second, tagged output) keeps the
graph free of multi-output ParDos, which some runners mis-route (../shared/STACK.md,
Beam on Dask).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference import base as beam_inference

from rlds_lm.backends import base


class SampleRequest(NamedTuple):
  """N samples of one prompt."""

  key: str  # names the request in dead letters (the prompt id)
  prompt: np.ndarray  # int32 [n]
  seeds: tuple[int, ...]  # one per sample
  sampler: Any  # rlds_lm.models.sampling.SamplerConfig
  max_new_tokens: int
  top_logprobs: int = 0


class ScoreRequest(NamedTuple):
  """Teacher data for the completion of one sequence."""

  key: str
  sequence: np.ndarray  # int32 [n]: prompt + completion
  prompt_length: int
  top_k: int


class Failed(NamedTuple):
  """A request the backend could not answer, with the reason (for the dead letters)."""

  key: str
  reason: str
  detail: str


class BackendModelHandler(beam_inference.ModelHandler):
  """``RunInference`` over a :class:`~pipelines.models.ModelRef`: one backend per worker,
  batched calls.

  Sample requests of one batch that share sampler settings go to the backend in one
  call (one model call in process; concurrent HTTP requests for an endpoint).
  """

  def __init__(self, ref, *, max_batch_size: int = 16):
    super().__init__()
    self.ref = ref
    self._max_batch_size = max_batch_size

  def load_model(self) -> base.Backend:
    return self.ref.backend()

  def batch_elements_kwargs(self) -> dict[str, Any]:
    return {"max_batch_size": self._max_batch_size}

  def get_metrics_namespace(self) -> str:
    return "rlds_lm_backend"

  def run_inference(self, batch: Sequence[Any], model: base.Backend,
                    inference_args: dict[str, Any] | None = None
                    ) -> Iterable[beam_inference.PredictionResult]:
    del inference_args
    out: list[Any] = [None] * len(batch)
    samples = [i for i, r in enumerate(batch) if isinstance(r, SampleRequest)]
    groups: dict[tuple, list[int]] = {}
    for i in samples:
      r = batch[i]
      groups.setdefault((r.sampler, r.max_new_tokens, r.top_logprobs), []).append(i)
    for (sampler, max_new, top), members in groups.items():
      try:
        prompts = [batch[i].prompt for i in members for _ in batch[i].seeds]
        seeds = [s for i in members for s in batch[i].seeds]
        gens = model.sample(prompts, seeds, sampler, max_new, top_logprobs=top)
        start = 0
        for i in members:
          out[i] = gens[start:start + len(batch[i].seeds)]
          start += len(batch[i].seeds)
      except (base.BackendError, ValueError) as e:
        # One bad request must not sink the others: retry them one by one.
        for i in members:
          out[i] = self._one_sample(model, batch[i], e if len(members) == 1 else None)
    # Score requests, alone or as a tuple (the turns of one episode): each answered with
    # its teacher arrays, or a Failed of its own.
    for i, r in enumerate(batch):
      if isinstance(r, ScoreRequest):
        out[i] = self._score(model, [r])[0]
      elif isinstance(r, tuple) and all(isinstance(x, ScoreRequest) for x in r):
        out[i] = self._score(model, list(r))
    for i, r in enumerate(batch):
      if out[i] is None:
        raise TypeError(f"RunInference got a {type(r).__name__}; expected a SampleRequest "
                        f"or a ScoreRequest")
    return [beam_inference.PredictionResult(r, o) for r, o in zip(batch, out)]

  @staticmethod
  def _score(model: base.Backend, requests: list[ScoreRequest]) -> list[Any]:
    out: list[Any] = []
    for top_k in sorted({r.top_k for r in requests}):
      group = [r for r in requests if r.top_k == top_k]
      try:
        arrays = model.annotate([r.sequence for r in group], [r.prompt_length for r in group],
                                top_k=top_k)
      except (base.BackendError, ValueError) as e:
        arrays = [Failed(r.key, _reason(e), str(e)) for r in group]
      out.extend(zip(group, arrays))
    order = {id(r): n for n, r in enumerate(requests)}
    return [a for _, a in sorted(out, key=lambda ra: order[id(ra[0])])]

  @staticmethod
  def _one_sample(model: base.Backend, r: SampleRequest, error: Exception | None):
    if error is None:
      try:
        return model.sample([r.prompt] * len(r.seeds), list(r.seeds), r.sampler,
                            r.max_new_tokens, top_logprobs=r.top_logprobs)
      except (base.BackendError, ValueError) as e:
        error = e
    return Failed(r.key, _reason(error), str(error))


class Ask(beam.PTransform):
  """``(split, (a, b, request))`` -> ``(split, ((a, b), PredictionResult))``: each request
  answered by ``RunInference`` over ``ref`` (a :class:`~pipelines.models.ModelRef`), the
  element's own ``a`` and ``b`` carried along as the key."""

  def __init__(self, ref, *, max_batch_size: int = 16):
    super().__init__()
    self._handler = beam_inference.KeyedModelHandler(
        BackendModelHandler(ref, max_batch_size=max_batch_size))

  def expand(self, pcoll):
    return (pcoll
            | "Keyed" >> beam.MapTuple(lambda split, r: ((split, (r[0], r[1])), r[2]))
            | "RunInference" >> beam_inference.RunInference(self._handler)
            | "Unkey" >> beam.MapTuple(lambda key, result: (key[0], (key[1], result))))


def _reason(error: Exception) -> str:
  return "backend_error" if isinstance(error, base.BackendError) else "model_refused"
