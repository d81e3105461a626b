"""Running the pipeline on this machine: TFX's LocalDagRunner, SQLite ML Metadata, Beam's DirectRunner."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
import re
import shutil
import sys
from typing import List, Optional

from components.compressor.report import JSON, MARKDOWN, PLOT
from components.ingest import formats
from pipeline import dag, lineage
from pipeline.config import PipelineConfig

# Local Beam: the DirectRunner's in-memory mode up to this much input data, multi-processing above it.
# Measured on 2 cores (ExampleGen + StatisticsGen + Transform + Evaluator, in-memory vs. multi-processing):
# 60,000 28x28 IDX (47 MB) 44 vs. 60 s; 50,000 32x32 RGB TFRecords (150 MB) 79 vs. 102 s, with the same
# peak RSS (3.8 GB, the Trainer's); bundled digits (0.2 MB), a whole run: 73 vs. 102 s (issue 8's figures). Worker start-up and pickling
# cost more than two cores give back at every measured size; above 512 MB (not measured) the
# multi-processing mode's bounded memory per worker is the safer default.
IN_MEMORY_MAX_BYTES = 512 << 20
# Given any Beam argument, each TFX Beam executor first copies TFX's installation (48 MB) into a new temp folder
# and builds an sdist of it for remote workers (about 1 s; the folder is never removed) unless a flag says the
# workers have their own. This one says so and the DirectRunner ignores it: its workers are this Python, or
# a Kubeflow task's own container (where TFX's entrypoint always hands Beam at least its own path).
WORKERS_HAVE_TFX = "--sdk_container_image=none"
log = logging.getLogger(__name__)


def prepare_data(config: PipelineConfig) -> formats.DataFacts:
    """Resolves the data folder (writing the bundled digits when none is given) and probes it."""
    spec = config.data
    if spec.path is None:
        path = formats.write_digits(os.path.abspath(os.path.join(config.output_dir, "data", "digits")))
        spec = dataclasses.replace(spec, path=os.path.dirname(path), format="tfrecord")
    elif "://" not in spec.path:
        path = os.path.abspath(spec.path)
        if glob.has_magic(path) and os.path.isdir(path):  # TFX's ExampleGen driver globs the folder's path
            link = os.path.abspath(os.path.join(config.output_dir, "data", "link-" + hashlib.sha1(
                path.encode()).hexdigest()[:12]))
            if os.path.realpath(link) != os.path.realpath(path):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(path, link + ".tmp")
                os.replace(link + ".tmp", link)
            log.info("--data %s holds glob characters, which TFX's ExampleGen reads as a pattern: read through "
                     "the link %s", path, link)
            path = link
        spec = dataclasses.replace(spec, path=path)
    return formats.probe(spec)


def local_beam_args(config: PipelineConfig, data: formats.DataFacts) -> list:
    """The user's --beam-arg values, else the DirectRunner in the mode that suits the data's size."""
    if config.beam_args:
        return list(config.beam_args)
    if data.num_bytes <= IN_MEMORY_MAX_BYTES:
        args, why = ["--direct_running_mode=in_memory", WORKERS_HAVE_TFX], "in-memory mode"
    else:
        args, why = ["--direct_running_mode=multi_processing", "--direct_num_workers=0", WORKERS_HAVE_TFX], \
            "multi-processing mode"
    log.info("Beam: DirectRunner in %s for %.1f MB of input (threshold %d MB; override with --beam-arg)",
             why, data.num_bytes / 2**20, IN_MEMORY_MAX_BYTES >> 20)
    return args


def user_base_model(config: PipelineConfig, data: formats.DataFacts) -> dag.BaseModel:
    """--base-model, checked against the data where it can be read from here (a DataError when it cannot be
    rebuilt on these images: exit 2 before anything runs)."""
    from models import transfer

    path = config.base_model if "://" in config.base_model else os.path.abspath(config.base_model)
    if "://" not in path:
        try:
            base = transfer.load(transfer.keras_file(path), trust_code=config.trust_base_model_code)
            transfer.check(base, data.image_shape)
        except transfer.IncompatibleBaseModel as e:
            raise formats.DataError(str(e)) from e
        pixels, why = transfer.pixels_for(base, config.base_model_pixels)
        log.info("Base model %s reads pixels in %s: %s", path, pixels, why)
    return dag.BaseModel(path, f"transfer learning from the base model {path}")


def choose_base_model(config: PipelineConfig, data: formats.DataFacts) -> Optional[dag.BaseModel]:
    """--base-model (user_base_model); else, on a span newer than the one the latest pushed model was trained
    on, that model's float baseline (warm start, pinned by uri: an unchanged rerun stays cached); else None."""
    from models import transfer

    if config.base_model:
        return user_base_model(config, data)
    if not config.warm_start or not os.path.exists(config.metadata_path):
        return None
    for pushed in lineage.pushed_models(config.metadata_path):
        if pushed["span"] < data.span:
            try:
                transfer.check(transfer.load(transfer.keras_file(pushed["float_model_uri"])), data.image_shape)
            except transfer.IncompatibleBaseModel as e:
                log.info("Not warm-starting from pushed version %s: %s", pushed["version"], e)
                return None
            return dag.BaseModel(pushed["float_model_uri"], f"warm-started from pushed version {pushed['version']} "
                                                        f"(trained on span {pushed['span']}) for span {data.span}")
    return None


def run(config: PipelineConfig) -> lineage.RunResult:
    """Runs the whole pipeline with TFX's LocalDagRunner; returns what each component did."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config

    data = prepare_data(config)
    log.info("%s", data.describe())
    os.makedirs(config.report_dir, exist_ok=True)
    with open(config.data_facts_path + ".tmp", "w") as f:  # for the run report
        f.write(data.describe() + "\n")
    os.replace(config.data_facts_path + ".tmp", config.data_facts_path)
    base = choose_base_model(config, data)
    log.info("Trainer: %s", base.description if base else "trains from scratch" + (
        "" if config.warm_start else " (--no-warm-start)"))
    os.makedirs(config.output_dir, exist_ok=True)
    metadata = sqlite_metadata_connection_config(config.metadata_path)
    pipeline = dag.create_pipeline(config, data, pipeline_root=config.pipeline_root, serving_dir=config.serving_dir,
                                   beam_args=local_beam_args(config, data), base_model=base,
                                   metadata_connection_config=metadata)
    error, argv = None, sys.argv
    sys.argv = argv[:1]  # Beam executors parse sys.argv as absl flags; the caller's flags are not theirs
    try:
        LocalDagRunner().run(pipeline)
    except Exception as e:  # reported below with what did run
        error = e
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this)
        raise Interrupted(cancel_running(config)) from None
    finally:
        sys.argv = argv
    result = lineage.latest_run(config.metadata_path, config.pipeline_name)
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


class Interrupted(RuntimeError):
    """The run was interrupted; `components` were running (now CANCELED in ML Metadata)."""

    def __init__(self, components: List[str]):
        super().__init__(", ".join(components) or "no component")
        self.components = components


def cancel_running(config: PipelineConfig) -> List[str]:
    """Marks this pipeline's executions still RUNNING in ML Metadata as CANCELED and removes the output folders
    they had started (partial, and never published: a rerun writes new ones); returns their components' names."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.exists(config.metadata_path):
        return []
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    store = metadata_store.MetadataStore(connection)
    context = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    running = [e for e in (store.get_executions_by_context(context.id) if context else [])
               if e.last_known_state == metadata_store_pb2.Execution.RUNNING]
    names = []
    for execution in running:
        node = next((c.name.removeprefix(config.pipeline_name + ".") for c in store.get_contexts_by_execution(
            execution.id) if store.get_context_types_by_id([c.type_id])[0].name == "node"), str(execution.id))
        names.append(node)
        # TFX writes an execution's outputs to <pipeline_root>/<node>/<output key>/<execution id>/, registered
        # in ML Metadata only when published: the started ones are found by that layout.
        started = glob.glob(os.path.join(glob.escape(os.path.join(config.pipeline_root, node)), "*",
                                         str(execution.id)))
        started += glob.glob(os.path.join(glob.escape(os.path.join(config.pipeline_root, node)), ".system",
                                          "executor_execution", str(execution.id)))
        for folder in started:
            shutil.rmtree(folder, ignore_errors=True)
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
    store.put_executions(running)
    return names


class PipelineFailed(RuntimeError):
    """A component failed; `data_problem` is the message when the data was the cause."""

    def __init__(self, result: lineage.RunResult, cause: Exception):
        super().__init__(str(cause))
        self.result, self.cause, self.data_problem = result, cause, data_problem(cause)


def _publish_report(result: lineage.RunResult, report_dir: str) -> None:
    """Copies the latest run's compression report to <output>/report/ (atomically, file by file)."""
    source = result.uri(dag.COMPRESSOR, "report")
    os.makedirs(report_dir, exist_ok=True)
    for name in (JSON, MARKDOWN, PLOT):
        if os.path.exists(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(report_dir, name + ".tmp"))
            os.replace(os.path.join(report_dir, name + ".tmp"), os.path.join(report_dir, name))
