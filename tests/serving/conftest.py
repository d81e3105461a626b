"""A real server process on loopback over SavedModels the tests write themselves."""
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from models import signatures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class HalfPlusTwo(tf.Module):
    """TF Serving's classic test model: y = a*x + b (a=0.5, b=2 by default)."""

    def __init__(self, a=0.5, b=2.0):
        super().__init__()
        self.a, self.b = tf.Variable(a), tf.Variable(b)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        return {"outputs": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        return {"scores": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def to_number(self, text):  # fails inside the graph on text that is not a number
        return {"number": tf.strings.to_number(text)}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int64, name="pair"),
                                  tf.TensorSpec([None], tf.string, name="tag")])
    def two_inputs(self, pair, tag):
        return {"sum": tf.reduce_sum(pair, axis=1), "tag_bytes": tag}


def write_half_plus_two(path, a=0.5, b=2.0):
    """Writes the model to `path` atomically (temporary folder, then rename), as a pusher should."""
    module = HalfPlusTwo(a, b)
    tmp = path + ".tmp"
    tf.saved_model.save(module, tmp, signatures={
        "serving_default": module.predict, "regress_x_to_y": module.regress,
        "classify_x_to_y": module.classify, "two_inputs": module.two_inputs,
        "to_number": module.to_number})
    signatures.set_method_names(tmp, {"classify_x_to_y": "tensorflow/serving/classify",
                                      "regress_x_to_y": "tensorflow/serving/regress"})
    os.replace(tmp, path)


class Server:
    def __init__(self, args, workdir):
        self.port_file = os.path.join(workdir, f"ports-{time.time_ns()}")
        self.log_path = self.port_file + ".log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port=0", "--rest_api_port=0", f"--port_file={self.port_file}",
             *args], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore"))
        deadline = time.time() + 120
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {open(self.log_path).read()[-3000:]}")
            time.sleep(0.1)
        grpc_port, rest_port = open(self.port_file).read().split()
        self.grpc, self.rest = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    write_half_plus_two(str(base / "half_plus_two" / "1"))
    return base


@pytest.fixture(scope="module")
def server(model_base, tmp_path_factory):
    s = Server(["--model_name=half_plus_two", f"--model_base_path={model_base / 'half_plus_two'}",
                "--file_system_poll_wait_seconds=0.5", "--max_body_bytes=100000"], str(tmp_path_factory.mktemp("srv")))
    yield s
    s.stop()


def wait_for_polls(server, kind: str = "file_system", polls: int = 3, timeout: float = 30) -> None:
    """Returns once the server has finished `polls` more scans of `kind` (file_system: version folders;
    config_file: --model_config_file), read from its metrics page: what a test that asserts that nothing
    changed waits for, rather than a time that passes whether or not the server looked."""
    import re
    import urllib.request

    def count() -> int:
        with urllib.request.urlopen(server.rest + "/monitoring/prometheus/metrics", timeout=10) as r:
            return int(re.search(rf"^:tensorflow:serving:{kind}_polls (\d+)$", r.read().decode(), re.M).group(1))

    target, deadline = count() + polls, time.time() + timeout
    while count() < target:
        assert time.time() < deadline, f"the server finished fewer than {polls} {kind} polls in {timeout} s"
        time.sleep(0.05)


def start_server(args, workdir):
    return Server(args, str(workdir))

