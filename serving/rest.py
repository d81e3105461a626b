"""TF Serving's REST API (v1) over the inference core: paths, JSON shapes and error statuses as TF Serving."""
from __future__ import annotations

import base64
import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional

import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.core import InferenceCore, example_from_json, input_specs, signature_of
from serving.errors import ServingError

ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?/?$", re.IGNORECASE)


def _decode(value: Any, name: str):
    """JSON value → nested lists of numbers/bytes ({"b64": ...} → bytes, str → bytes)."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError as e:
                raise ServingError("INVALID_ARGUMENT", f"Unable to base64 decode input '{name}': {e}") from e
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': objects are only allowed as {{\"b64\": ...}}")
    if isinstance(value, list):
        return [_decode(v, name) for v in value]
    if isinstance(value, str):
        return value.encode()
    if value is None:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': null is not a value")
    return value


def _array(value, name: str) -> np.ndarray:
    value = _decode(value, name)
    try:
        array = np.array(value, dtype=object if _has_bytes(value) else None)
    except ValueError as e:  # ragged
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': elements must all have the same shape") from e
    if array.dtype == object and not _has_bytes(value):
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': elements must all have the same shape")
    if array.dtype == bool:
        array = array.astype(np.int64)
    return array


def _has_bytes(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, bytes)


def _to_json(array: np.ndarray, name: str):
    if array.dtype == object or array.dtype.kind in "SU":
        encode = ((lambda b: {"b64": base64.b64encode(b).decode()}) if name.endswith("_bytes")
                  else (lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b))
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def parse_predict(body: dict, input_names) -> tuple:
    """(inputs, row_format) from a predict body in row (`instances`) or columnar (`inputs`) form."""
    if ("instances" in body) == ("inputs" in body):
        raise ServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key" if "instances" not in body
                           else "Not both 'inputs' and 'instances' can be specified")
    names = sorted(input_names)

    def keyed(value):  # an object of input name → value (not a {"b64": ...} value)
        return isinstance(value, dict) and set(value) != {"b64"}

    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
        if all(keyed(i) for i in instances):
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise ServingError("INVALID_ARGUMENT", "every instance must name the same inputs")
            return {k: _array([i[k] for i in instances], k) for k in keys}, True
        if len(names) == 1:
            return {names[0]: _array(instances, names[0])}, True
        raise ServingError("INVALID_ARGUMENT", "with several inputs, each instance must be an object keyed by "
                                               "input name")
    inputs = body["inputs"]
    if keyed(inputs):
        return {k: _array(v, k) for k, v in inputs.items()}, False
    if len(names) == 1:
        return {names[0]: _array(inputs, names[0])}, False
    raise ServingError("INVALID_ARGUMENT", "with several inputs, 'inputs' must be an object keyed by input name")


def format_predict(outputs: Dict[str, np.ndarray], row: bool) -> dict:
    if row:
        rows = len(next(iter(outputs.values())))
        if len(outputs) == 1:
            name, value = next(iter(outputs.items()))
            return {"predictions": _to_json(value, name)}
        converted = {k: _to_json(v, k) for k, v in outputs.items()}
        return {"predictions": [{k: converted[k][i] for k in sorted(converted)} for i in range(rows)]}
    if len(outputs) == 1:
        name, value = next(iter(outputs.items()))
        return {"outputs": _to_json(value, name)}
    return {"outputs": {k: _to_json(v, k) for k, v in outputs.items()}}


class RestApi:
    """Routes a request to the core; returns (status, JSON-able body)."""

    def __init__(self, core: InferenceCore):
        self.core = core

    def handle(self, method: str, path: str, body: Optional[bytes]):
        path = path.split("?", 1)[0]
        if path.rstrip("/").lower() == "/v1/models":
            raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
        match = ROUTE.match(path)
        if not match:
            raise ServingError("INVALID_ARGUMENT", "Malformed request: " + f"{method} {path}")
        name, label, verb = match["name"], match["label"], (match["verb"] or "").lower()
        version = None
        if match["version"] is not None:
            if not match["version"].isdigit():
                raise ServingError("INVALID_ARGUMENT", "Malformed request: " + f"{method} {path}")
            version = int(match["version"])
        if method == "GET" and not verb:
            if match["metadata"]:
                return self.metadata(name, version, label)
            return self.status(name, version, label)
        if method != "POST" or not verb:
            raise ServingError("INVALID_ARGUMENT", "Malformed request: " + f"{method} {path}")
        try:
            payload = json.loads(body or b"")
        except (ValueError, UnicodeDecodeError) as e:
            raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {e}") from e
        if not isinstance(payload, dict):
            raise ServingError("INVALID_ARGUMENT", "JSON Parse error: the request body must be a JSON object")
        servable = self.core.repository.resolve(name, version, label)
        signature_name = payload.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
        if verb == "predict":
            _, function = signature_of(servable, signature_name)
            inputs, row = parse_predict(payload, input_specs(function))
            _, outputs = self.core.predict(servable, signature_name, inputs)
            return 200, format_predict(outputs, row)
        examples = payload.get("examples")
        if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
            raise ServingError("INVALID_ARGUMENT", "'examples' must be a non-empty list of objects")
        context = payload.get("context")
        serialized = [example_from_json(e, context) for e in examples]
        if verb == "classify":
            _, results = self.core.classify(servable, signature_name, serialized)
            return 200, {"results": [[[label, score] for label, score in r] for r in results]}
        _, results = self.core.regress(servable, signature_name, serialized)
        return 200, {"results": results}

    def status(self, name, version, label):
        states = self.core.repository.status(name, version, label)
        return 200, {"model_version_status": [
            {"version": str(v), "state": s.state,
             "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error}}
            for v, s in sorted(states.items(), reverse=True)]}

    def metadata(self, name, version, label):
        servable = self.core.repository.resolve(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        as_json = json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
        return 200, {"model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                     "metadata": {"signature_def": as_json}}


def make_server(core: InferenceCore, host: str, port: int, max_body_bytes: int = 16 << 20,
                metrics_path: str = "/monitoring/prometheus/metrics") -> ThreadingHTTPServer:
    api = RestApi(core)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "TFServingCompatible"

        def log_message(self, *args):  # quiet; metrics count requests
            pass

        def _send(self, status: int, payload, content_type="application/json"):
            data = payload if isinstance(payload, bytes) else json.dumps(
                payload, allow_nan=True, default=lambda o: o.item() if hasattr(o, "item") else str(o)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str):
            start, model, api_name, status = time.perf_counter(), "", method, "OK"
            with core.track():
                try:
                    if method == "GET" and self.path.split("?")[0] == metrics_path:
                        return self._send(200, core.metrics.render(core.repository, core.batcher).encode(),
                                          "text/plain; version=0.0.4")
                    match = ROUTE.match(self.path.split("?", 1)[0])
                    if match:
                        model = match["name"]
                        api_name = (match["verb"] or ("metadata" if match["metadata"] else "status")).lower()
                    body = None
                    if method == "POST":
                        length = self.headers.get("Content-Length")
                        if length is None or not length.isdigit():
                            raise ServingError("INVALID_ARGUMENT", "a POST needs a Content-Length header")
                        if int(length) > max_body_bytes:
                            self.close_connection = True
                            raise ServingError("RESOURCE_EXHAUSTED", f"request body of {length} bytes exceeds "
                                                                     f"the limit of {max_body_bytes} bytes")
                        body = self.rfile.read(int(length))
                    code, payload = api.handle(method, self.path, body)
                    self._send(code, payload)
                except ServingError as e:
                    status = e.code
                    self._send(e.http_status, {"error": e.message})
                except Exception as e:  # never crash the server on one request
                    status = "INTERNAL"
                    self._send(500, {"error": f"{type(e).__name__}: {e}"})
                finally:
                    if model:
                        core.metrics.observe(model, api_name, status, time.perf_counter() - start)

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        def do_DELETE(self):
            self._dispatch("DELETE")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server

