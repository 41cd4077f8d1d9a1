"""Model checkpoints for the stages: describe in the driver, load once per worker.

A stage names a checkpoint directory (``rlds_lm.models.checkpoint`` format) and a
tokenizer (``byte``, or a SentencePiece model file). The driver reads only the config and
the recorded digest (cheap, no parameters); each Beam worker restores the parameters in
``DoFn.setup`` through :func:`load`.

``python -m pipelines.models init --config tiny --seed 0 OUT`` writes a freshly
initialised checkpoint (the stand-in policy / teacher for trials and tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from pipelines import core
from rlds_lm.cli_help import HelpFormatter


@dataclasses.dataclass(frozen=True)
class ModelRef:
  """A model the stages use: an rlds_lm checkpoint, or a served model at an
  OpenAI-compatible endpoint (``path`` = ``http(s)://host:port/v1``); picklable.

  Attributes:
    path: a checkpoint directory or an API root.
    tokenizer: ``byte`` or a SentencePiece ``.model`` file (the model's tokenizer; for an
      endpoint, the one its ids mean: texts are decoded with it, prompts encoded).
    name: the name episodes record (default: the checkpoint's / the served name).
    served_model: the model's name at the endpoint (endpoints only).
    api_key_env: environment variable with the endpoint's API key ("" for none).
    max_concurrency: requests in flight at once (endpoints).
    timeout_s / max_retries: per request (endpoints).
    request_cache: keep finished responses here, so a killed and rerun stage repeats no
      finished request (endpoints; "" for none).
  """

  path: str
  tokenizer: str = "byte"  # "byte" or a SentencePiece .model file
  name: str = ""
  served_model: str = ""
  api_key_env: str = "OPENAI_API_KEY"
  max_concurrency: int = 8
  timeout_s: float = 120.0
  max_retries: int = 5
  request_cache: str = ""

  @property
  def is_endpoint(self) -> bool:
    return self.path.startswith(("http://", "https://"))

  def describe(self, *, top_logprobs: int = 0, prompt_logprobs: int = 0) -> dict:
    """Identity, digest and tokenizer, read without restoring parameters; for an endpoint
    also checks that it serves what the stage will ask (refusing it with one message)."""
    if self.is_endpoint:
      return self._describe_endpoint(top_logprobs, prompt_logprobs)
    from rlds_lm.models import checkpoint  # pylint: disable=g-import-not-at-top
    path = core.absolute(self.path)
    try:
      config = checkpoint.load_config(path)
      digest = checkpoint.read_digest(path)
    except (FileNotFoundError, ValueError) as e:
      raise core.PipelineError(f"{self.path}: {e}") from e
    tok = self.load_tokenizer()
    if tok.vocab_size > config.vocab_size:
      raise core.PipelineError(
          f"tokenizer {tok.name} has {tok.vocab_size} ids but the model {self.path} has a "
          f"vocabulary of {config.vocab_size}")
    return {"path": path, "digest": digest, "name": self.name or config.name,
            "tokenizer": tok.name, "vocab_size": config.vocab_size,
            "max_seq_len": config.max_seq_len}

  def _describe_endpoint(self, top_logprobs: int, prompt_logprobs: int) -> dict:
    from rlds_lm.backends import BackendError  # pylint: disable=g-import-not-at-top
    tok = self.load_tokenizer()
    backend = self.backend()
    try:
      described = backend.check(top_logprobs=top_logprobs,
                                prompt_logprobs=prompt_logprobs)
    except BackendError as e:
      raise core.PipelineError(str(e)) from e
    vocab = backend.vocab_size or tok.vocab_size
    return {"path": self.path, "digest": described["digest"],
            "name": self.name or self.served_model, "tokenizer": tok.name,
            "vocab_size": vocab, "max_seq_len": described["max_seq_len"],
            "backend": "openai", "served_model": self.served_model,
            "revision": described["revision"]}

  def load_tokenizer(self):
    from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
    if self.tokenizer == "byte":
      return tokenizers.ByteTokenizer()
    if not os.path.exists(self.tokenizer):
      raise core.PipelineError(f"tokenizer must be 'byte' or a SentencePiece .model file; "
                               f"{self.tokenizer} does not exist")
    return tokenizers.SentencePieceTokenizer(self.tokenizer)

  def backend(self):
    """The model as an ``rlds_lm.backends.Backend`` (restores a checkpoint's parameters)."""
    from rlds_lm.backends import local  # pylint: disable=g-import-not-at-top
    from rlds_lm.backends import openai_compat  # pylint: disable=g-import-not-at-top
    if not self.is_endpoint:
      policy, tok = self.load()
      return local.LocalBackend(policy, tok, path=core.absolute(self.path))
    if not self.served_model:
      raise core.PipelineError(f"{self.path} is an endpoint: name the model it serves "
                               f"(--served_model; GET {self.path}/models lists them)")
    return openai_compat.OpenAIBackend(
        self.path, self.served_model, tokenizer=self.load_tokenizer(),
        api_key_env=self.api_key_env, max_concurrency=self.max_concurrency,
        timeout_s=self.timeout_s, max_retries=self.max_retries,
        cache_dir=self.request_cache or None)

  def load(self):
    """(model, tokenizer), run once per worker: a checkpoint's ``Policy``, parameters
    restored and digest-verified, or a :class:`ServedModel` for an endpoint."""
    tok = self.load_tokenizer()
    if self.is_endpoint:
      return ServedModel(self.backend()), tok
    from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
    policy = sampling.Policy.from_checkpoint(
        core.absolute(self.path), eos_id=tok.eos_id, pad_id=tok.pad_id,
        name=self.name or None)
    return policy, tok


@dataclasses.dataclass(frozen=True)
class _ServedConfig:
  max_seq_len: int
  vocab_size: int


class ServedModel:
  """A served model with the attributes the stages use of a local ``Policy``:
  ``config.max_seq_len``, ``sample`` (behaviour log-probs, request provenance) and, for
  the teacher stage, ``backend.annotate``."""

  def __init__(self, backend):
    self.backend = backend
    # An endpoint that reports no context length is not limited here (the server refuses
    # what it cannot take, and the request goes to the dead letters).
    self.config = _ServedConfig(max_seq_len=backend.max_seq_len or 2**31 - 1,
                                vocab_size=backend.vocab_size)

  def sample(self, prompts, seeds, sampler, max_new_tokens):
    return self.backend.sample(prompts, seeds, sampler, max_new_tokens)


def add_endpoint_flags(parser: argparse.ArgumentParser) -> None:
  """Flags for a model given as an OpenAI-compatible endpoint (docs/serving.md)."""
  parser.add_argument("--served_model", default="",
                      help="the model's name at the endpoint, when the model flag is an "
                           "http(s)://host:port/v1 URL (default: none, for checkpoints)")
  parser.add_argument("--api_key_env", default="OPENAI_API_KEY",
                      help="environment variable holding the endpoint's API key (never "
                           "a flag); '' for none")
  parser.add_argument("--max_concurrency", type=int, default=8,
                      help="requests in flight at once per worker (endpoints)")
  parser.add_argument("--request_timeout_s", type=float, default=120.0,
                      help="seconds per request before it is retried (endpoints)")
  parser.add_argument("--max_retries", type=int, default=5,
                      help="retries of a request on 429 / 5xx / connection errors, with "
                           "exponential backoff and jitter (endpoints)")
  parser.add_argument("--request_cache", default="",
                      help="directory of finished responses, so that a rerun repeats no "
                           "finished request (default: none; endpoints)")


def model_ref(args: argparse.Namespace, path: str, tokenizer: str, name: str = "") -> ModelRef:
  """A :class:`ModelRef` from a stage's model flag and its endpoint flags."""
  return ModelRef(path, tokenizer, name, served_model=args.served_model,
                  api_key_env=args.api_key_env, max_concurrency=args.max_concurrency,
                  timeout_s=args.request_timeout_s, max_retries=args.max_retries,
                  request_cache=args.request_cache)


def init_checkpoint(out: str, config_name: str = "tiny", seed: int = 0) -> str:
  """Saves a freshly initialised model; returns its digest."""
  from rlds_lm.models import checkpoint  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import config as model_config  # pylint: disable=g-import-not-at-top
  from rlds_lm.models import gemma  # pylint: disable=g-import-not-at-top
  config = model_config.get_config(config_name)
  return checkpoint.save(out, config, gemma.init_params(config, seed))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pipelines.models", description=__doc__,
                                   formatter_class=HelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  init = sub.add_parser("init", help="write a freshly initialised checkpoint",
                        formatter_class=HelpFormatter)
  init.add_argument("out", help="checkpoint directory to create")
  init.add_argument("--config", default="tiny", help="named model config (tiny, small, ...)")
  init.add_argument("--seed", type=int, default=0, help="initialisation seed")
  args = parser.parse_args(argv)
  digest = init_checkpoint(args.out, args.config, args.seed)
  print(f"wrote {args.config} checkpoint {digest} to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
