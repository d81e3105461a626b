"""TF Serving's gRPC API (tensorflow-serving-api protos) over the inference core, plus grpc.health.v1."""
from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import threading
import time
from concurrent import futures
from typing import Optional

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2,
                                     prediction_service_pb2_grpc, regression_pb2, status_pb2)

from serving.core import InferenceCore
from serving.errors import ServingError

# The typed repeated field TF Serving fills for each dtype (Tensor::AsProtoField; predict_util.cc kAsProtoField).
_TYPED_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val", types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val", types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val", types_pb2.DT_COMPLEX128: "dcomplex_val",
}


# The common numeric dtypes: requests decoded straight into numpy, answers written without TensorFlow's helpers.
_NUMERIC = {types_pb2.DT_FLOAT: np.dtype(np.float32), types_pb2.DT_DOUBLE: np.dtype(np.float64),
            types_pb2.DT_INT32: np.dtype(np.int32), types_pb2.DT_INT64: np.dtype(np.int64)}
_ENUM_OF = {dtype: enum for enum, dtype in _NUMERIC.items()}


def tensor_proto(array: np.ndarray, proto: Optional[tensor_pb2.TensorProto] = None) -> tensor_pb2.TensorProto:
    """`array` in the typed repeated field of its dtype, as TF Serving answers (official clients read .float_val);
    written into `proto` when given (a response's field)."""
    enum = _ENUM_OF.get(array.dtype) or (types_pb2.DT_STRING if array.dtype == object else None)
    if enum is not None:
        proto = tensor_pb2.TensorProto() if proto is None else proto
        proto.dtype = enum
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        getattr(proto, _TYPED_FIELD[enum]).extend(array.reshape(-1).tolist())  # bytes for a string tensor
        return proto
    dtype = tf.string if array.dtype == object or array.dtype.kind in "SU" else tf.as_dtype(array.dtype)
    built = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, tensor_shape=tf.TensorShape(array.shape).as_proto())
    values = array.reshape(-1)
    if dtype in (tf.float16, tf.bfloat16):
        values = values.view(np.uint16)
    elif dtype.is_complex:
        values = np.stack([values.real, values.imag], axis=-1).reshape(-1)
    getattr(built, _TYPED_FIELD[dtype.as_datatype_enum]).extend(values.tolist())
    if proto is None:
        return built
    proto.CopyFrom(built)
    return proto


def tensor_array(proto: tensor_pb2.TensorProto, name: str, max_bytes: int) -> np.ndarray:
    """A request tensor (typed fields or tensor_content), refused with INVALID_ARGUMENT when malformed or too big."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': the tensor shape {dims} is not fully defined")
    if proto.dtype not in _TYPED_FIELD:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': dtype "
                                               f"{types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() else proto.dtype}"
                                               " is not supported in a request")
    count, dtype = math.prod(dims), _NUMERIC.get(proto.dtype)
    if proto.dtype == types_pb2.DT_STRING:  # what it declares: TF fills missing elements with the last value
        given = proto.string_val
        size = sum(map(len, given)) + max(0, count - len(given)) * (len(given[-1]) if given else 0) + count
    else:
        size = count * (dtype.itemsize if dtype is not None else tf.as_dtype(proto.dtype).size)
    if size > max_bytes:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': a tensor of shape {dims} ({size} bytes) exceeds "
                                               f"the limit of {max_bytes} bytes")
    if dtype is not None:  # no copy from tensor_content; one from a typed field holding every value
        if proto.tensor_content and len(proto.tensor_content) == count * dtype.itemsize:
            return np.frombuffer(proto.tensor_content, dtype).reshape(dims)
        values = getattr(proto, _TYPED_FIELD[proto.dtype])
        if not proto.tensor_content and len(values) == count:
            return np.fromiter(values, dtype, count).reshape(dims)
    try:  # the other dtypes, and TF's own rules (one value fills the tensor) and errors
        return tf.make_ndarray(proto)
    except Exception as e:  # a size that does not match the shape, a bad dtype: the proto is malformed
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': malformed TensorProto ({e})") from e


WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def read_warmup(version_dir: str) -> list:
    """The PredictionLog records of a version's warm-up file (none without one); at most 1,000, as TF Serving."""
    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    records = []
    for data in tf.data.TFRecordDataset(path).as_numpy_iterator():
        records.append(prediction_log_pb2.PredictionLog.FromString(data))
        if len(records) > MAX_WARMUP_RECORDS:
            raise ValueError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    return records


def _servable(core: InferenceCore, spec):
    which = spec.WhichOneof("version_choice")
    version = spec.version.value if which == "version" else None
    label = spec.version_label if which == "version_label" else None
    return core.repository.resolve(spec.name, version, label)


def _serialized_examples(request_input) -> list:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        context = request_input.example_list_with_context.context
        merged = []
        for e in request_input.example_list_with_context.examples:
            example = tf.train.Example()
            example.CopyFrom(context)
            example.MergeFrom(e)
            merged.append(example.SerializeToString())
        return merged
    raise ServingError("INVALID_ARGUMENT", "Input is empty.")


class _Guard:
    """Maps ServingError (and anything unexpected) onto gRPC status codes; counts and logs the request. A
    context manager for the thread-pool handlers, an async one for the event-loop handlers."""

    def __init__(self, core, context, api, model):
        self.core, self.context, self.api, self.model = core, context, api, model

    def __enter__(self):
        self.start = time.perf_counter()
        self.core.begin()

    def _finish(self, error) -> Optional[ServingError]:
        """Counts the request; the error to answer with, if any."""
        self.core.end()
        status = "OK"
        if isinstance(error, ServingError):
            status = error.code
        elif error is not None and not isinstance(error, (grpc.RpcError, grpc.aio.AbortError)):
            status, error = "INTERNAL", ServingError("INTERNAL", f"{type(error).__name__}: {error}")
        self.core.observe(self.model, self.api, status, time.perf_counter() - self.start)
        return error if isinstance(error, ServingError) else None

    def __exit__(self, kind, error, tb):
        answer = self._finish(error)
        if answer:
            self.context.abort(getattr(grpc.StatusCode, answer.code), answer.message)
        return False

    async def __aenter__(self):
        self.__enter__()

    async def __aexit__(self, kind, error, tb):
        answer = self._finish(error)
        if answer:
            await self.context.abort(getattr(grpc.StatusCode, answer.code), answer.message)
        return False


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Each RPC resolves its servable, then runs on it; warm-up replays logged requests on a version being loaded."""

    def __init__(self, core: InferenceCore, max_tensor_bytes: int = 16 << 20):
        self.core, self.max_tensor_bytes = core, max_tensor_bytes

    # ------------------------------------------------------------------ on a given servable
    def predict(self, servable, request) -> predict_pb2.PredictResponse:
        name, outputs = self.core.predict(servable, request.model_spec.signature_name, self._inputs(request))
        return self._predict_response(servable, request, name, outputs)

    async def predict_async(self, servable, request) -> predict_pb2.PredictResponse:
        name, outputs = await self.core.predict_async(servable, request.model_spec.signature_name,
                                                      self._inputs(request))
        return self._predict_response(servable, request, name, outputs)

    def _inputs(self, request) -> dict:
        for proto in request.inputs.values():  # the declared rows, before any tensor is built from a fill
            if proto.tensor_shape.dim:
                self.core.check_rows(proto.tensor_shape.dim[0].size)
        return {k: tensor_array(v, k, self.max_tensor_bytes) for k, v in request.inputs.items()}

    @staticmethod
    def _predict_response(servable, request, name, outputs) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        wanted = set(request.output_filter) or set(outputs)
        unknown = wanted - set(outputs)
        if unknown:
            raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {sorted(unknown)[0]}")
        for key in sorted(wanted):
            tensor_proto(outputs[key], response.outputs[key])
        return response

    def classify(self, servable, request) -> classification_pb2.ClassificationResponse:
        name, results = self.core.classify(servable, request.model_spec.signature_name,
                                           _serialized_examples(request.input))
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name, response.model_spec.signature_name = servable.name, name
        response.model_spec.version.value = servable.version
        for result in results:
            classifications = response.result.classifications.add()
            for label, score in result:
                classifications.classes.add(label=label, score=score)
        return response

    def regress(self, servable, request) -> regression_pb2.RegressionResponse:
        name, values = self.core.regress(servable, request.model_spec.signature_name,
                                         _serialized_examples(request.input))
        response = regression_pb2.RegressionResponse()
        response.model_spec.name, response.model_spec.signature_name = servable.name, name
        response.model_spec.version.value = servable.version
        for value in values:
            response.result.regressions.add(value=value)
        return response

    def multi_inference(self, servable, request) -> inference_pb2.MultiInferenceResponse:
        seen = set()
        for task in request.tasks:
            if task.model_spec.name != request.tasks[0].model_spec.name:
                raise ServingError("INVALID_ARGUMENT", "All ModelSpecs in a MultiInferenceRequest must access the "
                                                       "same model name")
            if task.model_spec.signature_name in seen:
                raise ServingError("INVALID_ARGUMENT", "Duplicate evaluation of signature: "
                                                       f"{task.model_spec.signature_name}")
            seen.add(task.model_spec.signature_name)
            if task.method_name not in ("tensorflow/serving/classify", "tensorflow/serving/regress"):
                raise ServingError("INVALID_ARGUMENT", f"Unsupported signature method_name: {task.method_name}")
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            if task.method_name.endswith("classify"):
                sub = classification_pb2.ClassificationRequest(model_spec=task.model_spec, input=request.input)
                result = self.classify(servable, sub)
                response.results.add(model_spec=result.model_spec, classification_result=result.result)
            else:
                sub = regression_pb2.RegressionRequest(model_spec=task.model_spec, input=request.input)
                result = self.regress(servable, sub)
                response.results.add(model_spec=result.model_spec, regression_result=result.result)
        return response

    def warmup(self, servable, records, iterations: int) -> int:
        """Replays PredictionLog `records` on `servable`, each `iterations` times; any failure fails the load."""
        for log in records:
            kind = log.WhichOneof("log_type")
            if kind not in ("predict_log", "classify_log", "regress_log", "multi_inference_log"):
                raise ValueError(f"warm-up request of unsupported type {kind}")
            run, request = getattr(self, kind[:-len("_log")]), getattr(log, kind).request
            for _ in range(iterations):
                run(servable, request)
        return len(records)

    # ------------------------------------------------------------------ the RPCs, on the server's event loop
    async def _call(self, api, request, context, spec):
        """Predict decodes and encodes on the loop while its model call runs on a batch thread (or in the pool);
        the example-based calls run whole in the pool."""
        async with _Guard(self.core, context, api, spec.name):
            servable = _servable(self.core, spec)
            if api == "predict":
                response = await self.predict_async(servable, request)
            else:
                response = await asyncio.get_running_loop().run_in_executor(None, getattr(self, api), servable,
                                                                             request)
            self.core.request_log.record(servable.name, f"{api}_log", request, response)
            return response

    async def Predict(self, request, context):
        return await self._call("predict", request, context, request.model_spec)

    async def Classify(self, request, context):
        return await self._call("classify", request, context, request.model_spec)

    async def Regress(self, request, context):
        return await self._call("regress", request, context, request.model_spec)

    async def MultiInference(self, request, context):
        if not request.tasks:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "MultiInferenceRequest must have at least one task")
        return await self._call("multi_inference", request, context, request.tasks[0].model_spec)

    def GetModelMetadata(self, request, context):
        with _Guard(self.core, context, "metadata", request.model_spec.name):
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError("INVALID_ARGUMENT", "Metadata field signature_def is the only one supported; "
                                                       f"got {list(request.metadata_field)}")
            servable = _servable(self.core, request.model_spec)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(signature_map)
            return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    STATE = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}

    def __init__(self, core: InferenceCore):
        self.core = core

    def GetModelStatus(self, request, context):
        with _Guard(self.core, context, "status", request.model_spec.name):
            spec = request.model_spec
            which = spec.WhichOneof("version_choice")
            states = self.core.repository.status(
                spec.name, spec.version.value if which == "version" else None,
                spec.version_label if which == "version_label" else None)
            response = get_model_status_pb2.GetModelStatusResponse()
            for version, state in sorted(states.items(), reverse=True):
                response.model_version_status.add(
                    version=version, state=self.STATE[state.state],
                    status=status_pb2.StatusProto(error_code=2 if state.error else 0, error_message=state.error))
            return response

    def HandleReloadConfigRequest(self, request, context):
        """Applies a new ModelServerConfig (a model_config_list; anything else, an empty config included, changes
        nothing and is INVALID_ARGUMENT): adds, removes and re-labels models; returns once new models serve."""
        from serving.repository import NOT_A_LIST_REQUEST, NotAModelConfigList, models_from_proto

        with _Guard(self.core, context, "reload_config", ""):
            try:
                models = models_from_proto(request.config)
                self.core.request_log.check(models)  # before anything changes
            except NotAModelConfigList as e:  # an empty request included: nothing changes
                raise ServingError("INVALID_ARGUMENT", NOT_A_LIST_REQUEST) from e
            except ValueError as e:
                raise ServingError("INVALID_ARGUMENT", str(e)) from e
            self.core.reconfigure(models)
            return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))


class Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1: "" is the whole server (SERVING while every model has a version AVAILABLE and it is not
    draining); a model name is that model."""

    def __init__(self, core: InferenceCore):
        self.core = core

    def Check(self, request, context):
        ready = self.core.ready(request.service or None)
        if ready is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


@dataclasses.dataclass
class GrpcServer:
    """The gRPC server (grpc.aio, on its own event loop thread; the thread-pool handlers and the model calls
    that are not batched run in `workers` threads), its PredictionService (which the REST API and warm-up call)
    and its bound port."""

    server: grpc.aio.Server
    prediction_service: PredictionService
    port: int
    loop: asyncio.AbstractEventLoop

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result()

    def stop(self, grace: float) -> threading.Event:
        """Refuses new calls, lets those in flight finish for up to `grace` seconds; the event is set once stopped."""
        stopped = threading.Event()
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).add_done_callback(
            lambda _: stopped.set())
        return stopped


def make_server(core: InferenceCore, host: str, port: int, max_message_bytes: int = 16 << 20,
                workers: int = 16, health: bool = True) -> GrpcServer:
    loop = asyncio.new_event_loop()
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc")
    loop.set_default_executor(pool)
    threading.Thread(target=loop.run_forever, name="grpc-loop", daemon=True).start()

    async def build():
        server = grpc.aio.server(migration_thread_pool=pool, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        predictions = PredictionService(core, max_message_bytes)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predictions, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
        if health:
            health_pb2_grpc.add_HealthServicer_to_server(Health(core), server)
        return server, predictions, server.add_insecure_port(f"{host}:{port}")

    try:
        server, predictions, bound = asyncio.run_coroutine_threadsafe(build(), loop).result()
    except RuntimeError as e:  # grpc.aio refuses a port it cannot bind
        raise OSError(f"cannot bind gRPC to {host}:{port}: {e}") from e
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return GrpcServer(server, predictions, bound, loop)
