"""Running the pipeline locally (LocalDagRunner, SQLite ML Metadata) and compiling it for Kubeflow."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from typing import Dict, List, Optional

from pipeline import dag
from pipeline.config import PipelineConfig

BUNDLED_DATA_IN_IMAGE = "/pipeline/data/digits"  # where the Dockerfile writes the bundled digits


def prepare_data(config: PipelineConfig) -> str:
    """Resolves the data folder (writing the bundled digits when none is given) and probes it."""
    from components.ingest import formats

    if config.data.path is None:
        data_root = os.path.abspath(os.path.join(config.output_dir, "data", "digits"))
        formats.write_digits(data_root)
        config.data = dataclasses.replace(config.data, path=data_root, format="tfrecord",
                                          image_shape=config.data.image_shape or formats.DIGITS_SHAPE,
                                          num_classes=config.data.num_classes or formats.DIGITS_CLASSES)
    config.data.path = config.data.path if "://" in config.data.path else os.path.abspath(config.data.path)
    formats.probe(config.data)
    return config.data.path


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
    refusal: str
    model_run_dir: Optional[str]
    compression_report: Optional[dict]
    artifacts: Dict[tuple, object] = dataclasses.field(default_factory=dict)  # (node, key) → MLMD artifact


def run_local(config: PipelineConfig) -> RunResult:
    """Runs the whole pipeline with TFX's LocalDagRunner; returns what each component did."""
    from tfx import v1 as tfx

    data_root = prepare_data(config)
    os.makedirs(config.output_dir, exist_ok=True)
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
    pipeline = dag.create_pipeline(config, data_root=data_root, pipeline_root=config.pipeline_root,
                                   metadata_connection_config=metadata, serving_dir=config.serving_dir)
    error, argv = None, sys.argv
    sys.argv = argv[:1]  # Beam executors parse sys.argv as absl flags; the caller's flags are not theirs
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as e:  # reported below with what did run
        error = e
    finally:
        sys.argv = argv
    result = latest_run(config.metadata_path, config.pipeline_name)
    if result.compression_report is not None:
        _publish_report(result, config.report_dir)
    if error is not None:
        raise PipelineFailed(result, error) from error
    return result


class PipelineFailed(RuntimeError):
    def __init__(self, result: RunResult, cause: Exception):
        super().__init__(str(cause))
        self.result, self.cause = result, cause


def _publish_report(result: RunResult, report_dir: str) -> None:
    """Copies the latest run's compression report to <output>/report/ (atomically, file by file)."""
    source = os.path.join(result.model_run_dir, "compression")
    os.makedirs(report_dir, exist_ok=True)
    for name in ("compression.json", "compression.md", "compression.png"):
        if os.path.exists(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(report_dir, name + ".tmp"))
            os.replace(os.path.join(report_dir, name + ".tmp"), os.path.join(report_dir, name))


def latest_run(metadata_path: str, pipeline_name: str) -> RunResult:
    """What the latest pipeline run did, read back from ML Metadata."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(connection)
    runs = [c for c in store.get_contexts_by_type("pipeline_run") if c.name]
    run = max(runs, key=lambda c: c.create_time_since_epoch)
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
    state_names = {v: k for k, v in metadata_store_pb2.Execution.State.items()}
    components, outputs = [], {}
    for execution in executions:
        node = next((c.name.split(".", 1)[-1] for c in store.get_contexts_by_execution(execution.id)
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

    model_run = outputs.get((dag.TRAINER, "model_run"))
    report = None
    if model_run is not None:
        path = os.path.join(model_run.uri, "compression", "compression.json")
        if os.path.exists(path):
            with open(path) as f:
                report = json.load(f)
    pushed = bool(custom(dag.PUSHER, "pushed_model", "pushed"))
    return RunResult(components=components, pushed=pushed,
                     pushed_dir=custom(dag.PUSHER, "pushed_model", "pushed_destination") if pushed else None,
                     refusal="; ".join(r for r in (custom(dag.GATE, "blessing", "reason"),
                                                   custom(dag.CANARY, "blessing", "reason")) if r),
                     model_run_dir=model_run.uri if model_run is not None else None,
                     compression_report=report, artifacts=outputs)


def compile_kubeflow(config: PipelineConfig, pipeline_root: str, image: str, output_file: str) -> Dict:
    """Writes a Kubeflow Pipelines v2 spec (JSON) offline; returns it parsed."""
    from tfx import v1 as tfx

    from components.ingest import formats

    if config.data.path is None:  # the bundled digits, baked into the image by the Dockerfile
        config.data = dataclasses.replace(config.data, path=BUNDLED_DATA_IN_IMAGE, format="tfrecord",
                                          image_shape=formats.DIGITS_SHAPE, num_classes=formats.DIGITS_CLASSES,
                                          input_pattern="span-{SPAN}/*")
    elif "://" not in config.data.path:  # local data can be probed; remote data must be described
        prepare_data(config)
    missing = [f for f, v in (("--image-shape", config.data.image_shape), ("--num-classes", config.data.num_classes),
                              ("--input-pattern", config.data.input_pattern)) if not v]
    if missing or config.data.format == "auto":
        raise ValueError(f"data at {config.data.path} cannot be read while compiling; pass "
                         f"{', '.join(missing + (['--format'] if config.data.format == 'auto' else []))}.")
    pipeline = dag.create_pipeline(config, data_root=config.data.path, pipeline_root=pipeline_root,
                                   serving_dir=os.path.join(pipeline_root, "serving", config.model_name))
    output_dir, filename = os.path.split(os.path.abspath(output_file))
    os.makedirs(output_dir, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=output_dir, output_filename=filename + ".tmp")
    runner.run(pipeline)
    os.replace(os.path.join(output_dir, filename + ".tmp"), os.path.join(output_dir, filename))
    with open(os.path.join(output_dir, filename)) as f:
        return json.load(f)
