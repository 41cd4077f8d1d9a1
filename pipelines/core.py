"""The shared Beam machinery of the pipeline stages, under one name.

Kept for ``from pipelines import core`` users; the code lives in three modules, one
concern each:

* :mod:`pipelines.dataset_io`: reading datasets (``open_input``, ``ReadRecords``,
  ``read_jsonl``) and writing them (``WriteEpisodes``, ``shard_of``);
* :mod:`pipelines.dead_letters`: ``DeadLetter``, ``SafeMap`` / ``safe_map``, the tagged
  ``(kind, value)`` shape and ``write_dead_letters``;
* :mod:`pipelines.scaffold`: flags, Beam options, the output folder, ``lineage``,
  ``finalize`` and ``main_wrapper``.
"""

from pipelines.dataset_io import TRAIN
from pipelines.dataset_io import DatasetInput
from pipelines.dataset_io import ReadRecords
from pipelines.dataset_io import WriteEpisodes
from pipelines.dataset_io import WriteLines
from pipelines.dataset_io import absolute
from pipelines.dataset_io import open_input
from pipelines.dataset_io import read_jsonl
from pipelines.dataset_io import shard_filename
from pipelines.dataset_io import shard_of
from pipelines.dead_letters import COUNTER_NAMESPACE
from pipelines.dead_letters import DEAD
from pipelines.dead_letters import DEAD_LETTER
from pipelines.dead_letters import DEAD_LETTER_FILE
from pipelines.dead_letters import DEAD_LETTER_SUMMARY
from pipelines.dead_letters import OK
from pipelines.dead_letters import TMP_DIR
from pipelines.dead_letters import DeadLetter
from pipelines.dead_letters import SafeMap
from pipelines.dead_letters import SafeMapped
from pipelines.dead_letters import TAGGED
from pipelines.dead_letters import SplitTagged
from pipelines.dead_letters import count_dropped
from pipelines.dead_letters import counter
from pipelines.dead_letters import reason_of
from pipelines.dead_letters import safe_map
from pipelines.dead_letters import write_dead_letters
from pipelines.errors import PipelineError
from pipelines.errors import RecordError
from pipelines.scaffold import DEFAULT_MAX_DROPPED_FRACTION
from pipelines.scaffold import DEFAULT_NUM_SHARDS
from pipelines.scaffold import STAGE_FILE
from pipelines.scaffold import StageResult
from pipelines.scaffold import add_common_flags
from pipelines.scaffold import code_version
from pipelines.scaffold import config_digest
from pipelines.scaffold import finalize
from pipelines.scaffold import lineage
from pipelines.scaffold import main_wrapper
from pipelines.scaffold import pipeline_options
from pipelines.scaffold import prepare_output
from pipelines.scaffold import progress
from pipelines.scaffold import quiet_logs
from pipelines.scaffold import read_dead_letter_summary
