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
  """A checkpoint and its tokenizer, picklable for Beam workers."""

  path: str
  tokenizer: str = "byte"  # "byte" or a SentencePiece .model file
  name: str = ""

  def describe(self) -> dict:
    """Config, digest and tokenizer identity, read without restoring parameters."""
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

  def load_tokenizer(self):
    from rlds_lm import tokenizers  # pylint: disable=g-import-not-at-top
    if self.tokenizer == "byte":
      return tokenizers.ByteTokenizer()
    if not os.path.exists(self.tokenizer):
      raise core.PipelineError(f"tokenizer must be 'byte' or a SentencePiece .model file; "
                               f"{self.tokenizer} does not exist")
    return tokenizers.SentencePieceTokenizer(self.tokenizer)

  def load(self):
    """(Policy, tokenizer), parameters restored and digest-verified (run on workers)."""
    from rlds_lm.models import sampling  # pylint: disable=g-import-not-at-top
    tok = self.load_tokenizer()
    policy = sampling.Policy.from_checkpoint(
        core.absolute(self.path), eos_id=tok.eos_id, pad_id=tok.pad_id,
        name=self.name or None)
    return policy, tok


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
