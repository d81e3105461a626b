"""Single-example predict latency and throughput of the model server, REST and gRPC, 1 and 8 clients,
with and without server-side batching, against the in-process signature call measured in the same run.

    .venv/bin/python benchmarks/serving_bench.py [--model_base_path artifacts/serving/digits] [--requests 400]
Loopback only; every loop is bounded by a request count and --seconds. Prints one JSON object.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"


def latency_stats(samples, wall):
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "requests_per_s": round(len(samples) / wall, 1), "requests": len(samples)}


def load(call, clients: int, requests: int, seconds: float):
    samples, lock, deadline = [], threading.Lock(), time.time() + seconds
    per_client = requests // clients

    def worker():
        for _ in range(per_client):
            if time.time() > deadline:
                return
            start = time.perf_counter()
            call()
            took = time.perf_counter() - start
            with lock:
                samples.append(took)

    call()  # warm-up
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latency_stats(samples, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model_base_path", default="artifacts/serving/digits")
    parser.add_argument("--model_name", default="digits")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if not os.path.isdir(args.model_base_path) or not any(v.isdigit() for v in os.listdir(args.model_base_path)):
        sys.exit(f"error: no pushed model under {args.model_base_path}; run `make run` first")

    import tensorflow as tf

    from serving.client import GrpcClient, RestClient
    from tests.serving.conftest import start_server

    version = max((v for v in os.listdir(args.model_base_path) if v.isdigit()), key=int)
    signature = tf.saved_model.load(os.path.join(args.model_base_path, version)).signatures["predict_pixels"]
    shape = signature.structured_input_signature[1]["pixels"].shape[1:]
    pixels = np.random.default_rng(0).integers(0, 255, size=(1, *shape)).astype(np.float32)
    tensor = tf.constant(pixels)
    in_process = load(lambda: signature(pixels=tensor), 1, args.requests, args.seconds)

    results = {"in_process": in_process}
    workdir = tempfile.mkdtemp(prefix="serving_bench_")
    for batching in (False, True):
        server = start_server([f"--model_name={args.model_name}", f"--model_base_path={args.model_base_path}",
                               "--file_system_poll_wait_seconds=0"] + (["--enable_batching"] if batching else []),
                              workdir)
        try:
            rest, grpc_client = RestClient(server.rest, args.model_name), GrpcClient(server.grpc, args.model_name)
            calls = {"rest": lambda: rest.predict({"pixels": pixels}, signature="predict_pixels"),
                     "grpc": lambda: grpc_client.predict({"pixels": pixels}, signature="predict_pixels")}
            for door, call in calls.items():
                for clients in ((1, 8) if not batching else (8,)):
                    key = f"{door}_{clients}_clients" + ("_batching" if batching else "")
                    results[key] = load(call, clients, args.requests, args.seconds)
        finally:
            server.stop()
    base = in_process["p50_ms"]
    results["ratios"] = {
        "grpc_p50_over_in_process": round(results["grpc_1_clients"]["p50_ms"] / base, 2),
        "rest_p50_over_in_process": round(results["rest_1_clients"]["p50_ms"] / base, 2),
        "grpc_8_clients_batching_rps_over_no_batching": round(
            results["grpc_8_clients_batching"]["requests_per_s"] / results["grpc_8_clients"]["requests_per_s"], 2),
        "rest_8_clients_batching_rps_over_no_batching": round(
            results["rest_8_clients_batching"]["requests_per_s"] / results["rest_8_clients"]["requests_per_s"], 2),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
