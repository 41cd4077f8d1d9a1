"""Teacher distributions for distillation: extract them from logits, store them compactly.

Extraction (``jax.numpy``, jit-able, float32; logits ``[..., T, V]``):
:func:`topk`, :func:`sampled_k`, :func:`token_logprob`, :func:`log_probs`,
:func:`tail_mass`, and :func:`teacher_arrays` for the schema fields of one turn.

Storage: a :class:`TeacherCodec` turns one turn's teacher arrays into bytes and back:
:class:`RawCodec` (lossless), :class:`Fp16Codec` (float16 log-probs, bit-packed ids: the
usual offline-distillation layout), :class:`PackedCodec` (entropy-coded ids, quantised
probabilities). :func:`decode` reads any of them.

Fidelity: :func:`reconstruct` gives the full distribution that stored arrays stand for
(top-k plus the tail mass spread uniformly or along a dataset-level :class:`TailPrior`,
or renormalised top-k, or sampled counts); :func:`kl_divergence` computes
``KL(true || reconstruction)`` exactly without building it. :func:`tail_weights` (from
full teacher log-probs) and :func:`topk_counts` (from stored ids) are the statistics a
prior is fitted from, on tokens other than those evaluated.
"""

from rlds_lm.teacher._codecs import Fp16Codec
from rlds_lm.teacher._packed import PackedCodec
from rlds_lm.teacher._codecs import RawCodec
from rlds_lm.teacher._codecs import TeacherCodec
from rlds_lm.teacher._codecs import decode
from rlds_lm.teacher._codecs import get_codec
from rlds_lm.teacher._extract import LOGPROB_FLOOR
from rlds_lm.teacher._extract import log_probs
from rlds_lm.teacher._extract import sampled_k
from rlds_lm.teacher._extract import tail_mass
from rlds_lm.teacher._extract import teacher_arrays
from rlds_lm.teacher._extract import token_logprob
from rlds_lm.teacher._extract import topk
from rlds_lm.teacher._fidelity import MIN_TAIL_MASS
from rlds_lm.teacher._fidelity import TAIL_PRIOR
from rlds_lm.teacher._fidelity import TAIL_RENORMALIZE
from rlds_lm.teacher._fidelity import TAIL_UNIFORM
from rlds_lm.teacher._fidelity import kl_divergence
from rlds_lm.teacher._fidelity import reconstruct
from rlds_lm.teacher._prior import TailPrior
from rlds_lm.teacher._prior import tail_weights
from rlds_lm.teacher._prior import topk_counts
from rlds_lm.teacher._synthetic import zipf_logits
