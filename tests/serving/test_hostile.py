"""Hostile requests on loopback: a request costs what it says, a reload cannot write files where it likes,
metrics cannot be forged, running out of file handles does not spin the server, health means something."""
import os
import resource
import socket
import time
import urllib.request

import grpc
import psutil
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from tests.serving.conftest import start_server, write_half_plus_two
from tests.serving.test_contract import http

pytestmark = pytest.mark.xdist_group("serving_hostile")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    write_half_plus_two(str(base / "m" / "1"))
    logs = base / "logs"
    config = base / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{base / "m"}" '
                      f'logging_config {{ log_collector_config {{ filename_prefix: "{logs / "m"}" }} '
                      'sampling_config { sampling_rate: 1.0 } } } }')
    server = start_server([f"--model_config_file={config}", "--max_request_rows=256",
                           "--request_log_max_bytes=3000"], base)
    server.base, server.logs = base, logs
    yield server
    server.stop()


def rss_mb(server) -> float:
    return psutil.Process(server.proc.pid).memory_info().rss / 2**20


def predict(server, proto: predict_pb2.PredictRequest):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc)).Predict(proto,
                                                                                                        timeout=30)


def test_a_tensor_that_declares_many_rows_with_one_value_is_refused_before_it_runs(hostile):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add(size=1_000_000)
    x.float_val.append(1.0)  # TF fills the other 999,999 elements with it
    assert request.ByteSize() < 100
    with pytest.raises(grpc.RpcError):
        predict(hostile, request)  # a first one pays the refusal path's one-time allocations
    before = rss_mb(hostile)
    for _ in range(20):
        with pytest.raises(grpc.RpcError) as error:
            predict(hostile, request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the request has 1000000 rows; this server runs at most 256" in error.value.details()
    assert rss_mb(hostile) - before < 20
    del x.tensor_shape.dim[:]
    x.tensor_shape.dim.add(size=256)  # at the bound: answered, all 256 rows
    assert len(predict(hostile, request).outputs["y"].float_val) == 256


def test_a_string_tensor_is_counted_by_the_bytes_it_declares(hostile):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", "to_number"
    text = request.inputs["text"]
    text.dtype = types_pb2.DT_STRING
    text.tensor_shape.dim.add(size=200)
    text.string_val.append(b"1" * 200_000)  # 200 copies of 200 KB: 40 MB declared in a 200 KB message
    with pytest.raises(grpc.RpcError) as error:
        predict(hostile, request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the limit" in error.value.details()


def test_rest_rows_are_bounded_before_they_are_converted(hostile):
    code, body = http(hostile, "POST", "/v1/models/m:predict", {"instances": [1.0] * 5000})
    assert code == 400 and "the request has 5000 rows" in body["error"] and "--max_request_rows" in body["error"]
    code, body = http(hostile, "POST", "/v1/models/m:regress",
                      {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}] * 300})
    assert code == 400 and "300 rows" in body["error"]
    assert http(hostile, "POST", "/v1/models/m:predict", {"instances": [1.0] * 256})[0] == 200


def test_a_reload_cannot_make_the_server_write_outside_its_log_folder(hostile, tmp_path):
    elsewhere = tmp_path / "anywhere" / "deep" / "x"
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(f'model_config_list {{ config {{ name: "m" base_path: "{hostile.base / "m"}" '
                      f'logging_config {{ log_collector_config {{ filename_prefix: "{elsewhere}" }} '
                      'sampling_config { sampling_rate: 1.0 } } } }', config)
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(hostile.grpc))
    with pytest.raises(grpc.RpcError) as error:
        stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside the folders request logs may be written to" in error.value.details()
    assert "--request_log_dir" in error.value.details()
    assert http(hostile, "POST", "/v1/models/m:predict", {"instances": [1.0]})[0] == 200  # nothing changed
    assert not (tmp_path / "anywhere").exists()


def test_request_logs_rotate_within_their_byte_budget(hostile):
    for i in range(40):
        assert http(hostile, "POST", "/v1/models/m:predict", {"instances": [float(i)]})[0] == 200
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(hostile.logs) for f in files)
    assert 0 < written <= 3000 + 40 * 16  # the budget, plus TFRecord framing
    assert "--request_log_max_bytes" in open(hostile.log_path).read()
    newest = max((os.path.join(d, f) for d, _, files in os.walk(hostile.logs) for f in files), key=os.path.getmtime)
    from tensorflow_serving.apis import prediction_log_pb2

    logged = [prediction_log_pb2.PredictionLog.FromString(r)
              for r in tf.data.TFRecordDataset(newest).as_numpy_iterator()]
    assert tf.make_ndarray(logged[-1].predict_log.request.inputs["x"]).tolist() == [39.0]  # the newest kept


def test_model_names_from_requests_cannot_forge_or_grow_the_metrics(hostile):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = 'x"}\nfake_metric{a="1"} 42\n#'
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    with pytest.raises(grpc.RpcError):
        predict(hostile, request)
    from prometheus_client.parser import text_string_to_metric_families

    def metrics_page():
        with urllib.request.urlopen(hostile.rest + "/monitoring/prometheus/metrics", timeout=30) as r:
            return r.read().decode()

    http(hostile, "GET", "/v1/models/made_up_0")
    size = len(metrics_page())
    for i in range(1000):
        http(hostile, "GET", f"/v1/models/made_up_{i}")
    http(hostile, "GET", '/v1/models/a"b')
    http(hostile, "GET", "/v1/models/back%5Cslash")
    page = metrics_page()
    assert len(page) <= size + 200, (size, len(page))  # 1,000 made-up names: a few counts' digits more
    samples = [s for family in text_string_to_metric_families(page) for s in family.samples]  # parses
    assert {s.labels.get("model_name") for s in samples} <= {"m", "(unknown model)", "", None}  # "": reloads
    assert "fake_metric" not in "\n".join(line for line in page.splitlines() if not line.startswith(":tensorflow"))
    assert all(line.startswith((":tensorflow", "#")) for line in page.splitlines() if line)
    assert "made_up_" not in page and 'a"b' not in page
    assert 'model_name="(unknown model)"' in page and 'model_name="m"' in page


def test_health_is_not_serving_with_no_model_to_serve(tmp_path):
    write_half_plus_two(str(tmp_path / "m" / "1"))
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" }} }}')
    server = start_server([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0.2"], tmp_path)
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        config.write_text("model_config_list { }")  # the operator removes every model
        deadline = time.time() + 30
        while http(server, "GET", "/readyz")[0] == 200 and time.time() < deadline:
            time.sleep(0.1)
        code, body = http(server, "GET", "/readyz")
        assert code == 503, body
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop()


def test_out_of_file_handles_the_server_neither_spins_nor_floods_its_log(tmp_path):
    """A low open-file limit and more slow sockets than it allows: extra connections get a 503 and are
    closed, the server's CPU stays low, and once they leave REST answers again."""
    write_half_plus_two(str(tmp_path / "m" / "1"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the server; it may raise it to hard
    try:
        server = start_server(["--model_name=m", f"--model_base_path={tmp_path / 'm'}",
                               "--rest_api_max_connections=100"], tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    sockets = []
    try:
        host, port = server.rest.replace("http://", "").split(":")
        cpu_before = sum(psutil.Process(server.proc.pid).cpu_times()[:2])
        refused = 0
        for _ in range(200):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            sockets.append(s)
        time.sleep(2)
        for s in sockets:
            s.settimeout(0.01)
            try:
                refused += s.recv(200).startswith(b"HTTP/1.1 503")
            except OSError:
                pass
        assert refused >= 90, refused  # 200 - 100 allowed (and the 503's own connection)
        cpu = sum(psutil.Process(server.proc.pid).cpu_times()[:2]) - cpu_before
        assert cpu < 1.5, cpu  # no busy loop
        assert os.path.getsize(server.log_path) < 200_000
    finally:
        for s in sockets:
            s.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if http(server, "POST", "/v1/models/m:predict", {"instances": [1.0]})[0] == 200:
                break
        except Exception:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("REST did not answer again after the slow sockets left")
    assert server.stop() == 0


def test_label_values_are_escaped_as_the_exposition_format_asks():
    from prometheus_client.parser import text_string_to_metric_families

    from serving.core import Metrics

    class NoModels:
        polls = 0

        @staticmethod
        def loaded_versions():
            return {}

    metrics = Metrics()
    name = 'a"b\\c\nfake_metric{a="1"} 42'
    metrics.observe(name, "predict", "OK", 0.001)
    page = metrics.render(NoModels(), None)
    assert "\nfake_metric" not in page
    counted = [s for f in text_string_to_metric_families(page) for s in f.samples
               if s.name.startswith(":tensorflow:serving:request_count")]
    assert [s.labels["model_name"] for s in counted] == [name]  # read back exactly


def test_readyz_answers_at_once_while_large_requests_hold_the_pool(tmp_path):
    import threading

    write_half_plus_two(str(tmp_path / "m" / "1"))
    server = start_server(["--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--rest_api_num_threads=1",
                           "--max_request_rows=0", f"--max_body_bytes={16 << 20}"], tmp_path)
    # ~1 MB of JSON each: Python's JSON parse holds the GIL (~0.1 s), so the event loop waits at most one
    # parse; the 40 requests take seconds, one at a time, on the only REST thread
    body = {"instances": [0.5] * 200_000}
    try:
        threads = [threading.Thread(target=http, args=(server, "POST", "/v1/models/m:predict", body))
                   for _ in range(40)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        waits = []
        while any(t.is_alive() for t in threads):  # /readyz, again and again, while they are in flight
            asked = time.perf_counter()
            code, _ = http(server, "GET", "/readyz")
            waits.append(time.perf_counter() - asked)
            assert code == 200
            time.sleep(0.05)
        busy = time.perf_counter() - start
        assert waits and max(waits) < 1.0, (waits, busy)  # never queued behind the pool's work
        assert busy > 2 * max(waits), (waits, busy)
    finally:
        server.stop()


def test_an_unknown_signature_is_answered_with_the_ones_the_model_has(hostile):
    code, body = http(hostile, "POST", "/v1/models/m:predict", {"signature_name": "nope", "instances": [1.0]})
    assert code == 400 and body["error"].startswith('Serving signature name: "nope" not found in signature def')
    assert "serving_default(x)" in body["error"] and "two_inputs(pair, tag)" in body["error"]
