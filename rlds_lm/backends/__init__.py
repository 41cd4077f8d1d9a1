"""Model backends: one small interface over our JAX checkpoints and served models.

See :mod:`rlds_lm.backends.base` for the interface, :mod:`~rlds_lm.backends.local` for
the in-process backend and :mod:`~rlds_lm.backends.openai_compat` for any
OpenAI-compatible endpoint (vLLM, SGLang, TGI, llama.cpp, ``rlds-lm serve``).
"""

from rlds_lm.backends.base import Backend
from rlds_lm.backends.base import BackendError
from rlds_lm.backends.base import Generation
from rlds_lm.backends.base import STOP_EOS
from rlds_lm.backends.base import STOP_LENGTH
from rlds_lm.backends.base import check_same_tokenizer
