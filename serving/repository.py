"""Model versions on disk: discovery, version policy, labels, polling and availability-preserving swaps.

Layout, as TF Serving reads it: <base_path>/<integer version>/saved_model.pb (+ variables/).
A version directory is loaded only once it is complete (saved_model.pb parses and every variables
shard is present); half-written directories are retried on the next poll.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from typing import Dict, List, Optional

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclasses.dataclass
class ModelConfig:
    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_latest: int = 1
    versions: tuple = ()
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)


def parse_config_file(path: str) -> List[ModelConfig]:
    """Reads a TF Serving `ModelServerConfig` text proto (model_config_list)."""
    with open(path) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    models = []
    for c in config.model_config_list.config:
        policy = c.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        models.append(ModelConfig(
            name=c.name, base_path=c.base_path, policy=kind,
            num_latest=(policy.latest.num_versions or 1) if kind == "latest" else 1,
            versions=tuple(policy.specific.versions) if kind == "specific" else (),
            labels=dict(c.version_labels)))
    for m in models:
        if not NAME.match(m.name):
            raise ValueError(f"model name '{m.name}' must be letters, digits, '_', '.', '-'")
    return models


def complete_version(path: str) -> bool:
    """True when saved_model.pb parses and every variables shard named by the index is there."""
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model_pb2.SavedModel.FromString(f.read())
    except (OSError, Exception):  # missing, or a truncated protobuf
        return False
    variables = os.path.join(path, "variables")
    if not os.path.isdir(variables):
        return True
    if not os.path.exists(os.path.join(variables, "variables.index")):
        return False
    shards = [f for f in os.listdir(variables) if f.startswith("variables.data-")]
    if not shards:
        return False
    total = int(shards[0].rsplit("-of-", 1)[1])
    return len(shards) == total


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


class Repository:
    """Keeps the wanted versions of every configured model loaded; resolves requests to servables."""

    def __init__(self, models: List[ModelConfig], poll_seconds: float = 1.0, on_load=None):
        self.models = {m.name: m for m in models}
        self.poll_seconds = poll_seconds
        self.on_load = on_load  # callback(servable) after a load, before it serves (warm-up)
        self._lock = threading.Lock()
        self._servables: Dict[str, Dict[int, Servable]] = {m.name: {} for m in models}
        self._states: Dict[str, Dict[int, VersionState]] = {m.name: {} for m in models}
        self._failed: Dict[tuple, int] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ discovery and loading
    def _on_disk(self, model: ModelConfig) -> Dict[int, str]:
        try:
            names = os.listdir(model.base_path)
        except OSError:
            return {}
        versions = {}
        for name in names:
            if name.isdigit() and os.path.isdir(os.path.join(model.base_path, name)):
                versions[int(name)] = os.path.join(model.base_path, name)
        return versions

    def _wanted(self, model: ModelConfig, on_disk: Dict[int, str]) -> List[int]:
        complete = sorted(v for v, p in on_disk.items() if complete_version(p))
        if model.policy == "all":
            return complete
        if model.policy == "specific":
            return [v for v in complete if v in model.versions]
        return complete[-model.num_latest:]

    def poll_once(self) -> None:
        for model in self.models.values():
            on_disk = self._on_disk(model)
            if not on_disk:
                log.warning("No versions of servable %s found under base path %s. Did you forget to name "
                            "your leaf directory as an integer (e.g. /%s/1/)?", model.name, model.base_path,
                            model.name)
            wanted = self._wanted(model, on_disk)
            for version in wanted:
                if version not in self._servables[model.name] and self._failed.get((model.name, version), 0) < 3:
                    self._load(model, version, on_disk[version])
            # Unload only what is no longer wanted, and only once something wanted is AVAILABLE.
            with self._lock:
                loaded = self._servables[model.name]
                if any(v in loaded for v in wanted):
                    for version in [v for v in loaded if v not in wanted]:
                        self._states[model.name][version] = VersionState("END")
                        del loaded[version]
                        log.info("Unloaded %s version %d", model.name, version)

    def _load(self, model: ModelConfig, version: int, path: str) -> None:
        with self._lock:
            self._states[model.name][version] = VersionState("LOADING")
        try:
            servable = Servable(model.name, version, path)
            if self.on_load:
                self.on_load(servable)
        except Exception as e:  # a broken version must not take the server down
            self._failed[(model.name, version)] = self._failed.get((model.name, version), 0) + 1
            log.error("Loading %s version %d failed: %s", model.name, version, e)
            with self._lock:
                self._states[model.name][version] = VersionState("END", f"{type(e).__name__}: {e}")
            return
        with self._lock:
            self._servables[model.name][version] = servable
            self._states[model.name][version] = VersionState("AVAILABLE")
        log.info("Successfully loaded servable version {name: %s version: %d}", model.name, version)

    def start(self) -> None:
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
