"""Request logging per model, as TF Serving's `logging_config`: a sampled share of requests and their responses
as PredictionLog records in rotated TFRecord files.

    config { name: "digits" base_path: "..."
             logging_config { log_collector_config { filename_prefix: "/logs/digits" }
                              sampling_config { sampling_rate: 0.01 } } }

Files are `<filename_prefix>-<start ms>-<n>.tfrecord`. A file being written is named `....tfrecord.partial`; it is
renamed when it reaches `max_file_bytes` or `max_file_seconds`, or when the server stops, so every `*.tfrecord`
file is complete. Read them with `tf.data.TFRecordDataset` and `PredictionLog.FromString`.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Dict, List, Optional

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

log = logging.getLogger(__name__)


class _File:
    def __init__(self, prefix: str, sequence: int):
        self.path = f"{prefix}-{int(time.time() * 1000)}-{sequence:05d}.tfrecord"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.writer = tf.io.TFRecordWriter(self.path + ".partial")
        self.opened, self.bytes = time.monotonic(), 0

    def close(self) -> None:
        self.writer.close()
        os.replace(self.path + ".partial", self.path)


class _ModelLog:
    def __init__(self, model: str, prefix: str, rate: float):
        self.model, self.prefix, self.rate = model, prefix, rate
        self.file, self.sequence = None, 0


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


class RequestLog:
    """Writes sampled requests of the models whose config has a `logging_config`; thread-safe.

    Where: under `root` (--request_log_dir; a relative filename_prefix is taken inside it), or without one in
    the folders of the `trusted` models' prefixes (the config the server started with). A config naming a prefix
    elsewhere is refused (ValueError), so a remote ReloadConfigRequest cannot make the server write files
    anywhere. How much: at most `max_bytes` in all: beyond, the oldest complete files are removed (rotation)."""

    def __init__(self, max_file_bytes: int = 64 << 20, max_file_seconds: float = 300.0, *,
                 max_bytes: int = 1 << 30, root: Optional[str] = None, trusted: List = ()):
        self.max_file_bytes, self.max_file_seconds, self.max_bytes = max_file_bytes, max_file_seconds, max_bytes
        self.root = os.path.realpath(root) if root else None
        self.folders = [self.root] if root else sorted({os.path.dirname(os.path.realpath(m.logging[0]))
                                                        for m in trusted})
        self.written, self._full_logged = 0, False  # bytes of the files it wrote that are still there
        self._closed: List[tuple] = []  # (path, bytes) of complete files, oldest first
        self._lock = threading.Lock()
        self._models: Dict[str, _ModelLog] = {}
        self.check(trusted)

    def prefix(self, given: str) -> str:
        """The path a logging_config's filename_prefix names (relative ones inside --request_log_dir)."""
        return os.path.realpath(os.path.join(self.root, given) if self.root else given)

    def check(self, models: List) -> None:
        """ValueError naming the first model whose request log would lie outside the allowed folders."""
        for m in models:
            if m.logging and not any(_inside(self.prefix(m.logging[0]), f) for f in self.folders):
                allowed = ", ".join(self.folders) or "none: the server started without request logging"
                raise ValueError(f"model '{m.name}': logging_config filename_prefix '{m.logging[0]}' is outside "
                                 f"the folders request logs may be written to ({allowed}); start the server with "
                                 "--request_log_dir to choose one")

    def configure(self, models: List) -> None:
        """Takes the logging settings of `models` (ModelConfig, checked); models no longer logged get their file
        closed."""
        self.check(models)
        with self._lock:
            wanted = {m.name: (self.prefix(m.logging[0]), m.logging[1]) for m in models if m.logging}
            for name in list(self._models):
                entry = self._models[name]
                if name not in wanted or wanted[name] != (entry.prefix, entry.rate):
                    self._close(entry)
                    del self._models[name]
            for name, (prefix, rate) in wanted.items():
                self._models.setdefault(name, _ModelLog(name, prefix, rate))

    def wanted(self, model: str) -> bool:
        """Whether to log this request (the sampling draw)."""
        entry = self._models.get(model)
        return entry is not None and random.random() < entry.rate

    def record(self, model: str, kind: str, request, response, sampled: bool = None) -> None:
        """Logs `request`/`response` as a PredictionLog of `kind` (predict_log, classify_log, ...) when sampled."""
        if sampled is None:
            sampled = self.wanted(model)
        if not sampled:
            return
        config = self._models.get(model)
        if config is None:
            return
        entry = prediction_log_pb2.PredictionLog()
        entry.log_metadata.sampling_config.sampling_rate = config.rate
        entry.log_metadata.model_spec.CopyFrom(response.model_spec if response.HasField("model_spec")
                                               else request.model_spec)
        entry.log_metadata.model_spec.name = model
        entry.log_metadata.timestamp_secs = int(time.time())
        getattr(entry, kind).request.CopyFrom(request)
        getattr(entry, kind).response.CopyFrom(response)
        data = entry.SerializeToString()
        with self._lock:
            target = self._models.get(model)
            if target is None:
                return
            if len(data) > self.max_bytes:
                return
            while self.written + len(data) > self.max_bytes:  # rotation: the oldest complete files go first
                if not self._closed:  # the files being written are the oldest: complete them, then remove
                    for entry in self._models.values():
                        self._close(entry)
                if not self._closed:
                    break
                path, size = self._closed.pop(0)
                try:
                    os.remove(path)
                except OSError as e:
                    log.error("request log %s: %s", path, e)
                self.written -= size
                if not self._full_logged:
                    log.warning("request logs reached --request_log_max_bytes (%d bytes): removing the oldest "
                                "files as new ones are written", self.max_bytes)
                    self._full_logged = True
            self.written += len(data)
            try:
                if target.file is None:
                    target.sequence += 1
                    target.file = _File(target.prefix, target.sequence)
                target.file.writer.write(data)
                target.file.writer.flush()
                target.file.bytes += len(data)
                if (target.file.bytes >= self.max_file_bytes
                        or time.monotonic() - target.file.opened >= self.max_file_seconds):
                    self._close(target)
            except OSError as e:  # a full disk must not fail the request that was answered
                log.error("request log of %s: %s", model, e)

    def _close(self, entry: _ModelLog) -> None:
        if entry.file is not None:
            try:
                entry.file.close()
                self._closed.append((entry.file.path, entry.file.bytes))
            except OSError as e:
                log.error("request log of %s: %s", entry.model, e)
            entry.file = None

    def close(self) -> None:
        with self._lock:
            for entry in self._models.values():
                self._close(entry)
