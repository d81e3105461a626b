"""What hostile requests cost the model server: status, seconds and server RSS growth per request, beside a
legitimate 32-image request and, for the row bound, the same server with it off (--max_request_rows 0), in
the same run. Prints one JSON object.

    .venv/bin/python benchmarks/hostile_bench.py [--model_base_path artifacts/serving/digits]

Without --model_base_path it runs the pipeline on the bundled digits first (about a minute). Loopback only.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"


def start(base: str, work: str, *flags):
    port_file = os.path.join(work, f"ports-{time.time_ns()}")
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--model_name=digits", f"--model_base_path={base}",
                             "--port=0", "--rest_api_port=0", f"--port_file={port_file}", *flags], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(port_file):
        if proc.poll() is not None:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)
    grpc_port, rest_port = open(port_file).read().split()
    return proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"


def measure(proc, send) -> dict:
    rss = psutil.Process(proc.pid).memory_info().rss
    start = time.perf_counter()
    status = send()
    return {"status": status, "seconds": round(time.perf_counter() - start, 3),
            "rss_growth_mb": round((psutil.Process(proc.pid).memory_info().rss - rss) / 2**20, 1)}


def grpc_predict(address: str, request) -> str:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    try:
        prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 1 << 30)])).Predict(request, timeout=300)
        return "OK"
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()[:120]}"


def rest_post(url: str, body: bytes) -> str:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body), timeout=300) as r:
            return str(r.status)
    except urllib.error.HTTPError as e:
        return f"{e.code}: {json.loads(e.read()).get('error', '')[:120]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_base_path")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="hostile_bench_")
    base = args.model_base_path
    if not base:
        subprocess.run([sys.executable, "-m", "pipeline", "run", "--output", os.path.join(work, "run")], cwd=ROOT,
                       check=False, capture_output=True)
        base = os.path.join(work, "run", "serving", "digits")
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    def filled_pixels(rows):  # 66 bytes: a shape and one value, TF fills the rest
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "digits", "predict_pixels"
        tensor = request.inputs["pixels"]
        tensor.dtype = types_pb2.DT_FLOAT
        for size in (rows, 8, 8, 1):
            tensor.tensor_shape.dim.add(size=size)
        tensor.float_val.append(1.0)
        return request

    example = tf.train.Example(features=tf.train.Features(feature={"image": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy()]))}))
    copies = predict_pb2.PredictRequest()
    copies.model_spec.name = "digits"
    copies.inputs["examples"].dtype = types_pb2.DT_STRING
    copies.inputs["examples"].tensor_shape.dim.add(size=50_000)
    copies.inputs["examples"].string_val.append(example.SerializeToString())
    one, compact = [[[[0]] * 8] * 8], (",", ":")
    instances = json.dumps({"signature_name": "predict_pixels", "instances": one * 58_000}, separators=compact).encode()
    legit = json.dumps({"signature_name": "predict_pixels", "instances": one * 32}, separators=compact).encode()

    figures = {}
    proc, address, rest = start(base, work)
    try:
        url = rest + "/v1/models/digits:predict"
        figures["legitimate_32_images_rest"] = measure(proc, lambda: rest_post(url, legit))
        figures["filled_16384_rows_grpc"] = {"request_bytes": filled_pixels(16384).ByteSize(),
                                             **measure(proc, lambda: grpc_predict(address, filled_pixels(16384)))}
        figures["filled_50000_examples_grpc"] = {"request_bytes": copies.ByteSize(),
                                                 **measure(proc, lambda: grpc_predict(address, copies))}
        figures["rest_58000_instances_under_16_mb"] = {"request_bytes": len(instances),
                                           **measure(proc, lambda: rest_post(url, instances))}
        figures["legitimate_32_images_rest_after"] = measure(proc, lambda: rest_post(url, legit))
    finally:
        proc.terminate()
        proc.wait()
    proc, address, rest = start(base, work, "--max_request_rows=0")  # the reference: no row bound
    try:
        figures["reference_no_row_bound_filled_16384_rows_grpc"] = measure(
            proc, lambda: grpc_predict(address, filled_pixels(16384)))
    finally:
        proc.terminate()
        proc.wait()
    ours, reference = figures["filled_16384_rows_grpc"], figures["reference_no_row_bound_filled_16384_rows_grpc"]
    figures["ratio_rss_growth_bounded_over_unbounded"] = round(
        max(ours["rss_growth_mb"], 0.1) / max(reference["rss_growth_mb"], 0.1), 4)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
