"""Publishing episodes as TFDS datasets.

A published dataset is a plain TFDS directory (``DATA_DIR/NAME/VERSION``) readable with
``tfds.builder_from_directory``; its ``metadata.json`` holds the
:class:`~rlds_lm.schema.SchemaConfig` and the lineage. It is written as ``tfrecord``
(for ``as_dataset`` / tf.data / ``rlds.transformations``) and, by default, also as
``array_record`` (random access for Grain and trainers, no TensorFlow needed), both
listed in ``dataset_info.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rlds_lm import schema as S
from rlds_lm import validate as V

METADATA_SCHEMA = "rlds_lm_schema"  # metadata.json key: SchemaConfig JSON
METADATA_LINEAGE = "rlds_lm_lineage"  # metadata.json key: dataset lineage JSON
TFRECORD = "tfrecord"
ARRAY_RECORD = "array_record"
DEFAULT_FILE_FORMATS = (TFRECORD, ARRAY_RECORD)
# The dataset card (dataset_info.json) of every dataset written here and by the
# builders. The project's repository URL is not fixed yet: the homepage names the
# package; replace it with the URL once there is one.
HOMEPAGE = "rlds_lm (Python package; pip install rlds_lm)"
LICENSE = "Apache-2.0"  # the project's license (pyproject.toml); data keeps its source's
CITATION = """@software{rlds_lm,
  title = {rlds_lm: language-model trajectory data as RLDS episodes},
  note = {Record rollouts, publish them as TFDS datasets, replay them into JAX trainers},
  year = {2026},
}"""
MAX_NAME_LENGTH = 128  # characters in a dataset, config or split name
# A TFDS-style identifier: snake_case, so never a path (no "/", "\\", ".", "..").
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")


def check_dataset_name(name: Any, *, what: str = "dataset name") -> str:
  """Returns ``name`` if it is a TFDS-style identifier, else raises ValueError.

  Every entry point that writes a dataset (:func:`publish`, ``recorder.publish_log``,
  ``Recorder(backend="tfds")``, ``rlds-lm import``, the lm_logs builder, the Beam publish
  stage) calls it before writing anything, for the dataset name and the split names, so
  a name can never lead outside the data directory (``../x``, ``/abs``, ``..``, ``a/b``,
  a trailing newline are all refused).

  Args:
    name: the name to check.
    what: what the name is, for the message ("dataset name", "split name", ...).

  Raises:
    ValueError: ``name`` is not a string of 1 to :data:`MAX_NAME_LENGTH` characters
      matching ``[a-z][a-z0-9_]*``.
  """
  if (not isinstance(name, str) or len(name) > MAX_NAME_LENGTH
      or not _NAME.fullmatch(name)):
    raise ValueError(f"{what}: expected a TFDS-style identifier in snake_case (a lowercase "
                     f"letter, then a-z, 0-9 or _; at most {MAX_NAME_LENGTH} characters), "
                     f"found {name!r:.200}")
  return name


def check_version(version: Any) -> str:
  """Returns ``version`` if it is ``MAJOR.MINOR.PATCH`` (TFDS's form), else raises ValueError."""
  if not isinstance(version, str) or not _VERSION.fullmatch(version):
    raise ValueError(f"dataset version: expected MAJOR.MINOR.PATCH (e.g. '1.0.0'), found "
                     f"{version!r:.200}")
  return version


def check_names(name: Any, version: Any = "1.0.0", splits: Iterable[Any] = ()) -> None:
  """Checks a dataset name, version and split names (see :func:`check_dataset_name`)."""
  check_dataset_name(name)
  check_version(version)
  for split in splits:
    check_dataset_name(split, what="split name")


def _builder_class():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class EpisodeDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder for rlds_lm episodes with the features of a SchemaConfig."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, name: str, config: S.SchemaConfig, version: str = "1.0.0",
                 split_episodes: Mapping[str, Any] | None = None, description: str = "",
                 lineage: Mapping[str, Any] | None = None, validate: bool = True,
                 **kwargs: Any):
      self.name = name
      self.VERSION = tfds.core.Version(version)  # pylint: disable=invalid-name
      self._schema = config
      self._split_episodes = dict(split_episodes or {})
      self._description = description
      self._lineage = dict(lineage or {})
      self._validate = validate
      super().__init__(version=version, **kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=self._description or f"rlds_lm {self._schema.kind} episodes",
          features=S.episode_features(self._schema),
          metadata=tfds.core.MetadataDict({
              METADATA_SCHEMA: self._schema.to_json(),
              METADATA_LINEAGE: json.dumps(self._lineage, sort_keys=True),
          }),
          homepage=HOMEPAGE,
          citation=CITATION,
          license=LICENSE,
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(episodes)
              for split, episodes in self._split_episodes.items()}

    def _generate_examples(self, episodes: Iterable[Mapping[str, Any]]):
      for episode in episodes:
        if self._validate:
          episode = V.validate_episode(episode, self._schema)
        yield episode[S.EPISODE_ID], episode

  return EpisodeDatasetBuilder


def episode_builder(*, data_dir: str | os.PathLike[str], name: str, config: S.SchemaConfig,
                    version: str = "1.0.0", split_episodes: Mapping[str, Any] | None = None,
                    description: str = "", lineage: Mapping[str, Any] | None = None,
                    file_format: str = TFRECORD, validate: bool = True):
  """Returns a TFDS builder for ``config``'s episodes (not yet prepared).

  Raises:
    ValueError: ``name``, ``version`` or a split name is not valid
      (:func:`check_names`).
  """
  check_names(name, version, split_episodes or ())
  cls = _builder_class()
  return cls(name=name, config=config, version=version, split_episodes=split_episodes,
             description=description, lineage=lineage, validate=validate,
             data_dir=_absolute(data_dir), file_format=file_format)


def _absolute(path: str | os.PathLike[str]) -> str:
  # TFDS's format conversion finds no shards under a relative data_dir.
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def publish(
    split_episodes: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    data_dir: str | os.PathLike[str],
    name: str,
    config: S.SchemaConfig,
    version: str = "1.0.0",
    description: str = "",
    lineage: Mapping[str, Any] | None = None,
    file_formats: tuple[str, ...] = DEFAULT_FILE_FORMATS,
    progress: bool | None = None,
) -> str:
  """Writes episodes as a TFDS dataset and returns its directory.

  Every episode is validated; an invalid one aborts the publish with its error (the
  pipelines in ``pipelines/`` route bad records to a dead-letter output instead).

  Args:
    split_episodes: split name -> iterable of episodes.
    data_dir: root TFDS data directory; the dataset lands in ``data_dir/name/version``.
    name: dataset name, a TFDS-style identifier (:func:`check_dataset_name`); split
      names follow the same rule.
    config: the schema of the episodes.
    version: dataset version, ``MAJOR.MINOR.PATCH``.
    description: free text for the dataset card.
    lineage: JSON-serialisable description of inputs and configs.
    file_formats: first is the primary format; others are added as alternatives.
    progress: show TFDS's progress bars (default: only when verbose, ``RLDS_LM_VERBOSE``
      or ``--verbose``; publishing is quiet otherwise).

  Returns:
    The dataset directory, ready for ``tfds.builder_from_directory``.

  Raises:
    ValueError: an invalid name, version, split name or file format; nothing is written.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  check_names(name, version, split_episodes)

  if not file_formats or file_formats[0] != TFRECORD:
    raise ValueError(f"file_formats must start with {TFRECORD!r} (as_dataset needs it); "
                     f"found {file_formats}")
  builder = episode_builder(data_dir=data_dir, name=name, config=config, version=version,
                            split_episodes=split_episodes, description=description,
                            lineage=lineage)
  with _drop_absl_messages("Variant folder"):  # "has no dataset_info.json": not yet
    prepared = builder.is_prepared()
  if prepared:
    raise FileExistsError(f"{builder.data_dir} already holds a published dataset; "
                          "publish a new version or choose another data_dir")
  # TFDS prints a "Downloading and preparing dataset Unknown size" banner: nothing is
  # downloaded here, so it goes.
  if progress is None:
    from rlds_lm import _compat  # pylint: disable=g-import-not-at-top
    progress = os.environ.get(_compat.VERBOSE_ENV, "0") not in ("", "0")
  with contextlib.redirect_stdout(io.StringIO()), progress_bars(progress):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    for file_format in file_formats[1:]:
      add_file_format(builder.data_dir, file_format)
  return os.fspath(builder.data_dir)


@contextlib.contextmanager
def progress_bars(enable: bool) -> Iterator[None]:
  """Shows (or hides) TFDS's tqdm progress bars inside the block, then restores them."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

  before = tqdm_utils._active  # pylint: disable=protected-access
  tqdm_utils.display_progress_bar(enable)
  try:
    yield
  finally:
    tqdm_utils.display_progress_bar(before)


def add_file_format(dataset_dir: str | os.PathLike[str], file_format: str) -> None:
  """Adds a copy of every shard in ``file_format`` and lists it in dataset_info.json.

  Works for any number of shards, including the ``{SHARD_INDEX}``-only shard names of
  ``Recorder(backend="tfds")`` datasets, whose shard count TFDS's converter cannot
  check (it then finds one shard of several and refuses). The copy is checked here
  instead: every shard exists and, for array_record, holds the records
  dataset_info.json lists. Call it again after appending to a dataset.

  Raises:
    ValueError: a shard is missing or holds another number of records after the
      conversion; dataset_info.json is then left without ``file_format``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import dataset_info as dataset_info_lib  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.scripts.cli import convert_format_utils  # pylint: disable=g-import-not-at-top

  dataset_dir = os.fspath(dataset_dir)
  fmt = file_adapters.FileFormat.from_value(file_format)
  info = tfds.builder_from_directory(dataset_dir).info
  # TFDS checks the shard count only where the shard names carry it (-of-NNNNN).
  tfds_can_check = all("{NUM_SHARDS}" in split.filename_template.template
                       for split in info.splits.values())
  with _quiet_converter(convert_format_utils, tfds_can_check):
    convert_format_utils.convert_dataset(
        out_dir=None, out_file_format=fmt, dataset_version_dir=dataset_dir,
        num_workers=1, fail_on_error=tfds_can_check, overwrite=True)
  info = tfds.builder_from_directory(dataset_dir).info
  for split in info.splits.values():
    template = split.filename_template.replace(filetype_suffix=fmt.file_suffix)
    lengths = list(split.shard_lengths)
    for index, expected in enumerate(lengths):
      path = template.sharded_filepath(shard_index=index, num_shards=len(lengths))
      if not path.exists():
        raise ValueError(f"{dataset_dir}: the {fmt.value} copy of split {split.name!r} "
                         f"has no shard {index} (expected {path.name})")
      if fmt.value == ARRAY_RECORD:
        found = array_record_count(os.fspath(path))
        if found != expected:
          raise ValueError(f"{dataset_dir}: {path.name}: expected {expected} records "
                           f"(dataset_info.json), found {found}")
  proto = info.as_proto
  if fmt.value not in proto.alternative_file_formats and fmt != info.file_format:
    proto.alternative_file_formats.append(fmt.value)
    dataset_info_lib.write_dataset_info_proto(proto, dataset_info_dir=dataset_dir)


@contextlib.contextmanager
def _drop_absl_messages(*prefixes: str) -> Iterator[None]:
  """Drops absl log records starting with one of ``prefixes`` inside the block."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  def keep(record: Any) -> bool:
    return not str(record.msg).startswith(prefixes)

  logger = absl_logging.get_absl_logger()
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


@contextlib.contextmanager
def _quiet_converter(module: Any, tfds_can_check: bool) -> Iterator[None]:
  """No progress bars from TFDS's converter; without a shard count in the shard names,
  no "Found 1 shards ... expected N" errors either (add_file_format checks instead)."""
  prefixes = () if tfds_can_check else ("('Found ", "Skipping updating",
                                         "Amount of converted shards")
  real = module.tqdm.tqdm
  module.tqdm.tqdm = lambda *args, **kwargs: real(*args, **{**kwargs, "disable": True})
  try:
    with _drop_absl_messages(*prefixes):
      yield
  finally:
    module.tqdm.tqdm = real


def array_record_count(path: str) -> int:
  """Records in one array_record file (from its footer)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()
