"""Detecting damaged datasets: what every open checks, and ``rlds-lm verify``.

Reading never returns fewer or different records without saying so. Three layers:

* **On every open** (:func:`check_on_open`, called by :func:`rlds_lm.read.open_builder`):
  ``features.json`` agrees with the SchemaConfig in ``metadata.json`` (same fields, dtypes
  and shapes); every shard listed in ``dataset_info.json`` exists in every listed file
  format; every array_record shard holds the number of records ``dataset_info.json``
  gives it (its footer says so); the tfrecord shards of a split have the size that
  ``dataset_info.json``'s byte count and record count imply (one ``stat`` per shard).
  About a millisecond per shard; no record is read.
* **While reading**: tfrecord shards are read with their CRCs checked and their record
  counts compared with ``dataset_info.json`` (:func:`tfrecord_records`); array_record
  records that cannot be read raise :class:`IntegrityError` naming the file and record
  (:class:`CheckedSource`), and an empty record is refused rather than decoded into an
  all-padding training row.
* **On demand** (:func:`verify`, ``rlds-lm verify PATH``): every record of every shard in
  every file format: framing and CRCs, counts, decoding with the stored features, the
  episode checks of :mod:`rlds_lm.validate` against the stored schema, and the tfrecord
  and array_record copies holding the same bytes.

Nothing here imports TensorFlow (URLs such as ``gs://`` aside, read through
``tf.io.gfile``).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from rlds_lm import publish as P
from rlds_lm import schema as S

# tfrecord framing: uint64 length, uint32 masked crc32c(length), data, uint32 masked
# crc32c(data); little-endian.
_HEADER = 12
_FOOTER = 4
FRAMING_BYTES = _HEADER + _FOOTER  # per record, on top of the record's own bytes
_MASK_DELTA = 0xA282EAD8


class IntegrityError(ValueError):
  """A dataset's files are damaged or disagree with each other.

  Attributes:
    problems: one line per problem, each naming the file (and record) concerned.
  """

  def __init__(self, problems: Sequence[str] | str):
    self.problems = [problems] if isinstance(problems, str) else list(problems)
    shown = self.problems[:10]
    more = len(self.problems) - len(shown)
    super().__init__("\n".join(shown) + (f"\n... and {more} more" if more > 0 else "")
                     + "\n(run `rlds-lm verify PATH` for a full check)")

  def __reduce__(self):  # pickles (from Grain worker processes) with its problems
    return type(self), (self.problems,)


# --------------------------------------------------------------------------------------
# crc32c (Castagnoli), as tfrecord uses it.
# --------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c_python(data: bytes) -> int:
  """crc32c in pure Python, table-driven (3 to 13 MB/s here); for short inputs."""
  crc = 0xFFFFFFFF
  table = _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


_NP_TABLE = np.asarray(_TABLE, np.uint32)
# _BYTE_SHIFTS[i, v]: the register value v << 8i, one row per register byte.
_BYTE_SHIFTS = (np.arange(256, dtype=np.uint32)[None, :]
                << (8 * np.arange(4, dtype=np.uint32))[:, None])
_ZEROS_MAPS: dict[int, np.ndarray] = {}


def _apply(linear_map: np.ndarray, registers: np.ndarray) -> np.ndarray:
  """A GF(2)-linear map of the register, given by its value on each register byte."""
  return (linear_map[0][registers & 0xFF] ^ linear_map[1][(registers >> 8) & 0xFF]
          ^ linear_map[2][(registers >> 16) & 0xFF] ^ linear_map[3][registers >> 24])


def _zeros_map(count: int) -> np.ndarray:
  """The map "feed ``count`` zero bytes" (linear without init), by squaring."""
  if count not in _ZEROS_MAPS:
    result, power, n = None, _NP_TABLE[_BYTE_SHIFTS & 0xFF] ^ (_BYTE_SHIFTS >> 8), count
    while n:
      if n & 1:
        result = power if result is None else _apply(power, result)
      n >>= 1
      if n:
        power = _apply(power, power)
    _ZEROS_MAPS[count] = result
  return _ZEROS_MAPS[count]


def crc32c_numpy(data: bytes) -> int:
  """crc32c with NumPy (15 to 60 MB/s for inputs of 100 kB to 10 MB).

  The CRC register update is linear over GF(2): the input is cut into ``sqrt(n)``
  blocks whose CRCs are computed side by side, one byte column at a time, then combined
  pairwise (the left one shifted by the right one's length of zero bytes). The initial
  value is folded into the first four bytes; zero bytes in front change nothing.
  """
  n = len(data)
  if n < 4096:
    return crc32c_python(data)
  block = int(np.sqrt(n))
  blocks = -(-n // block)
  padded = np.zeros(blocks * block, np.uint8)
  padded[blocks * block - n:] = np.frombuffer(data, np.uint8)
  padded[blocks * block - n:][:4] ^= 0xFF
  columns = padded.reshape(blocks, block)
  registers = np.zeros(blocks, np.uint32)
  for j in range(block):
    registers = _NP_TABLE[(registers ^ columns[:, j]) & 0xFF] ^ (registers >> 8)
  span = block
  while registers.size > 1:
    if registers.size % 2:
      registers = np.concatenate([np.zeros(1, np.uint32), registers])
    registers = _apply(_zeros_map(span), registers[0::2]) ^ registers[1::2]
    span *= 2
  return int(registers[0]) ^ 0xFFFFFFFF


try:  # A C implementation (GB/s) where installed; it comes with the Google Cloud clients.
  import google_crc32c as _google_crc32c  # pylint: disable=g-import-not-at-top

  def crc32c(data: bytes) -> int:
    """crc32c of ``data`` (``google_crc32c`` when installed, else NumPy)."""
    return _google_crc32c.value(bytes(data))

  CRC32C_IMPLEMENTATION = "google_crc32c"
except ImportError:  # pragma: no cover - depends on the environment
  crc32c = crc32c_numpy
  CRC32C_IMPLEMENTATION = "numpy"


def masked_crc32c(data: bytes) -> int:
  """The masked crc32c that tfrecord stores: rotated right by 15 bits, plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------
# Reading tfrecord files with their checks.
# --------------------------------------------------------------------------------------


def _open(path: str):
  if "://" in path:  # gs://, s3://, ...: TensorFlow's file systems
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.GFile(path, "rb"), tf.io.gfile.stat(path).length
  return open(path, "rb"), os.path.getsize(path)


def tfrecord_records(path: str | os.PathLike[str], *, expected: int | None = None,
                     check_crc: bool = True) -> Iterator[bytes]:
  """Yields the records of a tfrecord file, checking its framing (no TensorFlow).

  The length field's CRC is always checked (a damaged length would otherwise ask for
  gigabytes), and so is each record's length against the bytes left in the file.

  Args:
    path: the tfrecord file.
    expected: the record count ``dataset_info.json`` gives this shard; a file holding
      another number raises once it is read to the end.
    check_crc: check each record's data CRC (a one-bit flip in a token otherwise goes
      unnoticed). About 0.1 ms per MB with ``google_crc32c``, 10 to 60 ms per MB
      with the NumPy fallback.

  Raises:
    IntegrityError: naming the file, the record and its byte offset.
  """
  for _, data in _tfrecord_frames(os.fspath(path), expected, check_crc, None):
    yield data


def _tfrecord_frames(path: str, expected: int | None, check_crc: bool,
                     on_damaged_data: Callable[[str], None] | None):
  """``(index, data)`` of each record; see :func:`tfrecord_records`.

  With ``on_damaged_data``, a record whose data fails its CRC is reported through it
  and skipped, and reading goes on (its framing is intact); damaged framing still
  raises, as nothing after it can be found.
  """
  f, size = _open(path)
  index = offset = 0
  with f:
    while True:
      header = f.read(_HEADER)
      if not header:
        break
      where = f"{path}: record {index} (at byte {offset})"
      if len(header) != _HEADER:
        raise IntegrityError(f"{where}: truncated header ({len(header)} of {_HEADER} "
                             f"bytes): the file was cut")
      (length,) = struct.unpack("<Q", header[:8])
      (length_crc,) = struct.unpack("<I", header[8:])
      if masked_crc32c(header[:8]) != length_crc:
        raise IntegrityError(f"{where}: damaged length field (CRC mismatch)")
      left = size - offset - _HEADER
      if length + _FOOTER > left:
        raise IntegrityError(f"{where}: truncated: the record declares {length} bytes "
                             f"(+{_FOOTER} of CRC), the file has {max(left, 0)} left")
      data = f.read(length)
      footer = f.read(_FOOTER)
      if len(data) != length or len(footer) != _FOOTER:
        raise IntegrityError(f"{where}: truncated while reading {length} bytes")
      if check_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
        problem = f"{where}: damaged data ({length} bytes, CRC mismatch)"
        if on_damaged_data is None:
          raise IntegrityError(problem)
        on_damaged_data(problem)
      else:
        yield index, data
      index += 1
      offset += _HEADER + length + _FOOTER
  if expected is not None and index != expected:
    raise IntegrityError(f"{path}: holds {index} records, dataset_info.json says "
                         f"{expected}")


# --------------------------------------------------------------------------------------
# The checks on open.
# --------------------------------------------------------------------------------------


def _formats(builder) -> list[str]:
  formats = [builder.info.file_format.value if builder.info.file_format else P.TFRECORD]
  formats += [f.value for f in builder.info.alternative_file_formats
              if f.value not in formats]
  return formats


def shard_files(builder, split: str, file_format: str) -> list[str]:
  """Paths of ``split``'s shards in ``file_format``, in shard order."""
  info = builder.info.splits[split]
  template = info.filename_template.replace(filetype_suffix=file_format)
  return [os.path.join(os.fspath(builder.data_dir), name)
          for name in sorted(template.sharded_filenames(info.num_shards))]


def _signature(features) -> dict[str, str]:
  """Flattened ``{path: dtype and shape}`` of decoded and serialized tensors."""
  out: dict[str, str] = {}

  def walk(prefix: str, value: Any, kind: str) -> None:
    if isinstance(value, dict):
      for k, v in value.items():
        walk(f"{prefix}/{k}" if prefix else k, v, kind)
    else:
      out[f"{prefix} ({kind})"] = f"{np.dtype(value.np_dtype).name} {tuple(value.shape)}"

  walk("", features.get_tensor_info(), "decoded")
  walk("", features.get_serialized_info(), "stored")
  return out


def schema_problems(builder) -> list[str]:
  """``features.json`` against the SchemaConfig in ``metadata.json`` (rlds_lm datasets)."""
  where = os.fspath(builder.data_dir)
  metadata = builder.info.metadata or {}
  if P.METADATA_SCHEMA not in metadata:
    return []  # not an rlds_lm episode dataset (prompts, say): features.json rules
  try:
    config = S.SchemaConfig.from_json(metadata[P.METADATA_SCHEMA])
  except (ValueError, TypeError) as e:
    return [f"{where}/metadata.json: invalid {P.METADATA_SCHEMA}: {e}"]
  stored = _signature(builder.info.features)
  expected = _signature(S.episode_features(config))
  problems = []
  for key in sorted(set(stored) | set(expected)):
    if stored.get(key) != expected.get(key):
      problems.append(
          f"{where}/features.json: field {key}: expected {expected.get(key, 'absent')} "
          f"(from metadata.json's SchemaConfig {config.to_json()}), found "
          f"{stored.get(key, 'absent')}")
  return problems


def shard_problems(builder) -> list[str]:
  """Shards against ``dataset_info.json``: present, record counts, tfrecord sizes."""
  problems = []
  for split, info in builder.info.splits.items():
    lengths = list(info.shard_lengths)
    for file_format in _formats(builder):
      files = shard_files(builder, split, file_format)
      remote = any("://" in f for f in files)
      missing = [f for f in files if not remote and not os.path.exists(f)]
      problems += [f"{f}: missing (dataset_info.json lists {split!r} shard "
                   f"{files.index(f)} in {file_format})" for f in missing]
      if missing or remote:
        continue
      if file_format == P.ARRAY_RECORD:
        for f, length in zip(files, lengths):
          try:
            count = P.array_record_count(f)
          except (RuntimeError, ValueError, OSError) as e:
            problems.append(f"{f}: cannot be opened as array_record: {e}")
            continue
          if count != length:
            problems.append(f"{f}: holds {count} records, dataset_info.json says {length}")
      elif file_format == P.TFRECORD and info.num_bytes and lengths:
        found = sum(os.path.getsize(f) for f in files)
        want = int(info.num_bytes) + FRAMING_BYTES * sum(lengths)
        if found != want:
          problems.append(
              f"{os.fspath(builder.data_dir)}: split {split!r}: its tfrecord shards hold "
              f"{found} bytes, dataset_info.json implies {want} ({int(info.num_bytes)} bytes in "
              f"{sum(lengths)} records): a shard was cut, extended or replaced")
  return problems


def check_on_open(builder) -> None:
  """The cheap checks run on every open (see the module docstring).

  Raises:
    IntegrityError: listing every problem found.
  """
  problems = schema_problems(builder) + shard_problems(builder)
  if problems:
    raise IntegrityError(problems)


# --------------------------------------------------------------------------------------
# Reading array_record with named errors.
# --------------------------------------------------------------------------------------


class CheckedSource:
  """A random-access source whose read errors name the file and record.

  Wraps a TFDS array_record data source (as ``as_data_source`` returns it): a record the
  reader cannot read (a Riegeli hash mismatch, a shard shorter than
  ``dataset_info.json`` says) raises :class:`IntegrityError` instead of a bare
  ``RuntimeError``; an empty record (no episode is empty) is refused instead of being
  decoded into a row of padding. Picklable when the wrapped source is (Grain workers).
  """

  def __init__(self, source, *, path: str, split: str, files: Sequence[str],
               lengths: Sequence[int]):
    self._source = source
    self._path = path
    self._split = split
    self._files = list(files)
    self._starts = [0]
    for length in lengths:
      self._starts.append(self._starts[-1] + int(length))

  def __len__(self) -> int:
    return len(self._source)

  def _where(self, index: int) -> str:
    if "[" not in self._split and self._files and index < self._starts[-1]:
      shard = bisect.bisect_right(self._starts, index) - 1
      return (f"{self._files[shard]}: record {index - self._starts[shard]} (record "
              f"{index} of split {self._split!r})")
    return f"{self._path}: record {index} of split {self._split!r}"

  def _check(self, index: int, record: Any) -> Any:
    if record is None or (isinstance(record, (bytes, bytearray)) and not record):
      raise IntegrityError(f"{self._where(index)}: empty record (no episode is empty)")
    return record

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"{self._path}: record {index} of split {self._split!r} out of "
                       f"range [0, {len(self)})")
    try:
      record = self._source[index]
    except (RuntimeError, TypeError) as e:
      raise IntegrityError(f"{self._where(index)}: cannot be read or decoded: "
                           f"{type(e).__name__}: {e}") from e
    return self._check(index, record)

  def __getitems__(self, indices):
    indices = [int(i) for i in indices]
    try:
      records = self._source.__getitems__(indices)
    except (RuntimeError, TypeError):
      return [self[i] for i in indices]  # find and name the record that fails
    return [self._check(i, r) for i, r in zip(indices, records)]

  def __iter__(self):
    for i in range(len(self)):
      yield self[i]

  def __getattr__(self, name: str):  # the wrapped source's other attributes
    if name.startswith("__") or name == "_source":
      raise AttributeError(name)
    return getattr(self._source, name)

  def __repr__(self) -> str:
    return f"CheckedSource({self._source!r})"


def checked_source(builder, split: str, source) -> CheckedSource:
  """``source`` (``builder.as_data_source(split, ...)``) with named read errors."""
  base = split.split("[")[0]
  info = builder.info.splits[base]
  # as_data_source has switched the builder to the format it read.
  file_format = builder.info.file_format.value if builder.info.file_format else P.ARRAY_RECORD
  return CheckedSource(source, path=os.fspath(builder.data_dir), split=split,
                       files=shard_files(builder, base, file_format),
                       lengths=list(info.shard_lengths))


# --------------------------------------------------------------------------------------
# verify: everything.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
  """What :func:`verify` found: ``problems`` is empty for an intact dataset."""

  path: str
  problems: list[str] = dataclasses.field(default_factory=list)
  records: int = 0  # records read, over all files and formats
  files: int = 0

  @property
  def ok(self) -> bool:
    return not self.problems


def _record_problems(raw: bytes, features, config, validate) -> str | None:
  """None when ``raw`` decodes with ``features`` (and validates against ``config``)."""
  if not raw:
    return "empty record"
  try:
    record = features.deserialize_example_np(raw)
  except Exception as e:  # pylint: disable=broad-except
    return f"cannot be decoded with features.json: {type(e).__name__}: {e}"
  if config is None:
    return None
  from rlds_lm import read as R  # pylint: disable=g-import-not-at-top
  try:
    validate(R.materialize(record), config)
  except Exception as e:  # pylint: disable=broad-except
    return f"not a valid episode of the stored schema: {type(e).__name__}: {e}"
  return None


def verify(path: str | os.PathLike[str], splits: Sequence[str] | None = None) -> Report:
  """Checks every record of a published dataset; never raises for damage.

  Runs the checks of :func:`check_on_open`, then reads every shard of every file format
  listed in ``dataset_info.json``: tfrecord framing and CRCs, per-shard record counts,
  each record decoded with ``features.json`` and, for rlds_lm episodes, checked with
  :func:`rlds_lm.validate.validate_episode` against ``metadata.json``'s SchemaConfig;
  the array_record copy of a shard must hold the same bytes as its tfrecord.

  Returns:
    A :class:`Report` with one line per problem, each naming the file (and record).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from rlds_lm import validate as V  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  report = Report(path)
  if not os.path.isdir(path) and "://" not in path:
    report.problems.append(f"{path}: does not exist")
    return report
  try:
    builder = tfds.builder_from_directory(path)
  except Exception as e:  # pylint: disable=broad-except
    report.problems.append(f"{path}: cannot be opened as a TFDS dataset directory "
                           f"(dataset_info.json, features.json): {type(e).__name__}: {e}")
    return report
  schema = schema_problems(builder)
  report.problems += schema + shard_problems(builder)
  config = None
  if not schema and P.METADATA_SCHEMA in (builder.info.metadata or {}):
    config = S.SchemaConfig.from_json(builder.info.metadata[P.METADATA_SCHEMA])
  features = builder.info.features
  chosen = list(splits) if splits else sorted(builder.info.splits.keys())
  for split in chosen:
    if split not in builder.info.splits:
      report.problems.append(f"{path}: no split {split!r}; it has "
                             f"{sorted(builder.info.splits.keys())}")
      continue
    lengths = list(builder.info.splits[split].shard_lengths)
    formats = _formats(builder)
    tf_files = shard_files(builder, split, P.TFRECORD) if P.TFRECORD in formats else []
    ar_files = (shard_files(builder, split, P.ARRAY_RECORD)
                if P.ARRAY_RECORD in formats else [])
    for shard, length in enumerate(lengths):
      digests: dict[int, bytes] = {}
      if tf_files and os.path.exists(tf_files[shard]):
        report.files += 1
        try:
          for i, raw in _tfrecord_frames(tf_files[shard], length, True,
                                         report.problems.append):
            report.records += 1
            digests[i] = raw
            problem = _record_problems(raw, features, config, V.validate_episode)
            if problem:
              report.problems.append(f"{tf_files[shard]}: record {i}: {problem}")
        except IntegrityError as e:
          report.problems += e.problems
        except OSError as e:
          report.problems.append(f"{tf_files[shard]}: cannot be read: {e}")
      if ar_files and os.path.exists(ar_files[shard]):
        report.files += 1
        report.problems += _verify_array_record(ar_files[shard], length, features, config,
                                                V.validate_episode, digests, report)
  return report


def _verify_array_record(path, length, features, config, validate, tfrecords, report):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  try:
    reader = array_record_module.ArrayRecordReader(path)
    count = reader.num_records()
  except (RuntimeError, ValueError, OSError) as e:
    return [f"{path}: cannot be opened as array_record: {e}"]
  problems = []
  try:
    for i in range(count):
      try:
        raw = reader.read([i])[0]
      except (RuntimeError, TypeError) as e:
        problems.append(f"{path}: record {i}: cannot be read: {e}")
        continue
      report.records += 1
      problem = _record_problems(raw, features, config, validate)
      if problem:
        problems.append(f"{path}: record {i}: {problem}")
      elif i in tfrecords and tfrecords[i] != raw:
        problems.append(f"{path}: record {i}: differs from record {i} of the tfrecord "
                        f"copy of this shard")
  finally:
    reader.close()
  return problems


def format_report(report: Report) -> str:
  """``verify``'s output: one line per problem, or one ``ok`` line."""
  if report.ok:
    return (f"ok: {report.path} ({report.records} records in {report.files} files "
            f"checked)")
  return "\n".join(report.problems + [f"{report.path}: {len(report.problems)} "
                                      f"problem(s)"])

