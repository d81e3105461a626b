"""The real pipeline on the bundled digits, end to end (LocalDagRunner, SQLite MLMD, real components).

One session-wide run (tests/conftest.py) is shared; later tests rerun it (cache), refuse a push
(compression budget), change a compression setting, rerun with the same seed and add a second span.
Epochs are trimmed to keep `make test` short.
"""
import glob
import io
import json
import os
import re
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.ingest import formats
from models import compression
from pipeline import local_runner
from tests.conftest import TARGET_SPARSITY, e2e_config

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("first_run")]
make_config = e2e_config


def eval_examples(output):
    files = glob.glob(os.path.join(output, "pipeline_root", "FileBasedExampleGen", "examples", "*",
                                   "Split-eval", "*"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = np.array([tf.train.Example.FromString(r).features.feature["label"].int64_list.value[0]
                       for r in records])
    pixels = np.array([np.asarray(Image.open(io.BytesIO(tf.train.Example.FromString(r).features.feature[
        "image"].bytes_list.value[0]))) for r in records], dtype=np.float32).reshape(-1, 8, 8, 1)
    return records, pixels, labels


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_blessed_model_is_pushed_in_tf_serving_layout_and_answers_both_signatures(first_run):
    output, result = first_run
    assert result.pushed, result.refusal
    versions = os.listdir(os.path.join(output, "serving", "digits"))
    assert len(versions) == 1 and versions[0].isdigit()
    version_dir = os.path.join(output, "serving", "digits", versions[0])
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.realpath(result.pushed_dir) == os.path.realpath(version_dir)

    model = tf.saved_model.load(version_dir)
    records, pixels, labels = eval_examples(output)
    assert len(labels) > 200
    by_example = model.signatures["serving_default"](examples=tf.constant(records))
    by_pixels = model.signatures["predict_pixels"](pixels=tf.constant(pixels))
    np.testing.assert_array_equal(by_example["classes"].numpy(), by_pixels["classes"].numpy())
    assert by_example["probabilities"].shape == (len(labels), 10)
    accuracy = np.mean(by_example["classes"].numpy() == labels)
    assert accuracy >= 0.9, accuracy
    # The same image as raw pixels, as PNG and as JPEG (its pixels from TensorFlow's JPEG decoder, as a client
    # would decode it) gets the same answer from every signature.
    pngs = [tf.io.encode_png(p.astype(np.uint8)).numpy() for p in pixels[:16]]
    by_image = model.signatures["predict_images"](images=tf.constant(pngs))
    np.testing.assert_array_equal(by_image["probabilities"].numpy(), by_pixels["probabilities"].numpy()[:16])
    jpegs = []
    for p in pixels[:16]:
        buffer = io.BytesIO()
        Image.fromarray(p[..., 0].astype(np.uint8)).save(buffer, "JPEG", quality=95)
        jpegs.append(buffer.getvalue())
    jpeg_pixels = np.stack([tf.io.decode_jpeg(j).numpy().astype(np.float32) for j in jpegs])
    by_jpeg = model.signatures["predict_images"](images=tf.constant(jpegs))["probabilities"].numpy()
    np.testing.assert_allclose(by_jpeg, model.signatures["predict_pixels"](
        pixels=tf.constant(jpeg_pixels))["probabilities"].numpy(), atol=1e-6)


def test_serving_model_is_pruned_and_quantization_aware(first_run):
    output, result = first_run
    version_dir = result.pushed_dir
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        assert b"FakeQuantWithMinMaxVars" in f.read()
    kernels = compression.savedmodel_kernels(version_dir)
    assert len(kernels) == 4  # 2 conv + 2 dense
    for name, value in kernels:
        assert np.mean(value == 0) >= TARGET_SPARSITY - 0.01, name
    report = result.compression_report
    assert list(report.stages) == ["baseline", "pruned", "pqat", "tflite_int8"]
    assert report.stages["pqat"].sparsity >= TARGET_SPARSITY - 0.005
    assert report.stages["pqat"].gzip_bytes < report.stages["baseline"].gzip_bytes / 4
    with open(os.path.join(output, "report", "compression.json")) as f:
        assert json.load(f)["stages"]["pqat"]["gzip_bytes"] == report.stages["pqat"].gzip_bytes
    assert os.path.getsize(os.path.join(output, "report", "compression.png")) > 1000


def test_int8_tflite_runs_with_int8_weights_within_budget(first_run):
    output, result = first_run
    path = os.path.join(result.pushed_dir, "assets.extra", "model_int8.tflite")
    with open(path, "rb") as f:
        tflite = f.read()
    interpreter = tf.lite.Interpreter(model_content=tflite)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    kernels = compression.tflite_kernels(tflite)
    assert len(kernels) == 4 and all(v.dtype == np.int8 for _, v in kernels)
    assert all(np.mean(v == 0) >= TARGET_SPARSITY - 0.01 for _, v in kernels)  # sparse storage keeps the zeros
    assert len(tflite) < result.compression_report.baseline_float_tflite_bytes / 4
    _, pixels, labels = eval_examples(output)
    accuracy = np.mean(compression.tflite_run(tflite, pixels / 255.0) == labels)
    assert accuracy == pytest.approx(result.compression_report.stages["tflite_int8"].accuracy)
    baseline = result.compression_report.stages["baseline"].accuracy
    assert accuracy >= baseline - 0.01 - 1e-9, (accuracy, baseline)


def test_unchanged_rerun_hits_the_cache(first_run):
    output, _ = first_run
    result = local_runner.run(make_config(output))
    states = {c.name: c.state for c in result.components}
    for name in ("FileBasedExampleGen", "StatisticsGen", "Transform", "Trainer", "Compressor"):
        assert states[name] == "CACHED", states
    # The first rerun's Evaluator has a new input (the model just blessed is now the baseline);
    # a second unchanged rerun reuses everything.
    result = local_runner.run(make_config(output))
    states = {c.name: c.state for c in result.components if c.name != "latest_pushed_model_resolver"}
    assert set(states.values()) == {"CACHED"}, states


def test_impossible_budget_refuses_the_push_and_says_why(first_run):
    output, _ = first_run
    before = sorted(os.listdir(os.path.join(output, "serving", "digits")))
    result = local_runner.run(make_config(output, max_accuracy_drop=-1.0))
    assert not result.pushed
    assert "more than the budget of -100.00 points" in result.refusal
    states = {c.name: c.state for c in result.components}
    assert states["Trainer"] == states["Compressor"] == "CACHED", states
    assert sorted(os.listdir(os.path.join(output, "serving", "digits"))) == before


def test_changing_target_sparsity_reruns_the_compressor_not_the_trainer(first_run):
    output, first = first_run
    result = local_runner.run(make_config(output, target_sparsity=0.5))
    states = {c.name: c.state for c in result.components}
    assert states["Trainer"] == states["Transform"] == "CACHED", states
    for name in ("Compressor", "Evaluator", "QualityGate", "Canary", "Pusher"):
        assert states[name] == "COMPLETE", states
    assert result.compression_report.target_sparsity == 0.5
    assert abs(result.compression_report.stages["pqat"].sparsity - 0.5) < 0.01
    before, after = first.compression_report.stages["baseline"], result.compression_report.stages["baseline"]
    assert (after.accuracy, after.gzip_bytes) == (before.accuracy, before.gzip_bytes)  # the same baseline


def test_class_floor_applies_only_to_classes_with_enough_eval_examples(first_run):
    import re

    output, first = first_run
    config = make_config(output)
    config.thresholds.min_class_accuracy = 1.0  # every class with one error misses it
    config.thresholds.min_slice_examples = 10_000  # ... but no class has that many eval examples
    result = local_runner.run(config)
    assert result.pushed, result.refusal
    per_class = [c for c in result.verdict.checks if c.slice.startswith("class ")]
    assert len(per_class) == 10 and not any(c.judged for c in per_class)
    assert all(c.why_not_judged == "fewer than --min-slice-examples 10000 eval examples" for c in per_class)
    assert any(not c.passed for c in per_class)  # reported as missed, but not judged
    config.thresholds.min_slice_examples = 1
    result = local_runner.run(config)
    assert not result.pushed
    assert {c.slice for c in result.verdict.failed} == {c.slice for c in per_class if not c.passed}
    assert all(c.judged and c.bound == ">= 1" and c.examples > 0 for c in result.verdict.failed)
    failing = re.findall(r"class '(\d)': accuracy (0\.\d+), needs >= 1 \((\d+) eval examples\)", result.refusal)
    assert failing, result.refusal
    assert len(failing) == len(result.refusal.splitlines()), result.refusal  # one line per failing check
    assert {c.state for c in result.components if c.name in ("Trainer", "Compressor")} == {"CACHED"}


def test_report_for_a_pipeline_without_runs_is_an_error(first_run):
    import subprocess
    import sys

    output, _ = first_run
    proc = subprocess.run([sys.executable, "-m", "pipeline", "report", "--output", str(output), "--model-name", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no runs of pipeline 'nope'" in proc.stderr, proc.stderr


def test_same_seed_gives_the_same_metrics_for_every_stage(first_run, tmp_path):
    _, first = first_run
    again = local_runner.run(make_config(tmp_path))
    assert {c.state for c in again.components if c.name != "latest_pushed_model_resolver"} == {"COMPLETE"}
    for stage, metrics in first.compression_report.stages.items():
        assert again.compression_report.stages[stage].accuracy == metrics.accuracy, stage
        assert again.compression_report.stages[stage].sparsity == metrics.sparsity, stage


def test_second_span_warm_starts_and_is_compared_with_the_served_model(first_run):
    output, first = first_run
    formats.write_digits(os.path.join(output, "data", "digits"), span=2, seed=7)
    result = local_runner.run(make_config(output))
    states = {c.name: c.state for c in result.components}
    assert states["FileBasedExampleGen"] == states["Trainer"] == "COMPLETE", states
    # Warm start: the Trainer received the float model behind the latest pushed version as its base_model,
    # and reached at least the first model's accuracy in fewer epochs.
    assert result.artifacts[("base_model_importer", "result")].uri == first.uri("Trainer", "model")
    assert result.training["start"].startswith("warm-started from pushed version")
    assert {e["phase"] for e in result.training["epochs"]} == {"warm start"}
    assert result.training["epochs_run"] < first.training["epochs_run"], (result.training, first.training)
    # ...and, on the new span's eval split, the new candidate is within the gate's regression budget of the
    # model being served (the Evaluator's baseline on the same 366 examples; one example is 0.27 points, and
    # the served model had the Compressor's extra epochs: the warm-started one is not always above it).
    from components.gates import slice_metrics

    overall = slice_metrics(result.uri("Evaluator", "evaluation"))["overall"]
    assert overall["accuracy"] >= overall["served_accuracy"] - make_config(output).thresholds.max_regression
    # An unchanged rerun warm-starts from the same pinned model: the Trainer stays cached.
    again = local_runner.run(make_config(output))
    assert {c.name: c.state for c in again.components}["Trainer"] == "CACHED"
    blessing = glob.glob(os.path.join(output, "pipeline_root", "Evaluator", "evaluation", "*"))
    assert blessing
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = os.path.join(output, "metadata.sqlite")
    store = metadata_store.MetadataStore(connection)
    gate_blessings = sorted((a for a in store.get_artifacts_by_type("ModelBlessing")
                             if "/QualityGate/" in a.uri), key=lambda a: a.id)
    latest = gate_blessings[-1]
    served = [a for a in store.get_artifacts_by_type("ModelBlessing") if "/Pusher/" in a.uri
              and a.custom_properties["blessed"].int_value == 1 and a.id < latest.id]
    # The Evaluator compared the new compressed model with the model being served (the latest pushed one).
    assert latest.custom_properties["baseline_model_id"].int_value == \
        max(served, key=lambda a: a.id).custom_properties["current_model_id"].int_value
    compared = store.get_artifacts_by_id([latest.custom_properties["baseline_model_id"].int_value])[0]
    assert "/Compressor/compressed_model/" in compared.uri
    spans = [m.custom_properties["span"].int_value for m in
             store.get_artifacts_by_type("Examples") if "span" in m.custom_properties]
    assert max(spans) == 2


def test_pushed_model_is_served_over_rest_and_grpc(first_run, tmp_path):
    """The model server on the pipeline's serving folder, queried like TF Serving with the client."""
    import base64
    import urllib.error

    from serving.client import GrpcClient, RestClient, ServingClientError, classify_images
    from tests.serving.conftest import start_server

    output, result = first_run
    records, pixels, labels = eval_examples(output)
    expected = tf.saved_model.load(result.pushed_dir).signatures["predict_pixels"](
        pixels=tf.constant(pixels[:8]))["classes"].numpy()
    server = start_server(["--model_name=digits", f"--model_base_path={os.path.join(output, 'serving', 'digits')}"],
                          tmp_path)
    try:
        rest = RestClient(server.rest, "digits")
        assert rest.status()["model_version_status"][0]["state"] == "AVAILABLE"
        signatures = rest.metadata()["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "predict_pixels", "predict_images"} <= set(signatures)
        # Row format with plain JSON numbers, as a curl user would send.
        import json
        import urllib.request

        body = json.dumps({"signature_name": "predict_pixels", "instances": pixels[:8].tolist()}).encode()
        with urllib.request.urlopen(urllib.request.Request(server.rest + "/v1/models/digits:predict", body),
                                    timeout=30) as r:
            predictions = json.loads(r.read())["predictions"]
        assert [p["classes"] for p in predictions] == expected.tolist()
        assert len(predictions[0]["probabilities"]) == 10
        grpc_client = GrpcClient(server.grpc, "digits")
        by_examples = grpc_client.predict({"examples": np.asarray(records[:8], dtype=object)})
        np.testing.assert_array_equal(by_examples["classes"], expected)
        pngs = [tf.io.encode_png(p.astype(np.uint8)).numpy() for p in pixels[:8]]
        names = [str(c) for c in expected]  # integer labels without names are named by their digits
        assert [(n, c) for n, c, _ in classify_images(rest, pngs)] == list(zip(names, expected.tolist()))
        assert [(n, c) for n, c, _ in classify_images(grpc_client, pngs)] == list(zip(names, expected.tolist()))
        # TF Serving's Classify API: a classify-kind signature answers class names with their scores.
        assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
        body = json.dumps({"signature_name": "classify", "examples": [
            {"image": {"b64": base64.b64encode(png).decode()}} for png in pngs[:4]]}).encode()
        with urllib.request.urlopen(urllib.request.Request(server.rest + "/v1/models/digits:classify", body),
                                    timeout=30) as r:
            results = json.loads(r.read())["results"]
        assert [[name for name, _ in row] for row in results] == [[str(d) for d in range(10)]] * 4
        assert [max(row, key=lambda pair: pair[1])[0] for row in results] == names[:4]
        # The client CLI prints one line per image, with its class name, for files and folders.
        import contextlib

        from serving import client

        (tmp_path / "folder" / "sub").mkdir(parents=True)
        for i, png in enumerate(pngs[:3]):
            (tmp_path / "folder" / ("sub" if i == 2 else "") / f"digit{i}.png").write_bytes(png)
        (tmp_path / "folder" / "notes.txt").write_text("not an image")
        (tmp_path / "folder" / "sub" / "broken.png").write_bytes(pngs[0][:20])  # a truncated file
        printed, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):  # --model: the one served
            assert client.main(["predict", str(tmp_path / "folder"), "--image", str(tmp_path / "folder" / "digit0.png"),
                                "--server", server.rest.split("//")[-1]]) == 1
        lines = printed.getvalue().splitlines()
        assert len(lines) == 5, (lines, errors.getvalue())
        assert lines[0].startswith(str(tmp_path / "folder" / "digit0.png") + f': "{names[0]}" p=')
        assert lines[2].startswith(str(tmp_path / "folder" / "sub" / "broken.png") + ": refused (400: "), lines[2]
        assert [line.split('"')[1] for line in lines[:2] + lines[3:]] == [names[0], names[1], names[2], names[0]]
        assert "1 of 5 images refused" in errors.getvalue()
        # The pushed version carries TF Serving warm-up requests; the server replayed them before serving.
        assert os.path.isfile(os.path.join(result.pushed_dir, "assets.extra", "tf_serving_warmup_requests"))
        assert re.search(r"Warmed up digits version \d+ with 64 requests", open(server.log_path).read())
        # TFX InfraValidator's own client, with requests from its own request builder.
        from tfx.components.infra_validator import request_builder
        from tfx.components.infra_validator.model_server_clients.tensorflow_serving_client import \
            TensorFlowServingClient
        from tfx.proto import infra_validator_pb2
        from tfx.types import standard_artifacts

        from tests.conftest import tfx_artifact

        root = os.path.join(output, "pipeline_root")
        model = tfx_artifact(standard_artifacts.Model,
                             sorted(glob.glob(os.path.join(root, "Compressor", "compressed_model", "*")))[0])
        examples = tfx_artifact(standard_artifacts.Examples, sorted(glob.glob(os.path.join(
            root, "FileBasedExampleGen", "examples", "*")))[0], splits=["train", "eval"])
        requests = request_builder.build_requests("digits", model, examples, infra_validator_pb2.RequestSpec(
            tensorflow_serving=infra_validator_pb2.TensorFlowServingRequestSpec(
                signature_names=["serving_default", "classify"]), split_name="eval", num_examples=5))
        assert len(requests) == 10
        tfx_client = TensorFlowServingClient(server.grpc, "digits")
        tfx_client.WaitUntilModelLoaded(deadline=time.time() + 30, polling_interval_sec=1)
        tfx_client.SendRequests(requests)  # raises on any failed request
        # A decompression bomb (a 249 KB PNG declaring 16,000 x 16,000 pixels) is refused from its header,
        # as an image and inside a tf.Example, over REST and gRPC, and costs the server no memory.
        bomb = io.BytesIO()
        Image.new("L", (16000, 16000)).save(bomb, "PNG")
        bomb = bomb.getvalue()
        limit = r"image of 256000000 pixels is over the limit of 40000000 pixels per image \(max_image_pixels\)"
        bomb_example = formats.to_example(bomb, 0).SerializeToString()
        rss_before = None
        for _ in range(11):  # the first round pays the refusal paths' one-time costs, not the bombs'
            with pytest.raises(ServingClientError, match=r"INVALID_ARGUMENT.*" + limit):
                grpc_client.predict({"images": np.asarray([bomb] * 2, dtype=object)}, signature="predict_images")
            with pytest.raises(ServingClientError, match=r"INVALID_ARGUMENT.*" + limit):
                grpc_client.predict({"examples": np.asarray([bomb_example], dtype=object)})
            body = json.dumps({"signature_name": "predict_images", "instances": [
                {"b64": base64.b64encode(bomb).decode()}] * 2}).encode()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(server.rest + "/v1/models/digits:predict", body),
                                       timeout=30)
            assert refused.value.code == 400 and re.search(limit, json.loads(refused.value.read())["error"])
            rss_before = rss_before or _rss_mb(server.proc.pid)
        assert _rss_mb(server.proc.pid) - rss_before < 20, (rss_before, _rss_mb(server.proc.pid))  # one bomb: 256 MB
        assert len(grpc_client.predict({"images": np.asarray(pngs[:2], dtype=object)}, signature="predict_images")[
            "classes"]) == 2  # still serving
    finally:
        server.stop()


def test_html_report_renders_in_headless_chromium(first_run, tmp_path):
    import re

    from pipeline import report
    from tests.conftest import chromium

    output, _ = first_run
    page = report.build(str(output), "digits")
    dom = chromium(page, tmp_path / "profile")
    for plot in ("compression-plot", "curves-plot", "label-plot"):  # the matrix: test_photos, test_report
        match = re.search(rf'<img id="{plot}"[^>]*data-natural-width="(\d+)"', dom)
        assert match and int(match.group(1)) > 0, plot
    per_class = re.search(r'<table class="per-class">.*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
    assert per_class.count("<tr") == 10 and "class '3'" in per_class
    assert "10 classes (inferred from the integer labels 0..9" in dom  # the data facts, as the run printed them
    screenshot = tmp_path / "report.png"
    chromium(page, tmp_path / "profile", screenshot=screenshot)
    assert screenshot.stat().st_size > 10000


def test_tensorboard_lists_every_trainer_run_and_stops(first_run):
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    output, _ = first_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "tensorboard", "--output", str(output),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        runs, deadline = [], time.time() + 90
        while time.time() < deadline and not any("pqat" in r for r in runs):  # the Compressor's logs
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
            except OSError:
                pass
            time.sleep(1)
        assert any(r.startswith("trainer") and r.endswith("baseline/train") for r in runs), runs
        assert any("pqat" in r for r in runs), runs
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) is not None
