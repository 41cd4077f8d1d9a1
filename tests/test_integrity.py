"""Damaged datasets are detected, never read silently: on open, while reading, by verify.

Each test damages a copy of a real published dataset (tfrecord and array_record shards,
dataset_info.json, features.json, metadata.json) in one way and checks that the error
names what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from rlds_lm import cli
from rlds_lm import integrity as I
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm.trainers import data as D

RECORDS = 12  # episodes in conftest's `published` dataset (one shard)


@pytest.fixture
def dataset(published, tmp_path):
  """A private copy of the published rollout dataset (tfrecord + array_record)."""
  path = os.fspath(tmp_path / "fake_rollouts" / "1.0.0")
  shutil.copytree(published[0], path)
  return path


def _shard(path: str, file_format: str) -> str:
  (name,) = [n for n in os.listdir(path) if f".{file_format}-" in n]
  return os.path.join(path, name)


def _frames(file: str) -> list[tuple[int, int]]:
  """(offset, data length) of every record of a tfrecord file."""
  frames, offset, data = [], 0, open(file, "rb").read()
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    frames.append((offset, length))
    offset += 16 + length
  return frames


def _edit_json(file: str, edit) -> None:
  with open(file) as f:
    value = json.load(f)
  edit(value)  # in place
  with open(file, "w") as f:
    json.dump(value, f)


def _tfrecord_only(path: str) -> None:
  """Drops the array_record copy, so that readers read the tfrecord shards."""
  os.remove(_shard(path, "array_record"))
  _edit_json(os.path.join(path, "dataset_info.json"),
             lambda info: info.pop("alternativeFileFormats"))


def _rewrite_array_record(path: str, edit) -> None:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  file = _shard(path, "array_record")
  reader = array_record_module.ArrayRecordReader(file)
  records = reader.read(list(range(reader.num_records())))
  options = reader.writer_options_string()
  reader.close()
  writer = array_record_module.ArrayRecordWriter(file, options)
  for record in edit(records):
    writer.write(record)
  writer.close()


def _verify_lines(path: str, capsys) -> list[str]:
  assert cli.main(["verify", path]) == 1
  captured = capsys.readouterr()
  assert "ok" not in captured.out
  return captured.err.strip().splitlines()


def test_verify_says_ok_on_a_clean_dataset(dataset, capsys):
  assert cli.main(["verify", dataset]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"ok: {dataset}")
  assert f"{2 * RECORDS} records" in out  # both file formats, every record


def test_a_flipped_bit_in_a_token_is_detected(dataset, capsys):
  _tfrecord_only(dataset)
  file = _shard(dataset, "tfrecord")
  offset, length = _frames(file)[3]
  with open(file, "rb") as f:
    f.seek(offset + 12)
    raw = f.read(length)
  # The first action token of record 3, as stored (int32 little-endian bytes).
  episode = R.materialize(R.open_builder(dataset).info.features.deserialize_example_np(raw))
  tokens = np.asarray(episode[S.STEPS][0][S.ACTION][S.ACT_TOKENS], np.int32)
  at = offset + 12 + raw.index(tokens.tobytes())
  with open(file, "r+b") as f:
    f.seek(at)
    byte = f.read(1)[0]
    f.seek(at)
    f.write(bytes([byte ^ 1]))
  # Opening checks no record (the size is right); reading does.
  _, records = R.iter_records(dataset)
  with pytest.raises(I.IntegrityError, match=r"tfrecord-00000-of-00001: record 3 .*CRC"):
    list(records)
  lines = _verify_lines(dataset, capsys)
  assert [line for line in lines if "tfrecord" in line] == [
      f"{file}: record 3 (at byte {offset}): damaged data ({length} bytes, CRC mismatch)"]
  assert lines[-1] == f"{dataset}: 1 problem(s)"
  assert I.verify(dataset).records == RECORDS - 1  # reading went on after record 3


def test_a_shard_cut_at_a_record_boundary_is_detected(dataset, capsys):
  file = _shard(dataset, "tfrecord")
  offset, _ = _frames(file)[-1]
  with open(file, "r+b") as f:
    f.truncate(offset)  # the last episode is gone; every remaining record is intact
  with pytest.raises(I.IntegrityError, match=r"split 'train'.*tfrecord shards hold"):
    R.open_builder(dataset)
  with pytest.raises(I.IntegrityError,
                     match=rf"holds {RECORDS - 1} records, dataset_info.json says {RECORDS}"):
    list(R.tfrecord_records(file, expected=RECORDS))
  lines = _verify_lines(dataset, capsys)
  assert f"{file}: holds {RECORDS - 1} records, dataset_info.json says {RECORDS}" in lines


def test_a_damaged_length_field_is_named_not_a_memory_error(dataset, capsys):
  file = _shard(dataset, "tfrecord")
  offset, _ = _frames(file)[2]
  with open(file, "r+b") as f:
    f.seek(offset + 5)
    f.write(b"\x7f")  # a length of about 2**47 bytes
  with pytest.raises(I.IntegrityError, match=r"record 2 \(at byte \d+\): damaged length"):
    list(R.tfrecord_records(file))
  lines = _verify_lines(dataset, capsys)
  assert any(line.startswith(f"{file}: record 2") and "damaged length" in line
             for line in lines)


def test_a_damaged_array_record_chunk_names_the_file_and_record(dataset, capsys):
  file = _shard(dataset, "array_record")
  with open(file, "r+b") as f:  # inside the compressed records (they end before 15 kB)
    f.seek(2000)
    byte = f.read(1)[0]
    f.seek(2000)
    f.write(bytes([byte ^ 0x10]))
  source = R.data_source(dataset)
  with pytest.raises(I.IntegrityError,
                     match=r"array_record-00000-of-00001: record \d+ \(record \d+ of split "
                           r"'train'\): cannot be read or decoded: .*hash mismatch"):
    for i in range(len(source)):
      source[i]
  lines = _verify_lines(dataset, capsys)
  assert any(line.startswith(f"{file}: record") and "cannot be read" in line
             for line in lines)


def test_an_empty_array_record_record_is_not_a_row_of_padding(dataset, capsys):
  _rewrite_array_record(dataset, lambda records: records[:5] + [b""] + records[6:])
  batches = R.grain_batches(dataset, batch_size=RECORDS, max_length=16, shuffle=False)
  with pytest.raises(I.IntegrityError, match=r"record 5 .*: empty record"):
    batches[0]
  with pytest.raises(I.IntegrityError, match=r"record 5 .*: cannot be read or decoded"):
    R.data_source(dataset)[5]  # TFDS's decoding fails on it (a bare TypeError before)
  with pytest.raises(I.IntegrityError, match=r"record 5 .*: empty record"):
    D.DataPipeline(dataset, D.DataConfig(batch_size=4, max_length=16))
  lines = _verify_lines(dataset, capsys)
  assert f"{_shard(dataset, 'array_record')}: record 5: empty record" in lines


def test_an_array_record_shard_with_fewer_records_is_refused_on_open(dataset, capsys):
  _rewrite_array_record(dataset, lambda records: records[:6])
  message = (f"{_shard(dataset, 'array_record')}: holds 6 records, dataset_info.json "
             f"says {RECORDS}")
  with pytest.raises(I.IntegrityError, match=message):
    R.data_source(dataset)
  with pytest.raises(I.IntegrityError, match=message):
    D.DataPipeline(dataset, D.DataConfig(batch_size=4, max_length=16))
  assert message in _verify_lines(dataset, capsys)


def test_shard_lengths_edited_in_dataset_info_are_refused_on_open(dataset, capsys):
  def fewer(info):
    info["splits"][0]["shardLengths"] = [str(RECORDS - 1)]
  _edit_json(os.path.join(dataset, "dataset_info.json"), fewer)
  with pytest.raises(I.IntegrityError) as error:
    R.open_builder(dataset)
  tfrecord, array_record = error.value.problems
  size = os.path.getsize(_shard(dataset, "tfrecord"))  # 16 bytes of framing per record
  assert tfrecord == (f"{dataset}: split 'train': its tfrecord shards hold {size} bytes, "
                      f"dataset_info.json implies {size - 16} ({size - 16 * RECORDS} bytes "
                      f"in {RECORDS - 1} records): a shard was cut, extended or replaced")
  assert array_record == (f"{_shard(dataset, 'array_record')}: holds {RECORDS} records, "
                          f"dataset_info.json says {RECORDS - 1}")
  lines = _verify_lines(dataset, capsys)
  assert (f"{_shard(dataset, 'tfrecord')}: holds {RECORDS} records, dataset_info.json "
          f"says {RECORDS - 1}") in lines


def _schema_edit(**changes):
  def edit(metadata):
    config = json.loads(metadata[R.P.METADATA_SCHEMA])
    config.update(changes)
    metadata[R.P.METADATA_SCHEMA] = json.dumps(config)
  return edit


def _feature(features: dict, path: str) -> dict:
  node = features
  for key in path.split("/"):
    node = node["featuresDict"]["features"][key]
    node = node.get("sequence", {}).get("feature", node)  # steps: a Dataset feature
  return node["tensor"]


def test_a_teacher_width_changed_in_metadata_is_refused_on_open(dataset, capsys):
  _edit_json(os.path.join(dataset, "metadata.json"), _schema_edit(teacher_top_k=2))
  with pytest.raises(I.IntegrityError,
                     match=r"features.json: field steps/teacher/topk_ids \(decoded\): "
                           r"expected int32 \(None, 2\).*found int32 \(None, 4\)"):
    R.open_builder(dataset)
  lines = _verify_lines(dataset, capsys)
  assert any("field steps/teacher/topk_ids" in line for line in lines)


def test_a_dtype_changed_in_features_json_is_refused_on_open(dataset):
  _edit_json(os.path.join(dataset, "features.json"),
             lambda f: _feature(f, "steps/action/tokens").update(dtype="int64"))
  with pytest.raises(I.IntegrityError,
                     match=r"field steps/action/tokens \(decoded\): expected int32 "
                           r"\(None,\).*found int64 \(None,\)"):
    R.data_source(dataset)


def test_schema_files_changed_together_are_caught_by_verify(dataset, capsys):
  # features.json and metadata.json agree on a teacher width of 2, the records hold 4:
  # the bytes would be read as twice as many rows. Too costly to see on open (it needs
  # every record decoded), verify sees it in every record.
  _edit_json(os.path.join(dataset, "metadata.json"), _schema_edit(teacher_top_k=2))

  def narrow(features):
    for name in (S.TEACHER_TOPK_IDS, S.TEACHER_TOPK_LOGPROBS):
      _feature(features, f"steps/teacher/{name}")["shape"]["dimensions"][-1] = "2"
  _edit_json(os.path.join(dataset, "features.json"), narrow)
  R.open_builder(dataset)  # consistent with each other
  lines = _verify_lines(dataset, capsys)
  tfrecord = _shard(dataset, "tfrecord")
  for i in range(RECORDS):
    assert any(line.startswith(f"{tfrecord}: record {i}: not a valid episode")
               for line in lines)


def test_a_missing_shard_is_refused_on_open(dataset, capsys):
  os.remove(_shard(dataset, "tfrecord"))
  with pytest.raises(I.IntegrityError, match=r"tfrecord-00000-of-00001: missing"):
    R.open_builder(dataset)
  assert any("missing" in line for line in _verify_lines(dataset, capsys))


def test_integrity_errors_pickle_with_their_problems():
  import pickle  # pylint: disable=g-import-not-at-top
  error = pickle.loads(pickle.dumps(I.IntegrityError(["a: one", "b: two"])))
  assert error.problems == ["a: one", "b: two"]
  assert str(error) == str(I.IntegrityError(["a: one", "b: two"]))


def test_crc32c_implementations_agree():
  rng = np.random.default_rng(0)
  for size in (0, 1, 9, 4095, 4096, 5000, 70_001):
    data = rng.integers(0, 256, size, np.uint8).tobytes()
    assert I.crc32c(data) == I.crc32c_numpy(data) == I.crc32c_python(data), size
  assert I.crc32c(b"123456789") == 0xE3069283  # the crc32c check value
