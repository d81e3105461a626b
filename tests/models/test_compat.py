"""The private TensorFlow behaviour models/compat.py relies on: these fail when a TensorFlow upgrade changes it."""
import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.impl import conversion

from models import compat


def test_tf_keras_tfmot_and_tf_transform_are_left_alone_by_autograph_inside_only():
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude
    from tensorflow_transform.output_wrapper import TransformFeaturesLayer

    before = autograph_config.CONVERSION_RULES
    for function in (keras.layers.Dense.call, PruneLowMagnitude.call, TransformFeaturesLayer.call):
        assert not conversion.is_allowlisted(function)
    with compat.libraries_not_converted():
        for function in (keras.layers.Dense.call, PruneLowMagnitude.call, TransformFeaturesLayer.call):
            assert conversion.is_allowlisted(function)
    assert autograph_config.CONVERSION_RULES is before  # nothing left changed
    assert not conversion.is_allowlisted(keras.layers.Dense.call)


def test_tflite_ops_lists_each_op_with_its_input_tensors():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    interpreter = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interpreter.allocate_tensors()
    ops = compat.tflite_ops(interpreter)
    fully_connected = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"]
    assert len(fully_connected) == 1
    weights = interpreter.get_tensor(int(fully_connected[0]["inputs"][1]))
    np.testing.assert_allclose(np.sort(weights.ravel()), np.sort(model.layers[-1].kernel.numpy().T.ravel()), rtol=1e-6)


def test_tfx_still_logs_component_progress_as_the_cli_reads_it():
    import inspect
    import logging

    from tfx.orchestration.local import local_dag_runner
    from tfx.orchestration.portable import launcher

    runner = inspect.getsource(local_dag_runner)
    assert repr(compat.TFX_RUNNING) in runner and repr(compat.TFX_FINISHED) in runner
    assert repr(compat.TFX_CACHED) in inspect.getsource(launcher)
    progress = compat.TfxProgress()

    def record(msg, *args, level=logging.INFO):
        return logging.LogRecord("absl", level, __file__, 1, msg, args, None)

    running, other = record(compat.TFX_RUNNING, "Trainer"), record("Something else %s", "x")
    assert progress.filter(running) and running.getMessage() == "Trainer: running"
    finished = record(compat.TFX_FINISHED, "Trainer")
    assert progress.filter(finished) and finished.getMessage().startswith("Trainer: done in ")
    assert not progress.filter(other) and not progress.filter(record(compat.TFX_RUNNING, "X", level=logging.ERROR))
