"""An interrupted run ends cleanly: one line, CANCELED in ML Metadata, no partial output folders, and a rerun
that takes the completed components from the cache."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import lineage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e


def test_ctrl_c_during_training_cancels_cleanly_and_a_rerun_resumes_from_the_cache(tmp_path):
    from ml_metadata.proto import metadata_store_pb2

    output = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "run", "--output", str(output), "--no-prune", "--no-qat"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    run = subprocess.Popen(command + ["--epochs", "200", "--patience", "200"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    for line in run.stdout:  # the progress lines: "HH:MM:SS Trainer: running"
        if "Epoch 2/" in line or time.time() > deadline:
            break
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-3000:]
    assert "interrupted while Trainer was running: marked CANCELED in ML Metadata" in stderr
    assert "Traceback" not in stderr
    store = lineage.read_store(str(output / "metadata.sqlite"))
    states = [e.last_known_state for e in store.get_executions()]
    assert metadata_store_pb2.Execution.CANCELED in states and metadata_store_pb2.Execution.RUNNING not in states
    cancelled = next(e.id for e in store.get_executions() if e.last_known_state == metadata_store_pb2.Execution.CANCELED)
    assert not glob.glob(str(output / "pipeline_root" / "Trainer" / "*" / str(cancelled)))  # no partial outputs

    rerun = subprocess.run(command + ["--epochs", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode in (0, 1), rerun.stderr[-3000:]  # 1: the gate may refuse a 2-epoch model
    components = {c.name: c.state for c in lineage.latest_run(str(output / "metadata.sqlite"), "digits").components}
    assert components["FileBasedExampleGen"] == components["Transform"] == "CACHED", components
    assert components["Trainer"] == "COMPLETE"
