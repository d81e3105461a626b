"""Fine-tuning a user's model onto new classes, and hyperparameter tuning, through the real pipeline."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components.ingest import formats
from pipeline import local_runner
from pipeline.config import PipelineConfig

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("base_model_on_0_to_4")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digits_of(classes, per_class=None, skip=0):
    """The bundled digits of `classes` as uint8 [N, 8, 8, 1] and labels; `per_class` after `skip` of each."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)[..., None]
    picks = [i for c in classes for i in np.flatnonzero(digits.target == c)[skip:][:per_class]]
    return images[picks], digits.target[picks]


def write_span(folder, images, labels):
    span = os.path.join(folder, "span-1")
    os.makedirs(span)
    with tf.io.TFRecordWriter(os.path.join(span, "data.tfrecord")) as writer:
        for pixels, label in zip(images, labels):
            writer.write(formats.to_example(pixels, int(label)).SerializeToString())


@pytest.fixture(scope="module")
def base_model_on_0_to_4(tmp_path_factory):
    """A user's model: the pipeline's CNN trained (plain Keras) on classes 0-4 of the digits."""
    import tf_keras as keras

    from models import networks

    images, labels = digits_of(range(5))
    hp = {"conv_filters": [32, 64], "dense_units": 256, "dropout": 0.3}
    keras.utils.set_random_seed(0)
    model = networks.compile_model(networks.small_cnn((8, 8, 1), 5, hp), 1e-3)
    model.fit(images / 255.0, labels, epochs=15, batch_size=32, verbose=0)
    path = str(tmp_path_factory.mktemp("base") / "digits_0_4.keras")
    model.save(path)
    return path


def few_shot_run(output, data, base_model=None):
    config = PipelineConfig(output_dir=str(output), base_model=base_model)
    config.data.path, config.data.image_shape = str(data), (8, 8, 1)
    config.data.num_classes = 10  # labels 5..9 only: the class set must be stated
    config.eval_fraction_buckets = (2, 1)  # 15 examples: a 4:1 hash split leaves the eval split empty
    config.compression.prune = config.compression.qat = False
    config.thresholds.min_accuracy = 0.0
    return local_runner.run(config)


def test_base_model_onto_new_classes_gets_a_new_head_and_beats_training_from_scratch(base_model_on_0_to_4,
                                                                                     tmp_path):
    images, labels = digits_of(range(5, 10), per_class=3)
    write_span(str(tmp_path / "few"), images, labels)
    held_out, held_out_labels = digits_of(range(5, 10), skip=3)
    accuracies = {}
    for name, base in (("transfer", base_model_on_0_to_4), ("scratch", None)):
        result = few_shot_run(tmp_path / name, tmp_path / "few", base)
        trainer_model = result.uri("Trainer", "model")
        served = tf.saved_model.load(os.path.join(trainer_model, "Format-Serving")).signatures["predict_pixels"]
        predictions = served(pixels=tf.constant(held_out, tf.float32))["classes"].numpy()
        accuracies[name] = float(np.mean(predictions == held_out_labels))
        if base:
            import tf_keras as keras

            assert keras.models.load_model(os.path.join(trainer_model, "Format-Keras", "model.keras"),
                                           compile=False).output_shape == (None, 10)  # labels 5..9: 10 classes
            phases = [e["phase"] for e in result.training["epochs"]]
            assert phases[0] == "new head, base frozen" and phases[-1] == "fine-tune all layers"
            assert "5 outputs and this data 10 classes" in result.training["head_replaced"]
            assert base in result.training["start"]
    assert accuracies["transfer"] > accuracies["scratch"], accuracies


def test_base_model_that_cannot_read_the_data_is_exit_2_with_what_it_expects(base_model_on_0_to_4, tmp_path):
    images = np.zeros((20, 28, 28), np.uint8)
    folder = tmp_path / "mnistlike"
    folder.mkdir()
    for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", np.arange(20) % 2)):
        with open(folder / name, "wb") as f:
            header = np.array([0, 0, 8, array.ndim], np.uint8).tobytes() + np.array(array.shape, ">u4").tobytes()
            f.write(header + array.astype(np.uint8).tobytes())
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--data", str(folder), "--output",
                           str(tmp_path / "out"), "--base-model", base_model_on_0_to_4],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "expects inputs of shape (8, 8, 1)" in proc.stderr and "28x28x1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "serving").exists()


def test_two_trial_search_feeds_its_best_hyperparameters_to_the_trainer(tmp_path):
    config = PipelineConfig(output_dir=str(tmp_path))
    config.tuning.enabled, config.tuning.trials, config.tuning.trial_epochs = True, 2, 2
    config.hparams.epochs = 3
    config.compression.prune = config.compression.qat = False
    result = local_runner.run(config)
    states = {c.name: c.state for c in result.components}
    assert states["Tuner"] == states["Trainer"] == "COMPLETE", states
    with open(os.path.join(result.uri("Tuner", "best_hyperparameters"), "best_hyperparameters.txt")) as f:
        best = json.load(f)["values"]
    used = result.training["hparams"]
    assert result.training["tuned"]
    assert used["conv_filters"] == [best["conv_filters"], 2 * best["conv_filters"]]
    for name in ("dense_units", "dropout", "learning_rate"):
        assert used[name] == pytest.approx(best[name]), name
    with open(os.path.join(result.uri("Tuner", "tuner_results"), "tuner_results.json")) as f:
        assert len(json.load(f)) == 2
    # Each trial's TensorBoard logs carry the HParams plugin's data.
    events = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(tmp_path, "pipeline_root", "Tuner", "hparams"))
              for f in files if f.startswith("events.out")]
    assert sum(b"hparams" in open(e, "rb").read() for e in events) >= 2
