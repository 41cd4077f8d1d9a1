"""The trainers' input pipeline: shapes, padding and packing, mixing, shards, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROLLOUT
from rlds_lm import publish as P
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import tokenizers
from rlds_lm import validate as V
from rlds_lm.trainers import data as D

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OTHER_VOCAB = S.SchemaConfig(vocab_size=300)  # no teacher, no named rewards
NARROW_TEACHER = S.SchemaConfig(vocab_size=259, teacher_top_k=2)
INVALID_SEEDS = (5, 11)  # episodes of dataset "a" marked invalid


class _Published:
  """A published dataset with its decoded records, by record index."""

  def __init__(self, path: str, config: S.SchemaConfig):
    self.path = path
    self.config = config
    source = R.data_source(path)
    self.records = [R.materialize(source[i]) for i in range(len(source))]
    self.trainable = sorted(i for i, ep in enumerate(self.records) if not ep[S.INVALID])


def _publish(data_dir, name: str, config: S.SchemaConfig, episodes) -> _Published:
  episodes = [V.validate_episode(e, config) for e in episodes]
  return _Published(P.publish({"train": episodes}, data_dir=data_dir, name=name,
                              config=config), config)


def _rollout(config: S.SchemaConfig, seed: int, invalid: bool = False):
  # Varied shapes: 1-3 turns, prompts of 0-3 tokens, actions of 3-7 (up to 30 tokens).
  episode = T.fake_rollout(config, seed=seed, turns=1 + seed % 3, prompt_len=seed % 4,
                           action_len=3 + seed % 5, thinking=seed % 2 == 0)
  episode[S.INVALID] = invalid
  return episode


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  root = tmp_path_factory.mktemp("trainer_data")
  return {
      "a": _publish(root, "mix_a", ROLLOUT,
                    [_rollout(ROLLOUT, i, invalid=i in INVALID_SEEDS) for i in range(20)]),
      "b": _publish(root, "mix_b", ROLLOUT, [_rollout(ROLLOUT, 100 + i) for i in range(12)]),
      "vocab300": _publish(root, "vocab300", OTHER_VOCAB,
                           [_rollout(OTHER_VOCAB, i) for i in range(4)]),
      "k2": _publish(root, "k2", NARROW_TEACHER,
                     [_rollout(NARROW_TEACHER, i) for i in range(4)]),
  }


def _expected(episode, length: int) -> dict[str, np.ndarray]:
  """Core arrays from episode_to_sequence, the other per-token fields flattened here."""
  out = R.episode_to_sequence(episode, length, teacher_top_k=ROLLOUT.teacher_top_k)
  k = ROLLOUT.teacher_sampled_k
  extra = {D.TOKEN_REWARDS: np.zeros(length, np.float32),
           D.THINKING_MASK: np.zeros(length, bool),
           D.TEACHER_TOKEN_LOGPROBS: np.zeros(length, np.float32),
           D.TEACHER_SAMPLED_IDS: np.zeros((length, k), np.int32),
           D.TEACHER_SAMPLED_COUNTS: np.zeros((length, k), np.int32)}
  pos = 0
  for step in episode[S.STEPS]:
    pos = min(length, pos + len(step[S.OBSERVATION][S.OBS_TOKENS]))
    n = min(length - pos, len(step[S.ACTION][S.ACT_TOKENS]))
    teacher = step[S.TEACHER]
    for key, values in ((D.TOKEN_REWARDS, step[S.TOKEN_REWARDS]),
                        (D.THINKING_MASK, step[S.ACTION][S.ACT_THINKING_MASK]),
                        (D.TEACHER_TOKEN_LOGPROBS, teacher[S.TEACHER_TOKEN_LOGPROB]),
                        (D.TEACHER_SAMPLED_IDS, teacher[S.TEACHER_SAMPLED_IDS]),
                        (D.TEACHER_SAMPLED_COUNTS, teacher[S.TEACHER_SAMPLED_COUNTS])):
      extra[key][pos:pos + n] = values[:n]
    pos += n
  out.update(extra)
  out[D.REWARDS] = np.asarray(
      [np.sum([np.float32(s[S.REWARDS][name]) for s in episode[S.STEPS]], dtype=np.float32)
       for name in ROLLOUT.reward_names], np.float32)
  out["length"] = pos
  return out


_PER_TOKEN = (D.TOKENS, D.LOSS_MASK, D.BEHAVIOUR_LOGPROBS, D.TEACHER_TOPK_IDS,
              D.TEACHER_TOPK_LOGPROBS, D.TOKEN_REWARDS, D.THINKING_MASK,
              D.TEACHER_TOKEN_LOGPROBS, D.TEACHER_SAMPLED_IDS, D.TEACHER_SAMPLED_COUNTS)


def _assert_batches_equal(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_padded_rows_equal_episode_to_sequence(ds):
  a = ds["a"]
  length = 20  # multi-turn episodes (up to 30 tokens) get cut
  pipeline = D.DataPipeline(a.path, D.DataConfig(batch_size=4, max_length=length, seed=3))
  assert pipeline.reward_names == ROLLOUT.reward_names
  seen = []
  for step in range(9):
    batch = pipeline.batch(step)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == pipeline.batch_spec
    assert batch[D.TOKENS].shape == (4, length)
    assert batch[D.TEACHER_SAMPLED_IDS].shape == (4, length, ROLLOUT.teacher_sampled_k)
    for row in range(4):
      record = int(batch[D.RECORD_INDEX][row])
      seen.append(record)
      expected = _expected(a.records[record], length)
      for key in _PER_TOKEN:
        np.testing.assert_array_equal(batch[key][row], expected[key], err_msg=key)
      assert batch[D.REWARD][row] == expected[D.REWARD]
      np.testing.assert_allclose(batch[D.REWARDS][row], expected[D.REWARDS], rtol=1e-6)
      n = expected["length"]
      np.testing.assert_array_equal(batch[D.SEGMENT_IDS][row], np.arange(length) < n)
      np.testing.assert_array_equal(batch[D.POSITIONS][row],
                                    np.where(np.arange(length) < n, np.arange(length), 0))
    assert (batch[D.DATASET] == 0).all()
  # Invalid episodes are skipped; an epoch (18 trainable) visits each one exactly once.
  trainable = len(a.trainable)
  assert sorted(seen[:trainable]) == a.trainable
  assert sorted(seen[trainable:2 * trainable]) == a.trainable
  assert seen[:trainable] != seen[trainable:2 * trainable]  # reshuffled per epoch


def test_same_config_same_batches_and_seed_changes_them(ds):
  paths = {ds["a"].path: 0.6, ds["b"].path: 0.4}
  config = D.DataConfig(batch_size=4, max_length=32, packing=True, max_segments=3, seed=5)
  first = D.DataPipeline(paths, config)
  again = D.DataPipeline(paths, config)
  with first.iterator(prefetch=0) as plain, again.iterator(prefetch=3) as prefetched:
    for step in range(8):
      batch = next(plain)
      _assert_batches_equal(batch, next(prefetched))
      _assert_batches_equal(batch, first.batch(step))
  other = D.DataPipeline(paths, D.DataConfig(batch_size=4, max_length=32, packing=True,
                                             max_segments=3, seed=6))
  assert other.fingerprint != first.fingerprint
  assert any(not np.array_equal(first.batch(s)[D.TOKENS], other.batch(s)[D.TOKENS])
             for s in range(4))


@pytest.mark.parametrize("packing", [False, True])
def test_restored_state_continues_the_batch_sequence_exactly(ds, packing):
  paths = {ds["a"].path: 0.7, ds["b"].path: 0.3}
  config = D.DataConfig(batch_size=3, max_length=24, packing=packing, max_segments=4, seed=1)
  it = D.DataPipeline(paths, config).iterator()
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 7 and set(state) == {"step", "fingerprint"}
  expected = _take(it, 5)
  it.close()
  with D.DataPipeline(paths, config).iterator(state=state) as restored:
    for want, got in zip(expected, _take(restored, 5)):
      _assert_batches_equal(want, got)
  # set_state on a running iterator drops what it had prefetched.
  with D.DataPipeline(paths, config).iterator(prefetch=2) as running:
    _take(running, 3)
    running.set_state(state)
    _assert_batches_equal(expected[0], next(running))


def test_restoring_another_pipelines_state_is_refused(ds):
  config = D.DataConfig(batch_size=2, max_length=16)
  state = D.DataPipeline(ds["a"].path, config).iterator(prefetch=0).get_state()
  others = [
      D.DataPipeline(ds["a"].path, D.DataConfig(batch_size=2, max_length=16, seed=1)),
      D.DataPipeline(ds["a"].path, D.DataConfig(batch_size=2, max_length=17)),
      D.DataPipeline({ds["a"].path: 1, ds["b"].path: 1}, config),
      D.DataPipeline({ds["a"].path: 1, ds["b"].path: 2}, config),
  ]
  for pipeline in others:
    with pytest.raises(D.StateMismatchError, match="datasets, their weights or the DataConfig"):
      pipeline.iterator(state=state, prefetch=0)
  with pytest.raises(D.StateMismatchError, match="not a data state"):
    D.DataPipeline(ds["a"].path, config).iterator(state={"step": 3})
  # The shard layout is not part of the state: a run may resume on more processes.
  sharded = D.DataPipeline(ds["a"].path, config, shard_index=1, shard_count=2)
  assert sharded.iterator(state=state, prefetch=0).step == 0


@pytest.mark.parametrize("packing", [False, True])
def test_process_shards_concatenate_to_the_global_batch(ds, packing):
  paths = {ds["a"].path: 0.5, ds["b"].path: 0.5}
  config = D.DataConfig(batch_size=8, max_length=24, packing=packing, max_segments=4, seed=2)
  whole = D.DataPipeline(paths, config)
  shards = [D.DataPipeline(paths, config, shard_index=i, shard_count=4) for i in range(4)]
  for pipeline in shards:
    assert pipeline.fingerprint == whole.fingerprint
    assert pipeline.batch_spec[D.TOKENS][0] == (2, 24)
  for step in (0, 1, 5, 11):
    parts = [pipeline.batch(step) for pipeline in shards]
    union = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    _assert_batches_equal(union, whole.batch(step))


def test_mixing_follows_the_weights_and_each_dataset_its_epochs(ds):
  a, b = ds["a"], ds["b"]
  pipeline = D.DataPipeline({a.path: 0.7, b.path: 0.3}, D.DataConfig(batch_size=10,
                                                                     max_length=16, seed=4))
  assert pipeline.weights == {a.path: 0.7, b.path: 0.3}
  batches = [pipeline.batch(step) for step in range(30)]
  datasets = np.concatenate([x[D.DATASET] for x in batches])
  assert np.mean(datasets == 0) == pytest.approx(0.7, abs=0.01)
  for x in batches:  # spread evenly, not in long runs
    assert 5 <= np.sum(x[D.DATASET] == 0) <= 9
  records = np.concatenate([x[D.RECORD_INDEX] for x in batches])
  for index, published in enumerate((a, b)):
    mine = records[datasets == index].tolist()
    n = len(published.trainable)
    for epoch in range(len(mine) // n):
      assert sorted(mine[epoch * n:(epoch + 1) * n]) == published.trainable
  skewed = D.DataPipeline({a.path: 1.0, b.path: 3.0}, D.DataConfig(batch_size=8,
                                                                   max_length=16))
  datasets = np.concatenate([skewed.batch(step)[D.DATASET] for step in range(25)])
  assert np.mean(datasets == 1) == pytest.approx(0.75, abs=0.01)


def _segments(batch, row):
  """[(segment index, start, stop)] of a packed row, checking the layout as it goes."""
  ids = batch[D.SEGMENT_IDS][row]
  used = int(np.sum(ids > 0))
  assert (ids[:used] > 0).all() and (ids[used:] == 0).all(), "padding only at the end"
  assert (np.diff(ids[:used]) >= 0).all() and (np.diff(ids[:used]) <= 1).all()
  out = []
  for s in range(int(ids.max(initial=0))):
    where = np.flatnonzero(ids == s + 1)
    assert where.size and np.array_equal(where, np.arange(where[0], where[-1] + 1))
    out.append((s, int(where[0]), int(where[-1]) + 1))
  assert batch[D.TOKENS][row][used:].tolist() == [0] * (len(ids) - used)
  assert not batch[D.LOSS_MASK][row][used:].any() and not batch[D.POSITIONS][row][used:].any()
  return out


def test_packing_places_every_token_of_every_episode_once_per_epoch(ds):
  a = ds["a"]
  length, segments = 24, 4
  pipeline = D.DataPipeline(a.path, D.DataConfig(batch_size=2, max_length=length,
                                                 packing=True, max_segments=segments))
  per_seq = pipeline.batch_spec[D.REWARD][0]
  assert per_seq == (2, segments)
  start = 0
  for epoch in range(2):
    rows = pipeline.units_per_epoch(epoch)[0]
    # Rows start..start + rows of the stream are this epoch's.
    batches = [pipeline.batch(step) for step in range((start + rows + 1) // 2)]
    flat = [(x, r) for x in batches for r in range(2)][start:start + rows]
    start += rows
    placed, tokens = [], 0
    for batch, row in flat:
      layout = _segments(batch, row)
      assert 1 <= len(layout) <= segments
      for s, begin, stop in layout:
        record = int(batch[D.RECORD_INDEX][row, s])
        placed.append(record)
        expected = _expected(a.records[record], length)
        assert stop - begin == expected["length"], "a sequence is split across rows"
        tokens += stop - begin
        np.testing.assert_array_equal(batch[D.POSITIONS][row, begin:stop],
                                      np.arange(stop - begin))
        for key in _PER_TOKEN:
          np.testing.assert_array_equal(batch[key][row, begin:stop],
                                        expected[key][:stop - begin], err_msg=key)
        assert batch[D.REWARD][row, s] == expected[D.REWARD]
        assert batch[D.DATASET][row, s] == 0
      assert (batch[D.RECORD_INDEX][row, len(layout):] == -1).all()
      assert (batch[D.REWARD][row, len(layout):] == 0).all()
    assert sorted(placed) == a.trainable, f"epoch {epoch}: each episode exactly once"
    assert tokens == sum(_expected(a.records[i], length)["length"] for i in a.trainable)
    # Packing saves rows: fewer rows than episodes.
    assert rows < len(a.trainable)


def test_model_side_masks_keep_segments_apart(ds):
  pipeline = D.DataPipeline(ds["a"].path, D.DataConfig(batch_size=4, max_length=32,
                                                       packing=True))
  batch = pipeline.batch(0)
  ids, positions = batch[D.SEGMENT_IDS], batch[D.POSITIONS]
  mask = D.attention_mask(ids, positions)
  assert mask.shape == (4, 32, 32)
  t, u = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  for row in range(4):
    same = (ids[row][:, None] == ids[row][None, :]) & (ids[row][None, :] > 0)
    np.testing.assert_array_equal(mask[row], same & (u <= t))
  assert (ids.max(axis=1) > 1).any(), "rows hold several sequences"
  targets = D.target_mask(batch[D.LOSS_MASK], ids)
  assert targets.shape == (4, 31)
  starts = (positions[:, 1:] == 0)  # the first token of a segment is never a target
  assert not (targets & starts).any()
  np.testing.assert_array_equal(targets | (batch[D.LOSS_MASK][:, 1:] & starts),
                                batch[D.LOSS_MASK][:, 1:])


def test_require_and_optional_choose_the_fields(ds):
  a = ds["a"]
  config = D.DataConfig(batch_size=2, max_length=16)
  lean = D.DataPipeline(a.path, config, optional=(), require=(S.TEACHER_TOPK_IDS,))
  assert sorted(lean.batch(0)) == sorted([
      D.TOKENS, D.LOSS_MASK, D.BEHAVIOUR_LOGPROBS, D.SEGMENT_IDS, D.POSITIONS, D.REWARD,
      D.DATASET, D.RECORD_INDEX, D.TEACHER_TOPK_IDS, D.TEACHER_TOPK_LOGPROBS])
  one_reward = D.DataPipeline(a.path, config, optional=(), require=("rewards/entailment",))
  assert one_reward.reward_names == ("entailment",)
  batch = one_reward.batch(0)
  assert batch[D.REWARDS].shape == (2, 1)
  full = D.DataPipeline(a.path, config).batch(0)
  np.testing.assert_array_equal(batch[D.REWARDS][:, 0], full[D.REWARDS][:, 1])
  # Mixing datasets of different teacher widths works without the teacher fields.
  mixed = D.DataPipeline([a.path, ds["k2"].path], config, optional=())
  assert D.TEACHER_TOPK_IDS not in mixed.batch(0)
  # The model's identity given as a tokenizer object.
  D.DataPipeline(a.path, config, vocab_size=259, tokenizer=tokenizers.ByteTokenizer())


def test_refusals_name_what_is_wrong(ds):
  a, k2, vocab300 = ds["a"], ds["k2"], ds["vocab300"]
  config = D.DataConfig(batch_size=2, max_length=16)
  with pytest.raises(D.DataMismatchError) as error:
    D.DataPipeline([a.path, k2.path], config,
                   require=(S.TEACHER_SAMPLED_IDS, S.TEACHER_TOPK_IDS, S.REWARDS))
  message = str(error.value)
  assert k2.path in message and a.path not in message
  assert "missing ['sampled_ids', 'rewards']" in message
  with pytest.raises(D.DataMismatchError, match=r"vocab_size 259, the model's is 300"):
    D.DataPipeline(a.path, config, vocab_size=300)
  with pytest.raises(D.DataMismatchError, match=r"tokenizer 'byte', the model's is 'spm:"):
    D.DataPipeline(a.path, config, tokenizer="spm:0123456789abcdef")
  with pytest.raises(D.DataMismatchError, match="disagree on vocab_size"):
    D.DataPipeline([a.path, vocab300.path], config)
  with pytest.raises(D.DataMismatchError, match="disagree on teacher_top_k"):
    D.DataPipeline([a.path, k2.path], config)
  with pytest.raises(D.DataMismatchError, match="disagree on teacher_top_k"):
    D.DataPipeline([a.path, k2.path], config, optional=(), require=(S.TEACHER_TOPK_IDS,))
  with pytest.raises(ValueError, match="unknown fields \\['topk'\\]"):
    D.DataPipeline(a.path, config, require=("topk",))
  with pytest.raises(ValueError, match="must be a positive number"):
    D.DataPipeline({a.path: 1.0, k2.path: 0.0}, config)
  with pytest.raises(ValueError, match="not divisible by shard_count"):
    D.DataPipeline(a.path, D.DataConfig(batch_size=3, max_length=8), shard_count=2)
  with pytest.raises(D.DataMismatchError, match="no split 'test'"):
    D.DataPipeline(a.path, D.DataConfig(batch_size=2, max_length=8, split="test"))
  with pytest.raises(ValueError, match="DataConfig.max_length"):
    D.DataConfig(batch_size=2, max_length=0)


def test_index_cache_dir_keeps_the_scan(ds, tmp_path):
  config = D.DataConfig(batch_size=2, max_length=16, packing=True)
  first = D.DataPipeline(ds["b"].path, config, index_cache_dir=tmp_path)
  (cached,) = os.listdir(tmp_path)
  assert cached.startswith("ds-") and cached.endswith(".npy")
  D._INDEX_CACHE.clear()  # pylint: disable=protected-access
  again = D.DataPipeline(ds["b"].path, config, index_cache_dir=tmp_path)
  _assert_batches_equal(first.batch(3), again.batch(3))


def test_the_pipeline_never_imports_tensorflow(ds):
  paths = {ds["a"].path: 0.7, ds["b"].path: 0.3}
  code = f"""
import json, sys
from rlds_lm.trainers import data as D
pipeline = D.DataPipeline({paths!r}, D.DataConfig(batch_size=4, max_length=24, packing=True))
with pipeline.iterator() as it:
  batches = [next(it) for _ in range(3)]
assert "tensorflow" not in sys.modules, "the trainer data path imported TensorFlow"
print(json.dumps([int(b["tokens"].sum()) for b in batches]))
"""
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  sums = json.loads(result.stdout.strip().splitlines()[-1])
  pipeline = D.DataPipeline(paths, D.DataConfig(batch_size=4, max_length=24, packing=True))
  assert sums == [int(pipeline.batch(step)[D.TOKENS].sum()) for step in range(3)]


def test_the_same_episodes_published_by_two_processes_give_the_same_batches(tmp_path):
  # A tf.train.Example's feature map is serialised in hash order, which differs between
  # processes (PYTHONHASHSEED): the stored bytes differ, the dataset identity and hence
  # the batch order must not.
  code = """
import json, sys
from rlds_lm import toy
from rlds_lm.trainers import data as D
train, _ = toy.split_problems(6, 0.25)
path = toy.publish_references(sys.argv[1], train)
pipeline = D.DataPipeline(path, D.DataConfig(batch_size=4, max_length=16, seed=0))
print(json.dumps([pipeline.fingerprint, pipeline.batch(0)[D.TOKENS].tolist()]))
"""
  outputs = []
  for hash_seed in ("1", "2"):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED=hash_seed)
    result = subprocess.run([sys.executable, "-c", code, os.fspath(tmp_path / hash_seed)],
                            env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs.append(json.loads(result.stdout.strip().splitlines()[-1]))
  raw = [open(next((tmp_path / s / "arith_reference" / "1.0.0").glob("*.tfrecord*")),
              "rb").read() for s in ("1", "2")]
  assert raw[0] != raw[1]  # the premise: the bytes differ
  assert outputs[0] == outputs[1]


def test_batch_keys_and_shapes_follow_the_schema_field_table(ds):
  # Every per-token field the dataset stores, shaped [B, L] + its per-token shape.
  pipeline = D.DataPipeline(ds["k2"].path, D.DataConfig(batch_size=2, max_length=8))
  spec = pipeline.batch_spec
  fields = S.token_fields(NARROW_TEACHER)  # top-k of width 2, no sampled-k
  per_token = {key for key, (shape, _) in spec.items() if shape[:2] == (2, 8)}
  assert per_token - {D.LOSS_MASK, D.SEGMENT_IDS, D.POSITIONS} == set(fields)
  for key, field in fields.items():
    assert spec[key] == ((2, 8) + field.trailing, field.dtype), key
  batch = pipeline.batch(0)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
  # What `require` accepts: the stored per-token fields and the rewards.
  assert set(D.FIELDS) == ({f.name for f in S.token_fields(ROLLOUT).values()}
                           | {S.REWARD, S.REWARDS})
