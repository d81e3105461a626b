"""The Compressor's executor on artifacts written by the upstream executors (no pipeline): stages on and off,
sparsity, report."""
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tfx.types import standard_artifacts

from components.compressor.executor import Executor
from components.compressor.report import CompressionReport, CompressionReportArtifact
from components.gates import compression_checks
from models import compression
from tests.conftest import TARGET_SPARSITY, tfx_artifact

pytestmark = pytest.mark.xdist_group("component_inputs")


def run_compressor(uris, out, **params):
    """Runs the Compressor executor on a Trainer model, its examples and transform graph; returns its report."""
    inputs = {
        "model": [tfx_artifact(standard_artifacts.Model, uris["model"])],
        "examples": [tfx_artifact(standard_artifacts.Examples, uris["examples"], splits=("train", "eval"))],
        "transform_graph": [tfx_artifact(standard_artifacts.TransformGraph, uris["transform_graph"])],
    }
    outputs = {"compressed_model": [tfx_artifact(standard_artifacts.Model, str(out / "model"))],
               "report": [tfx_artifact(CompressionReportArtifact, str(out / "report"))],
               "model_run": [tfx_artifact(standard_artifacts.ModelRun, str(out / "run"))]}
    props = dict(prune=1, target_sparsity=TARGET_SPARSITY, prune_epochs=1, qat=1, qat_epochs=1, batch_size=32,
                 learning_rate=1e-3, seed=0, image_shape="[8, 8, 1]")
    props.update(params)
    Executor().Do(inputs, outputs, props)
    return CompressionReport.load(str(out / "report"))


@pytest.mark.parametrize("prune, qat", [(True, False), (False, True)])
def test_switching_stages_off_changes_the_artifacts(component_inputs, tmp_path, prune, qat):
    report = run_compressor(component_inputs, tmp_path, prune=int(prune), qat=int(qat))
    serving_dir = str(tmp_path / "model" / "Format-Serving")
    with open(os.path.join(serving_dir, "saved_model.pb"), "rb") as f:
        assert (b"FakeQuantWithMinMaxVars" in f.read()) == qat
    sparsities = [np.mean(v == 0) for _, v in compression.savedmodel_kernels(serving_dir)]
    if prune:
        assert min(sparsities) >= TARGET_SPARSITY - 0.01
    else:
        assert max(sparsities) < 0.05  # dense
    assert ("pruned" in report.stages) == prune and ("pqat" in report.stages) == qat
    assert os.path.isfile(os.path.join(serving_dir, "assets.extra", "model_int8.tflite"))
    # Warm-up requests from eval examples, as TFX InfraValidator's make_warmup writes them.
    warmup = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(
        os.path.join(serving_dir, "assets.extra", "tf_serving_warmup_requests")).as_numpy_iterator()]
    assert 0 < len(warmup) <= 1000
    assert {w.WhichOneof("log_type") for w in warmup} == {"predict_log", "classify_log"}
    assert {w.predict_log.request.model_spec.signature_name for w in warmup if w.HasField("predict_log")} == \
        {"serving_default", "predict_pixels", "predict_images"}
    assert os.path.isdir(tmp_path / "run" / ("pruned" if prune else "pqat") / "train")  # TensorBoard logs


def test_pruning_that_stops_short_of_the_target_is_refused(component_inputs, tmp_path, monkeypatch):
    """A schedule that ends after the run does (the old fixed 0.7-of-steps, every-10-steps schedule on a
    short run) leaves the model under its target; the gate names both sparsities."""
    import tensorflow_model_optimization as tfmot

    monkeypatch.setattr(compression, "pruning_schedule", lambda steps, target: tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=10 * steps, frequency=10))
    report = run_compressor(component_inputs, tmp_path, qat=0)
    measured = report.stages["pruned"].sparsity
    assert measured < TARGET_SPARSITY - 0.1
    verdict = "; ".join(c.detail for c in compression_checks(report, 1.0, TARGET_SPARSITY) if not c.passed)
    assert f"measured weight sparsity is {measured:.3f}, under the target sparsity {TARGET_SPARSITY:.3f}" in verdict


def test_fitted_schedule_reaches_the_target_on_any_step_count():
    for steps in (1, 2, 3, 7, 46, 101, 999, 12345):
        schedule = compression.pruning_schedule(steps, 0.8)
        final = [schedule(tf.constant(step, tf.int64)) for step in range(steps)]
        reached = [float(sparsity) for should_prune, sparsity in final if bool(should_prune)]
        assert reached and abs(reached[-1] - 0.8) < 1e-6, (steps, reached[-3:])
