"""The inference core under both front doors: validate inputs against a signature, run, batch, count."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import os
import re
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import error_codes_pb2 as errors_pb2

from serving.errors import ServingError
from serving.repository import Repository, Servable
from serving.request_log import RequestLog

DEFAULT_SIGNATURE = "serving_default"


def signature_of(servable: Servable, name: str):
    name = name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise ServingError("FAILED_PRECONDITION",  # TF Serving's words, then what the model does take
                           f"Serving signature name: \"{name}\" not found in signature def (this model has "
                           + ", ".join(f"{n}({', '.join(input_specs(f))})" for n, f in sorted(servable.signatures.items()))
                           + ")")
    return name, servable.signatures[name]


def input_specs(function) -> Dict[str, tf.TensorSpec]:
    return dict(function.structured_input_signature[1])


@functools.lru_cache(maxsize=None)
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
        array = inputs[name]
        wanted, dims = _expected(specs[name])
        given = dtype_name(array.dtype)
        if wanted != given:
            raise ServingError("INVALID_ARGUMENT", f"Expects arg[{index}] to be {wanted} but {given} is provided")
        if wanted == "string" and array.size and not all(isinstance(v, bytes) for v in array.reshape(-1)):
            raise ServingError("INVALID_ARGUMENT", f"input '{name}': expected strings")
        if dims is not None and (len(dims) != array.ndim or any(d is not None and d != n
                                                                 for d, n in zip(dims, array.shape))):
            raise ServingError("INVALID_ARGUMENT", f"input '{name}' has shape {list(array.shape)}, but the "
                                                   f"signature expects {list(dims)} (-1 or None = any size)")
    return inputs


@functools.lru_cache(maxsize=1024)
def _expected(spec: tf.TensorSpec):
    """A signature input's dtype name and dims (None: any rank; a None dim: any size), read once."""
    return dtype_name(spec.dtype), (None if spec.shape.rank is None else tuple(spec.shape.as_list()))


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
def _batching_parameters_message():
    """TF Serving's BatchingParameters message (session_bundle_config.proto, which the tensorflow-serving-api
    wheel does not ship), so that a --batching_parameters_file parses as the model server parses it."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="serving/batching_parameters.proto", package="tensorflow.serving",
                                              syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    for number, (name, kind) in enumerate([
            ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue"), ("allowed_batch_sizes", "repeated int64"),
            ("pad_variable_length_inputs", "bool"), ("max_execution_batch_size", "Int64Value"),
            ("enable_large_batch_splitting", "bool")], start=1):
        if kind == "bool":
            message.field.add(name=name, number=number, label=F.LABEL_OPTIONAL, type=F.TYPE_BOOL)
        elif kind == "repeated int64":
            message.field.add(name=name, number=number, label=F.LABEL_REPEATED, type=F.TYPE_INT64)
        else:
            message.field.add(name=name, number=number, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                              type_name=f".google.protobuf.{kind}")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.MessageFactory(pool).GetPrototype(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's batching settings, with the same meaning; a field the file leaves unset takes these values.

    max_batch_size: the most rows a request may have and a batch may hold (unless large batches are split).
    batch_timeout_micros: how long the oldest request of an unfilled batch waits for others before it runs.
    max_enqueued_batches: batches' worth of rows a queue holds; a request beyond is UNAVAILABLE.
    num_batch_threads: threads running batches, shared by every model, version and signature.
    allowed_batch_sizes: when set, a batch is padded up to the next of these sizes (the last is the largest).
    enable_large_batch_splitting: a request over max_execution_batch_size rows is split across batches.
    pad_variable_length_inputs: accepted; requests are only merged with requests of the same row shape, so
    nothing needs padding. thread_pool_name: accepted (one pool serves every model).
    """
    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: Tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: max_batch_size

    @classmethod
    def parse(cls, text: str, where: str = "batching parameters") -> "BatchingParameters":
        """From TF Serving's text format (`max_batch_size { value: 32 } allowed_batch_sizes: 8 ...`)."""
        try:
            message = text_format.Parse(text, _batching_parameters_message()())
        except text_format.ParseError as e:
            raise ValueError(f"{where}: {e}") from e
        values = {}
        for field in dataclasses.fields(cls):
            if field.name == "allowed_batch_sizes":
                values[field.name] = tuple(message.allowed_batch_sizes)
            elif field.type == "bool":
                values[field.name] = getattr(message, field.name)
            elif message.HasField(field.name):
                values[field.name] = getattr(message, field.name).value
        params = cls(**values)
        params.check(where)
        return params

    @property
    def execution_batch_size(self) -> int:
        """The most rows one batch runs."""
        return (self.max_execution_batch_size or self.max_batch_size) if self.enable_large_batch_splitting \
            else self.max_batch_size

    def check(self, where: str) -> None:
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < (0 if name == "batch_timeout_micros" else 1):
                raise ValueError(f"{where}: {name} must be positive")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError(f"{where}: allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.execution_batch_size:
                what = "max_execution_batch_size" if self.enable_large_batch_splitting else "max_batch_size"
                raise ValueError(f"{where}: final entry in allowed_batch_sizes must equal {what} "
                                 f"({sizes[-1]} != {self.execution_batch_size})")


class _Task:
    __slots__ = ("inputs", "rows", "function", "enqueued", "done", "outputs", "error")

    def __init__(self, inputs, rows, function, done):
        self.inputs, self.rows, self.function, self.done = inputs, rows, function, done
        self.enqueued, self.outputs, self.error = time.monotonic(), None, None


def _resolve(futures) -> None:
    for future in futures:
        if not future.done():  # a cancelled call's future is left as it is
            future.set_result(None)


class Batcher:
    """Merges concurrent requests of the same servable, signature and row shape into one call, as TF Serving's
    shared batch scheduler does: one queue per kind of request and `num_batch_threads` threads for all queues;
    a queue's batch runs as soon as it is full, or when its oldest request has waited `batch_timeout_micros`."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._limit = params.execution_batch_size
        self._capacity = params.max_enqueued_batches * self._limit
        self._timeout = params.batch_timeout_micros / 1e6
        self._queues: Dict[tuple, collections.deque] = {}  # key → tasks, oldest first
        self._rows: Dict[tuple, int] = {}
        self._ready = threading.Condition()
        self.batches = collections.Counter()  # batch size → count, for the metrics
        for i in range(params.num_batch_threads):
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True).start()

    def __call__(self, servable, name, function, inputs):
        """Runs `inputs` in a batch; blocks the calling thread until it ran."""
        tasks = self._schedule(servable, name, function, inputs, threading.Event)
        if tasks is None:
            return run(function, inputs)
        for task in tasks:
            task.done.wait()
        return self._outputs(tasks)

    async def run_async(self, servable, name, function, inputs):
        """Runs `inputs` in a batch; the caller's event loop serves other requests meanwhile."""
        loop = asyncio.get_running_loop()
        tasks = self._schedule(servable, name, function, inputs, loop.create_future)
        if tasks is None:
            return await loop.run_in_executor(None, run, function, inputs)
        for task in tasks:
            await task.done
        return self._outputs(tasks)

    def _schedule(self, servable, name, function, inputs, done) -> Optional[List[_Task]]:
        """Queues `inputs` (split in pieces of at most the execution batch size); None if they cannot be batched
        (a scalar, or inputs of different lengths). `done()` makes each task's signal: a threading.Event or an
        asyncio future, set once its batch ran."""
        if any(a.ndim == 0 for a in inputs.values()) or len({len(a) for a in inputs.values()}) != 1:
            return None
        rows = len(next(iter(inputs.values())))
        if rows > self.params.max_batch_size:
            raise ServingError("INVALID_ARGUMENT", f"Task size {rows} is larger than maximum input batch size "
                                                   f"{self.params.max_batch_size}")
        # Tasks carry their function: the threads hold no servable, so an unloaded version can be freed. The
        # function's id tells a version loaded again apart (a queued task keeps its function, and so its id).
        key = (servable.name, servable.version, name, id(function),
               tuple((k, a.shape[1:], a.dtype.str) for k, a in sorted(inputs.items())))
        pieces = [inputs] if rows <= self._limit else [{k: a[start:start + self._limit] for k, a in inputs.items()}
                                                       for start in range(0, rows, self._limit)]
        with self._ready:
            queued = self._rows.get(key, 0)
            if queued + rows > self._capacity:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full")
            tasks = [_Task(piece, len(next(iter(piece.values()))), function, done()) for piece in pieces]
            self._queues.setdefault(key, collections.deque()).extend(tasks)
            self._rows[key] = queued + rows
            if queued == 0 or queued + rows >= self._limit:  # a new oldest request, or a full batch: wake a thread
                self._ready.notify()
        return tasks

    @staticmethod
    def _outputs(tasks: List[_Task]) -> Dict[str, np.ndarray]:
        for task in tasks:
            if task.error:
                raise task.error
        if len(tasks) == 1:
            return tasks[0].outputs
        return {k: np.concatenate([t.outputs[k] for t in tasks]) for k in tasks[0].outputs}

    def _next_batch(self) -> List[_Task]:
        """Waits for a queue whose batch is due (full, or its oldest request timed out); takes that batch."""
        with self._ready:
            while True:
                now, due, wait = time.monotonic(), None, None
                for key, tasks in self._queues.items():
                    age = now - tasks[0].enqueued
                    if self._rows[key] >= self._limit or age >= self._timeout:
                        if due is None or age > now - self._queues[due][0].enqueued:
                            due = key  # the longest-waiting due queue first
                    else:
                        wait = min(wait, self._timeout - age) if wait is not None else self._timeout - age
                if due is not None:
                    break
                self._ready.wait(wait)
            tasks, batch, rows = self._queues[due], [], 0
            while tasks and rows + tasks[0].rows <= self._limit:
                batch.append(tasks.popleft())
                rows += batch[-1].rows
            self._rows[due] -= rows
            if tasks:
                self._ready.notify()  # what is left needs a thread: another full batch, or its oldest's timeout
            else:
                del self._queues[due], self._rows[due]  # no key outlives its requests
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            rows = sum(t.rows for t in batch)
            size = next((s for s in self.params.allowed_batch_sizes if s >= rows), rows)
            self.batches[size] += 1
            try:
                merged = {k: np.concatenate([t.inputs[k] for t in batch]) if len(batch) > 1 else batch[0].inputs[k]
                          for k in batch[0].inputs}
                if size > rows:  # padded with copies of the first row, as TF Serving pads to an allowed size
                    merged = {k: np.concatenate([v, np.repeat(v[:1], size - rows, axis=0)]) for k, v in merged.items()}
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
            finished = collections.defaultdict(list)  # one wake-up per event loop, not per request
            for t in batch:
                if isinstance(t.done, threading.Event):
                    t.done.set()
                else:
                    finished[t.done.get_loop()].append(t.done)
            for loop, waiting in finished.items():
                loop.call_soon_threadsafe(_resolve, waiting)
            batch = merged = outputs = t = None  # hold no servable while idle


# ----------------------------------------------------------------------------- metrics
def label(value) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped, as the exposition format asks."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Prometheus text exposition of request counts, latencies and loaded versions."""

    BUCKETS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)  # milliseconds

    def __init__(self):
        self._lock = threading.Lock()
        self.config_polls = 0  # finished reads of --model_config_file (serving.__main__.watch_config)
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
                lines.append(f':tensorflow:serving:request_count{{model_name="{label(model)}",api="{api}",'
                             f'status="{status}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api), entry in sorted(self.latency.items()):
                labels = f'model_name="{label(model)}",api="{api}"'
                for bound, n in zip(self.BUCKETS, entry[2:]):
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{bound}"}} {n}')
                lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}} {entry[1]}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {entry[0]:.3f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {entry[1]}")
        lines.append("# TYPE :tensorflow:core:servable_state gauge")
        for model, versions in sorted(repository.loaded_versions().items()):
            for version in versions:
                lines.append(f':tensorflow:core:servable_state{{model_name="{label(model)}",version="{version}",'
                             f'state="AVAILABLE"}} 1')
        lines.append("# TYPE :tensorflow:serving:file_system_polls counter")  # ours: finished version scans
        lines.append(f":tensorflow:serving:file_system_polls {repository.polls}")
        lines.append("# TYPE :tensorflow:serving:config_file_polls counter")  # ours: reads of --model_config_file
        lines.append(f":tensorflow:serving:config_file_polls {self.config_polls}")
        if batcher is not None:
            lines.append("# TYPE :tensorflow:serving:batch_size counter")
            for size, n in sorted(batcher.batches.items()):
                lines.append(f':tensorflow:serving:batch_size{{size="{size}"}} {n}')
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the core
MAX_REQUEST_ROWS = 1024  # rows (images, examples) one request may ask for: what it costs grows with them


class InferenceCore:
    def __init__(self, repository: Repository, batching: Optional[BatchingParameters] = None,
                 request_log: Optional[RequestLog] = None, max_request_rows: int = MAX_REQUEST_ROWS):
        self.repository, self.max_request_rows = repository, max_request_rows
        self.batcher = Batcher(batching) if batching else None
        self.metrics = Metrics()
        self.request_log = request_log or RequestLog(trusted=[m for m in repository.models.values() if m.logging])
        self.request_log.configure(list(repository.models.values()))
        self.draining = False
        self._inflight = 0
        self._inflight_lock = threading.Condition()
        self._last_request_end = time.monotonic()
        repository.quiet_for = self.quiet_for  # unloaded versions are freed when requests pause

    @contextlib.contextmanager
    def track(self):
        """Counts a request as in flight while it runs (for draining on SIGTERM)."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        with self._inflight_lock:
            self._inflight += 1

    def end(self) -> None:
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
        """Whether `model` (None: every model, and there is at least one) has a version AVAILABLE and the server
        is not draining; None for an unknown model."""
        loaded = self.repository.loaded_versions()
        if model is not None and model not in loaded:
            return None
        return not self.draining and bool(loaded) and all(loaded[m] for m in ([model] if model else loaded))

    def check_rows(self, rows: int) -> None:
        """INVALID_ARGUMENT when one request asks for more rows than --max_request_rows: a request's cost grows
        with its rows, and a tensor proto can declare many rows with one value (TF fills the rest)."""
        if self.max_request_rows and rows > self.max_request_rows:
            raise ServingError("INVALID_ARGUMENT", f"the request has {rows} rows; this server runs at most "
                                                   f"{self.max_request_rows} per request (--max_request_rows): "
                                                   "send them in smaller requests")

    def _rows_checked(self, function, inputs):
        checked = check_inputs(function, inputs)
        shaped = [a for a in checked.values() if a.ndim]
        if shaped:
            self.check_rows(len(shaped[0]))
        return checked

    def observe(self, model: str, api: str, status: str, seconds: float) -> None:
        """Counts a request in the metrics, under its model's name only if the server serves (or is
        configured for) that model: names that callers make up do not grow the metrics page."""
        if model and model not in self.repository.models:
            model = "(unknown model)"
        self.metrics.observe(model, api, status, seconds)

    def drain(self, timeout: float) -> bool:
        with self._inflight_lock:
            return self._inflight_lock.wait_for(lambda: self._inflight == 0, timeout)

    def predict(self, servable: Servable, signature_name: str,
                inputs: Dict[str, np.ndarray]) -> Tuple[str, Dict[str, np.ndarray]]:
        name, function = signature_of(servable, signature_name)
        checked = self._rows_checked(function, inputs)
        if self.batcher is not None:
            return name, self.batcher(servable, name, function, checked)
        return name, run(function, checked)

    async def predict_async(self, servable: Servable, signature_name: str,
                            inputs: Dict[str, np.ndarray]) -> Tuple[str, Dict[str, np.ndarray]]:
        """`predict` for an event loop: the model runs on a batch thread or in the loop's executor."""
        name, function = signature_of(servable, signature_name)
        checked = self._rows_checked(function, inputs)
        if self.batcher is not None:
            return name, await self.batcher.run_async(servable, name, function, checked)
        return name, await asyncio.get_running_loop().run_in_executor(None, run, function, checked)

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
        self.check_rows(len(serialized))
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
