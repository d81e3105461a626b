"""`python -m serving`: a model server speaking TF Serving's REST and gRPC APIs, with its flag names.

  python -m serving --model_name=digits --model_base_path=artifacts/serving/digits \
      --port=8500 --rest_api_port=8501
  python -m serving --model_config_file=models.config --enable_batching

Ports open once every configured model has a version AVAILABLE; SIGTERM drains in-flight requests.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
log = logging.getLogger("serving")


def parse_args(argv=None):
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    flag = p.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    flag("--rest_api_port", type=int, default=8501, help="REST port (0: pick a free one; -1: off)")
    flag("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 for all)")
    flag("--model_name", default="default")
    flag("--model_base_path", help="folder holding <version>/saved_model.pb")
    flag("--model_config_file", help="ModelServerConfig text proto (several models, policies, labels, logging)")
    flag("--model_config_file_poll_wait_seconds", type=float, default=0,
         help="seconds between reads of --model_config_file; a change is applied live (0: read once)")
    flag("--file_system_poll_wait_seconds", type=float, default=1.0,
         help="seconds between scans for new versions (0: scan once)")
    flag("--enable_batching", action="store_true")
    flag("--batching_parameters_file", help="BatchingParameters text proto")
    flag("--enable_model_warmup", type=_bool, default=True,
         help="replay assets.extra/tf_serving_warmup_requests before a version serves (default true)")
    flag("--num_request_iterations_for_warmup", type=int, default=1, help="times each warm-up request is replayed")
    flag("--enable_grpc_healthcheck_service", type=_bool, default=True, help="serve grpc.health.v1 (default true)")
    flag("--rest_api_num_threads", type=int, default=4 * cores, help="threads answering REST requests")
    flag("--rest_api_timeout_in_ms", type=int, default=30000, help="REST answer deadline (504 after it)")
    flag("--grpc_max_threads", type=int, default=4 * cores,
         help="threads for gRPC work off the event loop: unbatched model calls, Classify, Regress, metadata, status")
    flag("--tensorflow_intra_op_parallelism", type=int, default=0, help="threads inside one op (0: TF decides)")
    flag("--tensorflow_inter_op_parallelism", type=int, default=0, help="ops run in parallel (0: TF decides)")
    flag("--request_log_max_file_bytes", type=int, default=64 << 20, help="request log file size before rotation")
    flag("--request_log_max_file_seconds", type=float, default=300, help="request log file age before rotation")
    flag("--max_body_bytes", type=int, default=16 << 20, help="largest REST body / gRPC message")
    flag("--max_request_rows", type=int, default=1024,
         help="most rows (images, examples) one request may ask for (0: no bound)")
    flag("--rest_api_max_connections", type=int, default=0,
         help="open REST connections; one more is answered 503 (0: what the open-file limit allows, at most 4096)")
    flag("--request_log_dir", help="the folder request logs may be written under: a logging_config's "
                                   "filename_prefix, relative or absolute, must lie inside it (default: the "
                                   "folders of the startup config's prefixes; a reload cannot add others)")
    flag("--request_log_max_bytes", type=int, default=1 << 30,
         help="request log bytes kept in all; beyond, the oldest complete files are removed")
    flag("--drain_seconds", type=float, default=10.0, help="grace period for in-flight requests on SIGTERM")
    flag("--port_file", help="write 'grpc_port rest_port' here once serving (for tests and scripts)")
    args = p.parse_args(argv)
    if not args.model_config_file and not args.model_base_path:
        p.error("give --model_base_path (with --model_name) or --model_config_file")
    for name in ("rest_api_num_threads", "grpc_max_threads", "num_request_iterations_for_warmup", "max_body_bytes"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def raise_open_file_limit() -> None:
    """The soft open-file limit up to the hard one: each REST or gRPC connection holds a handle."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("open-file limit stays %d: %s", soft, e)


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"'{text}' is not true or false")
    return text.lower() in ("true", "1")


def load_batching(path):
    """BatchingParameters from TF Serving's text format; the defaults without a file."""
    from serving.core import BatchingParameters

    if not path:
        return BatchingParameters()
    with open(path) as f:
        return BatchingParameters.parse(f.read(), where=path)


def watch_config(path: str, seconds: float, apply, stop: threading.Event, metrics=None) -> None:
    """Re-reads the model config file every `seconds`; applies a changed one. A file that does not parse,
    holds an invalid entry or no model_config_list (an empty one included) changes nothing: it is logged
    and the previous config stays, as TF Serving's polling does."""
    from serving.repository import parse_config_file

    last = open(path, "rb").read()
    while not stop.wait(seconds):
        try:
            text = open(path, "rb").read()
            if text != last:
                last = text
                apply(parse_config_file(path))
        except Exception as e:  # a bad edit must not stop the server; the previous config stays
            log.error("model config %s not applied: %s", path, e)
        if metrics is not None:
            metrics.config_polls += 1


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s] %(message)s")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    from serving import grpc_service, rest
    from serving.core import InferenceCore
    from serving.repository import ModelConfig, NotAModelConfigList, Repository, parse_config_file
    from serving.request_log import RequestLog

    try:
        if args.model_config_file:
            models = parse_config_file(args.model_config_file)
        else:
            models = [ModelConfig(name=args.model_name, base_path=os.path.abspath(args.model_base_path))]
        batching = load_batching(args.batching_parameters_file) if args.enable_batching else None
    except NotAModelConfigList:
        print(f"error: {args.model_config_file} holds no model_config_list, so there is nothing to serve "
              "(write `model_config_list {{ config {{ name: ... base_path: ... }} }}`)", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # TensorFlow's and the libraries' own objects never become garbage: frozen out of the collector's view, a
    # full collection (which frees an unloaded version) walks only the models and requests.
    gc.collect()
    gc.freeze()
    raise_open_file_limit()
    try:
        request_log = RequestLog(args.request_log_max_file_bytes, args.request_log_max_file_seconds,
                                 max_bytes=args.request_log_max_bytes, root=args.request_log_dir,
                                 trusted=[m for m in models if m.logging])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    repository = Repository(models, poll_seconds=args.file_system_poll_wait_seconds)
    core = InferenceCore(repository, batching, request_log, max_request_rows=args.max_request_rows)
    grpc_server = grpc_service.make_server(core, args.host, args.port, args.max_body_bytes, args.grpc_max_threads,
                                           health=args.enable_grpc_healthcheck_service)
    if args.enable_model_warmup:
        def warmup(servable):
            replayed = grpc_server.prediction_service.warmup(
                servable, grpc_service.read_warmup(servable.path), args.num_request_iterations_for_warmup)
            if replayed:
                log.info("Warmed up %s version %d with %d requests", servable.name, servable.version, replayed)
        repository.on_load = warmup
    repository.start()
    if not repository.all_available():
        missing = [m.name for m in models if not repository.loaded_versions()[m.name]]
        print(f"error: no loadable version of {missing} (expected <base_path>/<integer version>/saved_model.pb)",
              file=sys.stderr)
        return 1
    grpc_server.start()
    rest_server = None
    if args.rest_api_port >= 0:
        rest_server = rest.RestServer(rest.RestApi(grpc_server.prediction_service), args.host, args.rest_api_port,
                                      max_body_bytes=args.max_body_bytes, threads=args.rest_api_num_threads,
                                      timeout_ms=args.rest_api_timeout_in_ms,
                                      max_connections=args.rest_api_max_connections)
    rest_port = rest_server.port if rest_server else -1
    log.info("Running gRPC ModelServer at %s:%d, REST at %s:%d", args.host, grpc_server.port, args.host, rest_port)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{grpc_server.port} {rest_port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)

    stop = threading.Event()
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        threading.Thread(target=watch_config, daemon=True, name="config-poller", args=(
            args.model_config_file, args.model_config_file_poll_wait_seconds, core.reconfigure, stop,
            core.metrics)).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("Shutting down: draining in-flight requests (up to %.0f s)", args.drain_seconds)
    core.draining = True  # readiness and health now say NOT_SERVING
    repository.stop()
    if rest_server:
        rest_server.stop()
    stopped = grpc_server.stop(args.drain_seconds)
    core.drain(args.drain_seconds)
    stopped.wait(args.drain_seconds)
    core.request_log.close()
    time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
