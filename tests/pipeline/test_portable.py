"""Scale-out readiness: the Beam-based components on Beam's portable runner, as Flink, Spark and Dataflow run
them — a job service and an external SDK worker pool, each its own process, the pipeline's code reaching the
workers as it would in a cluster's containers."""
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pipeline import dag, local_runner
from tests.conftest import e2e_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEAM_COMPONENTS = (dag.EXAMPLE_GEN, dag.STATISTICS_GEN, dag.TRANSFORM, dag.EVALUATOR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc, log_path: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {open(log_path).read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"nothing listens on {port}: {open(log_path).read()[-2000:]}")


@pytest.mark.e2e
def test_beam_components_run_on_the_portable_runner_with_an_external_worker_pool(tmp_path, monkeypatch):
    # Given a remote runner, each TFX Beam executor packages TFX into a new temp folder it never removes.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    bin_dir = os.path.dirname(sys.executable)  # the pool starts workers as `python`: the venv's
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=ROOT, PATH=bin_dir + os.pathsep + os.environ["PATH"])
    job_port, pool_port = free_port(), free_port()
    services = []
    try:
        for name, argv, port in (
                ("job_service", ["apache_beam.runners.portability.local_job_service_main", f"--port={job_port}"],
                 job_port),
                ("worker_pool", ["apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
                 pool_port)):
            log_path = str(tmp_path / f"{name}.log")
            proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, cwd=str(tmp_path),
                                    stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
            services.append((proc, log_path))
            wait_for_port(port, proc, log_path)
        config = e2e_config(tmp_path / "out")
        config.hparams.epochs, config.compression.prune_epochs = 3, 1
        config.compression.max_accuracy_drop = 0.05  # the runner is under test here, not compression
        config.beam_args = ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                            "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]
        result = local_runner.run(config)
    finally:
        for proc, _ in services:
            proc.terminate()
            proc.wait(30)
    states = {c.name: c.state for c in result.components}
    assert all(states[name] == "COMPLETE" for name in BEAM_COMPONENTS), states
    assert result.pushed, result.refusal
    jobs = open(services[0][1]).read().count("Running job")
    workers = open(services[1][1]).read().count("Starting worker")
    assert jobs >= len(BEAM_COMPONENTS) and workers >= len(BEAM_COMPONENTS), (jobs, workers)
