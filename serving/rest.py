"""TF Serving's REST API (v1) over the inference core: paths, JSON shapes and error statuses as TF Serving.

HTTP/1.1 is Tornado's server (keep-alive, pipelining, header/body timeouts, size limits), used through its
connection-delegate API: the event loop only parses and writes; parsing JSON and inference run on a pool of
`--rest_api_num_threads` threads under `--rest_api_timeout_in_ms`. Every answer, the HTTP layer's refusals
included, has a JSON body `{"error": ...}` and one of TF Serving's status codes.

Besides TF Serving's routes: `GET /readyz` answers 200 with the served model names (`{"status": "SERVING",
"models": [...]}`) while every model has a version AVAILABLE and the server is not draining, else 503 (a
Kubernetes readiness probe).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import json
import logging
import re
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, predict_pb2, regression_pb2
from tornado import httputil, netutil
from tornado.httpserver import HTTPServer

from serving import compat
from serving.core import dtype_name, input_specs, signature_of
from serving.errors import HTTP_STATUS, ServingError
from serving.grpc_service import PredictionService, tensor_proto
from serving.repository import version_of

log = logging.getLogger(__name__)
ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?/?$", re.IGNORECASE)
METRICS_PATH = "/monitoring/prometheus/metrics"
READY_PATH = "/readyz"
MAX_URI_BYTES = 16 << 10
MAX_HEADER_BYTES = 64 << 10
_JSON_TYPE = {bool: "Bool", int: "Int", float: "Double", str: "String", dict: "Object", list: "Array",
              type(None): "Null"}


# ----------------------------------------------------------------------------- JSON ↔ tensors
def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bytes(value, name: str) -> bytes:
    """A JSON string (UTF-8) or {"b64": "..."} as bytes."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ServingError("INVALID_ARGUMENT", f"input '{name}': the string {_short(value)} is not valid "
                                                   f"Unicode ({e.reason})") from e
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': objects are only allowed as {{\"b64\": \"...\"}}; "
                                               f"got {_short(value)}")
    try:
        return base64.b64decode(value["b64"].encode("ascii"), validate=True)
    except (ValueError, binascii.Error) as e:
        raise ServingError("INVALID_ARGUMENT", f"Unable to base64 decode input '{name}': {e}") from e


def json_to_array(value: Any, name: str, dtype: tf.DType) -> np.ndarray:
    """A JSON value (nested lists) as an array of the signature's dtype, with TF Serving's rules: floats take any
    JSON number, integers need JSON integers in range, bools JSON booleans, strings a string or {"b64": ...}."""
    try:
        leaves = np.array(value, dtype=object)
    except (ValueError, RecursionError) as e:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': {e}") from e
    flat = leaves.reshape(-1)
    kinds = set(map(type, flat))
    if list in kinds:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': elements must all have the same shape (lists of "
                                               "one length at each level, at most 32 levels)")
    if dtype == tf.string:
        allowed = {str, dict}
    elif dtype.is_floating:
        allowed = {int, float}
    elif dtype.is_integer:
        allowed = {int}
    elif dtype == tf.bool:
        allowed = {bool}
    else:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': dtype {dtype_name(dtype)} is not supported over REST")
    bad = kinds - allowed
    if bad:
        leaf = next(v for v in flat if type(v) in bad)
        raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_short(leaf)} Type: "
                                               f"{_JSON_TYPE.get(type(leaf), type(leaf).__name__)} is not of "
                                               f"expected type: {dtype_name(dtype)} (input '{name}')")
    if dtype == tf.string:
        array = np.empty(len(flat), dtype=object)
        array[:] = [_bytes(v, name) for v in flat]
        return array.reshape(leaves.shape)
    if dtype.is_integer and flat.size:
        info = np.iinfo(dtype.as_numpy_dtype)
        for v in (min(flat), max(flat)):
            if not info.min <= v <= info.max:
                raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_short(v)} is out of range for "
                                                       f"{dtype_name(dtype)} (input '{name}')")
    try:
        with np.errstate(over="ignore"):
            return flat.astype(dtype.as_numpy_dtype).reshape(leaves.shape)
    except (OverflowError, ValueError, TypeError) as e:  # an integer too large even for a double
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': {e}") from e


def _to_json(array: np.ndarray, name: str):
    if array.dtype == object or array.dtype.kind in "SU":
        encode = ((lambda b: {"b64": base64.b64encode(b).decode()}) if name.endswith("_bytes")
                  else (lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b))
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def parse_predict(body: dict, specs: Dict[str, tf.TensorSpec]) -> tuple:
    """(inputs, row_format) from a predict body in row (`instances`) or columnar (`inputs`) form."""
    if ("instances" in body) == ("inputs" in body):
        raise ServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key" if "instances" not in body
                           else "Not both 'inputs' and 'instances' can be specified")
    names = sorted(specs)

    def keyed(value):  # an object of input name → value (not a {"b64": ...} value)
        return isinstance(value, dict) and set(value) != {"b64"}

    def convert(values: dict) -> dict:
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise ServingError("INVALID_ARGUMENT", f"input tensor alias not found in signature: {unknown[0]}. "
                                                   f"Inputs expected to be in the set {{{','.join(names)}}}.")
        return {k: json_to_array(v, k, specs[k].dtype) for k, v in values.items()}

    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
        if all(keyed(i) for i in instances):
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise ServingError("INVALID_ARGUMENT", "every instance must name the same inputs")
            return convert({k: [i[k] for i in instances] for k in keys}), True
        if len(names) == 1:
            return convert({names[0]: instances}), True
        raise ServingError("INVALID_ARGUMENT", "with several inputs, each instance must be an object keyed by "
                                               "input name")
    inputs = body["inputs"]
    if keyed(inputs):
        return convert(inputs), False
    if len(names) == 1:
        return convert({names[0]: inputs}), False
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


def example_from_json(features: Any, context: Any = None) -> tf.train.Example:
    """A tf.Example from TF Serving's JSON: ints/bools → int64_list, numbers → float_list, strings and
    {"b64": ...} → bytes_list; one value or a list of them per feature."""
    if not isinstance(features, dict) or (context is not None and not isinstance(context, dict)):
        raise ServingError("INVALID_ARGUMENT", "each of 'examples' and 'context' must be an object of "
                                               "feature name → value or list of values")
    feature = {}
    for key, value in {**(context or {}), **features}.items():
        values = value if isinstance(value, list) else [value]
        kinds = set(map(type, values))
        if not values:
            raise ServingError("INVALID_ARGUMENT", f"feature '{key}': an empty list has no type; leave the feature "
                                                   "out instead")
        if kinds <= {int, bool}:
            if not all(-2 ** 63 <= v < 2 ** 63 for v in values):
                raise ServingError("INVALID_ARGUMENT", f"feature '{key}': a value is out of the int64 range")
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
        elif kinds <= {int, float}:
            try:
                floats = [float(v) for v in values]
            except OverflowError as e:
                raise ServingError("INVALID_ARGUMENT", f"feature '{key}': {e}") from e
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=floats))
        elif kinds <= {str, dict}:
            data = [_bytes(v, key) for v in values]
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=data))
        else:
            found = ", ".join(sorted(_JSON_TYPE.get(k, k.__name__) for k in kinds))
            raise ServingError("INVALID_ARGUMENT", f"feature '{key}': values must be all integers/booleans, all "
                                                   f"numbers or all strings; got {found}")
    return tf.train.Example(features=tf.train.Features(feature=feature))


# ----------------------------------------------------------------------------- the API
class RestApi:
    """Routes a request to the core; `handle` never raises: it returns (status, JSON-able body, content type)."""

    def __init__(self, service: PredictionService):
        self.service, self.core = service, service.core

    def handle(self, method: str, path: str, body: bytes):
        start, model, api, status = time.perf_counter(), "", method, "OK"
        with self.core.track():
            try:
                path = path.split("?", 1)[0]
                match = ROUTE.match(path)
                if match:
                    model = match["name"]
                    api = (match["verb"] or ("metadata" if match["metadata"] else "status")).lower()
                code, payload = self.route(method, path, match, body)
                return code, payload, "text/plain; version=0.0.4" if isinstance(payload, str) else "application/json"
            except ServingError as e:
                status = e.code
                return e.http_status, {"error": e.message}, "application/json"
            except Exception as e:  # never crash the server on one request
                status = "INTERNAL"
                return 500, {"error": f"{type(e).__name__}: {e}"}, "application/json"
            finally:
                if model:
                    self.core.observe(model, api, status, time.perf_counter() - start)

    def route(self, method: str, path: str, match, body: bytes):
        if method == "GET" and path == METRICS_PATH:
            return 200, self.core.metrics.render(self.core.repository, self.core.batcher)
        if method == "GET" and path == READY_PATH:
            if self.core.ready():
                return 200, {"status": "SERVING", "models": sorted(self.core.repository.loaded_versions())}
            raise ServingError("UNAVAILABLE", "draining" if self.core.draining else "a model has no version AVAILABLE")
        if path.rstrip("/").lower() == "/v1/models":
            raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
        if not match or method not in ("GET", "POST"):
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        name, label, verb = match["name"], match["label"], (match["verb"] or "").lower()
        version = None
        if match["version"] is not None:
            version = version_of(match["version"])
            if version is None:
                raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        if method == "GET" and not verb:
            if match["metadata"]:
                return self.metadata(name, version, label)
            return self.status(name, version, label)
        if method != "POST" or not verb:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        try:
            payload = json.loads(body or b"")
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {str(e)[:200] or 'nesting too deep'}") from e
        if not isinstance(payload, dict):
            raise ServingError("INVALID_ARGUMENT", "JSON Parse error: the request body must be a JSON object")
        servable = self.core.repository.resolve(name, version, label)
        signature_name = payload.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
        if verb == "predict":
            return 200, self.predict(servable, signature_name, payload)
        examples = payload.get("examples")
        if not isinstance(examples, list) or not examples:
            raise ServingError("INVALID_ARGUMENT", "'examples' must be a non-empty list of objects")
        self.core.check_rows(len(examples))
        context = payload.get("context")
        converted = [example_from_json(e, context) for e in examples]
        request = (classification_pb2.ClassificationRequest() if verb == "classify"
                   else regression_pb2.RegressionRequest())
        request.model_spec.name, request.model_spec.signature_name = name, signature_name
        request.input.example_list.examples.extend(converted)
        response = getattr(self.service, verb)(servable, request)
        self.core.request_log.record(servable.name, f"{verb}_log", request, response)
        if verb == "classify":
            return 200, {"results": [[[c.label, c.score] for c in r.classes]
                                     for r in response.result.classifications]}
        return 200, {"results": [r.value for r in response.result.regressions]}

    def predict(self, servable, signature_name: str, payload: dict) -> dict:
        _, function = signature_of(servable, signature_name)
        given = payload.get("instances", payload.get("inputs"))  # rows are bounded before any is converted
        if isinstance(given, dict):
            given = next((v for v in given.values() if isinstance(v, list)), [])
        if isinstance(given, list):
            self.core.check_rows(len(given))
        inputs, row = parse_predict(payload, input_specs(function))
        name, outputs = self.core.predict(servable, signature_name, inputs)
        if self.core.request_log.wanted(servable.name):
            request, response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
            for spec in (request.model_spec, response.model_spec):
                spec.name, spec.signature_name = servable.name, name
                spec.version.value = servable.version
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tensor_proto(value))
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tensor_proto(value))
            self.core.request_log.record(servable.name, "predict_log", request, response, sampled=True)
        return format_predict(outputs, row)

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


# ----------------------------------------------------------------------------- HTTP/1.1
def _raw_response(status: int, message: str) -> bytes:
    """A complete JSON error answer that closes the connection (for refusals before a request is read)."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {httputil.responses.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_MALFORMED = _raw_response(400, "Malformed HTTP request: a bad request line, header, Content-Length or chunk, "
                               "or a body over the size limit")


class _Exchange(httputil.HTTPMessageDelegate):
    """One request on a connection: headers, body, then an answer from the thread pool."""

    def __init__(self, server: "RestServer", connection):
        self.server, self.connection = server, connection
        self.chunks, self.refused = [], False

    def headers_received(self, start_line, headers):
        self.method, self.path = start_line.method, start_line.path
        header_bytes = sum(len(k) + len(v) + 4 for k, v in headers.get_all())
        length = headers.get("Content-Length", "0")
        refusal = None
        if len(start_line.path) > MAX_URI_BYTES:
            refusal = 414, f"the request URI of {len(start_line.path)} bytes exceeds the limit of {MAX_URI_BYTES}"
        elif header_bytes > MAX_HEADER_BYTES:
            refusal = 431, f"request headers of {header_bytes} bytes exceed the limit of {MAX_HEADER_BYTES}"
        elif length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > self.server.max_body_bytes):
            refusal = 413, (f"request body of {length} bytes exceeds the limit of {self.server.max_body_bytes} "
                            "bytes (--max_body_bytes)")
        if refusal:  # answer now and close, without reading what follows
            self.refused = True
            stream = self.connection.detach()
            stream.write(_raw_response(*refusal)).add_done_callback(lambda _: stream.close())

    def data_received(self, chunk):
        self.chunks.append(chunk)

    def finish(self):
        if not self.refused:
            asyncio.ensure_future(self.server.answer(self, b"".join(self.chunks)))
        self.chunks = []

    def on_connection_close(self):
        self.chunks = []

    def respond(self, status: int, payload, content_type: str) -> None:
        data = payload if isinstance(payload, bytes) else (payload.encode() if isinstance(payload, str) else json.dumps(
            payload, allow_nan=True, default=lambda o: o.item() if hasattr(o, "item") else str(o)).encode())
        headers = httputil.HTTPHeaders({"Content-Type": content_type, "Content-Length": str(len(data))})
        start = httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses.get(status, "Error"))
        try:  # one write for headers and body (no Nagle delay on keep-alive connections)
            self.connection.write_headers(start, headers, None if self.method == "HEAD" else data)
            self.connection.finish()
        except Exception:  # the client went away
            pass


_BUSY = _raw_response(503, "too many open connections (--rest_api_max_connections); retry shortly")
_OUT_OF_HANDLES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _HTTPServer(HTTPServer):
    """Tornado's server, with its bare `400 Bad Request` (a malformed request line, header or chunk) answered
    with a JSON body like every other error, at most `max_connections` open connections (one more is answered
    503 and closed), and an accept loop that pauses while the process is out of file handles (Tornado's own
    retries the failing accept on every loop turn, spinning and flooding the log)."""

    PAUSE_SECONDS = 0.5
    max_connections = 1 << 30  # set by RestServer
    _paused_at = 0.0

    def add_sockets(self, sockets):
        compat.listen(self, sockets, self._accept_handler)

    def _accept_handler(self, loop, sock, handle):
        def accept(fd, events):
            for _ in range(128):
                if getattr(accept, "removed", False):
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as e:
                    if e.errno not in _OUT_OF_HANDLES:
                        raise
                    if time.monotonic() - self._paused_at > 60:  # one line a minute, not one a loop turn
                        log.error("REST: cannot accept connections (%s); accepting again every %.1f s", e,
                                  self.PAUSE_SECONDS)
                    self._paused_at = time.monotonic()
                    loop.remove_handler(sock)
                    loop.call_later(self.PAUSE_SECONDS, lambda: getattr(accept, "removed", False) or
                                    loop.add_handler(sock, accept, loop.READ))
                    return
                if compat.open_connections(self) >= self.max_connections:
                    try:
                        connection.setblocking(False)
                        connection.send(_BUSY)
                    except OSError:
                        pass
                    connection.close()
                    continue
                handle(connection, address)
        return accept

    def handle_stream(self, stream, address):
        compat.answer_bad_requests_with(stream, _MALFORMED)
        super().handle_stream(stream, address)


class _Delegate(httputil.HTTPServerConnectionDelegate):
    def __init__(self, server: "RestServer"):
        self.server = server

    def start_request(self, server_conn, request_conn):
        return _Exchange(self.server, request_conn)


def default_max_connections() -> int:
    """Open REST connections the open-file limit allows, keeping 128 handles for model files, request logs and
    gRPC; at most 4096."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 4096 if soft == resource.RLIM_INFINITY else max(8, min(4096, soft - 128))


class RestServer:
    """The REST front door on its own event-loop thread."""

    def __init__(self, api: RestApi, host: str, port: int, *, max_body_bytes: int = 16 << 20, threads: int = 8,
                 timeout_ms: int = 30000, idle_timeout_seconds: float = 60.0, body_timeout_seconds: float = 30.0,
                 max_connections: int = 0):
        self.api, self.max_body_bytes, self.timeout = api, max_body_bytes, timeout_ms / 1000
        self.max_connections = max_connections or default_max_connections()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="rest")
        sockets = netutil.bind_sockets(port, host)
        self.port = sockets[0].getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rest", daemon=True,
                                        args=(sockets, idle_timeout_seconds, body_timeout_seconds))
        self._thread.start()
        self._started.wait()

    def _serve(self, sockets, idle_timeout, body_timeout):
        asyncio.set_event_loop(self._loop)
        # idle_connection_timeout bounds both an idle keep-alive connection and the wait for a request's headers.
        self._server = _HTTPServer(_Delegate(self), idle_connection_timeout=idle_timeout, body_timeout=body_timeout,
                                   max_header_size=1 << 20, max_body_size=self.max_body_bytes,
                                   decompress_request=False)
        self._server.max_connections = self.max_connections
        self._server.add_sockets(sockets)
        self._started.set()
        self._loop.run_forever()

    async def answer(self, exchange: _Exchange, body: bytes) -> None:
        if exchange.method == "GET" and exchange.path.split("?", 1)[0] in (READY_PATH, METRICS_PATH):
            exchange.respond(*self.api.handle(exchange.method, exchange.path, body))  # cheap: never queued
            return  # behind inference in the pool
        work = asyncio.wrap_future(self.pool.submit(self.api.handle, exchange.method, exchange.path, body))
        try:
            status, payload, content_type = await asyncio.wait_for(work, self.timeout)
        except asyncio.TimeoutError:
            status, payload, content_type = HTTP_STATUS["DEADLINE_EXCEEDED"], {
                "error": f"Request timed out after {self.timeout * 1000:.0f} ms (--rest_api_timeout_in_ms)"}, \
                "application/json"
        exchange.respond(status, payload, content_type)

    def stop(self) -> None:
        """Stops accepting connections; requests in flight still get their answers."""
        self._loop.call_soon_threadsafe(self._server.stop)
