"""Readers: tfds.builder_from_directory, rlds.transformations, Grain without TF."""

import builtins
import json
import os
import pickle
import site
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import ROLLOUT
from rlds_lm import read as R
from rlds_lm import schema as S
from rlds_lm import testing as T
from rlds_lm import transforms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rlds_transformations_on_a_published_dataset(published):
  path, by_id = published
  rlds = transforms.rlds()
  ds = transforms.as_dataset(path)
  lengths, sums, ids = [], [], []
  for episode in ds:
    ids.append(episode[S.EPISODE_ID].numpy().decode())
    lengths.append(int(rlds.transformations.episode_length(episode[S.STEPS])))
    sums.append(float(rlds.transformations.sum_dataset(episode[S.STEPS],
                                                        lambda s: s[S.REWARD])))
  assert sorted(ids) == sorted(by_id)
  for episode_id, length, total in zip(ids, lengths, sums):
    steps = by_id[episode_id][S.STEPS]
    assert length == len(steps)
    assert total == pytest.approx(sum(float(s[S.REWARD]) for s in steps), rel=1e-6)
  # Step maps and batching over the flattened steps of all episodes.
  steps = ds.flat_map(lambda ep: ep[S.STEPS])
  lengths_ds = rlds.transformations.map_nested_steps(
      ds, lambda s: {"n": tf.shape(s[S.ACTION][S.ACT_TOKENS])[0]})
  counts = [int(n) for ep in lengths_ds for n in (s["n"] for s in ep[S.STEPS])]
  assert sum(counts) == sum(len(s[S.ACTION][S.ACT_TOKENS]) for e in by_id.values()
                            for s in e[S.STEPS])
  batch = next(iter(rlds.transformations.batch(
      steps.map(lambda s: {S.REWARD: s[S.REWARD]}), size=4, shift=4, drop_remainder=True)))
  assert batch[S.REWARD].shape == (4,)


def test_token_view_numpy_and_tf_agree_with_an_independent_count(published):
  path, by_id = published
  episode = next(iter(by_id.values()))
  view = R.token_view(episode)
  steps = episode[S.STEPS]
  n_tokens = sum(len(s[S.ACTION][S.ACT_TOKENS]) for s in steps)
  assert len(view) == n_tokens + 1 and view[-1][S.IS_LAST] and view[0][S.IS_FIRST]
  np.testing.assert_array_equal([v[S.ACTION] for v in view[:-1]],
                                np.concatenate([s[S.ACTION][S.ACT_TOKENS] for s in steps]))
  total = sum(float(s[S.REWARD]) + float(np.sum(s[S.TOKEN_REWARDS])) for s in steps)
  assert sum(float(v[S.REWARD]) for v in view) == pytest.approx(total, rel=1e-5)
  # Position = tokens before it in the concatenated (observation, action) sequence.
  first_turn_obs = len(steps[0][S.OBSERVATION][S.OBS_TOKENS])
  assert view[0][S.OBSERVATION][R.TOKEN_POSITION] == first_turn_obs
  assert view[0][S.OBSERVATION][R.TOKEN_PREV] == steps[0][S.OBSERVATION][S.OBS_TOKENS][-1]
  # The tf.data transformation yields the same steps.
  ds = transforms.as_dataset(path)
  for record in ds:
    if record[S.EPISODE_ID].numpy().decode() == episode[S.EPISODE_ID]:
      tf_view = list(tfds.as_numpy(transforms.token_level(record[S.STEPS])))
      break
  assert len(tf_view) == len(view)
  for a, b in zip(tf_view, view):
    T.assert_episodes_equal(a, b, rtol=1e-6)
  # In graph mode too (inside flat_map), over every episode of the dataset.
  token_steps = ds.flat_map(lambda ep: transforms.token_level(ep[S.STEPS]))
  expected = sum(len(R.token_view(e)) for e in by_id.values())
  assert sum(1 for _ in token_steps) == expected


def test_grain_batches_are_deterministic_and_match_an_independent_flattening(published):
  path, by_id = published
  a = [b for b in R.grain_batches(path, batch_size=4, max_length=24, seed=7, with_teacher=True)]
  b = [b for b in R.grain_batches(path, batch_size=4, max_length=24, seed=7, with_teacher=True)]
  c = [b for b in R.grain_batches(path, batch_size=4, max_length=24, seed=8, with_teacher=True)]
  assert len(a) == len(by_id) // 4
  for x, y in zip(a, b):
    T.assert_episodes_equal(x, y)
  assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, c))
  # Every row is one episode: prompt then completion tokens, loss on the completion.
  expected_rows = {}
  for episode in by_id.values():
    seq = np.concatenate([np.concatenate([s[S.OBSERVATION][S.OBS_TOKENS],
                                          s[S.ACTION][S.ACT_TOKENS]]) for s in episode[S.STEPS]])
    padded = np.zeros(24, np.int32)
    padded[:min(24, len(seq))] = seq[:24]
    expected_rows[tuple(padded)] = episode
  assert len(expected_rows) == len(by_id)
  for batch in a:
    assert batch["tokens"].shape == (4, 24) and batch["teacher_topk_ids"].shape == (4, 24, 4)
    for row in range(4):
      mask = batch["loss_mask"][row]
      episode = expected_rows[tuple(batch["tokens"][row])]
      actions = np.concatenate([s[S.ACTION][S.ACT_TOKENS] for s in episode[S.STEPS]])
      np.testing.assert_array_equal(batch["tokens"][row][mask], actions[:mask.sum()])
      assert batch["reward"][row] == pytest.approx(
          sum(float(s[S.REWARD]) for s in episode[S.STEPS]), rel=1e-6)
  sharded = [R.grain_batches(path, batch_size=1, max_length=8, shuffle=False,
                             shard_index=i, shard_count=2) for i in range(2)]
  assert len(sharded[0]) + len(sharded[1]) == len(by_id)


def _tf_free_site(tmp_path):
  """A site-packages view without TensorFlow: links to everything else."""
  view = tmp_path / "site"
  view.mkdir()
  for root in site.getsitepackages():
    for name in os.listdir(root):
      lower = name.lower()
      if lower.startswith(("tensorflow", "tf_keras", "keras")) and not lower.startswith(
          ("tensorflow_datasets", "tensorflow_metadata")):
        continue
      if lower.endswith(".pth") or (view / name).exists():
        continue
      os.symlink(os.path.join(root, name), view / name)
  return view


def test_random_access_read_needs_no_tensorflow(published, tmp_path):
  path, by_id = published
  code = f"""
import importlib.util, json, sys
assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is importable"
from rlds_lm import read as R
source = R.data_source({str(path)!r})
out = {{}}
for i in range(len(source)):
  ep = R.materialize(source[i])
  out[ep["episode_id"]] = [int(s["action"]["tokens"].sum()) for s in ep["steps"]]
batch = R.grain_batches({str(path)!r}, batch_size=4, max_length=24, seed=7)[0]
out["__batch__"] = int(batch["tokens"].sum())
assert "tensorflow" not in sys.modules
print(json.dumps(out))
"""
  env = dict(os.environ, PYTHONPATH=f"{_tf_free_site(tmp_path)}{os.pathsep}{REPO}")
  result = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  batch_sum = out.pop("__batch__")
  assert out == {k: [int(s[S.ACTION][S.ACT_TOKENS].sum()) for s in e[S.STEPS]]
                 for k, e in by_id.items()}
  assert batch_sum == int(R.grain_batches(path, batch_size=4, max_length=24,
                                          seed=7)[0]["tokens"].sum())


def test_opening_and_reading_never_unpickles_or_evaluates(published, monkeypatch, tmp_path):
  path, _ = published
  def forbidden(*args, **kwargs):
    raise AssertionError("a reader tried to unpickle or evaluate data")
  for name in ("load", "loads"):
    monkeypatch.setattr(pickle, name, forbidden)
  monkeypatch.setattr(builtins, "eval", forbidden)
  monkeypatch.setattr(builtins, "exec", forbidden)
  builder = R.open_builder(path)
  assert R.schema_config(builder) == ROLLOUT
  source = R.data_source(path)
  R.materialize(source[0])
  next(iter(transforms.as_dataset(path)))
  list(R.grain_batches(path, batch_size=2, max_length=8))


def test_fast_decoder_equals_generic_flattening_when_truncated(tmp_path):
  from rlds_lm import publish as P
  from rlds_lm import validate as V
  episodes = [V.validate_episode(T.fake_rollout(ROLLOUT, seed=i, turns=3), ROLLOUT)
              for i in range(4)]
  path = P.publish({"train": episodes}, data_dir=tmp_path, name="multi", config=ROLLOUT)
  builder = R.open_builder(path)
  raw = builder.as_data_source("train", file_format="array_record",
                               deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  decoded = R.data_source(path)
  for length in (6, 8, 12, 40, 100):
    decoder = R.RawSequenceDecoder(length, teacher_top_k=ROLLOUT.teacher_top_k)
    for i in range(len(raw)):
      fast = decoder(raw[i])
      generic = R.episode_to_sequence(R.materialize(decoded[i]), length,
                                      teacher_top_k=ROLLOUT.teacher_top_k)
      T.assert_episodes_equal(fast, generic)
