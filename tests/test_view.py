"""The training view: same batches as the decoder, rebuilt when stale, damage detected."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import numpy as np
import pytest

from conftest import ROLLOUT
from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import validate as V
from rlds_lm import view as VW
from rlds_lm.trainers import data as D


def _rollout(seed: int, invalid: bool = False):
  # Varied shapes: 1-3 turns, prompts of 0-3 tokens, actions of 3-7 tokens.
  episode = T.fake_rollout(ROLLOUT, seed=seed, turns=1 + seed % 3, prompt_len=seed % 4,
                           action_len=3 + seed % 5, thinking=seed % 2 == 0)
  episode[S.INVALID] = invalid
  return V.validate_episode(episode, ROLLOUT)


def _publish(root, name: str, seeds, invalid=()) -> str:
  episodes = [_rollout(s, invalid=s in invalid) for s in seeds]
  return P.publish({"train": episodes}, data_dir=root, name=name, config=ROLLOUT)


@pytest.fixture
def dataset(tmp_path):
  return _publish(tmp_path / "data", "view_a", range(14), invalid=(3, 8))


class _Warnings(logging.Handler):
  """The training view's warnings (pytest's caplog is off with -p no:logging)."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.lines: list[str] = []

  def emit(self, record):
    self.lines.append(record.getMessage())

  @property
  def text(self) -> str:
    return "\n".join(self.lines)

  def clear(self):
    self.lines.clear()


@pytest.fixture
def warnings_():
  handler = _Warnings()
  # An in-process CLI call elsewhere in the session may have raised the root logger's
  # level (the CLI quiets the libraries); this logger's warnings are what is tested.
  level = VW.log.level
  VW.log.setLevel(logging.WARNING)
  VW.log.addHandler(handler)
  yield handler
  VW.log.removeHandler(handler)
  VW.log.setLevel(level)


def _same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert list(x) == list(y)
    for key in x:
      assert x[key].dtype == y[key].dtype, key
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _grain(path, training_view, **kwargs):
  return list(R.grain_batches(path, training_view=training_view, **kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(batch_size=4, max_length=24, seed=3, with_teacher=True),
    dict(batch_size=3, max_length=7, seed=1, drop_remainder=False, pad_id=5),
    dict(batch_size=2, max_length=40, shuffle=False, shard_index=1, shard_count=3),
    dict(batch_size=2, max_length=16, seed=9, shard_index=1, shard_count=2,
         with_teacher=True),
    # Longer than the whole token column: no window fits, every row is a slice.
    dict(batch_size=5, max_length=4096, seed=4, with_teacher=True, drop_remainder=False,
         pad_id=7),
    # Rows near the column's end (a window clipped, then the row copied by a slice).
    dict(batch_size=14, max_length=60, shuffle=False, with_teacher=True, pad_id=3),
])
def test_grain_batches_with_and_without_the_view_are_equal(dataset, kwargs):
  with_view = _grain(dataset, True, **kwargs)
  assert os.path.exists(os.path.join(dataset, VW.VIEW_DIR, "train", VW.VIEW_JSON))
  _same_batches(with_view, _grain(dataset, False, **kwargs))


@pytest.mark.parametrize("config", [
    D.DataConfig(batch_size=4, max_length=20, seed=2),
    D.DataConfig(batch_size=4, max_length=12, seed=5, packing=True, max_segments=3),
])
def test_trainer_batches_with_and_without_the_view_are_equal(tmp_path, config):
  a = _publish(tmp_path / "data", "mix_a", range(14), invalid=(3, 8))
  b = _publish(tmp_path / "data", "mix_b", range(100, 109))
  datasets = {a: 0.6, b: 0.4}
  with_view = D.DataPipeline(datasets, config, require=("rewards/entailment",))
  without = D.DataPipeline(datasets, config, require=("rewards/entailment",),
                           training_view=False)
  # The view changes how batches are read, never which: same fingerprint, same arrays.
  assert with_view.fingerprint == without.fingerprint
  assert [d.view is not None for d in with_view._datasets] == [True, True]
  assert D.TEACHER_TOPK_IDS in with_view.batch_spec and D.REWARDS in with_view.batch_spec
  _same_batches([with_view.batch(i) for i in range(6)], [without.batch(i) for i in range(6)])


def test_a_dataset_with_empty_per_token_fields_gets_its_view(tmp_path, warnings_):
  # The quickstart's reference answers store no teacher data: some per-token fields are
  # [T, 0] arrays, which the view once refused (and the trainers fell back to decoding).
  from rlds_lm import toy  # pylint: disable=g-import-not-at-top

  path = toy.publish_references(str(tmp_path), toy.arithmetic_problems(10, seed=1))
  config = D.DataConfig(batch_size=4, max_length=16, seed=0)
  with_view = D.DataPipeline({path: 1.0}, config)
  assert [d.view is not None for d in with_view._datasets] == [True]
  assert not warnings_.lines
  without = D.DataPipeline({path: 1.0}, config, training_view=False)
  _same_batches([with_view.batch(i) for i in range(3)], [without.batch(i) for i in range(3)])


def test_a_stale_view_is_rebuilt(tmp_path, warnings_):
  a = _publish(tmp_path / "a", "stale", range(6))
  b = _publish(tmp_path / "b", "stale", range(50, 62))
  for path in (a, b):
    R.grain_batches(path, batch_size=2, max_length=8)
  # A's view replaced by one built from other records (say, an older version of the
  # dataset): its lineage names another source digest.
  shutil.rmtree(os.path.join(a, VW.VIEW_DIR))
  shutil.copytree(os.path.join(b, VW.VIEW_DIR), os.path.join(a, VW.VIEW_DIR))
  stale = VW.TrainingView(VW.view_dir(a, "train"))
  assert stale.source_digest == VW.source_digest(R.open_builder(b), "train")
  batches = _grain(a, True, batch_size=2, max_length=30, seed=4)
  assert "is stale" in warnings_.text
  view = VW.TrainingView(VW.view_dir(a, "train"))
  assert view.source_digest == VW.source_digest(R.open_builder(a), "train") != (
      stale.source_digest)
  assert len(view) == 6
  _same_batches(batches, _grain(a, False, batch_size=2, max_length=30, seed=4))


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_damaged_view_is_detected_and_rebuilt(dataset, damage, warnings_):
  R.grain_batches(dataset, batch_size=2, max_length=8)
  directory = VW.view_dir(dataset, "train")
  file = os.path.join(directory, f"{S.SEQ_TEACHER_TOPK_LOGPROBS}.bin")
  if damage == "remove":
    os.remove(file)
  else:
    with open(file, "r+b") as f:
      if damage == "flip":
        f.seek(37)
        byte = f.read(1)[0]
        f.seek(37)
        f.write(bytes([byte ^ 0x04]))
      else:
        f.truncate(os.path.getsize(file) - 8)
  expected = {"flip": "CRC-32 .* damaged", "truncate": r"\d+ bytes, expected",
              "remove": "missing"}[damage]
  with pytest.raises(VW.ViewError, match=f"{S.SEQ_TEACHER_TOPK_LOGPROBS}.bin: {expected}"):
    VW.TrainingView(directory)
  batches = _grain(dataset, True, batch_size=4, max_length=24, with_teacher=True)
  assert "is damaged" in warnings_.text
  VW.TrainingView(directory)  # rebuilt, intact
  _same_batches(batches, _grain(dataset, False, batch_size=4, max_length=24,
                                with_teacher=True))


def test_a_read_only_dataset_gets_its_view_in_the_cache(dataset, tmp_path, monkeypatch,
                                                        warnings_):
  build = VW._build_into

  def read_only(builder, split, directory, digest):
    if directory.startswith(os.fspath(dataset)):
      raise PermissionError(13, "Permission denied", directory)
    return build(builder, split, directory, digest)

  monkeypatch.setattr(VW, "_build_into", read_only)
  monkeypatch.setenv(VW.CACHE_ENV, os.fspath(tmp_path / "cache"))
  batches = _grain(dataset, True, batch_size=4, max_length=16)
  assert "written to the cache" in warnings_.text
  assert not os.path.exists(os.path.join(dataset, VW.VIEW_DIR, "train"))
  digest = VW.source_digest(R.open_builder(dataset), "train")
  assert os.path.exists(os.path.join(tmp_path, "cache", digest, "train", VW.VIEW_JSON))
  _same_batches(batches, _grain(dataset, False, batch_size=4, max_length=16))
  # Nowhere to write: the decoder, saying so.
  monkeypatch.setenv(VW.CACHE_ENV, os.fspath(tmp_path / "cache2"))
  monkeypatch.setattr(VW, "_build_into", lambda *a: (_ for _ in ()).throw(
      PermissionError(13, "Permission denied")))
  warnings_.clear()
  assert VW.open_view(R.open_builder(dataset), "train") is None
  assert "decoding records instead" in warnings_.text


def test_the_view_records_its_lineage_and_pickles_small(dataset):
  list(R.grain_batches(dataset, batch_size=2, max_length=8))
  directory = VW.view_dir(dataset, "train")
  with open(os.path.join(directory, VW.VIEW_JSON)) as f:
    meta = json.load(f)
  assert meta["format"] == VW.FORMAT and meta["records"] == 14
  assert meta["source_digest"] == VW.source_digest(R.open_builder(dataset), "train")
  assert S.SchemaConfig.from_json(meta["schema"]) == ROLLOUT
  assert set(meta["fields"]) == set(S.token_fields(ROLLOUT))
  view = VW.TrainingView(directory)
  assert len(pickle.dumps(view)) < 1000  # workers reopen the files, nothing is copied
  # The index the trainers use: -1 for invalid episodes.
  source = R.data_source(dataset)
  invalid = [i for i in range(len(source)) if source[i][S.INVALID]]
  assert len(invalid) == 2
  assert [i for i, n in enumerate(view.lengths) if n < 0] == invalid


def test_multiprocess_batches_equal_the_in_process_batches(dataset):
  from absl import flags  # pylint: disable=g-import-not-at-top

  from rlds_lm import loading  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  ds = R.grain_batches(dataset, batch_size=3, max_length=24, seed=2, with_teacher=True,
                       drop_remainder=False).repeat(3)  # 5 batches, the last of 2 rows
  expected = list(ds)
  with loading.multiprocess_batches(ds, workers=2, slots_per_worker=1) as it:
    ring = it._ring.path
    assert os.path.exists(ring)
    got = list(it)
  assert not os.path.exists(ring)  # the shared ring is removed with the iterator
  assert [len(b[S.SEQ_TOKENS]) for b in got[:5]] == [3, 3, 3, 3, 2]
  _same_batches(got, expected)


def test_the_shuffle_is_a_seeded_bijection_of_the_records():
  for n in (1, 2, 3, 7, 64, 1000, 4097):
    p = R._Permutation(n, seed=5)
    image = p(np.arange(n))
    np.testing.assert_array_equal(np.sort(image), np.arange(n))
    np.testing.assert_array_equal(image, R._Permutation(n, seed=5)(np.arange(n)))
    if n >= 7:
      assert not np.array_equal(image, R._Permutation(n, seed=6)(np.arange(n)))
      assert not np.array_equal(image, R._Permutation(n, seed=5, epoch=1)(np.arange(n)))
      assert not np.array_equal(image, np.arange(n))
  # Blocks of batches: any batch alone equals the same batch computed with its block.
  order = R._BatchRecords(1000, 7, 1, 3, seed=2, drop_remainder=False)
  every = np.concatenate([order(j) for j in range(len(order))])
  np.testing.assert_array_equal(np.sort(every), np.arange(1, 1000, 3))
  fresh = R._BatchRecords(1000, 7, 1, 3, seed=2, drop_remainder=False)
  np.testing.assert_array_equal(fresh(40), order(40))


def test_iterating_grain_batches_equals_indexing_and_graines_own_iteration(dataset):
  ds = R.grain_batches(dataset, batch_size=3, max_length=24, seed=2, with_teacher=True,
                       drop_remainder=False)
  by_index = [ds[i] for i in range(len(ds))]
  _same_batches(list(ds), by_index)
  import grain  # pylint: disable=g-import-not-at-top

  _same_batches(list(ds.to_iter_dataset(grain.ReadOptions(num_threads=4))), by_index)
  _same_batches(list(ds[1:3]), by_index[1:3])
  # Iterator state: a restored iterator continues with the same batches.
  it = iter(ds)
  next(it)
  state = it.get_state()
  rest = list(it)
  again = iter(ds)
  again.set_state(state)
  _same_batches(list(again), rest)
  # repeat() reshuffles each epoch (every record once per epoch), unless told not to.
  twice = list(ds.repeat(2))
  _same_batches(twice[:len(ds)], by_index)
  second = np.sort(np.concatenate([b[S.SEQ_TOKENS].sum(axis=1) for b in twice[len(ds):]]))
  first = np.sort(np.concatenate([b[S.SEQ_TOKENS].sum(axis=1) for b in by_index]))
  np.testing.assert_array_equal(second, first)
  assert any(not np.array_equal(a[S.SEQ_TOKENS], b[S.SEQ_TOKENS])
             for a, b in zip(twice[len(ds):], by_index))
  _same_batches(list(ds.repeat(2, reseed_each_epoch=False))[len(ds):], by_index)
  # The decoder path keeps the same order under repeat.
  decoded = R.grain_batches(dataset, batch_size=3, max_length=24, seed=2, with_teacher=True,
                            drop_remainder=False, training_view=False)
  _same_batches(list(decoded.repeat(2)), twice)


def test_the_view_batcher_writes_into_given_arrays(dataset):
  ds = R.grain_batches(dataset, batch_size=4, max_length=20, seed=1, with_teacher=True,
                       pad_id=2)
  batcher = ds._make
  indices = ds.records(1)
  expected = batcher(indices)
  spec = batcher.spec(6)  # more rows than the batch: the first ones are written
  out = {key: np.full(shape, 99, dtype) for key, (shape, dtype) in spec.items()}
  got = batcher(indices, out=out)
  assert list(got) == list(expected) == list(spec)
  for key, value in got.items():
    assert np.shares_memory(value, out[key]), key
    np.testing.assert_array_equal(value, expected[key], err_msg=key)
    assert (out[key][4:] == np.asarray(99).astype(value.dtype)).all(), key  # untouched


def test_trainer_batches_mixing_a_view_and_a_decoded_dataset(tmp_path):
  a = _publish(tmp_path / "data", "mixed_a", range(14), invalid=(3, 8))
  b = _publish(tmp_path / "data", "mixed_b", range(100, 109))
  config = D.DataConfig(batch_size=4, max_length=20, seed=3)
  mixed = D.DataPipeline({a: 0.5, b: 0.5}, config)
  mixed._datasets[1].view = None  # dataset b decoded, a gathered from its view
  without = D.DataPipeline({a: 0.5, b: 0.5}, config, training_view=False)
  _same_batches([mixed.batch(i) for i in range(6)], [without.batch(i) for i in range(6)])
  assert mixed.rows(2) == without.rows(2)


def test_multiprocess_batches_in_groups_as_views_and_safe_copies_for_jax(dataset):
  from absl import flags  # pylint: disable=g-import-not-at-top

  from rlds_lm import loading  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  ds = R.grain_batches(dataset, batch_size=3, max_length=24, seed=5, with_teacher=True,
                       drop_remainder=False).repeat(6)  # 30 batches: groups of 4, then 2
  expected = list(ds)
  assert len(expected) == 30
  # Views of the slots: right while they are the current batch, reused afterwards.
  with loading.multiprocess_batches(ds, workers=2, slots_per_worker=1, copy=False,
                                    batches_per_element=4) as it:
    views, copies = [], []
    for batch in it:
      views.append(batch)
      copies.append({key: value.copy() for key, value in batch.items()})
  _same_batches(copies, expected)
  slots = 16  # 2 workers x 2 elements of 4 batches
  assert any(not np.array_equal(v[S.SEQ_TOKENS], e[S.SEQ_TOKENS])
             for v, e in zip(views[:-slots], expected))  # their slots were refilled
  # The default copies: batches kept (here as JAX arrays, which on CPU may alias numpy
  # memory) stay what they were while the slots are reused.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  with loading.multiprocess_batches(ds, workers=2, slots_per_worker=1,
                                    batches_per_element=4) as it:
    kept = [{key: jnp.asarray(value) for key, value in batch.items()} for batch in it]
  _same_batches([{k: np.asarray(v) for k, v in b.items()} for b in kept], expected)
