"""The compatibility layer: rlds imports and works beside TF 2.21; envlogger on NumPy 2."""

import numpy as np
import pytest
import tensorflow as tf

from rlds_lm import _compat


def test_import_rlds_and_its_transformations_work():
  rlds = _compat.import_rlds()
  steps = tf.data.Dataset.from_tensor_slices({rlds.REWARD: [1.0, 2.0, 3.5],
                                              rlds.IS_LAST: [False, False, True]})
  assert int(rlds.transformations.episode_length(steps)) == 3
  total = rlds.transformations.sum_dataset(steps, lambda s: s[rlds.REWARD])
  assert float(total) == pytest.approx(6.5)


def test_pattern_map_fails_with_a_clear_message():
  rlds = _compat.import_rlds()
  episodes = tf.data.Dataset.from_tensors(
      {rlds.STEPS: tf.data.Dataset.from_tensor_slices({rlds.REWARD: [1.0]})})
  with pytest.raises(_compat.ReverbUnavailableError, match="pattern_map"):
    list(rlds.transformations.pattern_map(episodes, configs=[]))


def test_stand_in_is_idempotent():
  import sys
  _compat.install_reverb_stand_in()
  first = sys.modules["reverb"]
  _compat.install_reverb_stand_in()
  assert sys.modules["reverb"] is first


def test_envlogger_codec_encodes_arrays_on_numpy2():
  _compat.import_envlogger()
  from envlogger.converters import codec
  value = {"ids": np.arange(4, dtype=np.int32), "text": "héllo"}
  decoded = codec.decode(codec.encode(value))
  np.testing.assert_array_equal(decoded["ids"], value["ids"])
  assert decoded["text"] == "héllo"


def test_filtered_stderr_drops_the_known_start_up_lines_and_keeps_the_rest(capfd):
  import os
  noise = (b"WARNING: All log messages before absl::InitializeLog() is called are written "
           b"to STDERR\n"
           b"I0000 00:00:1796415904.758698    7041 port.cc:153] oneDNN custom operations\n"
           b"To enable the following instructions: AVX2 FMA, in other operations, rebuild "
           b"TensorFlow with the appropriate compiler flags.\n"
           b"E0000 00:00:1796415926.203726    7635 cuda_platform.cc:52] failed call to "
           b"cuInit: INTERNAL\n")
  kept = (b"E0000 00:00:1796415926.203726    7635 saver.cc:1] a real error\n"
          b"Traceback (most recent call last):\n")
  noise_lines, kept_lines = noise.splitlines(True), kept.splitlines(True)
  with _compat.filtered_stderr():
    os.write(2, b"".join(noise_lines[:2]) + kept_lines[0] + noise_lines[2][:30])
    os.write(2, noise_lines[2][30:] + kept_lines[1] + noise_lines[3])
  assert capfd.readouterr().err == kept.decode()
