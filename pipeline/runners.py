"""Running the pipeline locally (LocalDagRunner, SQLite ML Metadata) and compiling it for Kubeflow."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
from typing import Dict, List, Optional

from components.compressor.report import JSON, MARKDOWN, PLOT, CompressionReport
from components.ingest import formats
from models import trainer
from pipeline import dag
from pipeline.config import PipelineConfig

BUNDLED_DATA_IN_IMAGE = "/pipeline/data/digits"  # where the Dockerfile writes the bundled digits
# Local Beam: the DirectRunner's in-memory mode up to this much input data, multi-processing above it.
# Measured on 2 cores (ExampleGen + StatisticsGen + Transform + Evaluator, in-memory vs. multi-processing):
# 60,000 28x28 IDX (47 MB) 44 vs. 60 s; 50,000 32x32 RGB TFRecords (150 MB) 79 vs. 102 s, with the same
# peak RSS (3.8 GB, the Trainer's); bundled digits (0.2 MB), a whole run: 73 vs. 102 s (issue 8's figures). Worker start-up and pickling
# cost more than two cores give back at every measured size; above 512 MB (not measured) the
# multi-processing mode's bounded memory per worker is the safer default.
IN_MEMORY_MAX_BYTES = 512 << 20
DATA_FACTS = "data.txt"  # what the probe found and decided, under <output>/report/
log = logging.getLogger(__name__)


def prepare_data(config: PipelineConfig) -> formats.DataFacts:
    """Resolves the data folder (writing the bundled digits when none is given) and probes it."""
    spec = config.data
    if spec.path is None:
        path = formats.write_digits(os.path.abspath(os.path.join(config.output_dir, "data", "digits")))
        spec = dataclasses.replace(spec, path=os.path.dirname(path), format="tfrecord")
    elif "://" not in spec.path:
        spec = dataclasses.replace(spec, path=os.path.abspath(spec.path))
    return formats.probe(spec)


def local_beam_args(config: PipelineConfig, data: formats.DataFacts) -> list:
    """The user's --beam-arg values, else the DirectRunner in the mode that suits the data's size."""
    if config.beam_args:
        return list(config.beam_args)
    if data.num_bytes <= IN_MEMORY_MAX_BYTES:
        args, why = ["--direct_running_mode=in_memory"], "in-memory mode"
    else:
        args, why = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"], "multi-processing mode"
    log.info("Beam: DirectRunner in %s for %.1f MB of input (threshold %d MB; override with --beam-arg)",
             why, data.num_bytes / 2**20, IN_MEMORY_MAX_BYTES >> 20)
    return args


def choose_base_model(config: PipelineConfig, data: formats.DataFacts) -> Optional[dag.BaseModel]:
    """--base-model (checked against the data: exit 2 when it cannot read it); else, on a span newer than
    the one the latest pushed model was trained on, that model's float baseline (warm start); else None."""
    from models import transfer

    if config.base_model:
        path = config.base_model if "://" in config.base_model else os.path.abspath(config.base_model)
        try:
            transfer.check(transfer.load(transfer.keras_file(path)), data.image_shape)
        except transfer.IncompatibleBaseModel as e:
            raise formats.DataError(str(e)) from e
        return dag.BaseModel(path, f"transfer learning from the base model {path}")
    if not config.warm_start or not os.path.exists(config.metadata_path):
        return None
    for pushed in pushed_models(config.metadata_path):
        if pushed["span"] < data.span:
            try:
                transfer.check(transfer.load(transfer.keras_file(pushed["float_model_uri"])), data.image_shape)
            except transfer.IncompatibleBaseModel as e:
                log.info("Not warm-starting from pushed version %s: %s", pushed["version"], e)
                return None
            return dag.BaseModel(pushed["float_model_uri"], f"warm-started from pushed version {pushed['version']} "
                                                        f"(trained on span {pushed['span']}) for span {data.span}")
    return None


def _read_store(metadata_path: str):
    """The SQLite ML Metadata store, read-only."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(connection)


def pushed_models(metadata_path: str) -> List[dict]:
    """Every pushed version, newest first: version, the float Trainer model behind it and its span
    (read from ML Metadata lineage: Pusher ← Compressor ← Trainer ← ExampleGen)."""
    from ml_metadata.proto import metadata_store_pb2

    store = _read_store(metadata_path)

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
        compressed = producer_input(pushed.id, "model")
        float_model = compressed and producer_input(compressed.id, "model")
        examples = float_model and producer_input(float_model.id, "examples")
        if examples is None:
            continue
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
    refusal: str  # why the model was not pushed, one check per line
    compression_report: Optional[CompressionReport]
    training: Optional[dict]  # what the Trainer did (models.trainer.read_summary): start, phases, hparams
    artifacts: Dict[tuple, object] = dataclasses.field(default_factory=dict)  # (node, key) → MLMD artifact

    def uri(self, node: str, key: str) -> Optional[str]:
        """Where the latest run's output `key` of component `node` lives (None if it did not run)."""
        artifact = self.artifacts.get((node, key))
        return artifact.uri if artifact is not None else None


def run_local(config: PipelineConfig) -> RunResult:
    """Runs the whole pipeline with TFX's LocalDagRunner; returns what each component did."""
    from tfx import v1 as tfx

    data = prepare_data(config)
    log.info("%s", data.describe())
    os.makedirs(config.report_dir, exist_ok=True)
    with open(os.path.join(config.report_dir, DATA_FACTS + ".tmp"), "w") as f:  # for the run report
        f.write(data.describe() + "\n")
    os.replace(os.path.join(config.report_dir, DATA_FACTS + ".tmp"), os.path.join(config.report_dir, DATA_FACTS))
    base = choose_base_model(config, data)
    log.info("Trainer: %s", base.description if base else "trains from scratch" + (
        "" if config.warm_start else " (--no-warm-start)"))
    os.makedirs(config.output_dir, exist_ok=True)
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
    pipeline = dag.create_pipeline(config, data, pipeline_root=config.pipeline_root, serving_dir=config.serving_dir,
                                   beam_args=local_beam_args(config, data), base_model=base,
                                   metadata_connection_config=metadata)
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


def data_problem(error: BaseException) -> Optional[str]:
    """The message of a data problem found while the pipeline ran (by ExampleGen inside Beam, or by the
    DataGate), else None. Beam may re-raise a worker's error as another type with the message inside."""
    from components.gates import DataAnomaliesError

    seen = error
    while seen is not None:
        if isinstance(seen, (formats.DataError, DataAnomaliesError)):
            return re.sub(r" \[while running [^\]]*\]$", "", str(seen))
        seen = seen.__cause__ or seen.__context__
    match = re.search(r"(?:DataError|DataAnomaliesError): (.*?)(?: \[while running [^\]]*\])?\s*$", str(error), re.S)
    return match.group(1).strip() if match else None


class NoRuns(LookupError):
    """ML Metadata holds no run of the pipeline asked for."""


class PipelineFailed(RuntimeError):
    """A component failed; `data_problem` is the message when the data was the cause."""

    def __init__(self, result: RunResult, cause: Exception):
        super().__init__(str(cause))
        self.result, self.cause, self.data_problem = result, cause, data_problem(cause)


def _publish_report(result: RunResult, report_dir: str) -> None:
    """Copies the latest run's compression report to <output>/report/ (atomically, file by file)."""
    source = result.uri(dag.COMPRESSOR, "report")
    os.makedirs(report_dir, exist_ok=True)
    for name in (JSON, MARKDOWN, PLOT):
        if os.path.exists(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(report_dir, name + ".tmp"))
            os.replace(os.path.join(report_dir, name + ".tmp"), os.path.join(report_dir, name))


def latest_run(metadata_path: str, pipeline_name: str) -> RunResult:
    """What the latest pipeline run did, read back from ML Metadata."""
    from ml_metadata.proto import metadata_store_pb2

    store = _read_store(metadata_path)
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

    report = outputs.get((dag.COMPRESSOR, "report"))
    report = CompressionReport.load(report.uri) if report is not None and os.path.exists(
        os.path.join(report.uri, JSON)) else None
    model_run = outputs.get((dag.TRAINER, "model_run"))
    training = None
    if model_run is not None and os.path.exists(os.path.join(model_run.uri, trainer.SUMMARY)):
        training = trainer.read_summary(model_run.uri)
    pushed = bool(custom(dag.PUSHER, "pushed_model", "pushed"))
    return RunResult(components=components, pushed=pushed,
                     pushed_dir=custom(dag.PUSHER, "pushed_model", "pushed_destination") if pushed else None,
                     refusal="\n".join(r for r in (custom(dag.GATE, "blessing", "reason"),
                                                    custom(dag.CANARY, "blessing", "reason")) if r),
                     compression_report=report, training=training, artifacts=outputs)


def _compile_data(config: PipelineConfig) -> formats.DataFacts:
    """What a compiled pipeline reads: the bundled digits in the image, local data probed, remote data as stated."""
    spec = config.data
    if spec.path is None:  # the bundled digits, baked into the image by the Dockerfile
        return formats.DataFacts(path=BUNDLED_DATA_IN_IMAGE, format="tfrecord", input_pattern="span-{SPAN}/*",
                                 image_shape=formats.DIGITS_SHAPE, class_names=formats.DIGITS_CLASSES)
    if "://" not in spec.path:  # local data can be probed; remote data must be described
        return prepare_data(config)
    missing = [f for f, v in (("--image-shape", spec.image_shape),
                              ("--num-classes or --class-names", spec.num_classes or spec.class_names),
                              ("--input-pattern", spec.input_pattern), ("--format", spec.format != "auto"))
               if not v]
    if missing:
        raise ValueError(f"data at {spec.path} cannot be read while compiling; pass {', '.join(missing)}.")
    return formats.DataFacts(path=spec.path, format=spec.format, input_pattern=spec.input_pattern,
                             image_shape=tuple(spec.image_shape),
                             class_names=tuple(spec.class_names or (str(i) for i in range(spec.num_classes))),
                             image_feature=spec.image_feature, label_feature=spec.label_feature)


def compile_kubeflow(config: PipelineConfig, pipeline_root: str, image: str, output_file: str,
                     serving_dir: Optional[str] = None, data: Optional[formats.DataFacts] = None) -> Dict:
    """Writes a Kubeflow Pipelines v2 spec (JSON) offline; returns it parsed. The Pusher pushes to
    `serving_dir` (default <pipeline_root>/serving/<model>); `data` is what the pipeline reads (default:
    found from config.data)."""
    from tfx import v1 as tfx

    data = data or _compile_data(config)
    pipeline = dag.create_pipeline(config, data, pipeline_root=pipeline_root, beam_args=config.beam_args,
                                   serving_dir=serving_dir or os.path.join(pipeline_root, "serving", config.model_name))
    output_dir, filename = os.path.split(os.path.abspath(output_file))
    os.makedirs(output_dir, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # Pipeline spec 2.1: parameters as plain values (`parameterValues`), which is what the KFP v2 launcher
        # hands a task and what the ExampleGen driver writes; under 2.0 the executor reads the deprecated
        # `parameters` field and loses the driver's span-resolved input_config (found by running the spec).
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image,
                                                                      use_pipeline_spec_2_1=True),
        output_dir=output_dir, output_filename=filename + ".tmp")
    runner.run(pipeline)
    os.replace(os.path.join(output_dir, filename + ".tmp"), os.path.join(output_dir, filename))
    with open(os.path.join(output_dir, filename)) as f:
        return json.load(f)


@dataclasses.dataclass
class KubeflowLocalResult:
    spec_file: str
    pushed_dir: Optional[str]  # None: not pushed
    refusal: str
    outputs: Dict[str, Dict[str, list]]  # task → output key → artifacts (as pipeline.kubeflow_local records them)


def run_kubeflow_local(config: PipelineConfig) -> KubeflowLocalResult:
    """Compiles the pipeline for Kubeflow and executes the compiled spec here (pipeline.kubeflow_local):
    every task through its container command, artifacts under <output>/kubeflow_root."""
    from pipeline import kubeflow_local

    data = prepare_data(config)  # writes the bundled digits when no --data is given
    log.info("%s", data.describe())
    root = os.path.abspath(os.path.join(config.output_dir, "kubeflow_root"))
    spec_file = os.path.join(root, "pipeline.json")
    compile_kubeflow(config, root, image="local", output_file=spec_file, serving_dir=config.serving_dir, data=data)
    outputs = kubeflow_local.run(spec_file, root, beam_args=local_beam_args(config, data))
    pushed = outputs.get(dag.PUSHER, {}).get("pushed_model", [{}])[0].get("metadata", {})
    gate = outputs.get(dag.GATE, {}).get("blessing", [{}])[0].get("metadata", {})
    canary = outputs.get(dag.CANARY, {}).get("blessing", [{}])[0].get("metadata", {})
    return KubeflowLocalResult(
        spec_file=spec_file, pushed_dir=pushed.get("pushed_destination") if pushed.get("pushed") else None,
        refusal="\n".join(r for r in (gate.get("reason"), canary.get("reason")) if r), outputs=outputs)


def submit_kubeflow(spec_file: str, host: str, experiment: str, run_name: Optional[str] = None,
                    namespace: Optional[str] = None, existing_token: Optional[str] = None) -> str:
    """Uploads a compiled spec to the KFP API server at `host` and starts a run; returns the run id."""
    import kfp
    import yaml

    with open(spec_file) as f:
        job = json.load(f)
    package = os.path.splitext(spec_file)[0] + ".pipeline.yaml"  # KFP's client takes the PipelineSpec as YAML
    with open(package + ".tmp", "w") as f:
        yaml.safe_dump(job.get("pipelineSpec", job), f, sort_keys=False)
    os.replace(package + ".tmp", package)
    client = kfp.Client(host=host, existing_token=existing_token, **({"namespace": namespace} if namespace else {}))
    run = client.create_run_from_pipeline_package(
        package, arguments={}, run_name=run_name or job.get("displayName"), experiment_name=experiment,
        pipeline_root=job.get("runtimeConfig", {}).get("gcsOutputDirectory"),
        **({"namespace": namespace} if namespace else {}))
    return run.run_id
