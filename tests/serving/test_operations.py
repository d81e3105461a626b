"""TF Serving's operational features: warm-up, live config reload, health checks, request logging, late shards."""
import glob
import os
import shutil
import threading
import time

import grpc
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2)

from tests.serving.conftest import start_server, wait_for_polls, write_half_plus_two
from tests.serving.test_contract import http

pytestmark = pytest.mark.xdist_group("serving_operations")


def write_warmup(version_dir, signature="serving_default", count=3):
    os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")) as writer:
        for i in range(count):
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.model_spec.signature_name = signature
            log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([float(i)]))
            writer.write(log.SerializeToString())


def config_text(models):
    """A ModelServerConfig text proto: models is [(name, base_path, extra text)]."""
    return "model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" {extra} }}\n'
        for n, p, extra in models) + "}\n"


def write_config(path, models):
    path.with_suffix(".tmp").write_text(config_text(models))
    os.replace(path.with_suffix(".tmp"), path)


def test_warmup_requests_are_replayed_before_a_version_serves(tmp_path):
    base = tmp_path / "m"
    write_half_plus_two(str(tmp_path / "staging" / "1"))
    write_warmup(str(tmp_path / "staging" / "1"), count=5)
    base.mkdir()
    os.replace(tmp_path / "staging" / "1", base / "1")
    server = start_server(["--model_name=half_plus_two", f"--model_base_path={base}",
                           "--num_request_iterations_for_warmup=2", "--file_system_poll_wait_seconds=0.3"], tmp_path)
    try:
        assert "Warmed up half_plus_two version 1 with 5 requests" in open(server.log_path).read()
        # A warm-up file that fails (here: an unknown signature) fails the load, as in TF Serving.
        write_half_plus_two(str(tmp_path / "staging" / "2"))
        write_warmup(str(tmp_path / "staging" / "2"), signature="nope")
        os.replace(tmp_path / "staging" / "2", base / "2")
        deadline = time.time() + 30
        while time.time() < deadline:
            states = {s["version"]: s for s in http(server, "GET", "/v1/models/half_plus_two")[1]["model_version_status"]}
            if states.get("2", {}).get("state") == "END":
                break
            time.sleep(0.2)
        assert states["2"]["state"] == "END" and "nope" in states["2"]["status"]["error_message"]
        assert states["1"]["state"] == "AVAILABLE"  # still serving
    finally:
        server.stop()


def test_config_reload_adds_removes_and_relabels_without_a_failed_request(tmp_path):
    for name, versions in (("a", (1, 2)), ("b", (1,))):
        for v in versions:
            write_half_plus_two(str(tmp_path / name / str(v)), a=float(v), b=0.0)
    config = tmp_path / "models.config"
    write_config(config, [("a", tmp_path / "a", "model_version_policy { all {} }")])
    server = start_server([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0.3"], tmp_path)
    failures, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            code, body = http(server, "POST", "/v1/models/a/versions/1:predict", {"instances": [1.0]})
            if code != 200:
                failures.append(body)

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        # The file: add b and a label on a.
        write_config(config, [("a", tmp_path / "a", 'model_version_policy { all {} } version_labels { key: "stable" '
                                                    'value: 1 }'), ("b", tmp_path / "b", "")])
        deadline = time.time() + 30
        while http(server, "POST", "/v1/models/b:predict", {"instances": [2.0]})[0] != 200 and time.time() < deadline:
            time.sleep(0.1)
        assert http(server, "POST", "/v1/models/b:predict", {"instances": [2.0]}) == (200, {"predictions": [2.0]})
        while http(server, "POST", "/v1/models/a/labels/stable:predict", {"instances": [2.0]})[0] != 200 and \
                time.time() < deadline:
            time.sleep(0.1)
        assert http(server, "POST", "/v1/models/a/labels/stable:predict", {"instances": [2.0]})[1] == \
            {"predictions": [2.0]}
        # gRPC HandleReloadConfigRequest: remove b; a label on a version that is not loaded is refused.
        models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc))
        request = model_management_pb2.ReloadConfigRequest()
        from google.protobuf import text_format
        text_format.Parse(config_text([("a", tmp_path / "a", "model_version_policy { all {} }")]), request.config)
        assert models.HandleReloadConfigRequest(request, timeout=30).status.error_code == 0
        assert http(server, "POST", "/v1/models/b:predict", {"instances": [2.0]})[0] == 404
        bad = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(config_text([("a", tmp_path / "a", 'version_labels { key: "x" value: 9 }')]), bad.config)
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(bad, timeout=30)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 9" in error.value.details()
        bad.config.model_config_list.config[0].name = "bad name!"
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(bad, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert failures == []


def test_health_checks(server):
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.grpc))
    for service in ("", "half_plus_two"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    code, body = http(server, "GET", "/readyz")
    assert code == 200 and body["status"] == "SERVING" and body["models"]


def test_sampled_requests_are_logged_as_prediction_logs(tmp_path):
    write_half_plus_two(str(tmp_path / "a" / "1"))
    write_half_plus_two(str(tmp_path / "b" / "1"))
    config = tmp_path / "models.config"
    logging_config = ('logging_config { log_collector_config { filename_prefix: "%s" } '
                      'sampling_config { sampling_rate: %s } }')
    write_config(config, [("a", tmp_path / "a", logging_config % (tmp_path / "logs" / "a", 1.0)),
                          ("b", tmp_path / "b", logging_config % (tmp_path / "logs" / "b", 0.0))])
    server = start_server([f"--model_config_file={config}", "--request_log_max_file_bytes=600"], tmp_path)
    try:
        for name in ("a", "b"):
            for v in range(4):
                assert http(server, "POST", f"/v1/models/{name}:predict", {"instances": [float(v)]})[0] == 200
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "a"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([10.0]))
        from tensorflow_serving.apis import prediction_service_pb2_grpc
        prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc)).Predict(request,
                                                                                                    timeout=10)
        assert http(server, "POST", "/v1/models/a:regress", {"signature_name": "regress_x_to_y",
                                                             "examples": [{"x": 1.0}]})[0] == 200
    finally:
        assert server.stop() == 0
    assert not glob.glob(str(tmp_path / "logs" / "*.partial"))  # closed and renamed on shutdown
    files = sorted(glob.glob(str(tmp_path / "logs" / "a-*.tfrecord")))
    assert len(files) >= 2, files  # rotated at 600 bytes
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for f in files
            for r in tf.data.TFRecordDataset(f).as_numpy_iterator()]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 5 + ["regress_log"]
    inputs = [tf.make_ndarray(log.predict_log.request.inputs["x"]).tolist() for log in logs[:5]]
    assert inputs == [[0.0], [1.0], [2.0], [3.0], [10.0]]
    assert list(logs[4].predict_log.response.outputs["y"].float_val) == [7.0]
    assert {(log.log_metadata.model_spec.name, log.log_metadata.sampling_config.sampling_rate) for log in logs} == \
        {("a", 1.0)}
    assert not glob.glob(str(tmp_path / "logs" / "b-*"))  # sampled at 0


def test_a_version_whose_variables_land_late_is_loaded_once_complete(tmp_path):
    """cp -r and gsutil may write saved_model.pb first; the version must neither serve half-written nor stay END."""
    write_half_plus_two(str(tmp_path / "full"), a=1.0, b=0.0)
    base = tmp_path / "m"
    write_half_plus_two(str(base / "1"))
    server = start_server(["--model_name=half_plus_two", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=0.2"], tmp_path)
    try:
        (base / "2").mkdir()
        shutil.copy(tmp_path / "full" / "saved_model.pb", base / "2")
        wait_for_polls(server, polls=10)  # 2 s of scans with saved_model.pb alone, past the 1 s settle time
        (base / "2" / "variables").mkdir()
        index, = glob.glob(str(tmp_path / "full" / "variables" / "variables.index"))
        shutil.copy(index, base / "2" / "variables")
        shard, = glob.glob(str(tmp_path / "full" / "variables" / "variables.data-*"))
        data = open(shard, "rb").read()
        with open(base / "2" / "variables" / os.path.basename(shard), "wb") as f:
            f.write(data[: len(data) // 2])  # a shard still being written
        wait_for_polls(server, polls=10)
        assert http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [2.0]})[1] == \
            {"predictions": [3.0]}  # version 1 still serves
        with open(base / "2" / "variables" / os.path.basename(shard), "wb") as f:
            f.write(data)
        deadline = time.time() + 30
        while http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [2.0]})[1] != \
                {"predictions": [2.0]} and time.time() < deadline:
            time.sleep(0.2)
        assert http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [2.0]})[1] == \
            {"predictions": [2.0]}
    finally:
        server.stop()


def test_reloads_that_are_not_a_model_config_list_change_nothing(tmp_path):
    """TF Serving's ReloadConfig rules, over gRPC and by --model_config_file polling: an empty config (or a
    custom_model_config) is refused and changes nothing; a config is validated whole before anything changes."""
    write_half_plus_two(str(tmp_path / "a" / "1"))
    write_half_plus_two(str(tmp_path / "c" / "1"), a=1.0, b=0.0)
    config = tmp_path / "models.config"
    write_config(config, [("a", tmp_path / "a", "")])
    server = start_server([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0.2"], tmp_path)
    models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc))
    serves_a = lambda: http(server, "POST", "/v1/models/a:predict", {"instances": [2.0]}) == (  # noqa: E731
        200, {"predictions": [3.0]})
    try:
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Only ModelConfigList is currently supported" in error.value.details()
        assert serves_a() and http(server, "GET", "/v1/models/a")[1]["model_version_status"][0]["state"] == "AVAILABLE"
        half_valid = model_management_pb2.ReloadConfigRequest()  # c is valid, the second entry is not
        half_valid.config.model_config_list.config.add(name="c", base_path=str(tmp_path / "c"))
        half_valid.config.model_config_list.config.add(name="d", base_path="relative/d")
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(half_valid, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "absolute path" in error.value.details()
        assert serves_a() and http(server, "GET", "/v1/models/c")[0] == 404
        # The polled file: emptied, then half valid; each is logged and the served set stays.
        for text in ("", f'model_config_list {{ config {{ name: "c" base_path: "{tmp_path / "c"}" }} '
                         f'config {{ name: "c" base_path: "{tmp_path / "c"}" }} }}'):
            config.with_suffix(".tmp").write_text(text)
            os.replace(config.with_suffix(".tmp"), config)
            wait_for_polls(server, "config_file", polls=5)
            assert serves_a() and http(server, "GET", "/v1/models/c")[0] == 404, text
        log = open(server.log_path).read()
        assert "Cannot transition to requested config" in log and "multiple times in config list" in log
        write_config(config, [("a", tmp_path / "a", ""), ("c", tmp_path / "c", "")])  # a valid edit still applies
        deadline = time.time() + 30
        while http(server, "POST", "/v1/models/c:predict", {"instances": [2.0]})[0] != 200 and time.time() < deadline:
            time.sleep(0.1)
        assert http(server, "POST", "/v1/models/c:predict", {"instances": [2.0]}) == (200, {"predictions": [2.0]})
        assert serves_a()
    finally:
        server.stop()


def test_an_unloaded_version_is_freed_off_the_request_path_once_requests_pause(tmp_path):
    """The full collection an old version's reference cycles need holds the GIL for tens of ms: it waits
    while requests are in flight, and frees the version as soon as they pause."""
    import gc
    import weakref

    from serving.repository import ModelConfig, Repository

    write_half_plus_two(str(tmp_path / "m" / "1"))
    repository = Repository([ModelConfig("m", str(tmp_path / "m"))], poll_seconds=0)
    repository.MAX_DEFER_SECONDS = 60.0
    busy = threading.Event()
    busy.set()
    repository.quiet_for = lambda: 0.0 if busy.is_set() else 1.0
    gc.disable()  # only the reaper collects in this test
    try:
        repository.start()
        old = weakref.ref(repository.resolve("m"))
        write_half_plus_two(str(tmp_path / "m" / "2"), a=1.0)
        time.sleep(repository.SETTLE_SECONDS + 0.2)
        repository.poll_once()
        assert repository.resolve("m").version == 2 and repository.loaded_versions() == {"m": [2]}
        time.sleep(0.5)
        assert old() is not None  # requests in flight: not collected yet
        busy.clear()
        deadline = time.time() + 10
        while old() is not None and time.time() < deadline:
            time.sleep(0.05)
        assert old() is None  # freed once requests paused
    finally:
        gc.enable()
        repository.stop()
