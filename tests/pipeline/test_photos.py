"""The pipeline on a user's folder of colour JPEG photos of mixed sizes (generated, 32-48 px), through the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.photos import write_photo_folder
from pipeline import lineage

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("photo_run")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


NAME = "my_photos_.v2"  # the pipeline and model name made from the folder's


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("photos")
    # A dot and glob characters in the folder's path and in a class name (they lost the run summary's tables
    # and found no images, once)
    folder = write_photo_folder(str(work / "my[photos].v2"), 200, classes=5, sizes=(32, 48), seed=3)
    os.rename(os.path.join(folder, "circle"), os.path.join(folder, "circle[1]"))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--data", folder, "--image-shape", "32,32,3", "--output",
         str(work / "out"), "--epochs", "3", "--prune-epochs", "1", "--qat-epochs", "1", "--min-accuracy", "0",
         "--min-class-accuracy", "0", "--max-accuracy-drop", "1", "--max-regression", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder, work / "out", proc.stdout


def test_a_colour_folder_gets_the_bn_pooling_net_with_augmentation_and_its_own_name(photo_run):
    folder, out, stdout = photo_run
    assert "network convnet; augmentation on" in stdout
    assert "compression (eval split):" in stdout and "accuracy on the eval split" in stdout, stdout[-3000:]
    assert "class 'circle[1]'" in stdout
    assert os.listdir(out / "serving" / NAME)  # the model is named after the data folder
    result = lineage.latest_run(str(out / "metadata.sqlite"), NAME)
    assert result.pushed and result.training["network"] == "convnet" and result.training["augment"] is True


def test_photos_stay_encoded_in_examplegen_and_transform(photo_run):
    folder, out, _ = photo_run
    root = out / "pipeline_root"
    written = _bytes(str(root / "FileBasedExampleGen")) + _bytes(str(root / "Transform"))
    assert written <= 2 * _bytes(folder), (written, _bytes(folder))


def test_no_randomness_in_any_served_signature(photo_run):
    folder, out, _ = photo_run
    result = lineage.latest_run(str(out / "metadata.sqlite"), NAME)
    model = tf.saved_model.load(result.pushed_dir)
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names)[:6]
    images = tf.constant([open(f, "rb").read() for f in files])
    first, second = (model.signatures["predict_images"](images=images)["probabilities"].numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)
    graph = open(os.path.join(result.pushed_dir, "saved_model.pb"), "rb").read()
    for op in (b"StatelessRandom", b"RandomUniform", b"ImageProjectiveTransform", b"RandomStandardNormal"):
        assert op not in graph, op
    # what the Trainer recorded about its choices reaches TensorBoard and the report
    with open(os.path.join(result.uri("Trainer", "model_run"), "training.json")) as f:
        assert json.load(f)["hparams"]["augment"] is True


def test_report_shows_training_images_the_confusion_matrix_and_the_worst_eval_images(photo_run):
    from pipeline import report

    folder, out, _ = photo_run
    page = open(report.build(str(out), NAME)).read()
    for element in ("training-images", "confusion-matrix", "worst-images"):
        assert f'id="{element}"' in page, element
    result = lineage.latest_run(str(out / "metadata.sqlite"), NAME)
    classes, counts = report._confusion(result.uri("Evaluator", "evaluation"))
    eval_examples = sum(1 for f in tf.io.gfile.glob(os.path.join(result.uri("FileBasedExampleGen", "examples"),
                                                                 "Split-eval", "*"))
                        for _ in tf.data.TFRecordDataset(f, compression_type="GZIP"))
    assert set(classes) <= set(range(5)) and sum(counts.values()) == eval_examples
    assert "network convnet" in page and "augmentation on" in page


def test_a_pushed_version_is_the_base_model_for_other_classes(photo_run, tmp_path):
    """Pretrain once, fine-tune many times: the pushed folder itself is a --base-model for another data set."""
    _, out, _ = photo_run
    result = lineage.latest_run(str(out / "metadata.sqlite"), NAME)
    other = write_photo_folder(str(tmp_path / "other_shapes"), 60, classes=8, sizes=(32, 40), seed=9)
    for name in ("circle", "square", "triangle", "star", "cross"):  # keep ring, bar, diamond: 3 other classes
        for f in os.listdir(os.path.join(other, name)):
            os.remove(os.path.join(other, name, f))
        os.rmdir(os.path.join(other, name))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--data", other, "--image-shape", "32,32,3", "--output",
         str(tmp_path / "out"), "--base-model", result.pushed_dir, "--head-epochs", "2", "--fine-tune-epochs", "1",
         "--no-prune", "--no-qat", "--min-accuracy", "0", "--min-class-accuracy", "0", "--max-regression", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tuned = lineage.latest_run(str(tmp_path / "out" / "metadata.sqlite"), "other_shapes")
    assert "5 outputs and this data 3 classes" in tuned.training["head_replaced"]
    assert [e["phase"] for e in tuned.training["epochs"]] == ["new head, base frozen"] * 2 + ["fine-tune all layers"]
