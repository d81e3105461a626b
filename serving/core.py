"""The inference core under both front doors: validate inputs against a signature, run, batch, count."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import queue
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from serving.errors import ServingError
from serving.repository import Repository, Servable

DEFAULT_SIGNATURE = "serving_default"


def signature_of(servable: Servable, name: str):
    name = name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise ServingError("FAILED_PRECONDITION",
                           f"Serving signature name: \"{name}\" not found in signature def")
    return name, servable.signatures[name]


def input_specs(function) -> Dict[str, tf.TensorSpec]:
    return dict(function.structured_input_signature[1])


def check_inputs(function, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Inputs cast to the signature's dtypes; INVALID_ARGUMENT names what does not match."""
    specs = input_specs(function)
    if set(inputs) != set(specs):
        missing, extra = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
        what = (f"input tensor alias not found in signature: {extra[0]}" if extra
                else f"missing input tensor alias: {missing[0]}")
        raise ServingError("INVALID_ARGUMENT", f"{what}. Inputs expected to be in the set {{{','.join(sorted(specs))}}}.")
    checked = {}
    for name, spec in specs.items():
        value = inputs[name]
        try:
            if spec.dtype == tf.string:
                array = np.asarray(value, dtype=object)
                if array.size and not all(isinstance(v, bytes) for v in array.reshape(-1)):
                    raise TypeError("expected strings")
            else:
                array = np.asarray(value)
                if array.dtype == object or array.dtype.kind in "USV":
                    raise TypeError(f"expected {spec.dtype.name} values")
                if spec.dtype.is_integer and array.dtype.kind == "f":
                    raise TypeError(f"expected integers for {spec.dtype.name}")
                array = array.astype(spec.dtype.as_numpy_dtype)
        except (TypeError, ValueError) as e:
            raise ServingError("INVALID_ARGUMENT", f"input '{name}': {e}") from e
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError("INVALID_ARGUMENT", f"input '{name}' has shape {list(array.shape)}, but the "
                                                   f"signature expects {spec.shape.as_list()} (None = any size)")
        checked[name] = array
    return checked


def run(function, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    try:
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
        message = getattr(e, "message", str(e)).split("\n")[0]
        raise ServingError("INVALID_ARGUMENT", message) from e
    return {k: v.numpy() for k, v in outputs.items()}


# ----------------------------------------------------------------------------- batching
@dataclasses.dataclass
class BatchingParameters:
    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4


class _Task:
    def __init__(self, inputs):
        self.inputs, self.rows = inputs, len(next(iter(inputs.values())))
        self.done, self.outputs, self.error = threading.Event(), None, None


class Batcher:
    """Merges concurrent requests of the same servable, signature and row shape into one call."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._queues: Dict[tuple, "queue.Queue[_Task]"] = {}
        self._lock = threading.Lock()
        self.batches = collections.Counter()  # batch size → count, for the metrics

    def __call__(self, servable, name, function, inputs):
        if any(a.ndim == 0 for a in inputs.values()) or len({len(a) for a in inputs.values()}) != 1:
            return run(function, inputs)
        key = (id(servable), name, tuple((k, a.shape[1:], a.dtype.str) for k, a in sorted(inputs.items())))
        with self._lock:
            if key not in self._queues:
                self._queues[key] = queue.Queue(self.params.max_enqueued_batches * self.params.max_batch_size)
                for _ in range(self.params.num_batch_threads):
                    threading.Thread(target=self._work, args=(self._queues[key], function), daemon=True).start()
        task = _Task(inputs)
        try:
            self._queues[key].put_nowait(task)
        except queue.Full:
            raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full")
        task.done.wait()
        if task.error:
            raise task.error
        return task.outputs

    def _work(self, tasks: "queue.Queue[_Task]", function) -> None:
        while True:
            batch = [tasks.get()]
            deadline = time.monotonic() + self.params.batch_timeout_micros / 1e6
            rows = batch[0].rows
            while rows < self.params.max_batch_size:
                try:
                    task = tasks.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if rows + task.rows > self.params.max_batch_size:
                    tasks.put(task)  # next batch
                    break
                batch.append(task)
                rows += task.rows
            self.batches[rows] += 1
            try:
                merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
                outputs = run(function, merged)
                start = 0
                for t in batch:
                    t.outputs = {k: v[start:start + t.rows] for k, v in outputs.items()}
                    start += t.rows
            except ServingError as e:
                for t in batch:
                    t.error = e
            except Exception as e:  # never leave a caller waiting
                for t in batch:
                    t.error = ServingError("INTERNAL", str(e))
            for t in batch:
                t.done.set()


# ----------------------------------------------------------------------------- metrics
class Metrics:
    """Prometheus text exposition of request counts, latencies and loaded versions."""

    BUCKETS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)  # milliseconds

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = collections.Counter()
        self.latency = collections.defaultdict(lambda: [0.0, 0] + [0] * len(self.BUCKETS))

    def observe(self, model: str, api: str, status: str, seconds: float) -> None:
        ms = seconds * 1000
        with self._lock:
            self.counts[(model, api, status)] += 1
            entry = self.latency[(model, api)]
            entry[0] += ms
            entry[1] += 1
            for i, bound in enumerate(self.BUCKETS):
                if ms <= bound:
                    entry[2 + i] += 1

    def render(self, repository: Repository, batcher: Optional[Batcher]) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, api, status), n in sorted(self.counts.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{model}",api="{api}",'
                             f'status="{status}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api), entry in sorted(self.latency.items()):
                labels = f'model_name="{model}",api="{api}"'
                for bound, n in zip(self.BUCKETS, entry[2:]):
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{bound}"}} {n}')
                lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}} {entry[1]}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {entry[0]:.3f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {entry[1]}")
        lines.append("# TYPE :tensorflow:core:servable_state gauge")
        for model, versions in sorted(repository.loaded_versions().items()):
            for version in versions:
                lines.append(f':tensorflow:core:servable_state{{model_name="{model}",version="{version}",'
                             f'state="AVAILABLE"}} 1')
        if batcher is not None:
            lines.append("# TYPE :tensorflow:serving:batch_size counter")
            for size, n in sorted(batcher.batches.items()):
                lines.append(f':tensorflow:serving:batch_size{{size="{size}"}} {n}')
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the core
class InferenceCore:
    def __init__(self, repository: Repository, batching: Optional[BatchingParameters] = None):
        self.repository = repository
        self.batcher = Batcher(batching) if batching else None
        self.metrics = Metrics()
        self._inflight = 0
        self._inflight_lock = threading.Condition()

    @contextlib.contextmanager
    def track(self):
        """Counts a request as in flight while it runs (for draining on SIGTERM)."""
        with self._inflight_lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._inflight_lock:
                self._inflight -= 1
                self._inflight_lock.notify_all()

    def drain(self, timeout: float) -> bool:
        with self._inflight_lock:
            return self._inflight_lock.wait_for(lambda: self._inflight == 0, timeout)

    def predict(self, servable: Servable, signature_name: str,
                inputs: Dict[str, np.ndarray]) -> Tuple[str, Dict[str, np.ndarray]]:
        name, function = signature_of(servable, signature_name)
        checked = check_inputs(function, inputs)
        if self.batcher is not None:
            return name, self.batcher(servable, name, function, checked)
        return name, run(function, checked)

    def examples_call(self, servable: Servable, signature_name: str, serialized: List[bytes]):
        """Runs a signature whose single input takes serialized tf.Examples (classify/regress)."""
        name, function = signature_of(servable, signature_name)
        specs = input_specs(function)
        if len(specs) != 1 or next(iter(specs.values())).dtype != tf.string:
            raise ServingError("INVALID_ARGUMENT", f"Expected classification/regression signature \"{name}\" "
                                                   "to take one string input of serialized tf.Examples")
        return name, run(function, {next(iter(specs)): np.asarray(serialized, dtype=object)})

    def classify(self, servable, signature_name, serialized):
        """[(label, score), ...] per example from `scores` (or `probabilities`) and optional `classes`."""
        name, outputs = self.examples_call(servable, signature_name, serialized)
        scores = outputs.get("scores", outputs.get("probabilities"))
        if scores is None:
            raise ServingError("INVALID_ARGUMENT", f"signature \"{name}\" has no scores output")
        scores = scores.reshape(len(serialized), -1)
        classes = outputs.get("classes")
        if classes is None or classes.dtype != object or classes.size != scores.size:
            classes = np.tile(np.arange(scores.shape[1]).astype(str), (len(serialized), 1))
        classes = classes.reshape(scores.shape)
        return name, [[(c.decode() if isinstance(c, bytes) else str(c), float(s)) for c, s in zip(cs, ss)]
                      for cs, ss in zip(classes, scores)]

    def regress(self, servable, signature_name, serialized):
        name, outputs = self.examples_call(servable, signature_name, serialized)
        values = outputs.get("outputs", next(iter(outputs.values())) if len(outputs) == 1 else None)
        if values is None:
            raise ServingError("INVALID_ARGUMENT", f"signature \"{name}\" has no 'outputs' output")
        return name, [float(v) for v in values.reshape(len(serialized), -1)[:, 0]]


def example_from_json(features: dict, context: Optional[dict] = None) -> bytes:
    """A tf.Example from TF Serving's JSON: floats → float_list, ints/bools → int64_list, strings → bytes_list."""
    import base64

    merged = dict(context or {})
    merged.update(features)
    feature = {}
    for key, value in merged.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, bool) or isinstance(v, int) for v in values):
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif all(isinstance(v, (str, dict)) for v in values):
            data = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode() for v in values]
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=data))
        else:
            raise ServingError("INVALID_ARGUMENT", f"feature '{key}': values must be all numbers or all strings")
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
