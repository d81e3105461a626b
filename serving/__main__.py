"""`python -m serving`: a model server speaking TF Serving's REST and gRPC APIs, with its flag names.

  python -m serving --model_name=digits --model_base_path=artifacts/serving/digits \
      --port=8500 --rest_api_port=8501
  python -m serving --model_config_file=models.config --enable_batching

Ports open once every configured model has a version AVAILABLE; SIGTERM drains in-flight requests.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
log = logging.getLogger("serving")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0: pick a free one; -1: off)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 for all)")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", help="folder holding <version>/saved_model.pb")
    p.add_argument("--model_config_file", help="ModelServerConfig text proto (several models, policies, labels)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="seconds between scans for new versions (0: scan once)")
    p.add_argument("--enable_batching", action="store_true")
    p.add_argument("--batching_parameters_file", help="BatchingParameters text proto")
    p.add_argument("--max_body_bytes", type=int, default=16 << 20, help="largest REST body / gRPC message")
    p.add_argument("--drain_seconds", type=float, default=10.0, help="grace period for in-flight requests on SIGTERM")
    p.add_argument("--port_file", help="write 'grpc_port rest_port' here once serving (for tests and scripts)")
    args = p.parse_args(argv)
    if not args.model_config_file and not args.model_base_path:
        p.error("give --model_base_path (with --model_name) or --model_config_file")
    return args


def load_batching(path):
    """BatchingParameters from TF Serving's text format (`max_batch_size { value: 32 }` ...)."""
    import re

    from serving.core import BatchingParameters

    params = BatchingParameters()
    if path:
        with open(path) as f:
            text = f.read()
        for field, value in re.findall(r"(\w+)\s*\{\s*value\s*:\s*(\d+)\s*\}", text):
            if not hasattr(params, field):
                raise ValueError(f"{path}: unsupported batching parameter '{field}'")
            setattr(params, field, int(value))
    return params


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s] %(message)s")
    from serving import grpc_service, rest
    from serving.core import InferenceCore
    from serving.repository import ModelConfig, Repository, parse_config_file

    try:
        if args.model_config_file:
            models = parse_config_file(args.model_config_file)
        else:
            models = [ModelConfig(name=args.model_name, base_path=os.path.abspath(args.model_base_path))]
        batching = load_batching(args.batching_parameters_file) if args.enable_batching else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    repository = Repository(models, poll_seconds=args.file_system_poll_wait_seconds)
    repository.start()
    if not repository.all_available():
        missing = [m.name for m in models if not repository.loaded_versions()[m.name]]
        print(f"error: no loadable version of {missing} (expected <base_path>/<integer version>/saved_model.pb)",
              file=sys.stderr)
        return 1
    core = InferenceCore(repository, batching)
    grpc_server = grpc_service.make_server(core, args.host, args.port, args.max_body_bytes)
    grpc_server.start()
    rest_server = None
    if args.rest_api_port >= 0:
        rest_server = rest.make_server(core, args.host, args.rest_api_port, args.max_body_bytes)
        threading.Thread(target=rest_server.serve_forever, daemon=True).start()
    rest_port = rest_server.server_address[1] if rest_server else -1
    log.info("Running gRPC ModelServer at %s:%d, REST at %s:%d", args.host, grpc_server.bound_port, args.host, rest_port)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{grpc_server.bound_port} {rest_port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("Shutting down: draining in-flight requests (up to %.0f s)", args.drain_seconds)
    repository.stop()
    if rest_server:
        threading.Thread(target=rest_server.shutdown, daemon=True).start()
    stopped = grpc_server.stop(args.drain_seconds)
    core.drain(args.drain_seconds)
    stopped.wait(args.drain_seconds)
    time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
