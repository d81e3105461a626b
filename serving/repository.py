"""Model versions on disk: discovery, version policy, labels, polling and availability-preserving swaps.

Layout, as TF Serving reads it: <base_path>/<integer version>/saved_model.pb (+ variables/).
A version directory is loaded only once it is complete (saved_model.pb parses and every variables
shard is present); half-written directories are retried on the next poll.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import gc
import logging
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
VERSION = re.compile(r"^[0-9]{1,19}$")
RETRY_SECONDS = (1, 2, 4, 8, 16, 30, 60)  # waits before retrying a version that failed to load


@dataclasses.dataclass
class ModelConfig:
    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_latest: int = 1
    versions: tuple = ()
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)
    logging: Optional[Tuple[str, float]] = None  # request log: (filename_prefix, sampling_rate)


# TF Serving's words (model_service_impl.cc, server_core.cc) for a config that is not a ModelConfigList.
NOT_A_LIST_REQUEST = ("ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                      "currently supported")
NOT_A_LIST_TRANSITION = ("Cannot transition to requested config. It is only legal to transition from one "
                         "ModelConfigList to another.")


class NotAModelConfigList(ValueError):
    """The ModelServerConfig is empty or a custom_model_config: nothing is changed."""


def models_from_proto(config: model_server_config_pb2.ModelServerConfig) -> List[ModelConfig]:
    """The models of a TF Serving `ModelServerConfig`, validated whole before anything is applied: a config
    that is not a model_config_list (an empty one included) raises NotAModelConfigList, an invalid entry
    ValueError naming it."""
    if config.WhichOneof("config") != "model_config_list":
        raise NotAModelConfigList(NOT_A_LIST_TRANSITION)
    models = []
    for c in config.model_config_list.config:
        if c.name in {m.name for m in models}:
            raise ValueError(f"Illegal to list model {c.name} multiple times in config list")
        if not NAME.match(c.name):
            raise ValueError(f"model name '{c.name}' must be letters, digits, '_', '.', '-'")
        if not c.base_path:
            raise ValueError(f"model '{c.name}' has no base_path")
        if "://" not in c.base_path and not os.path.isabs(c.base_path):
            raise ValueError(f"Expected model {c.name} to have an absolute path or URI; got "
                             f"base_path()={c.base_path}")
        if c.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model '{c.name}': model_platform '{c.model_platform}' is not supported (tensorflow)")
        policy = c.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        logging_config = None
        if c.HasField("logging_config"):
            prefix = c.logging_config.log_collector_config.filename_prefix
            rate = c.logging_config.sampling_config.sampling_rate
            if not prefix or not 0 <= rate <= 1:
                raise ValueError(f"model '{c.name}': logging_config needs log_collector_config.filename_prefix and "
                                 f"a sampling_rate in [0, 1] (got {rate})")
            logging_config = (prefix, rate)
        models.append(ModelConfig(
            name=c.name, base_path=c.base_path, policy=kind,
            num_latest=(policy.latest.num_versions or 1) if kind == "latest" else 1,
            versions=tuple(policy.specific.versions) if kind == "specific" else (),
            labels=dict(c.version_labels), logging=logging_config))
    return models


def parse_config_file(path: str) -> List[ModelConfig]:
    """Reads a TF Serving `ModelServerConfig` text proto (model_config_list)."""
    with open(path) as f:
        try:
            config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
        except text_format.ParseError as e:
            raise ValueError(f"{path}: {e}") from e
    return models_from_proto(config)


def version_of(name: str) -> Optional[int]:
    """The version a directory name stands for (ASCII digits, as TF Serving parses them), or None."""
    if VERSION.match(name) and int(name) < 2 ** 63:
        return int(name)
    return None


def complete_version(path: str) -> bool:
    """True when saved_model.pb parses and every variables shard the model needs is there."""
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    except Exception:  # missing, or a truncated protobuf
        return False
    has_variables = any(node.WhichOneof("kind") == "variable"
                        for graph in saved_model.meta_graphs for node in graph.object_graph_def.nodes)
    variables = os.path.join(path, "variables")
    if not has_variables and not os.path.isdir(variables):
        return True
    if not os.path.exists(os.path.join(variables, "variables.index")):
        return False
    shards = [f for f in os.listdir(variables) if f.startswith("variables.data-")]
    if not shards:
        return False
    total = int(shards[0].rsplit("-of-", 1)[1])
    return len(shards) == total


def _fingerprint(path: str) -> tuple:
    """Sizes and modification times of a version's files: a version still being written changes it."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class Servable:
    """One loaded version of a model."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self.model = tf.saved_model.load(path)
        self.signatures = dict(self.model.signatures)
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model = saved_model_pb2.SavedModel.FromString(f.read())
        self.signature_defs = dict(saved_model.meta_graphs[0].signature_def)


@dataclasses.dataclass
class VersionState:
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error: str = ""


def _return_free_heap() -> None:
    """Hands the heap pages that freeing a version left unused back to the OS (glibc's malloc_trim; nothing
    elsewhere): glibc keeps them otherwise, and the server's RSS grows with every swap although the memory is
    free. ctypes releases the GIL for the call."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Repository:
    """Keeps the wanted versions of every configured model loaded; resolves requests to servables."""

    SETTLE_SECONDS = 1.0  # a version with a file changed more recently than this is still being written
    QUIET_SECONDS = 0.02  # unloaded versions are freed once no request has run for this long...
    MAX_DEFER_SECONDS = 2.0  # ...or after this long under constant load

    def __init__(self, models: List[ModelConfig], poll_seconds: float = 1.0, on_load=None):
        self.models: Dict[str, ModelConfig] = {}
        self.polls = 0
        self.poll_seconds = poll_seconds
        self.on_load = on_load  # callback(servable) after a load, before it serves (warm-up)
        self._lock = threading.Lock()  # guards the maps below; held only briefly
        self._poll_lock = threading.Lock()  # one scan or reconfiguration at a time
        self._servables: Dict[str, Dict[int, Servable]] = {}
        self._states: Dict[str, Dict[int, VersionState]] = {}
        self._retry: Dict[tuple, tuple] = {}  # (model, version) → (failures, next try, files when it failed)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # How long no request has been in flight (the inference core sets it; inf: no core, nothing to wait for).
        self.quiet_for: Callable[[], float] = lambda: math.inf
        self._garbage: List[Servable] = []  # unloaded versions waiting to be freed
        self._garbage_since = 0.0
        self._reaper = threading.Condition()
        threading.Thread(target=self._reap, name="version-reaper", daemon=True).start()
        self._apply(models)

    def _apply(self, models: List[ModelConfig]) -> List[Servable]:
        """Swaps the model set; returns the servables of removed models (to drop outside the lock)."""
        with self._lock:
            removed = [s for name in self.models if name not in {m.name for m in models}
                       for s in self._servables.pop(name).values()]
            for name in [n for n in self.models if n not in {m.name for m in models}]:
                del self._states[name]
            self.models = {m.name: m for m in models}
            for m in models:
                self._servables.setdefault(m.name, {})
                self._states.setdefault(m.name, {})
        return removed

    # ------------------------------------------------------------------ discovery and loading
    def _on_disk(self, model: ModelConfig) -> Dict[int, str]:
        try:
            names = os.listdir(model.base_path)
        except OSError:
            return {}
        versions = {}
        for name in names:
            version = version_of(name)
            if version is not None and os.path.isdir(os.path.join(model.base_path, name)):
                versions[version] = os.path.join(model.base_path, name)
        return versions

    def _ready_on_disk(self, path: str) -> bool:
        if not complete_version(path):
            return False
        newest = max((entry[2] for entry in _fingerprint(path)), default=0)
        return time.time() - newest / 1e9 >= self.SETTLE_SECONDS

    def _wanted(self, model: ModelConfig, on_disk: Dict[int, str]) -> List[int]:
        """The versions the policy serves among the complete ones; each poll reads only the candidates
        (for latest N: from the newest down until N are complete), not every old version on disk."""
        loaded = self._servables[model.name]
        candidates = sorted((v for v in on_disk if model.policy != "specific" or v in model.versions), reverse=True)
        wanted = []
        for version in candidates:
            if model.policy == "latest" and len(wanted) == model.num_latest:
                break
            if version in loaded or self._ready_on_disk(on_disk[version]):
                wanted.append(version)
        return sorted(wanted)

    def poll_once(self) -> None:
        with self._poll_lock:
            try:
                self._poll()
            finally:
                self.polls += 1  # finished scans, on the metrics page: a test waits for them, not for time

    def _poll(self) -> None:
        unloaded = []
        for model in list(self.models.values()):
            on_disk = self._on_disk(model)
            if not on_disk:
                log.warning("No versions of servable %s found under base path %s. Did you forget to name "
                            "your leaf directory as an integer (e.g. /%s/1/)?", model.name, model.base_path,
                            model.name)
            wanted = self._wanted(model, on_disk)
            for version in wanted:
                if version not in self._servables[model.name] and self._due(model.name, version, on_disk[version]):
                    self._load(model, version, on_disk[version])
            # Unload only what is no longer wanted, and only once something wanted is AVAILABLE.
            with self._lock:
                loaded = self._servables[model.name]
                if any(v in loaded for v in wanted):
                    for version in [v for v in loaded if v not in wanted]:
                        self._states[model.name][version] = VersionState("END")
                        unloaded.append(loaded.pop(version))
                        log.info("Unloaded %s version %d", model.name, version)
        self._release(unloaded)

    def _release(self, servables: List[Servable]) -> None:
        """Hands unloaded versions to the reaper: a SavedModel's objects form reference cycles that only a full
        collection frees (without it every swap would keep the old version's memory), and a full collection
        holds the GIL for tens of milliseconds, so it runs off the request path, when requests pause."""
        if servables:
            with self._reaper:
                if not self._garbage:
                    self._garbage_since = time.monotonic()
                self._garbage += servables
                self._reaper.notify()
            servables.clear()

    def _reap(self) -> None:
        while not self._stop.is_set():
            with self._reaper:
                self._reaper.wait_for(lambda: self._garbage or self._stop.is_set())
                while not self._stop.is_set() and self.quiet_for() < self.QUIET_SECONDS and \
                        time.monotonic() - self._garbage_since < self.MAX_DEFER_SECONDS:
                    self._reaper.wait(self.QUIET_SECONDS / 2)
                count = len(self._garbage)
                self._garbage.clear()
            if not count:
                continue
            start = time.monotonic()
            gc.collect()
            _return_free_heap()
            log.info("Freed %d unloaded version(s) in %.0f ms", count, 1000 * (time.monotonic() - start))

    def _due(self, name: str, version: int, path: str) -> bool:
        """A version that failed to load is retried after a growing wait, or at once when its files changed."""
        failures, next_try, files = self._retry.get((name, version), (0, 0.0, None))
        return not failures or time.monotonic() >= next_try or _fingerprint(path) != files

    def _load(self, model: ModelConfig, version: int, path: str) -> None:
        with self._lock:
            self._states[model.name][version] = VersionState("LOADING")
        try:
            servable = Servable(model.name, version, path)
            if self.on_load:
                self.on_load(servable)
        except Exception as e:  # a broken version must not take the server down
            failures = self._retry.get((model.name, version), (0,))[0] + 1
            wait = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
            self._retry[(model.name, version)] = (failures, time.monotonic() + wait, _fingerprint(path))
            message = " ".join(str(e).split())[:2000]
            log.error("Loading %s version %d failed (attempt %d; retrying in %d s or when its files change): %s",
                      model.name, version, failures, wait, message)
            with self._lock:
                if model.name in self._states:
                    self._states[model.name][version] = VersionState("END", f"{type(e).__name__}: {message}")
            return
        self._retry.pop((model.name, version), None)
        with self._lock:
            if model.name not in self._servables:  # removed by a reconfiguration meanwhile
                return
            self._servables[model.name][version] = servable
            self._states[model.name][version] = VersionState("AVAILABLE")
        log.info("Successfully loaded servable version {name: %s version: %d}", model.name, version)

    def reconfigure(self, models: List[ModelConfig]) -> None:
        """Applies a new model set (TF Serving's ReloadConfig): loads what is new before returning; a label
        must name an AVAILABLE version, or the reconfiguration fails with FAILED_PRECONDITION and keeps
        the previous labels."""
        with self._poll_lock:
            for m in models:  # refuse before changing anything when a label names a version that will not load
                loaded = self._servables.get(m.name, {})
                wanted = self._wanted(m, self._on_disk(m)) if m.name in self._servables else None
                for label, version in m.labels.items():
                    if version not in loaded and (wanted is None and version not in self._on_disk(m)
                                                  or wanted is not None and version not in wanted):
                        raise ServingError("FAILED_PRECONDITION", f"Request to assign label to version {version} of "
                                                                  f"model {m.name}, which is not currently available "
                                                                  "for inference")
            previous = {name: dict(m.labels) for name, m in self.models.items()}
            self._release(self._apply(models))
            self._poll()
            bad = [(m.name, label, v) for m in models for label, v in m.labels.items()
                   if v not in self._servables[m.name]]
            if bad:
                for m in models:
                    m.labels = previous.get(m.name, {})
                name, label, version = bad[0]
                raise ServingError("FAILED_PRECONDITION", f"Request to assign label to version {version} of model "
                                                          f"{name}, which is not currently available for inference")
            log.info("Reloaded the model config: %s", ", ".join(sorted(self.models)))

    def start(self) -> None:
        """Loads what is on disk; a version written just now is waited for until it settles."""
        self.poll_once()
        deadline = time.monotonic() + self.SETTLE_SECONDS + 1
        while not self.all_available() and time.monotonic() < deadline:
            time.sleep(0.2)
            self.poll_once()
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
            self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # keep polling whatever one scan hit
                log.exception("poll failed")

    def stop(self) -> None:
        self._stop.set()
        with self._reaper:
            self._reaper.notify()

    def all_available(self) -> bool:
        with self._lock:
            return all(self._servables[name] for name in self.models)

    # ------------------------------------------------------------------ requests
    def resolve(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        with self._lock:
            if name not in self.models:
                spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
                raise ServingError("NOT_FOUND", f"Servable not found for request: {spec}")
            loaded = self._servables[name]
            if label is not None:
                if label not in self.models[name].labels:
                    raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = self.models[name].labels[label]
            if version is None:
                if not loaded:
                    raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
                return loaded[max(loaded)]
            if version not in loaded:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
            return loaded[version]

    def status(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Dict[int, VersionState]:
        with self._lock:
            if name not in self.models or not self._states[name]:
                raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
            if label is not None:
                if label not in self.models[name].labels:
                    raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = self.models[name].labels[label]
            states = dict(self._states[name])
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return {version: states[version]}
        return states

    def loaded_versions(self) -> Dict[str, List[int]]:
        with self._lock:
            return {name: sorted(v) for name, v in self._servables.items()}
