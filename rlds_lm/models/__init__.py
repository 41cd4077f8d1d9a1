"""Gemma-style models: config, forward pass, KV-cache sampling, scoring, checkpoints.

Importing this package imports JAX and Flax (the rest of ``rlds_lm`` does not need them).

Example::

  from rlds_lm import models
  config = models.get_config("tiny")
  params = models.init_params(config, seed=0)
  policy = models.Policy(config, params, eos_id=2)
  completions = policy.sample([prompt], seeds=[7], sampler=models.SamplerConfig(),
                              max_new_tokens=16)
"""

from rlds_lm.models.checkpoint import Checkpoint
from rlds_lm.models.checkpoint import CheckpointConfigError
from rlds_lm.models.checkpoint import digest
from rlds_lm.models.checkpoint import load_config
from rlds_lm.models.checkpoint import restore
from rlds_lm.models.checkpoint import save
from rlds_lm.models.config import CONFIGS
from rlds_lm.models.config import ModelConfig
from rlds_lm.models.config import count_params
from rlds_lm.models.config import flops_per_token
from rlds_lm.models.config import get_config
from rlds_lm.models.gemma import KVCache
from rlds_lm.models.gemma import Params
from rlds_lm.models.gemma import Transformer
from rlds_lm.models.gemma import forward
from rlds_lm.models.gemma import init_params
from rlds_lm.models.gemma import param_shardings
from rlds_lm.models.gemma import score_logits
from rlds_lm.models.gemma import shard_params
from rlds_lm.models.sampling import Completion
from rlds_lm.models.sampling import Policy
from rlds_lm.models.sampling import SampleOutput
from rlds_lm.models.sampling import SamplerConfig
from rlds_lm.models.sampling import Scored
from rlds_lm.models.sampling import sample
from rlds_lm.models.sampling import sample_uncached
from rlds_lm.models.sampling import sampling_logprobs
from rlds_lm.models.sampling import score
from rlds_lm.models.sharding import make_mesh
from rlds_lm.models.teacher_scoring import annotate
