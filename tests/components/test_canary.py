"""The canary serves a candidate with the real server on loopback and refuses one that cannot serve."""
import os

import tensorflow as tf

from components.canary import check_model
from tests.serving.conftest import write_half_plus_two


def _records():
    example = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(tf.zeros([8, 8, 1],
                                                                                               tf.uint8)).numpy()]))}))
    return [example.SerializeToString()] * 3


def test_a_model_whose_signature_cannot_serve_examples_is_refused(tmp_path):
    path = str(tmp_path / "candidate")
    write_half_plus_two(path)  # serving_default takes float x, not tf.Examples
    reason = check_model(path, _records(), "digits")
    assert reason
    assert "did not answer serving_default" in reason and "examples" in reason


def test_a_model_that_does_not_load_is_refused(tmp_path):
    path = tmp_path / "broken"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"not a protobuf")
    reason = check_model(str(path), _records(), "digits", timeout_s=60)
    assert "did not start" in reason
    assert not os.path.exists(str(path / "ports"))
