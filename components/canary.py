"""Canary: serve the candidate on loopback with our TF-Serving-compatible server before pushing it.

The role of TFX's InfraValidator (which needs Docker or Kubernetes): start `python -m serving` on
free loopback ports with the candidate as `<base>/<name>/1`, wait until it is AVAILABLE, send eval
examples over REST and gRPC, and require the answers to match the in-process SavedModel. Writes an
InfraBlessing (INFRA_BLESSED / INFRA_NOT_BLESSED) that the Pusher requires.
"""
import concurrent.futures
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from tfx.types import standard_artifacts
from tfx.utils import path_utils
# TFX's public names, imported from where they live: tfx.v1 would import every extension (Google Cloud AI
# Platform among them, 2 s) into each Kubeflow task that runs this component.
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component

from models import contract


def _copy_tree(source: str, target: str) -> None:
    for directory, _, files in tf.io.gfile.walk(source):
        relative = os.path.relpath(directory, source)
        tf.io.gfile.makedirs(os.path.join(target, relative))
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, relative, name), overwrite=True)


def _eval_records(examples_uri: str, count: int) -> list:
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)]


def check_model(serving_path: str, records: list, model_name: str, timeout_s: float = 180.0) -> str:
    """Empty when the served model answers `records` over REST and gRPC like the in-process model; else why not."""
    from serving.client import GrpcClient, RestClient, ServingClientError

    with tempfile.TemporaryDirectory(prefix="canary_") as base:
        _copy_tree(serving_path, os.path.join(base, model_name, "1"))
        port_file = os.path.join(base, "ports")
        log_path = os.path.join(base, "server.log")
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "serving", f"--model_name={model_name}",
                 f"--model_base_path={os.path.join(base, model_name)}", "--port=0", "--rest_api_port=0",
                 "--host=127.0.0.1", "--file_system_poll_wait_seconds=0", f"--port_file={port_file}"],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
        # The candidate loaded here (what its answers must be), on a thread while the server starts.
        loader = concurrent.futures.ThreadPoolExecutor(1)
        in_process = loader.submit(tf.saved_model.load, serving_path)
        try:
            deadline = time.time() + timeout_s
            while not os.path.exists(port_file):
                if server.poll() is not None or time.time() > deadline:
                    with open(log_path) as f:
                        tail = f.read()[-1500:]
                    return f"the model server did not start with the candidate (exit {server.poll()}): {tail}"
                time.sleep(0.2)
            with open(port_file) as f:
                grpc_port, rest_port = f.read().split()
            answers = {}
            try:
                rest = RestClient(f"127.0.0.1:{rest_port}", model_name)
                status = rest.status()["model_version_status"][0]["state"]
                if status != "AVAILABLE":
                    return f"the candidate is {status}, not AVAILABLE, on the server"
                answers["REST"] = rest.predict({"examples": list(records)})[contract.PROBABILITIES]
                answers["gRPC"] = GrpcClient(f"127.0.0.1:{grpc_port}", model_name).predict(
                    {"examples": np.asarray(records, dtype=object)})[contract.PROBABILITIES]
            except (ServingClientError, KeyError, OSError) as e:
                return f"the served candidate did not answer serving_default with tf.Examples: {e}"
            expected = in_process.result().signatures[contract.SERVING_DEFAULT](
                examples=tf.constant(records))[contract.PROBABILITIES].numpy()
            for door, got in answers.items():
                got = np.asarray(got, dtype=np.float32)
                if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4):
                    return (f"{door} answers differ from the in-process model (max abs difference "
                            f"{np.max(np.abs(got - expected)) if got.shape == expected.shape else got.shape})")
            return ""
        finally:
            loader.shutdown(wait=True)
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


@component
def Canary(model: InputArtifact[standard_artifacts.Model], examples: InputArtifact[standard_artifacts.Examples],
           blessing: OutputArtifact[standard_artifacts.InfraBlessing],
           model_name: Parameter[str], num_examples: Parameter[int] = 16):
    """Blesses `model` when the model server loads it and answers `num_examples` eval examples correctly."""
    serving_path = path_utils.serving_model_path(model.uri)
    try:
        reason = check_model(serving_path, _eval_records(examples.uri, num_examples), model_name)
    except Exception as e:  # a model that breaks the check is not blessed
        reason = f"{type(e).__name__}: {e}"
    blessing.set_int_custom_property("blessed", int(not reason))
    blessing.set_string_custom_property("reason", reason)
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "INFRA_NOT_BLESSED" if reason else "INFRA_BLESSED"), "w") as f:
        f.write(reason)
