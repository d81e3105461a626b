"""The inference core under both front doors: validate inputs against a signature, run, batch, count."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import queue
import re
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import error_codes_pb2 as errors_pb2

from serving.errors import ServingError
from serving.repository import Repository, Servable
from serving.request_log import RequestLog

DEFAULT_SIGNATURE = "serving_default"


def signature_of(servable: Servable, name: str):
    name = name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise ServingError("FAILED_PRECONDITION",
                           f"Serving signature name: \"{name}\" not found in signature def")
    return name, servable.signatures[name]


def input_specs(function) -> Dict[str, tf.TensorSpec]:
    return dict(function.structured_input_signature[1])


def dtype_name(dtype) -> str:
    """TF's name of a dtype as its error messages write it: float, double, int64, string, ..."""
    if isinstance(dtype, np.dtype) and dtype.kind in "OSU":
        return "string"
    return types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum)[3:].lower()


def check_inputs(function, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The inputs, if their names, dtypes and shapes match the signature; else INVALID_ARGUMENT, as TF Serving.

    Nothing is cast: a double tensor for a float input is refused, as TF Serving refuses it.
    """
    specs = input_specs(function)
    if set(inputs) != set(specs):
        missing, extra = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
        what = (f"input tensor alias not found in signature: {extra[0]}" if extra
                else f"missing input tensor alias: {missing[0]}")
        raise ServingError("INVALID_ARGUMENT", f"{what}. Inputs expected to be in the set {{{','.join(sorted(specs))}}}.")
    for index, name in enumerate(sorted(specs)):
        spec, array = specs[name], inputs[name]
        wanted, given = dtype_name(spec.dtype), dtype_name(array.dtype)
        if wanted != given:
            raise ServingError("INVALID_ARGUMENT", f"Expects arg[{index}] to be {wanted} but {given} is provided")
        if wanted == "string" and array.size and not all(isinstance(v, bytes) for v in array.reshape(-1)):
            raise ServingError("INVALID_ARGUMENT", f"input '{name}': expected strings")
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError("INVALID_ARGUMENT", f"input '{name}' has shape {list(array.shape)}, but the "
                                                   f"signature expects {spec.shape.as_list()} (-1 or None = any size)")
    return inputs


_STACK = re.compile(r"Detected at node .*? defined at \(most recent call last\):\n(?:(?:  |<stack).*\n)*")


def model_error(error: tf.errors.OpError) -> ServingError:
    """The op's own message under its own status code, without Python's graph-function wrapping."""
    message = _STACK.sub("", error.message.replace("Graph execution error:", ""))
    message = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\]", "", message)
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    code = errors_pb2.Code.Name(error.error_code) if error.error_code in errors_pb2.Code.values() else "UNKNOWN"
    return ServingError(code, message or type(error).__name__)


def run(function, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    try:
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
    except tf.errors.OpError as e:
        raise model_error(e) from e
    except (ValueError, TypeError) as e:  # refused by the graph function before it runs
        raise ServingError("INVALID_ARGUMENT", str(e).split("\n")[0]) from e
    return {k: v.numpy() for k, v in outputs.items()}


# ----------------------------------------------------------------------------- batching
@dataclasses.dataclass
class BatchingParameters:
    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4


class _Task:
    def __init__(self, inputs, function):
        self.inputs, self.rows, self.function = inputs, len(next(iter(inputs.values()))), function
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
        # Tasks carry their function: the workers hold no servable, so an unloaded version can be freed.
        key = (servable.name, servable.version, name,
               tuple((k, a.shape[1:], a.dtype.str) for k, a in sorted(inputs.items())))
        with self._lock:
            if key not in self._queues:
                self._queues[key] = queue.Queue(self.params.max_enqueued_batches * self.params.max_batch_size)
                for _ in range(self.params.num_batch_threads):
                    threading.Thread(target=self._work, args=(self._queues[key],), daemon=True).start()
        task = _Task(inputs, function)
        try:
            self._queues[key].put_nowait(task)
        except queue.Full:
            raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full")
        task.done.wait()
        if task.error:
            raise task.error
        return task.outputs

    def _work(self, tasks: "queue.Queue[_Task]") -> None:
        while True:
            batch = [tasks.get()]
            deadline = time.monotonic() + self.params.batch_timeout_micros / 1e6
            rows = batch[0].rows
            while rows < self.params.max_batch_size:
                try:
                    task = tasks.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if rows + task.rows > self.params.max_batch_size or task.function is not batch[0].function:
                    tasks.put(task)  # next batch
                    break
                batch.append(task)
                rows += task.rows
            self.batches[rows] += 1
            try:
                merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
                outputs = run(batch[0].function, merged)
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
            batch = merged = outputs = task = t = None  # hold no servable while idle


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
    def __init__(self, repository: Repository, batching: Optional[BatchingParameters] = None,
                 request_log: Optional[RequestLog] = None):
        self.repository = repository
        self.batcher = Batcher(batching) if batching else None
        self.metrics = Metrics()
        self.request_log = request_log or RequestLog()
        self.request_log.configure(list(repository.models.values()))
        self.draining = False
        self._inflight = 0
        self._inflight_lock = threading.Condition()
        self._last_request_end = time.monotonic()
        repository.quiet_for = self.quiet_for  # unloaded versions are freed when requests pause

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
                self._last_request_end = time.monotonic()
                self._inflight_lock.notify_all()

    def quiet_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight."""
        return 0.0 if self._inflight else time.monotonic() - self._last_request_end

    def reconfigure(self, models: List) -> None:
        """Applies a new model set (ModelConfig list): versions, labels and request logging."""
        self.repository.reconfigure(models)
        self.request_log.configure(models)

    def ready(self, model: Optional[str] = None) -> Optional[bool]:
        """Whether `model` (None: every model) has a version AVAILABLE and the server is not draining;
        None for an unknown model."""
        loaded = self.repository.loaded_versions()
        if model is not None and model not in loaded:
            return None
        return not self.draining and all(loaded[m] for m in ([model] if model else loaded))

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

    def examples_call(self, servable: Servable, signature_name: str, serialized: List[bytes], kind: str):
        """Runs a classify or regress signature (`kind`) on serialized tf.Examples, checked as TF Serving checks it."""
        name, function = signature_of(servable, signature_name)
        definition = servable.signature_defs[name]
        method = f"tensorflow/serving/{kind}"
        what = {"classify": "classification", "regress": "regression"}[kind]
        if definition.method_name != method:
            raise ServingError("INVALID_ARGUMENT", f"Expected {what} signature method_name to be {method}. "
                                                   f"Was: {definition.method_name}")
        if len(definition.inputs) != 1:
            raise ServingError("INVALID_ARGUMENT", "Expected one input Tensor.")
        if not serialized:
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        outputs = run(function, {next(iter(definition.inputs)): np.asarray(serialized, dtype=object)})
        for key, value in outputs.items():
            if value.ndim == 0 or len(value) != len(serialized):
                raise ServingError("INVALID_ARGUMENT", f"Input batch size did not match output batch size: "
                                                       f"{len(serialized)} vs. {value.shape[0] if value.ndim else 0}")
        return name, outputs

    def classify(self, servable, signature_name, serialized):
        """[(label, score), ...] per example from the `classes` and `scores` outputs, as TF Serving's classifier."""
        name, outputs = self.examples_call(servable, signature_name, serialized, "classify")
        classes, scores = outputs.get("classes"), outputs.get("scores")
        if classes is None and scores is None:
            raise ServingError("INVALID_ARGUMENT", "Expected classification signature outputs to contain at least "
                                                   "one of \"classes\" or \"scores\".")
        if classes is not None and dtype_name(classes.dtype) != "string":
            raise ServingError("INVALID_ARGUMENT", f"Expected classes Tensor of DT_STRING. Got: "
                                                   f"DT_{dtype_name(classes.dtype).upper()}")
        if scores is not None and scores.dtype != np.float32:
            raise ServingError("INVALID_ARGUMENT", f"Expected scores Tensor of DT_FLOAT. Got: "
                                                   f"DT_{dtype_name(scores.dtype).upper()}")
        rows = len(serialized)
        classes = None if classes is None else classes.reshape(rows, -1)
        scores = None if scores is None else scores.reshape(rows, -1)
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise ServingError("INVALID_ARGUMENT", f"Tensors class and score should match in shape: "
                                                   f"{list(classes.shape)} vs. {list(scores.shape)}")
        width = (classes if classes is not None else scores).shape[1]
        return name, [[(classes[i, j].decode("utf-8", "replace") if classes is not None else "",
                        float(scores[i, j]) if scores is not None else 0.0) for j in range(width)]
                      for i in range(rows)]

    def regress(self, servable, signature_name, serialized):
        name, outputs = self.examples_call(servable, signature_name, serialized, "regress")
        if set(outputs) != {"outputs"}:
            raise ServingError("INVALID_ARGUMENT", "Expected one output Tensor named \"outputs\"; the signature has "
                                                   f"{sorted(outputs)}")
        values = outputs["outputs"].reshape(len(serialized), -1)
        if values.shape[1] != 1:
            raise ServingError("INVALID_ARGUMENT", f"Expected output Tensor shape to be either [batch_size] or "
                                                   f"[batch_size, 1] but got {list(outputs['outputs'].shape)}")
        return name, [float(v) for v in values[:, 0]]
