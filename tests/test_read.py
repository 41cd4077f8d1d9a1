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


def _flatten_by_concatenation(episode, length: int, reward_names) -> dict[str, np.ndarray]:
  """Every per-token field of ROLLOUT, flattened independently of the readers: whole
  turns concatenated (observation then action), then cut and padded to ``length``."""
  def fit(parts, dtype, trailing=()):
    array = np.concatenate([np.asarray(p, dtype).reshape((-1,) + trailing) for p in parts])
    out = np.zeros((length,) + trailing, dtype)
    out[:min(length, len(array))] = array[:length]
    return out

  steps = episode[S.STEPS]
  k, s = ROLLOUT.teacher_top_k, ROLLOUT.teacher_sampled_k
  per_token = {  # key: (value of a step, dtype, trailing shape)
      S.SEQ_BEHAVIOUR_LOGPROBS: (lambda st: st[S.ACTION_LOGPROBS], np.float32, ()),
      S.SEQ_TOKEN_REWARDS: (lambda st: st[S.TOKEN_REWARDS], np.float32, ()),
      S.SEQ_THINKING_MASK: (lambda st: st[S.ACTION][S.ACT_THINKING_MASK], bool, ()),
      S.SEQ_TEACHER_TOKEN_LOGPROBS: (lambda st: st[S.TEACHER][S.TEACHER_TOKEN_LOGPROB],
                                     np.float32, ()),
      S.SEQ_TEACHER_TOPK_IDS: (lambda st: st[S.TEACHER][S.TEACHER_TOPK_IDS], np.int32, (k,)),
      S.SEQ_TEACHER_TOPK_LOGPROBS: (lambda st: st[S.TEACHER][S.TEACHER_TOPK_LOGPROBS],
                                    np.float32, (k,)),
      S.SEQ_TEACHER_SAMPLED_IDS: (lambda st: st[S.TEACHER][S.TEACHER_SAMPLED_IDS],
                                  np.int32, (s,)),
      S.SEQ_TEACHER_SAMPLED_COUNTS: (lambda st: st[S.TEACHER][S.TEACHER_SAMPLED_COUNTS],
                                     np.int32, (s,)),
  }
  obs = [st[S.OBSERVATION][S.OBS_TOKENS] for st in steps]
  act = [st[S.ACTION][S.ACT_TOKENS] for st in steps]
  out = {S.SEQ_TOKENS: fit([t for pair in zip(obs, act) for t in pair], np.int32),
         S.SEQ_LOSS_MASK: fit([m for o, a in zip(obs, act)
                               for m in (np.zeros(len(o)), np.ones(len(a)))], bool)}
  for key, (value, dtype, trailing) in per_token.items():
    out[key] = fit([v for o, st in zip(obs, steps)
                    for v in (np.zeros((len(o),) + trailing), value(st))], dtype, trailing)
  out[S.SEQ_REWARD] = np.float32(sum(float(st[S.REWARD]) for st in steps))
  out[S.SEQ_REWARDS] = np.asarray([sum(float(st[S.REWARDS][n]) for st in steps)
                                   for n in reward_names], np.float32)
  return out


def test_one_decoder_reads_every_per_token_field_of_the_schema_table(tmp_path):
  from rlds_lm import publish as P
  from rlds_lm import validate as V
  episodes = [V.validate_episode(T.fake_rollout(ROLLOUT, seed=i, turns=1 + i % 3,
                                                prompt_len=i % 4, thinking=i % 2 == 0),
                                 ROLLOUT) for i in range(5)]
  path = P.publish({"train": episodes}, data_dir=tmp_path, name="fields", config=ROLLOUT)
  raw = R.open_builder(path).as_data_source(
      "train", file_format="array_record",
      deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  decoded = R.data_source(path)
  by_id = {e[S.EPISODE_ID]: e for e in episodes}
  fields = S.token_fields(ROLLOUT).values()
  names = ("entailment", "correct")  # any order, any subset
  for length in (5, 11, 40):
    decoder = pickle.loads(pickle.dumps(  # Grain workers get a pickled copy
        R.RawSequenceDecoder(length, fields=fields, reward_names=names)))
    for i in range(len(raw)):
      fast = decoder(raw[i])
      generic = R.episode_to_sequence(R.materialize(decoded[i]), length, fields=fields,
                                      reward_names=names)
      T.assert_episodes_equal(fast, generic)
      episode = by_id[decoded[i][S.EPISODE_ID].decode()]  # records are in content order
      expected = _flatten_by_concatenation(episode, length, names)
      assert sorted(fast) == sorted(expected)
      for key, value in expected.items():
        assert fast[key].dtype == value.dtype, key
        np.testing.assert_allclose(fast[key], value, rtol=1e-6, err_msg=key)
  # The default stays the lean training sequence: no other field, no named rewards.
  assert sorted(R.RawSequenceDecoder(8)(raw[0])) == sorted(
      (S.SEQ_TOKENS, S.SEQ_LOSS_MASK, S.SEQ_BEHAVIOUR_LOGPROBS, S.SEQ_REWARD))
  with pytest.raises(ValueError, match="not both"):
    R.RawSequenceDecoder(8, teacher_top_k=4, fields=fields)


def test_the_decoder_refuses_bytes_that_hold_no_episode(published):
  path, _ = published
  decode = R.RawSequenceDecoder(max_length=16, teacher_top_k=4)
  for raw in (b"", b"\x0a\x00"):
    with pytest.raises(ValueError, match="damaged record"):
      decode(raw)
