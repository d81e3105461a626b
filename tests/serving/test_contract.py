"""REST and gRPC contract of the model server, against the classic half_plus_two model."""
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from tests.serving.conftest import start_server, wait_for_polls, write_half_plus_two

pytestmark = pytest.mark.xdist_group("serving_contract")


def http(server, method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.rest + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stubs(server):
    channel = grpc.insecure_channel(server.grpc)
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


# ----------------------------------------------------------------------------- REST
def test_rest_status(server):
    assert http(server, "GET", "/v1/models/half_plus_two") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert http(server, "GET", "/v1/models/half_plus_two/versions/1")[0] == 200


def test_rest_metadata_has_signature_defs_in_snake_case(server):
    code, body = http(server, "GET", "/v1/models/half_plus_two/metadata")
    assert code == 200
    assert body["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["method_name"] == "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar(server):
    assert http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]}) == \
        (200, {"predictions": [2.5, 3.0, 4.5]})
    assert http(server, "POST", "/v1/models/half_plus_two/versions/1:predict", {"inputs": [1, 2]}) == \
        (200, {"outputs": [2.5, 3.0]})


def test_rest_predict_several_inputs_and_b64(server):
    tag = base64.b64encode(b"\x00\xffraw").decode()
    code, body = http(server, "POST", "/v1/models/half_plus_two:predict", {
        "signature_name": "two_inputs", "instances": [{"pair": [1, 2], "tag": {"b64": tag}},
                                                      {"pair": [3, 4], "tag": {"b64": tag}}]})
    assert code == 200
    assert body == {"predictions": [{"sum": 3, "tag_bytes": {"b64": tag}}, {"sum": 7, "tag_bytes": {"b64": tag}}]}
    code, body = http(server, "POST", "/v1/models/half_plus_two:predict", {
        "signature_name": "two_inputs", "inputs": {"pair": [[1, 1]], "tag": ["t"]}})
    assert (code, body["outputs"]["sum"]) == (200, [2])


def test_rest_classify_and_regress(server):
    assert http(server, "POST", "/v1/models/half_plus_two:regress", {
        "signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 4.0}]}) == (200, {"results": [2.5, 4.0]})
    assert http(server, "POST", "/v1/models/half_plus_two:classify", {
        "signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == (200, {"results": [[["", 3.0]]]})


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/half_plus_two/versions/9:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(half_plus_two, 9)"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/half_plus_two/versions/9", None, 404, "Could not find version 9 of model half_plus_two"),
    ("POST", "/v1/models/half_plus_two/labels/canary:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: canary"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/foo", None, 400, "Malformed request"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0], "inputs": [1.0]}, 400, "Not both"),
    ("POST", "/v1/models/half_plus_two:predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs'"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": ["a"]}, 400,
     'JSON Value: "a" Type: String is not of expected type: float'),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [[1.0, 2.0]]}, 400, "shape"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [[1.0], 2.0]}, 400, "same shape"),
    ("POST", "/v1/models/half_plus_two:predict", {"signature_name": "two_inputs",
                                                  "inputs": {"pair": [[1.5, 2]], "tag": ["t"]}}, 400,
     "JSON Value: 1.5 Type: Double is not of expected type: int64"),
    ("POST", "/v1/models/half_plus_two:predict", {"signature_name": "nope", "instances": [1.0]}, 400,
     "Serving signature name: \"nope\" not found"),
    ("POST", "/v1/models/..%2F..%2Fetc:predict", {"instances": [1.0]}, 404, "Servable not found"),
    ("GET", "/v1/models/half_plus_two/versions/..%2F1", None, 400, "Malformed request"),
])
def test_rest_errors(server, method, path, body, status, message):
    code, payload = http(server, method, path, body)
    assert code == status, payload
    assert set(payload) == {"error"} and message in payload["error"], payload


def test_rest_bad_json_and_oversized_body(server):
    code, payload = http(server, "POST", "/v1/models/half_plus_two:predict", raw=b"{not json")
    assert code == 400 and payload["error"].startswith("JSON Parse error")
    code, payload = http(server, "POST", "/v1/models/half_plus_two:predict",
                         raw=json.dumps({"instances": [1.0] * 50000}).encode())
    assert code == 413 and "exceeds the limit" in payload["error"]
    assert http(server, "GET", "/v1/models/half_plus_two")[0] == 200


def test_metrics_endpoint_counts_requests(server):
    http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    with urllib.request.urlopen(server.rest + "/monitoring/prometheus/metrics", timeout=10) as r:
        text = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/plain")
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",api="predict",status="OK"}' in text
    assert "request_latency_bucket" in text
    assert ':tensorflow:core:servable_state{model_name="half_plus_two",version="1",state="AVAILABLE"} 1' in text


# ----------------------------------------------------------------------------- gRPC
def test_grpc_predict_fills_model_spec(server):
    predictions, _ = stubs(server)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 3.0], np.float32)))
    response = predictions.Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [2.5, 3.5])
    assert (response.model_spec.version.value, response.model_spec.signature_name) == (1, "serving_default")


def test_grpc_classify_regress_multi_inference(server):
    predictions, _ = stubs(server)
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[v]))})) for v in (2.0, 6.0)]
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
    regress.input.example_list.examples.extend(examples)
    assert [r.value for r in predictions.Regress(regress, timeout=30).result.regressions] == [3.0, 5.0]
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "half_plus_two", "classify_x_to_y"
    classify.input.example_list.examples.extend(examples)
    result = predictions.Classify(classify, timeout=30).result
    assert [c.classes[0].score for c in result.classifications] == [3.0, 5.0]
    multi = inference_pb2.MultiInferenceRequest()
    multi.input.example_list.examples.extend(examples)
    task = multi.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name, task.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
    response = predictions.MultiInference(multi, timeout=30)
    assert [r.value for r in response.results[0].regression_result.regressions] == [3.0, 5.0]


def test_grpc_metadata_and_status(server):
    predictions, models = stubs(server)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = predictions.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "regress_x_to_y", "classify_x_to_y"} <= set(signatures.signature_def)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    version = models.GetModelStatus(status, timeout=30).model_version_status[0]
    assert (version.version, version.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)


@pytest.mark.parametrize("make, code", [
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND),
    (lambda r: r.model_spec.version.__setattr__("value", 7), grpc.StatusCode.NOT_FOUND),
    (lambda r: setattr(r.model_spec, "version_label", "stable"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION),
    (lambda r: r.inputs["z"].CopyFrom(tf.make_tensor_proto([1.0])), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto([b"a"])), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_grpc_errors(server, make, code):
    predictions, _ = stubs(server)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    make(request)
    with pytest.raises(grpc.RpcError) as error:
        predictions.Predict(request, timeout=30)
    assert error.value.code() == code


def test_grpc_metadata_field_must_be_signature_def(server):
    predictions, _ = stubs(server)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["other"])
    request.model_spec.name = "half_plus_two"
    with pytest.raises(grpc.RpcError) as error:
        predictions.GetModelMetadata(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_garbage_on_the_grpc_and_rest_ports_leaves_the_server_answering(server):
    for address in (server.grpc, server.rest.replace("http://", "")):
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"\x00\xff garbage \r\n\r\n" * 100)
            s.settimeout(2)
            try:
                s.recv(100)
            except (socket.timeout, ConnectionError):
                pass
    assert http(server, "GET", "/v1/models/half_plus_two")[0] == 200
    test_grpc_predict_fills_model_spec(server)


# ----------------------------------------------------------------------------- versions
def test_hot_swap_loses_no_request_and_ignores_half_written_versions(tmp_path):
    base = tmp_path / "half_plus_two"
    write_half_plus_two(str(base / "1"))
    server = start_server(["--model_name=half_plus_two", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=0.3"], tmp_path)
    try:
        failures, answers, stop = [], [], threading.Event()

        def client():
            while not stop.is_set():
                code, body = http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [2.0]})
                (answers if code == 200 else failures).append(body)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        (base / "3").mkdir()  # half-written: no saved_model.pb yet
        (base / "3" / "variables").mkdir()
        write_half_plus_two(str(base / "2"), a=1.0, b=0.0)  # y = x
        pushed = time.time()
        while time.time() - pushed < 30 and {"predictions": [2.0]} not in answers[-5:]:
            time.sleep(0.1)
        swapped_after = time.time() - pushed
        wait_for_polls(server, polls=5)  # scans that saw the half-written version 3, answers after the swap
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert {"predictions": [3.0]} in answers and answers[-1] == {"predictions": [2.0]}
        assert swapped_after < 10, swapped_after
        code, status = http(server, "GET", "/v1/models/half_plus_two")
        states = {s["version"]: s["state"] for s in status["model_version_status"]}
        assert states == {"2": "AVAILABLE", "1": "END"}  # 3 is never loaded
    finally:
        assert server.stop() == 0  # SIGTERM drains and exits cleanly


def test_config_file_several_models_policies_and_labels(tmp_path):
    for version in (1, 2):
        write_half_plus_two(str(tmp_path / "a" / str(version)), a=float(version), b=0.0)
    write_half_plus_two(str(tmp_path / "b" / "7"))
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "a" base_path: "{tmp_path / 'a'}" model_platform: "tensorflow"
               model_version_policy {{ all {{}} }} version_labels {{ key: "stable" value: 1 }}
               version_labels {{ key: "canary" value: 2 }} }}
      config {{ name: "b" base_path: "{tmp_path / 'b'}" model_platform: "tensorflow" }}
    }}""")
    server = start_server([f"--model_config_file={config}", "--enable_batching"], tmp_path)
    try:
        assert http(server, "POST", "/v1/models/a/labels/stable:predict", {"instances": [3.0]})[1] == {"predictions": [3.0]}
        assert http(server, "POST", "/v1/models/a/labels/canary:predict", {"instances": [3.0]})[1] == {"predictions": [6.0]}
        assert http(server, "POST", "/v1/models/a:predict", {"instances": [3.0]})[1] == {"predictions": [6.0]}
        assert http(server, "POST", "/v1/models/b/versions/7:predict", {"instances": [2.0]})[1] == {"predictions": [3.0]}
        results = []
        threads = [threading.Thread(target=lambda v=v: results.append(
            http(server, "POST", "/v1/models/b:predict", {"instances": [float(v)]}))) for v in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r[1]["predictions"][0] for r in results) == [0.5 * v + 2 for v in range(16)]
    finally:
        server.stop()


# ----------------------------------------------------------------------------- batching parameters
def test_batching_parameters_parse_as_tf_serving_text_protos():
    from serving.core import BatchingParameters

    params = BatchingParameters.parse("""# as TF Serving's docs write them
        max_batch_size { value: 8 }  batch_timeout_micros { value: 0 }
        max_enqueued_batches { value: 3 } num_batch_threads { value: 2 }
        thread_pool_name { value: "model_server_batch_threads" }
        allowed_batch_sizes: 2 allowed_batch_sizes: 8 pad_variable_length_inputs: true""")
    assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches,
            params.num_batch_threads, params.allowed_batch_sizes) == (8, 0, 3, 2, (2, 8))
    assert BatchingParameters.parse("").max_batch_size == BatchingParameters().max_batch_size  # unset: defaults
    for text, message in [
            ("max_batch_sise { value: 8 }", 'has no field named "max_batch_sise"'),
            ("max_batch_size: 8", "max_batch_size"),  # a wrapper message, not a number
            ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8",
             "allowed_batch_sizes entries must be monotonically increasing"),
            ("max_batch_size { value: 8 } allowed_batch_sizes: 4",
             r"final entry in allowed_batch_sizes must equal max_batch_size \(4 != 8\)"),
            ("num_batch_threads { value: 0 }", "num_batch_threads must be positive")]:
        with pytest.raises(ValueError, match=message):
            BatchingParameters.parse(text, where="b.txt")


def test_batching_file_limits_pads_and_splits_batches_as_tf_serving(model_base, tmp_path):
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 4 } batch_timeout_micros { value: 20000 } "
                      "num_batch_threads { value: 1 } allowed_batch_sizes: 2 allowed_batch_sizes: 4")
    server = start_server(["--model_name=half_plus_two", f"--model_base_path={model_base / 'half_plus_two'}",
                           "--enable_batching", f"--batching_parameters_file={params}"], tmp_path)
    try:
        code, body = http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0] * 5})
        assert code == 400 and body["error"] == "Task size 5 is larger than maximum input batch size 4"
        prediction, _ = stubs(server)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        results = {}

        def call(v):
            r = predict_pb2.PredictRequest()
            r.CopyFrom(request)
            r.inputs["x"].CopyFrom(tf.make_tensor_proto([float(v)], dtype=tf.float32))
            results[v] = tf.make_ndarray(prediction.Predict(r, timeout=30).outputs["y"]).tolist()

        threads = [threading.Thread(target=call, args=(v,)) for v in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {v: [0.5 * v + 2] for v in range(12)}
        metrics = urllib.request.urlopen(server.rest + "/monitoring/prometheus/metrics").read().decode()
        sizes = {int(line.split('size="')[1].split('"')[0]) for line in metrics.splitlines()
                 if line.startswith(":tensorflow:serving:batch_size{")}
        assert sizes and sizes <= {2, 4} and 4 in sizes, metrics  # merged, and padded to an allowed size
    finally:
        server.stop()
    params.write_text("max_batch_size { value: 8 } enable_large_batch_splitting: true "
                      "max_execution_batch_size { value: 2 }")
    server = start_server(["--model_name=half_plus_two", f"--model_base_path={model_base / 'half_plus_two'}",
                           "--enable_batching", f"--batching_parameters_file={params}"], tmp_path)
    try:  # a request over the execution batch size runs in pieces and is answered whole
        assert http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [0.0, 2.0, 4.0, 6.0, 8.0]}) \
            == (200, {"predictions": [2.0, 3.0, 4.0, 5.0, 6.0]})
        metrics = urllib.request.urlopen(server.rest + "/monitoring/prometheus/metrics").read().decode()
        assert ':tensorflow:serving:batch_size{size="2"} 2' in metrics and 'size="1"} 1' in metrics, metrics
    finally:
        server.stop()
    params.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 3")
    bad = subprocess.run([sys.executable, "-m", "serving", "--model_name=half_plus_two",
                          f"--model_base_path={model_base / 'half_plus_two'}", "--enable_batching",
                          f"--batching_parameters_file={params}"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert bad.returncode == 2 and f"{params}: final entry in allowed_batch_sizes must equal max_batch_size" \
        in bad.stderr, bad.stderr[-2000:]
