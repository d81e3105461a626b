"""The private TensorFlow behaviour this project relies on, in one place.

Checked against tensorflow 2.16.2 and tf-keras 2.16.0 (requirements.txt); tests/models/test_compat.py
fails when any of it changes. Nothing here runs at import.
"""
import contextlib

from tensorflow.python.autograph.core import config as autograph_config


@contextlib.contextmanager
def tf_keras_not_converted():
    """While inside, AutoGraph leaves `tf_keras` alone as it leaves `keras`: without this it transpiles
    hundreds of tf_keras functions at every first fit (about 20 s a stage on 2 cores, measured). AutoGraph
    has no public API for a package-wide rule; its CONVERSION_RULES tuple is restored on exit."""
    previous = autograph_config.CONVERSION_RULES
    autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("tf_keras"),) + previous
    try:
        yield
    finally:
        autograph_config.CONVERSION_RULES = previous


def tflite_ops(interpreter) -> list:
    """Every op of an allocated tf.lite.Interpreter: dicts with op_name and inputs (tensor indices). The public
    API lists tensors but not ops."""
    return interpreter._get_ops_details()
