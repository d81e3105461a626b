"""Closed-loop gRPC load for serving_bench.py: `concurrency` clients, each sending its next Predict as soon as
the last one is answered, for `seconds`. A separate process (its own GIL) on grpc.aio with one pre-serialized
request, so the client costs as little CPU as a load generator can and the figure is the server's.

    python benchmarks/grpc_load.py ADDRESS REQUEST_FILE CONCURRENCY SECONDS
prints {"requests", "requests_per_s", "p50_ms", "p99_ms", "errors", "error"}.
"""
import asyncio
import json
import sys
import time

import grpc
import numpy as np

PREDICT = "/tensorflow.serving.PredictionService/Predict"


async def load(address: str, request: bytes, concurrency: int, seconds: float) -> dict:
    samples, errors = [], []
    async with grpc.aio.insecure_channel(address) as channel:
        predict = channel.unary_unary(PREDICT)  # bytes in, bytes out: no client-side (de)serialization
        await predict(request)  # connect and warm up

        async def client(deadline: float) -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    await predict(request)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")
                    continue
                samples.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client(start + seconds) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(samples or [0.0]) * 1000
    return {"requests": len(samples), "requests_per_s": round(len(samples) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "errors": len(errors), "error": errors[0] if errors else None}


if __name__ == "__main__":
    address, request_file, concurrency, seconds = sys.argv[1:5]
    with open(request_file, "rb") as f:
        request = f.read()
    print(json.dumps(asyncio.run(load(address, request, int(concurrency), float(seconds)))))
