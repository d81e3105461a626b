"""Model server figures against references measured in the same run. Prints one JSON object.

- Single-example predict latency and throughput, REST (a new connection per request, and one keep-alive
  connection) and gRPC, 1 and 8 clients, with and without batching, against the in-process signature call.
  Targets: gRPC p50 <= 1.5x in-process; REST keep-alive p50 <= 2x. A model-status RPC (no model call) is the
  floor under any gRPC call: the transport, both sides' gRPC Python and the server's loop.
- --clients (32) closed-loop gRPC callers (benchmarks/grpc_load.py, its own process) with and without
  batching (--batching_parameters), and with its batch_timeout_micros swept (--sweep_batch_timeouts_micros):
  TF Serving's batching guide leaves the timeout to measurement on the workload, so the figure is the best
  of the sweep, every value reported. Targets: batching >= 3x the requests/s, and >= 2,000 requests/s.
- The first request after a hot swap, with and without the warm-up file, against the steady p50 (target with
  warm-up <= 2x).
- Server RSS across --swaps hot swaps against after the first (target <= 1.05x).
- --fuzz N: the hostile-request corpus (tests/serving/fuzz.py) with N random mutations; answers by category
  and status class (target: no 5xx, no INTERNAL).

    .venv/bin/python benchmarks/serving_bench.py [--model_base_path artifacts/serving/digits] [--requests 400]
        [--swaps 50] [--fuzz 2000]
Loopback only; every loop is bounded by a request count and --seconds.
"""
import argparse
import http.client
import json
import os
import re
import shutil
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


def grpc_load(address: str, model_name: str, pixels, clients: int, seconds: float, workdir: str) -> dict:
    """Requests/s and latency of `clients` concurrent single-example gRPC Predict callers (benchmarks/grpc_load.py,
    in its own process)."""
    import subprocess

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model_name, "predict_pixels"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels))  # as TF Serving's example clients build it
    path = os.path.join(workdir, "predict_request.bin")
    with open(path, "wb") as f:
        f.write(request.SerializeToString())
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_load.py"),
                          address, path, str(clients), str(seconds)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def keep_alive_call(address: str, path: str, body: bytes):
    connection = http.client.HTTPConnection(*address.replace("http://", "").split(":"), timeout=30)

    def call():
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    return call


def swaps(model_base_path: str, model_name: str, pixels, workdir: str, count: int, warmup: bool):
    """Hot swaps of copies of the latest version: first-request latency after each, and the server's RSS."""
    from serving.client import GrpcClient
    from tests.serving.conftest import start_server

    source = os.path.join(model_base_path, max((v for v in os.listdir(model_base_path) if v.isdigit()), key=int))
    base = tempfile.mkdtemp(prefix="swaps_", dir=workdir)

    def stage(version):
        tmp = os.path.join(workdir, f"stage_{version}")
        shutil.copytree(source, tmp)
        if not warmup:
            shutil.rmtree(os.path.join(tmp, "assets.extra"), ignore_errors=True)
        os.replace(tmp, os.path.join(base, str(version)))

    stage(1)
    server = start_server([f"--model_name={model_name}", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=0.1"], workdir)
    try:
        client = GrpcClient(server.grpc, model_name)
        steady = load(lambda: client.predict({"pixels": pixels}, signature="predict_pixels"), 1, 100, 10)
        first, rss = [], []
        for version in range(2, count + 2):
            stage(version)
            # Once the new version serves and the old one is unloaded (its memory freed by a full collection).
            while [(s["version"], s["state"]) for s in client.status()["model_version_status"]][:2] != \
                    [(str(version), "AVAILABLE"), (str(version - 1), "END")]:
                time.sleep(0.02)
            start = time.perf_counter()
            client.predict({"pixels": pixels}, signature="predict_pixels")
            first.append(time.perf_counter() - start)
            shutil.rmtree(os.path.join(base, str(version - 1)))
            rss.append(rss_mb(server.proc.pid))
    finally:
        server.stop()
    return {"steady_p50_ms": steady["p50_ms"],
            "first_request_after_swap_p50_ms": round(float(np.median(first)) * 1000, 3),
            "first_request_after_swap_max_ms": round(max(first) * 1000, 3),
            "rss_mb_after_first_swap": round(rss[0], 1), "rss_mb_after_last_swap": round(rss[-1], 1), "swaps": count}


def fuzz_counts(workdir: str, mutations: int) -> dict:
    import collections

    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from tests.serving import fuzz
    from tests.serving.conftest import start_server, write_half_plus_two

    write_half_plus_two(os.path.join(workdir, "fuzz", "half_plus_two", "1"))
    server = start_server(["--model_name=half_plus_two", f"--model_base_path={workdir}/fuzz/half_plus_two",
                           "--max_body_bytes=100000"], workdir)
    counts = collections.Counter()
    try:
        host, port = server.rest.replace("http://", "").split(":")
        for category, raw in fuzz.corpus(seed=1, mutations=mutations):
            status = fuzz.send(host, int(port), raw, timeout=10)[0]
            counts[f"rest {category} {status // 100}xx" if status else f"rest {category} no answer"] += 1
        channel = grpc.insecure_channel(server.grpc)
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        services = {"HandleReloadConfigRequest": model_service_pb2_grpc.ModelServiceStub(channel)}
        for category, method, request in fuzz.grpc_corpus(os.path.join(workdir, "fuzz", "half_plus_two")):
            try:
                getattr(services.get(method, predictions), method)(request, timeout=10)
                counts[f"grpc {category} OK"] += 1
            except grpc.RpcError as e:
                counts[f"grpc {category} {e.code().name}"] += 1
    finally:
        server.stop()
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model_base_path", default="artifacts/serving/digits")
    parser.add_argument("--model_name", default="digits")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batching_parameters", default="max_batch_size { value: 32 } "
                        "batch_timeout_micros { value: 3000 } num_batch_threads { value: 1 }",
                        help="the batching server's --batching_parameters_file (TF Serving's text format)")
    parser.add_argument("--sweep_batch_timeouts_micros", default="1000,3000,10000,20000",
                        help="batch_timeout_micros values tried under the --clients load, the rest of "
                             "--batching_parameters kept (empty: no sweep)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent gRPC callers for the batching figures")
    parser.add_argument("--load_seconds", type=float, default=10.0, help="length of each closed-loop gRPC load")
    parser.add_argument("--swaps", type=int, default=50, help="hot swaps for the RSS and first-request figures")
    parser.add_argument("--fuzz", type=int, default=0, help="random mutations in the fuzz corpus (0: no fuzz run)")
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

    results = {"in_process": in_process, "batching_parameters": args.batching_parameters}
    workdir = tempfile.mkdtemp(prefix="serving_bench_")
    batching_file = os.path.join(workdir, "batching_parameters.txt")
    with open(batching_file, "w") as f:
        f.write(args.batching_parameters)
    for batching in (False, True):
        server = start_server([f"--model_name={args.model_name}", f"--model_base_path={args.model_base_path}",
                               "--file_system_poll_wait_seconds=0"]
                              + (["--enable_batching", f"--batching_parameters_file={batching_file}"] if batching
                                 else []), workdir)
        try:
            rest, grpc_client = RestClient(server.rest, args.model_name), GrpcClient(server.grpc, args.model_name)
            body = json.dumps({"signature_name": "predict_pixels", "instances": pixels.tolist()}).encode()
            calls = {"rest": lambda: rest.predict({"pixels": pixels}, signature="predict_pixels"),
                     "rest_keep_alive": keep_alive_call(server.rest, f"/v1/models/{args.model_name}:predict", body),
                     "grpc": lambda: grpc_client.predict({"pixels": pixels}, signature="predict_pixels"),
                     # the floor under any gRPC call here: a model-status RPC (no model call), same client and server
                     "grpc_model_status": grpc_client.status}
            results[f"grpc_{args.clients}_clients_closed_loop" + ("_batching" if batching else "")] = grpc_load(
                server.grpc, args.model_name, pixels, args.clients, args.load_seconds, workdir)
            for door, call in calls.items():
                for clients in ((1,) if door in ("rest_keep_alive", "grpc_model_status") else (1, 8) if not batching
                                else (8,)):
                    if clients == 1 and batching:
                        continue
                    key = f"{door}_{clients}_clients" + ("_batching" if batching else "")
                    results[key] = load(call, clients, args.requests, args.seconds)
        finally:
            server.stop()
    load_key = f"grpc_{args.clients}_clients_closed_loop"
    sweep = {}
    for timeout in [int(t) for t in args.sweep_batch_timeouts_micros.split(",") if t]:
        text = re.sub(r"batch_timeout_micros\s*\{[^}]*\}", "", args.batching_parameters)
        text += f" batch_timeout_micros {{ value: {timeout} }}"
        with open(batching_file, "w") as f:
            f.write(text)
        server = start_server([f"--model_name={args.model_name}", f"--model_base_path={args.model_base_path}",
                               "--file_system_poll_wait_seconds=0", "--enable_batching",
                               f"--batching_parameters_file={batching_file}"], workdir)
        try:
            sweep[timeout] = grpc_load(server.grpc, args.model_name, pixels, args.clients, args.load_seconds, workdir)
        finally:
            server.stop()
    if sweep:
        best = max(sweep, key=lambda t: sweep[t]["requests_per_s"])
        results[load_key + "_batching_by_timeout_micros"] = {
            str(t): {k: r[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")} for t, r in sweep.items()}
        results[load_key + "_batching_best"] = dict(sweep[best], batch_timeout_micros=best)
    if args.swaps:
        results["swaps_with_warmup"] = swaps(args.model_base_path, args.model_name, pixels, workdir, args.swaps, True)
        results["swaps_without_warmup"] = swaps(args.model_base_path, args.model_name, pixels, workdir,
                                                min(args.swaps, 10), False)
    if args.fuzz:
        results["fuzz"] = fuzz_counts(workdir, args.fuzz)
    base = in_process["p50_ms"]
    results["ratios"] = {
        "grpc_p50_over_in_process": round(results["grpc_1_clients"]["p50_ms"] / base, 2),
        "grpc_model_status_p50_over_in_process": round(results["grpc_model_status_1_clients"]["p50_ms"] / base, 2),
        "rest_p50_over_in_process": round(results["rest_1_clients"]["p50_ms"] / base, 2),
        "rest_keep_alive_p50_over_in_process": round(results["rest_keep_alive_1_clients"]["p50_ms"] / base, 2),
        "grpc_8_clients_batching_rps_over_no_batching": round(
            results["grpc_8_clients_batching"]["requests_per_s"] / results["grpc_8_clients"]["requests_per_s"], 2),
        f"grpc_{args.clients}_clients_batching_rps_over_no_batching": round(
            results[load_key + "_batching"]["requests_per_s"] / results[load_key]["requests_per_s"], 2),
        "rest_8_clients_batching_rps_over_no_batching": round(
            results["rest_8_clients_batching"]["requests_per_s"] / results["rest_8_clients"]["requests_per_s"], 2),
    }
    if sweep:
        results["ratios"][f"grpc_{args.clients}_clients_best_timeout_batching_rps_over_no_batching"] = round(
            results[load_key + "_batching_best"]["requests_per_s"] / results[load_key]["requests_per_s"], 2)
    if args.swaps:
        for kind in ("with", "without"):
            entry = results[f"swaps_{kind}_warmup"]
            results["ratios"][f"first_request_after_swap_{kind}_warmup_over_steady"] = round(
                entry["first_request_after_swap_p50_ms"] / entry["steady_p50_ms"], 2)
        entry = results["swaps_with_warmup"]
        results["ratios"]["rss_after_last_swap_over_first"] = round(
            entry["rss_mb_after_last_swap"] / entry["rss_mb_after_first_swap"], 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
