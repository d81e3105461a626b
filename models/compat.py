"""The private TensorFlow and TFX behaviour this project relies on, in one place.

Checked against tensorflow 2.16.2, tf-keras 2.16.0 and tfx 1.16.0 (requirements.txt);
tests/models/test_compat.py fails when any of it changes. Nothing here runs at import.
"""
import contextlib
import logging
import time

# What TFX's LocalDagRunner and launcher log (format strings; the component id is the argument). TFX has no
# progress callback, so the CLI's progress lines come from these records.
TFX_RUNNING, TFX_FINISHED, TFX_CACHED = "Component %s is running.", "Component %s is finished.", \
    "A cached execution %d is used."


class TfxProgress(logging.Filter):
    """Keeps TFX's component start/finish records (as "X: running", "X: done in N s") and cache hits, drops
    every other record of the logger it filters."""

    def __init__(self):
        super().__init__()
        self.started = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:  # the CLI ends with the error itself; -v shows TFX's own report
            return False
        if record.msg == TFX_RUNNING and record.args:
            self.started[record.args[0]] = time.time()
            record.msg, record.args = f"{record.args[0]}: running", ()
            return True
        if record.msg == TFX_FINISHED and record.args:
            took = time.time() - self.started.get(record.args[0], time.time())
            record.msg, record.args = f"{record.args[0]}: done in {took:.1f} s", ()
            return True
        if record.msg == TFX_CACHED:
            record.msg, record.args = "  (cache hit: outputs of an earlier run reused)", ()
            return True
        return False


LIBRARIES_NOT_CONVERTED = ("tf_keras", "tensorflow_model_optimization", "tensorflow_transform")


@contextlib.contextmanager
def libraries_not_converted():
    """While inside, AutoGraph leaves `tf_keras`, TFMOT's Keras wrappers and TF Transform's layer alone as it
    leaves `keras`: without this it transpiles hundreds of tf_keras functions at every first fit (about 20 s a
    stage on 2 cores, measured), TFMOT's pruning and quantization wrappers each time a model is wrapped (1.4 s
    in a Compressor run on small_cnn), and TF Transform's TransformFeaturesLayer at the first export of a
    process (1.0 of an export's 1.5 s on small_cnn). All are graph-mode code with no Python control flow on
    tensors. AutoGraph has no public API for a package-wide rule; its CONVERSION_RULES tuple is restored on exit."""
    from tensorflow.python.autograph.core import config as autograph_config

    previous = autograph_config.CONVERSION_RULES
    autograph_config.CONVERSION_RULES = tuple(autograph_config.DoNotConvert(package)
                                              for package in LIBRARIES_NOT_CONVERTED) + previous
    try:
        yield
    finally:
        autograph_config.CONVERSION_RULES = previous


def tflite_ops(interpreter) -> list:
    """Every op of an allocated tf.lite.Interpreter: dicts with op_name and inputs (tensor indices). The public
    API lists tensors but not ops."""
    return interpreter._get_ops_details()
