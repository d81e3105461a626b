"""A TF Serving client (REST or gRPC) and its CLI; uses only TF Serving's public APIs.

  python -m serving.client predict 7.png 3.jpg --server localhost:8501 [--model NAME]
  python -m serving.client predict photos/ --grpc localhost:8500     # every image in a folder (recursive)
  python -m serving.client status --server localhost:8501
  python -m serving.client metadata --grpc localhost:8500

Images are sent as encoded bytes to the `predict_images` signature, which converts them the way
the training data was (grey or RGB, bilinear resize), so the client needs no knowledge of the shape.
`predict` prints one line per image, sending them in requests of BATCH images; an image the model refuses
(not an image, a truncated file) is named on its line and the others go on (exit 1 when any was refused).
Without --model, the REST client asks the server which model it serves (this server's /readyz); TF Serving
has no such call, so with it, or over gRPC, name the model.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Dict, Optional

import numpy as np


BATCH = 32  # images per predict request of the CLI
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
REFUSED = (400, "INVALID_ARGUMENT")  # the status of a request the model refuses for its content (REST, gRPC)


class ServingClientError(RuntimeError):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class RestClient:
    def __init__(self, address: str, model: str, timeout: float = 30.0):
        self.base = address if address.startswith("http") else f"http://{address}"
        self.model, self.timeout = model, timeout

    def _call(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", "")
            except ValueError:
                message = e.reason
            raise ServingClientError(e.code, message) from None

    def _model_path(self, version=None):
        return f"/v1/models/{self.model}" + (f"/versions/{version}" if version else "")

    def status(self, version=None) -> dict:
        return self._call("GET", self._model_path(version))

    def served_models(self) -> list:
        """The model names this server serves (its /readyz); [] where the server does not say (TF Serving)."""
        try:
            return list(self._call("GET", "/readyz").get("models", []))
        except (ServingClientError, OSError, ValueError):
            return []

    def metadata(self, version=None) -> dict:
        return self._call("GET", self._model_path(version) + "/metadata")

    def predict(self, inputs: Dict[str, object], signature: str = "serving_default", version=None) -> Dict[str, np.ndarray]:
        body = {"signature_name": signature, "inputs": {k: _json_value(v) for k, v in inputs.items()}}
        outputs = self._call("POST", self._model_path(version) + ":predict", body)["outputs"]
        if not isinstance(outputs, dict):
            outputs = {"output": outputs}
        return {k: np.asarray(v) for k, v in outputs.items()}


def _json_value(value):
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, bytearray)):
        return [{"b64": base64.b64encode(v).decode()} for v in value]
    return np.asarray(value).tolist()


class GrpcClient:
    def __init__(self, address: str, model: str, timeout: float = 30.0):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(address)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.model, self.timeout = model, timeout

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingClientError(e.code().name, e.details()) from None

    def status(self, version=None) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model
        if version:
            request.model_spec.version.value = int(version)
        return json_format.MessageToDict(self._call(self.models.GetModelStatus, request),
                                         preserving_proto_field_name=True)

    def metadata(self, version=None) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model
        if version:
            request.model_spec.version.value = int(version)
        response = self._call(self.predictions.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {"model_spec": json_format.MessageToDict(response.model_spec),
                "metadata": {"signature_def": json_format.MessageToDict(signature_map,
                                                                        preserving_proto_field_name=True)}}

    def predict(self, inputs: Dict[str, object], signature: str = "serving_default", version=None) -> Dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = self.model, signature
        if version:
            request.model_spec.version.value = int(version)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self.predictions.Predict, request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def connect(server: Optional[str], grpc_address: Optional[str], model: str):
    return GrpcClient(grpc_address, model) if grpc_address else RestClient(server or "localhost:8501", model)


def classify_images(client, images: list) -> list:
    """[(class name, class index, probabilities)] for encoded PNG/JPEG images. Models without a
    `class_name` output (exported before class names were part of the contract) give the index as name."""
    outputs = client.predict({"images": images}, signature="predict_images")
    names = outputs.get("class_name", [str(int(c)) for c in outputs["classes"]])
    return [(n.decode() if isinstance(n, bytes) else str(n), int(c), p.tolist())
            for n, c, p in zip(names, outputs["classes"], outputs["probabilities"])]


def predict_files(client, files: list, out=None) -> int:
    """Prints one line per image file: its class, or why it was refused; returns how many were refused. A
    request the model refuses is retried image by image, so one bad file costs only its own line."""
    out = out or sys.stdout  # at call time: redirect_stdout and pytest's capture replace it
    refused = 0
    for start in range(0, len(files), BATCH):
        batch, images = files[start:start + BATCH], []
        for path in batch:
            try:
                with open(path, "rb") as f:
                    images.append(f.read())
            except OSError as e:
                images.append(e)
        readable = [(path, image) for path, image in zip(batch, images) if not isinstance(image, OSError)]
        try:
            answers = dict(zip([p for p, _ in readable], classify_images(client, [i for _, i in readable])))
        except ServingClientError as e:
            if e.code not in REFUSED:
                raise
            answers = {}
            for path, image in readable:
                try:
                    answers[path] = classify_images(client, [image])[0]
                except ServingClientError as one:
                    if one.code not in REFUSED:
                        raise
                    answers[path] = one
        for path, image in zip(batch, images):
            answer = image if isinstance(image, OSError) else answers[path]
            if isinstance(answer, Exception):
                refused += 1
                print(f"{path}: refused ({answer})", file=out, flush=True)
                continue
            name, index, probabilities = answer
            shown = ", ".join(f"{i}: {p:.3f}" for i, p in enumerate(probabilities))
            print(f'{path}: "{name}" p={probabilities[index]:.3f} (class {index})  [{shown}]', file=out, flush=True)
    return refused


def image_files(paths: list) -> list:
    """The files named, and the image files (by extension) under the folders named, sorted per folder."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            files.append(path)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["predict", "status", "metadata"])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", help="REST address host:port (default localhost:8501)")
    where.add_argument("--grpc", help="gRPC address host:port")
    parser.add_argument("--model", help="the served model's name (default: the one model a REST server of this "
                                          "project serves)")
    parser.add_argument("--version", type=int)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="predict: image files or folders of them")
    parser.add_argument("--image", action="append", default=[], help="an image file for predict (repeatable)")
    args = parser.parse_args(argv)
    model = args.model
    if not model:
        served = [] if args.grpc else RestClient(args.server or "localhost:8501", "").served_models()
        if len(served) != 1:
            parser.error("name the model with --model" + (f": the server serves {', '.join(served)}" if served else
                                                          " (the server does not list its models)"))
        model = served[0]
    client = connect(args.server, args.grpc, model)
    try:
        if args.command == "predict":
            files = image_files(args.paths + args.image)
            if not files:
                parser.error("predict needs image files or folders (PATH ... or --image FILE)")
            refused = predict_files(client, files)
            if refused:
                print(f"{refused} of {len(files)} images refused", file=sys.stderr)
                return 1
        elif args.command == "status":
            print(json.dumps(client.status(args.version), indent=2))
        else:
            print(json.dumps(client.metadata(args.version), indent=2))
    except (ServingClientError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
