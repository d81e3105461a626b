"""Reading runs back from ML Metadata: what the latest run did, and which models were pushed from what data.

The lineage walk follows dag.py's own wiring (`dag.PUSHED_MODEL_LINEAGE`), so renaming an input there
changes the walk with it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

from components.compressor.report import JSON, CompressionReport
from components.gates import Verdict
from models import trainer
from pipeline import dag


class NoRuns(LookupError):
    """ML Metadata holds no run of the pipeline asked for."""


def read_store(metadata_path: str):
    """The SQLite ML Metadata store, read-only."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(connection)


def pushed_models(metadata_path: str) -> List[dict]:
    """Every pushed version, newest first: version, the float Trainer model behind it and the span it was
    trained on (the walk of dag.PUSHED_MODEL_LINEAGE: Pusher ← Compressor ← Trainer ← ExampleGen)."""
    from ml_metadata.proto import metadata_store_pb2

    store = read_store(metadata_path)

    def producer_input(artifact_id: int, key: str):
        """The `key` input of the execution that produced the artifact."""
        output = [e for e in store.get_events_by_artifact_ids([artifact_id])
                  if e.type == metadata_store_pb2.Event.OUTPUT]
        if not output:
            return None
        inputs = [e for e in store.get_events_by_execution_ids([output[0].execution_id])
                  if e.type == metadata_store_pb2.Event.INPUT and e.path.steps and e.path.steps[0].key == key]
        return store.get_artifacts_by_id([inputs[0].artifact_id])[0] if inputs else None

    found = []
    for pushed in sorted(store.get_artifacts_by_type("PushedModel"), key=lambda a: -a.id):
        if pushed.custom_properties["pushed"].int_value != 1:
            continue
        chain = [pushed]
        for _, key in dag.PUSHED_MODEL_LINEAGE:
            chain.append(chain[-1] and producer_input(chain[-1].id, key))
        if chain[-1] is None:
            continue
        float_model, examples = chain[-2], chain[-1]
        found.append({"version": pushed.custom_properties["pushed_version"].string_value,
                      "float_model_uri": float_model.uri,
                      "span": examples.custom_properties["span"].int_value
                      if "span" in examples.custom_properties else examples.properties["span"].int_value})
    return found


@dataclasses.dataclass
class ComponentRun:
    name: str
    state: str  # COMPLETE, CACHED, FAILED, RUNNING...
    seconds: float


@dataclasses.dataclass
class RunResult:
    components: List[ComponentRun]
    pushed: bool
    pushed_dir: Optional[str]
    verdict: Optional[Verdict]  # the QualityGate's checks (None: it did not run)
    canary_refusal: str  # why the Canary refused the model ("" when it did not)
    compression_report: Optional[CompressionReport]
    training: Optional[dict]  # what the Trainer did (models.trainer.read_summary): start, phases, hparams
    artifacts: Dict[tuple, object] = dataclasses.field(default_factory=dict)  # (node, key) → MLMD artifact

    @property
    def refusal(self) -> str:
        """Why the model was not pushed: each failed check, then the Canary's reason, one per line."""
        return refusal(self.verdict, self.canary_refusal)

    def uri(self, node: str, key: str) -> Optional[str]:
        """Where the latest run's output `key` of component `node` lives (None if it did not run)."""
        artifact = self.artifacts.get((node, key))
        return artifact.uri if artifact is not None else None


def latest_run(metadata_path: str, pipeline_name: str) -> RunResult:
    """What the latest pipeline run did, read back from ML Metadata."""
    from ml_metadata.proto import metadata_store_pb2

    store = read_store(metadata_path)
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    executions = store.get_executions_by_context(pipeline.id) if pipeline is not None else []
    if not executions:
        raise NoRuns(f"no runs of pipeline '{pipeline_name}' in {metadata_path}")
    latest = max(executions, key=lambda e: (e.create_time_since_epoch, e.id))
    run = next(c for c in store.get_contexts_by_execution(latest.id)
               if store.get_context_types_by_id([c.type_id])[0].name == "pipeline_run")
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
    state_names = {v: k for k, v in metadata_store_pb2.Execution.State.items()}
    components, outputs = [], {}
    for execution in executions:
        node = next((c.name.removeprefix(pipeline_name + ".")  # "<pipeline>.<node id>"; names may hold dots
                     for c in store.get_contexts_by_execution(execution.id)
                     if store.get_context_types_by_id([c.type_id])[0].name == "node"), str(execution.id))
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
        components.append(ComponentRun(node, state_names.get(execution.last_known_state, "?"), seconds))
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == metadata_store_pb2.Event.OUTPUT]
        for event, artifact in zip(events, store.get_artifacts_by_id([e.artifact_id for e in events])):
            key = event.path.steps[0].key if event.path.steps else ""
            outputs[(node, key)] = artifact

    def custom(node, key, prop):
        artifact = outputs.get((node, key))
        if artifact is None or prop not in artifact.custom_properties:
            return None
        value = artifact.custom_properties[prop]
        return value.string_value or value.int_value

    report = outputs.get((dag.COMPRESSOR, "report"))
    report = CompressionReport.load(report.uri) if report is not None and os.path.exists(
        os.path.join(report.uri, JSON)) else None
    model_run = outputs.get((dag.TRAINER, "model_run"))
    training = None
    if model_run is not None and os.path.exists(os.path.join(model_run.uri, trainer.SUMMARY)):
        training = trainer.read_summary(model_run.uri)
    pushed = bool(custom(dag.PUSHER, "pushed_model", "pushed"))
    gate = outputs.get((dag.GATE, "blessing"))
    return RunResult(components=components, pushed=pushed,
                     pushed_dir=custom(dag.PUSHER, "pushed_model", "pushed_destination") if pushed else None,
                     verdict=Verdict.load(gate.uri) if gate is not None else None,
                     canary_refusal=custom(dag.CANARY, "blessing", "reason") or "",
                     compression_report=report, training=training, artifacts=outputs)


def refusal(verdict: Optional[Verdict], canary_refusal: str) -> str:
    """The failed checks of a gate's verdict and the Canary's reason, one per line."""
    lines = [str(c) for c in (verdict.failed if verdict else [])]
    return "\n".join(lines + ([canary_refusal] if canary_refusal else []))
