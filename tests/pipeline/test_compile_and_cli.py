"""Kubeflow compile (offline) and the CLI's bad-usage paths."""
import json
import os
import subprocess
import sys

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPONENTS = {"FileBasedExampleGen", "StatisticsGen", "ConfigSchemaGen", "ExampleValidator", "DataGate", "Compressor",
              "Transform", "Trainer", "Evaluator", "QualityGate", "Pusher"}


def cli(*args, timeout=300):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


def test_kubeflow_compile_writes_a_valid_pipeline_spec(tmp_path):
    out = tmp_path / "spec" / "digits.json"
    proc = cli("compile", "--runner", "kubeflow", "--pipeline-root", "gs://bucket/root",
               "--image", "registry.example/digits-pipeline:1.0", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads(out.read_text())
    spec = json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(),
                                 ignore_unknown_fields=True)
    tasks = set(spec.root.dag.tasks)
    assert COMPONENTS <= tasks, COMPONENTS - tasks
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values() if "container" in e}
    assert images == {"registry.example/digits-pipeline:1.0"}
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    assert "models.trainer.run_fn" in json.dumps(job)  # a module path: no wheel to upload
    assert not list(tmp_path.glob("spec/*.tmp"))


def test_compile_remote_data_needs_its_shape(tmp_path):
    proc = cli("compile", "--pipeline-root", "gs://b/r", "--image", "img", "--output", str(tmp_path / "x.json"),
               "--data", "gs://bucket/data")
    assert proc.returncode == 2
    assert "--image-shape" in proc.stderr and "--num-classes" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--image-shape", "8,8"], "is not H,W,C"),
    (["run", "--target-sparsity", "1.5"], "'1.5' is not a number in [0, 1)"),
    (["run", "--min-accuracy", "2"], "'2' is not a number in [0, 1]"),
    (["run", "--epochs", "abc"], "'abc' is not an integer in [1, ∞)"),
    (["run", "--learning-rate", "0"], "'0' is not a number in (0, ∞)"),
    (["run", "--class-names", "a,a"], "is not two or more distinct"),
    (["run", "--bogus"], "usage: python -m pipeline run"),
    (["run", "--format", "csv"], "invalid choice"),
    (["compile", "--image", "x"], "required"),
    (["frobnicate"], "invalid choice"),
    (["report", "--run", "3"], "invalid choice"),
])
def test_bad_usage_exits_2_with_a_message(args, message):
    proc = cli(*args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "_positive" not in proc.stderr and "Traceback" not in proc.stderr


def test_help_shows_the_settings_defaults():
    from models.networks import BUDGETS
    from pipeline.config import Compression, HParams, Thresholds

    text = " ".join(cli("run", "--help", timeout=60).stdout.split())
    assert f"(default {HParams.batch_size})" in text and f"(default {Compression.target_sparsity})" in text
    assert f"default by network: small_cnn {BUDGETS['small_cnn'].epochs}, convnet {BUDGETS['convnet'].epochs}" in text
    assert f"(default {Thresholds.min_class_accuracy})" in text and "--min-slice-examples" in text


def test_report_without_runs_exits_2(tmp_path):
    proc = cli("report", "--output", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "no runs under" in proc.stderr


def test_an_output_folder_that_cannot_be_written_exits_2_before_anything_runs(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = cli("run", "--output", str(tmp_path / "a_file" / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: --output {tmp_path / 'a_file' / 'out'}: Not a directory; choose a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_folder_exits_2(tmp_path):
    proc = cli("run", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert "no such folder" in proc.stderr


def test_label_outside_the_classes_stops_the_run_before_anything_runs(tmp_path):
    import numpy as np

    from components.ingest.formats import to_example
    import tensorflow as tf

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(data / "part.tfrecord")) as writer:
        for i in range(60):
            label = 7 if i == 13 else i % 3  # one label outside the 3 known classes
            writer.write(to_example(rng.integers(0, 255, size=(8, 8, 1)), label).SerializeToString())
    out = tmp_path / "out"
    proc = cli("run", "--data", str(data), "--num-classes", "3", "--output", str(out), timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "label 7 (1 examples, first: " in proc.stderr and "part.tfrecord record 13) outside the 3 classes 0..2" \
        in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    assert not (out / "pipeline_root").exists() and not (out / "serving").exists()


def test_corrupt_image_found_inside_beam_exits_2_with_one_message(tmp_path):
    """A PNG whose header reads but whose body is cut passes the probe; ExampleGen finds it inside Beam."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    for cls in ("zero", "one"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "data" / cls / f"{i}.png").write_bytes(png(rng.integers(0, 255, (8, 8), dtype=np.uint8)))
    (tmp_path / "data" / "one" / "cut.png").write_bytes(png(rng.integers(0, 255, (8, 8), dtype=np.uint8))[:-30])
    out = tmp_path / "out"
    proc = cli("run", "--data", str(tmp_path / "data"), "--output", str(out), timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'data' / 'one' / 'cut.png'}: not a readable PNG/JPEG image (image file is truncated). "
        "Remove or replace the file."), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("cut.png") == 1, proc.stderr
    assert "2 classes (the folder names), 21 examples: one (11), zero (10)" in proc.stderr  # said before training
    assert not os.listdir(out / "pipeline_root" / "FileBasedExampleGen" / "examples")  # nothing half-written
    assert not (out / "serving").exists()


def test_a_token_is_never_sent_over_plain_http_to_another_machine(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    token = tmp_path / "token"
    token.write_text("secret\n")
    proc = cli("submit", "--spec", str(spec), "--host", "http://kfp.example.com", "--token-file", str(token),
               timeout=60)
    assert proc.returncode == 2 and "would cross the network unencrypted" in proc.stderr, proc.stderr[-2000:]
    assert "secret" not in proc.stderr
    proc = cli("submit", "--spec", str(spec), "--host", "https://kfp.example.com", "--token-file",
               str(tmp_path / "missing"), timeout=60)
    assert proc.returncode == 2 and "--token-file" in proc.stderr and "No such file" in proc.stderr
