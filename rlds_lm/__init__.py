"""rlds_lm: language-model trajectory data as RLDS episodes.

Record rollouts (:class:`Recorder`), publish them as TFDS datasets (:func:`rlds_lm.publish.publish`,
:func:`publish_log`), replay them into trainers (:mod:`rlds_lm.read`). Importing this
package does not import TensorFlow. It hides the dependency stack's known start-up
noise (see :func:`rlds_lm._compat.quiet`; ``RLDS_LM_VERBOSE=1`` keeps it).
"""

from rlds_lm import _compat

_compat.quiet()  # before any of TensorFlow, envlogger or Beam loads


from rlds_lm.recorder import EpisodeBuilder
from rlds_lm.recorder import Recorder
from rlds_lm.recorder import publish_log
from rlds_lm.schema import SchemaConfig
from rlds_lm.schema import Turn
from rlds_lm.schema import observation
from rlds_lm.schema import preference_episode
from rlds_lm.schema import rollout_episode
from rlds_lm.tokenizers import ByteTokenizer
from rlds_lm.tokenizers import SentencePieceTokenizer
from rlds_lm.validate import EpisodeValidationError
from rlds_lm.validate import validate_episode

__version__ = "0.1.0"
