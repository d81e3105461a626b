"""A corpus of hostile REST requests and gRPC messages, by category, for the model server (half_plus_two).

Used by tests/serving/test_hardening.py (bounded) and benchmarks/serving_bench.py (--fuzz N, counts by category).
Every request is raw bytes sent on its own connection, so the HTTP layer sees exactly what a hostile client sends.
"""
import json
import random
import re
import socket

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, model_management_pb2, predict_pb2,
                                    regression_pb2)

MODEL = "half_plus_two"
PREDICT = f"/v1/models/{MODEL}:predict"


def http_request(method: str, path: str, body: bytes = b"", headers=None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    fields = {"Content-Length": str(len(body))} if body or method == "POST" else {}
    fields.update(headers or {})
    head += [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body


def _post(path, payload) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8", "surrogatepass")
    return http_request("POST", path, body, {"Content-Type": "application/json"})


def _valid_bodies():
    return [
        (PREDICT, {"instances": [1.0, 2.0]}),
        (PREDICT, {"signature_name": "two_inputs", "inputs": {"pair": [[1, 2]], "tag": ["t"]}}),
        (f"/v1/models/{MODEL}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}),
        (f"/v1/models/{MODEL}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}],
                                          "context": {"y": "a"}}),
    ]


def corpus(seed: int = 0, mutations: int = 200):
    """(category, raw request bytes) pairs: the fixed cases of each category, then seeded random mutations."""
    cases = []
    add = lambda category, raw: cases.append((category, raw))  # noqa: E731
    # Deep nesting (RecursionError in a recursive JSON parser or array builder).
    for depth in (40, 1000, 100000):
        add("nesting", _post(PREDICT, ("{\"instances\": " + "[" * depth + "1" + "]" * depth + "}").encode()))
        add("nesting", _post(f"/v1/models/{MODEL}:classify", ("{\"examples\": [{\"x\": " + "[" * depth + "1"
                                                              + "]" * depth + "}]}").encode()))
    # Digits that are not ASCII, and numbers past every limit.
    for version in ("١", "１２", "²", "1" * 5000, "9" * 20, "-1", "0x1", " 1"):
        add("numbers", http_request("GET", f"/v1/models/{MODEL}/versions/{version}"))
        add("numbers", _post(f"/v1/models/{MODEL}/versions/{version}:predict", {"instances": [1.0]}))
    for length in ("١٠", "1" * 5000, "-5", "12abc", "99999999999999999999999"):
        add("numbers", http_request("POST", PREDICT, b'{"instances": [1.0]}', {"Content-Length": length}))
    for number in ("1" * 5000, "1e999999", "-1e999999", "NaN", "Infinity", "123456789012345678901234567890"):
        add("numbers", _post(PREDICT, f'{{"instances": [{number}]}}'.encode()))
        add("numbers", _post(PREDICT, f'{{"signature_name": "two_inputs", "inputs": {{"pair": [[{number}, 1]], '
                                      f'"tag": ["t"]}}}}'.encode()))
    # tf.Example parsing for classify/regress.
    for verb in ("classify", "regress"):
        path = f"/v1/models/{MODEL}:{verb}"
        for examples, context in [
            ([{"x": {"b64": "abc"}}], None), ([{"x": {"b64": "!!!!"}}], None), ([{"x": {"b64": 5}}], None),
            ([{"x": 2 ** 70}], None), ([{"x": -2 ** 70}], None), ([{"x": [1, 2.5, 2 ** 2000]}], None),
            ([{"x": 1.0}], [1, 2]), ([{"x": 1.0}], "ctx"), ([{"x": 1.0}], {"y": {"z": 1}}),
            ([{"x": {"a": {"b": 1}}}], None), ([{"x": [[1.0]]}], None), ([{"x": []}], None),
            ([{"x": None}], None), ([{"x": [1, "a"]}], None), ([1, 2], None), ([[]], None), ([], None),
            ("examples", None), ([{"x": True}], None), ([{}], None), ([{"x": 1.0}] * 3, {}),
        ]:
            body = {"signature_name": f"{verb}_x_to_y", "examples": examples}
            if context is not None:
                body["context"] = context
            add("examples", _post(path, body))
        add("examples", _post(path, {"examples": [{"x": 1.0}]}))  # serving_default is a predict signature
    # Strings that are not Unicode.
    for text in ("\ud800", "a\udfffb", "\udbff\udfff"):
        add("unicode", _post(PREDICT, {"signature_name": "two_inputs", "inputs": {"pair": [[1, 2]], "tag": [text]}}))
        add("unicode", _post(f"/v1/models/{MODEL}:classify", {"signature_name": "classify_x_to_y",
                                                              "examples": [{"x": 1.0, "s": text}]}))
        add("unicode", _post(PREDICT, {"instances": [1.0], "signature_name": text}))
    add("unicode", _post(PREDICT, b'{"instances": [1.0], "k": "\xff\xfe"}'))
    add("unicode", http_request("GET", f"/v1/models/{MODEL}\udc80", b""))
    # Methods other than GET and POST, and malformed request lines, headers and bodies.
    for method in ("HEAD", "OPTIONS", "PATCH", "TRACE", "PUT", "DELETE", "CONNECT", "get", "post", "FOO", "G\x01T"):
        add("http", http_request(method, f"/v1/models/{MODEL}"))
        add("http", http_request(method, PREDICT, b'{"instances": [1.0]}'))
    for raw in (b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00\xff garbage\r\n\r\n", b"GET /v1/models/x\r\n\r\n",
                b"GET /v1/models/x HTTP/1.1\r\nBad Header Line\r\n\r\n",
                b"GET /v1/models/x HTTP/1.1\r\n: empty-name\r\n\r\n",
                b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
                b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc",
                b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"ffffffffffffffff\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n",
                b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                b"GET /v1/models/x HTTP/1.1\r\nX: " + b"a" * 100000 + b"\r\n\r\n"):
        add("http", raw)
    add("http", http_request("POST", PREDICT, b"x" * 10, {"Content-Length": str(1 << 40)}))
    # Bodies of the wrong shape.
    for payload in ([1, 2], "s", 1, None, {"instances": None}, {"instances": {}}, {"inputs": None},
                    {"instances": [None]}, {"instances": [True]}, {"instances": [[1.0], [2.0, 3.0]]},
                    {"instances": [{"b64": "AAAA"}]}, {"inputs": {"x": [1.0], "y": [2.0]}},
                    {"instances": [1.0], "signature_name": 5}, {"instances": [1.0], "signature_name": "nope"},
                    {"signature_name": "two_inputs", "instances": [{"pair": [1, 2], "tag": "t"}, {"pair": [1, 2]}]},
                    {"signature_name": "two_inputs", "inputs": {"pair": [[1, 2]], "tag": [{"b64": "@@"}]}},
                    {"signature_name": "two_inputs", "inputs": {"pair": [[True, 2]], "tag": ["t"]}},
                    {"signature_name": "two_inputs", "inputs": {"pair": [[1, 2]], "tag": [{"x": "y"}]}},
                    {"signature_name": "classify_x_to_y", "instances": ["a"]}):
        add("shapes", _post(PREDICT, json.dumps(payload).encode()))
    # Seeded mutations of valid requests: flipped, inserted and dropped bytes, truncations.
    rng = random.Random(seed)
    valid = [_post(path, body) for path, body in _valid_bodies()]
    for _ in range(mutations):
        raw = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            action = rng.random()
            if action < 0.4:
                raw[at] = rng.randrange(256)
            elif action < 0.7:
                raw[at:at] = bytes(rng.choice(b'[]{}",:\\0-.eE \x00\xff') for _ in range(rng.randint(1, 3)))
            else:
                del raw[at:at + rng.randint(1, 8)]
        head, sep, body = bytes(raw).partition(b"\r\n\r\n")
        sep = b"\r\n\r\n"  # a request whose headers never end only waits for the header timeout
        # Keep the framing honest (a body shorter than its Content-Length just waits for the body timeout).
        head = re.sub(rb"(?im)^(content-length:)[ \t]*[0-9]+(?=\r?$)", b"\\1 " + str(len(body)).encode(), head)
        add("mutations", head + sep + body)
    return cases


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^content-length:\s*([0-9]+)", head)
    return bool(length) and (len(body) >= int(length.group(1)) or head.startswith(b"HEAD"))


def send(host: str, port: int, raw: bytes, timeout: float = 30.0):
    """(status, JSON body or None, raw answer) for one raw request on a fresh connection; status 0: no answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(raw)
        except OSError:  # the server closed early (a refusal); read its answer
            pass
        answer = b""
        try:  # until the answer's Content-Length is in, or the server closes
            while not _complete(answer):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (socket.timeout, ConnectionError):  # a request the server still waits to complete
            pass
    if not answer.startswith(b"HTTP/1."):
        return 0, None, answer
    status = int(answer.split(b" ", 2)[1])
    body = answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""
    try:
        return status, json.loads(body), answer
    except ValueError:
        return status, None, answer


# ----------------------------------------------------------------------------- gRPC
def _tensor(dtype, dims, **fields):
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    for key, value in fields.items():
        if key == "tensor_content":
            proto.tensor_content = value
        else:
            getattr(proto, key).extend(value)
    return proto


def grpc_corpus(model_base: str = "/models/half_plus_two"):
    """(category, method name, request): PredictionService methods, and ModelService reloads that must change
    nothing (`model_base`: the served model's absolute base path)."""
    cases = []
    reloads = [model_management_pb2.ReloadConfigRequest()]  # empty: no config at all
    reloads.append(model_management_pb2.ReloadConfigRequest())
    reloads[-1].config.custom_model_config.type_url = "type.googleapis.com/x.Custom"
    for entries in ([(MODEL, "relative/path", {})], [(MODEL, model_base, {}), (MODEL, model_base, {})],
                    [("bad name!", model_base, {})], [(MODEL, "", {})], [(MODEL, model_base, {"platform": "onnx"})],
                    [(MODEL, model_base, {"label": 9})], [("added", model_base, {}), (MODEL, "relative", {})]):
        request = model_management_pb2.ReloadConfigRequest()
        for name, base_path, extra in entries:
            entry = request.config.model_config_list.config.add(name=name, base_path=base_path,
                                                                model_platform=extra.get("platform", "tensorflow"))
            if "label" in extra:
                entry.version_labels["stable"] = extra["label"]
        reloads.append(request)
    cases += [("reload", "HandleReloadConfigRequest", r) for r in reloads]
    for tensor in [_tensor(types_pb2.DT_DOUBLE, [2], double_val=[1.0, 2.0]),
                   _tensor(types_pb2.DT_INT64, [1], int64_val=[1]),
                   _tensor(types_pb2.DT_BOOL, [1], bool_val=[True]),
                   _tensor(types_pb2.DT_COMPLEX64, [1], scomplex_val=[1.0, 2.0]),
                   _tensor(types_pb2.DT_STRING, [1], string_val=[b"a"]),
                   _tensor(types_pb2.DT_FLOAT, [-1], float_val=[1.0]),
                   _tensor(types_pb2.DT_FLOAT, [1 << 40]),
                   _tensor(types_pb2.DT_FLOAT, [4], tensor_content=b"abc"),
                   _tensor(types_pb2.DT_FLOAT, [2], float_val=[1.0, 2.0, 3.0]),
                   _tensor(types_pb2.DT_FLOAT, [2, 2], float_val=[1.0]),
                   _tensor(types_pb2.DT_RESOURCE, [1]), _tensor(types_pb2.DT_VARIANT, [1]), _tensor(0, [1]),
                   _tensor(99, [1]), tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["x"].CopyFrom(tensor)
        cases.append(("tensors", "Predict", request))
    empty = classification_pb2.ClassificationRequest()
    empty.model_spec.name, empty.model_spec.signature_name = MODEL, "classify_x_to_y"
    cases.append(("examples", "Classify", empty))
    empty_list = classification_pb2.ClassificationRequest()
    empty_list.CopyFrom(empty)
    empty_list.input.example_list.SetInParent()
    cases.append(("examples", "Classify", empty_list))
    for method, message, signature in [("Classify", classification_pb2.ClassificationRequest, "serving_default"),
                                       ("Classify", classification_pb2.ClassificationRequest, "regress_x_to_y"),
                                       ("Regress", regression_pb2.RegressionRequest, "classify_x_to_y"),
                                       ("Regress", regression_pb2.RegressionRequest, "two_inputs")]:
        request = message()
        request.model_spec.name, request.model_spec.signature_name = MODEL, signature
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(1.0)
        cases.append(("signature kinds", method, request))
    for tasks in ([], [("tensorflow/serving/predict", "serving_default")],
                  [("tensorflow/serving/classify", "regress_x_to_y")],
                  [("tensorflow/serving/regress", "regress_x_to_y"), ("tensorflow/serving/regress", "regress_x_to_y")]):
        request = inference_pb2.MultiInferenceRequest()
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
        for method_name, signature in tasks:
            task = request.tasks.add(method_name=method_name)
            task.model_spec.name, task.model_spec.signature_name = MODEL, signature
        cases.append(("signature kinds", "MultiInference", request))
    return cases

