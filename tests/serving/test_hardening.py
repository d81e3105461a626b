"""What real clients and hostile ones do: TF Serving's example clients, TFX's client, a fuzz corpus, keep-alive."""
import http.client as httplib
import socket
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, model_service_pb2_grpc, predict_pb2,
                                    prediction_service_pb2_grpc)

from tests.serving import fuzz
from tests.serving.test_contract import http

pytestmark = pytest.mark.xdist_group("serving_hardening")


def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))


def address(server):
    host, port = server.rest.replace("http://", "").split(":")
    return host, int(port)


def test_official_example_clients_read_typed_fields(server):
    """What tensorflow_serving/example/mnist_client.py and resnet_client_grpc.py do."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 3.0], shape=[2]))
    result = stub(server).Predict(request, 10.0)
    assert list(result.outputs["y"].float_val) == [2.5, 3.5]
    y = result.outputs["y"]
    assert (y.dtype, [d.size for d in y.tensor_shape.dim], y.tensor_content) == (types_pb2.DT_FLOAT, [2], b"")
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "two_inputs"
    request.inputs["pair"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2], [3, 4]], np.int64)))  # tensor_content
    request.inputs["tag"].CopyFrom(tf.make_tensor_proto([b"a", b"b"]))
    result = stub(server).Predict(request, 10.0)
    assert list(result.outputs["sum"].int64_val) == [3, 7]
    assert list(result.outputs["tag_bytes"].string_val) == [b"a", b"b"]
    np.testing.assert_array_equal(tf.make_ndarray(result.outputs["sum"]), [3, 7])  # what tf.make_ndarray readers do


@pytest.mark.parametrize("values, given", [(np.array([1.0], np.float64), "double"), (np.array([1], np.int64), "int64"),
                                           (np.array([True]), "bool"), (np.array([1j], np.complex64), "complex64")])
def test_dtypes_are_not_cast(server, values, given):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
    with pytest.raises(grpc.RpcError) as error:
        stub(server).Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == f"Expects arg[0] to be float but {given} is provided"


def test_model_errors_carry_the_ops_message(server):
    code, body = http(server, "POST", "/v1/models/half_plus_two:predict",
                      {"signature_name": "to_number", "instances": ["12", "abc"]})
    assert code == 400
    assert "StringToNumberOp could not correctly convert string: abc" in body["error"], body
    assert "Graph execution error" not in body["error"] and "__inference" not in body["error"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "to_number"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([b"abc"]))
    with pytest.raises(grpc.RpcError) as error:
        stub(server).Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not correctly convert string: abc" in error.value.details()


def test_classify_and_regress_need_their_signature_kind(server):
    code, body = http(server, "POST", "/v1/models/half_plus_two:classify", {"examples": [{"x": 1.0}]})
    assert (code, body["error"]) == (400, "Expected classification signature method_name to be "
                                          "tensorflow/serving/classify. Was: tensorflow/serving/predict")
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    with pytest.raises(grpc.RpcError) as error:
        stub(server).Classify(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Was: tensorflow/serving/regress" in \
        error.value.details()


def assert_still_serving(server, after: str) -> None:
    """Valid REST and gRPC requests are answered correctly (asked after each fuzz category)."""
    assert http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 3.0]}) == \
        (200, {"predictions": [2.5, 3.5]}), after
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 3.0], shape=[2]))
    assert list(stub(server).Predict(request, 10.0).outputs["y"].float_val) == [2.5, 3.5], after


def test_fuzz_corpus_gets_no_5xx_and_json_errors(server):
    host, port = address(server)
    counts, last = {}, None
    for category, raw in fuzz.corpus(seed=0, mutations=300):
        if category != last and last is not None:
            assert_still_serving(server, after=last)
        last = category
        status, body, answer = fuzz.send(host, port, raw, timeout=10)
        counts[(category, status // 100)] = counts.get((category, status // 100), 0) + 1
        assert 0 < status < 500, (category, raw[:200], answer[:300])
        if status != 200 and not raw.startswith(b"HEAD "):
            assert isinstance(body, dict) and set(body) == {"error"}, (category, raw[:200], answer[:300])
    assert_still_serving(server, after=last)
    assert counts[("http", 4)] >= 30 and counts[("mutations", 4)] > 0, counts


def test_grpc_fuzz_corpus_gets_no_internal_and_changes_nothing(server, model_base):
    channel = grpc.insecure_channel(server.grpc)
    services = {"HandleReloadConfigRequest": model_service_pb2_grpc.ModelServiceStub(channel)}
    predictions, last = stub(server), None
    for category, method, request in fuzz.grpc_corpus(str(model_base / "half_plus_two")):
        if category != last and last is not None:
            assert_still_serving(server, after=last)
        last = category
        with pytest.raises(grpc.RpcError) as error:
            getattr(services.get(method, predictions), method)(request, timeout=10)
        assert error.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), \
            (category, method, error.value.code(), error.value.details())
    assert_still_serving(server, after=last)
    assert http(server, "GET", "/v1/models/added")[0] == 404  # a refused config added nothing


@pytest.mark.parametrize("raw, status, message", [
    (fuzz.http_request("PATCH", "/v1/models/half_plus_two"), 400, "Malformed request: PATCH"),
    (fuzz.http_request("get", "/v1/models/half_plus_two"), 400, "Malformed request: get"),
    (b"\x00\xff garbage\r\n\r\n", 400, "Malformed HTTP request"),
    (fuzz.http_request("POST", fuzz.PREDICT, b"x", {"Content-Length": str(1 << 40)}), 413, "exceeds the limit"),
    (fuzz.http_request("GET", "/" + "a" * 70000), 414, "exceeds the limit"),
    (fuzz.http_request("GET", "/v1/models/half_plus_two", headers={f"X-{i}": "a" * 1000 for i in range(70)}), 431,
     "exceed the limit"),
    (fuzz.http_request("GET", "/v1/models/half_plus_two/versions/" + "1" * 5000), 400, "Malformed request"),
    (fuzz.http_request("GET", "/v1/models/half_plus_two/versions/١"), 400, "Malformed request"),
])
def test_the_http_layer_answers_in_json(server, raw, status, message):
    code, body, answer = fuzz.send(*address(server), raw)
    assert code == status and message in body["error"], answer[:300]
    assert b"Content-Type: application/json" in answer


def test_200_requests_on_one_keep_alive_connection(server):
    connection = httplib.HTTPConnection(*address(server), timeout=10)
    body = b'{"instances": [1.0, 2.0]}'
    start = time.perf_counter()
    connection.request("POST", "/v1/models/half_plus_two:predict", body)  # opens the socket
    first_socket = connection.sock
    connection.getresponse().read()
    for _ in range(199):
        connection.request("POST", "/v1/models/half_plus_two:predict", body)
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b'{"predictions": [2.5, 3.0]}'
    took = time.perf_counter() - start
    assert connection.sock is first_socket  # one connection throughout
    # Generous: with headers and body in separate packets, Nagle + delayed ACK cost about 40 ms a request (8 s).
    assert took < 6.0, took


def test_slow_partial_requests_do_not_block_others(server):
    host, port = address(server)
    slow = [socket.create_connection((host, port)) for _ in range(64)]
    try:
        for s in slow:
            s.sendall(b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inst")
        assert http(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]}) == \
            (200, {"predictions": [2.5]})
    finally:
        for s in slow:
            s.close()
