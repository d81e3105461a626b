"""A model file cannot run code: every format Keras reads is loaded in safe mode (without it, each of these
formats ran the Lambda's code while loading)."""
import os
import subprocess
import sys

import pytest
import tf_keras as keras

from models import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def evil_model(marker: str) -> keras.Model:
    """A small model whose Lambda layer creates `marker` whenever it is called (as a loader rebuilding it does)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: (open(marker, "a").close(), t)[1])(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("fmt", ["h5", "h5 renamed .keras", "legacy SavedModel", "keras"])
def test_a_lambda_layer_in_a_model_file_is_refused_before_it_runs(tmp_path, fmt):
    marker = str(tmp_path / "ran")
    model = evil_model(marker)
    path = str(tmp_path / {"h5": "evil.h5", "h5 renamed .keras": "float_model.keras",
                           "legacy SavedModel": "evil_savedmodel", "keras": "evil.keras"}[fmt])
    if fmt == "keras":
        model.save(path)
    else:
        model.save(path, save_format="h5" if fmt.startswith("h5") else "tf")
    os.remove(marker)  # building the model above called the lambda
    if fmt == "legacy SavedModel":  # Keras revives the refused layer from its traced TensorFlow graph: no Python
        transfer.load(path)(keras.Input((8, 8, 1)))
    else:
        with pytest.raises(transfer.IncompatibleBaseModel, match="Lambda layer with Python code"):
            transfer.load(path)
    assert not os.path.exists(marker), "the model file's code ran"


def test_the_cli_refuses_such_a_base_model_with_exit_2_and_runs_nothing(tmp_path):
    marker = str(tmp_path / "ran")
    path = str(tmp_path / "evil.h5")
    evil_model(marker).save(path, save_format="h5")
    os.remove(marker)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--output", str(tmp_path / "out"),
                           "--base-model", path], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Lambda layer with Python code" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(marker)


def test_the_opt_in_loads_it_and_its_code_runs(tmp_path):
    marker = str(tmp_path / "ran")
    path = str(tmp_path / "trusted.h5")
    evil_model(marker).save(path, save_format="h5")
    os.remove(marker)
    model = transfer.load(path, trust_code=True)  # --trust-base-model-code
    assert isinstance(model.layers[1], keras.layers.Lambda) and os.path.exists(marker)
