"""TF Serving's gRPC API (tensorflow-serving-api protos) over the inference core."""
from __future__ import annotations

import time
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2, status_pb2)

from serving.core import InferenceCore
from serving.errors import ServingError


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
    raise ServingError("INVALID_ARGUMENT", "Input is empty")


class _Guard:
    """Maps ServingError (and anything unexpected) onto gRPC status codes; counts the request."""

    def __init__(self, core, context, api, model):
        self.core, self.context, self.api, self.model = core, context, api, model

    def __enter__(self):
        self.start = time.perf_counter()
        self.tracker = self.core.track()
        self.tracker.__enter__()

    def __exit__(self, kind, error, tb):
        self.tracker.__exit__(None, None, None)  # only the in-flight count; errors are mapped below
        status = "OK"
        if isinstance(error, ServingError):
            status = error.code
        elif error is not None and not isinstance(error, grpc.RpcError):
            status, error = "INTERNAL", ServingError("INTERNAL", f"{type(error).__name__}: {error}")
        self.core.metrics.observe(self.model, self.api, status, time.perf_counter() - self.start)
        if isinstance(error, ServingError):
            self.context.abort(getattr(grpc.StatusCode, error.code), error.message)
        return False


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: InferenceCore):
        self.core = core

    def Predict(self, request, context):
        with _Guard(self.core, context, "predict", request.model_spec.name):
            servable = _servable(self.core, request.model_spec)
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except Exception as e:
                raise ServingError("INVALID_ARGUMENT", f"malformed TensorProto: {e}") from e
            name, outputs = self.core.predict(servable, request.model_spec.signature_name, inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = name
            wanted = set(request.output_filter) or set(outputs)
            unknown = wanted - set(outputs)
            if unknown:
                raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {sorted(unknown)[0]}")
            for key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
            return response

    def Classify(self, request, context):
        with _Guard(self.core, context, "classify", request.model_spec.name):
            return self._classify(request)

    def _classify(self, request):
        servable = _servable(self.core, request.model_spec)
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

    def Regress(self, request, context):
        with _Guard(self.core, context, "regress", request.model_spec.name):
            return self._regress(request)

    def _regress(self, request):
        servable = _servable(self.core, request.model_spec)
        name, values = self.core.regress(servable, request.model_spec.signature_name,
                                         _serialized_examples(request.input))
        response = regression_pb2.RegressionResponse()
        response.model_spec.name, response.model_spec.signature_name = servable.name, name
        response.model_spec.version.value = servable.version
        for value in values:
            response.result.regressions.add(value=value)
        return response

    def MultiInference(self, request, context):
        model = request.tasks[0].model_spec.name if request.tasks else ""
        with _Guard(self.core, context, "multi_inference", model):
            response = inference_pb2.MultiInferenceResponse()
            for task in request.tasks:
                if task.method_name.endswith("classify"):
                    sub = classification_pb2.ClassificationRequest(model_spec=task.model_spec, input=request.input)
                    result = self._classify(sub)
                    response.results.add(model_spec=result.model_spec, classification_result=result.result)
                elif task.method_name.endswith("regress"):
                    sub = regression_pb2.RegressionRequest(model_spec=task.model_spec, input=request.input)
                    result = self._regress(sub)
                    response.results.add(model_spec=result.model_spec, regression_result=result.result)
                else:
                    raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
            return response

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


def make_server(core: InferenceCore, host: str, port: int, max_message_bytes: int = 16 << 20,
                workers: int = 16) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    server.bound_port = bound
    return server

