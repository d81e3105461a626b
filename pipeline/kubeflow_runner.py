"""Kubeflow Pipelines: compile the pipeline to a KFP v2 spec, submit it to a cluster, or execute the
compiled spec on this machine the way the KFP launcher runs it (`--runner kubeflow-local`).

Executing here: each task runs in dependency order as its own process with the exact container
command and arguments of the spec (`pipeline.task` running TFX's `kubeflow_v2_run_executor`, the
ExampleGen driver as its `preCacheCheck`); `{{$}}` becomes an ExecutorInput JSON built from the
task's parameters and the artifacts produced so far, and the ExecutorOutput each task writes
updates those artifacts.
Importer tasks import their URI; resolver tasks answer their `outputArtifactQueries` filters from
every artifact recorded under the pipeline root (this run's and earlier runs'), latest first.

What only a cluster checks: the container image itself, Kubernetes scheduling and volumes, the KFP
metadata service (here a JSON file, `ARTIFACTS`), and remote storage (here a local pipeline root).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from concurrent import futures
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

import yaml

from components.ingest import formats
from components.gates import Verdict
from pipeline import dag, lineage
from pipeline.config import PipelineConfig
from pipeline.local_runner import WORKERS_HAVE_TFX, local_beam_args, prepare_data, user_base_model

BUNDLED_DATA_IN_IMAGE = "/pipeline/data/digits"  # where the Dockerfile writes the bundled digits
ARTIFACTS = "kfp_local_artifacts.json"  # every artifact produced under the pipeline root, oldest first
log = logging.getLogger(__name__)


class TaskFailed(RuntimeError):
    def __init__(self, task: str, returncode: int, log_path: str):
        with open(log_path) as f:
            tail = f.read()[-3000:]
        super().__init__(f"task {task} exited {returncode}; its log: {log_path}\n{tail}")
        self.task, self.log_path = task, log_path


def _schema_title(artifact_type: dict) -> str:
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    return yaml.safe_load(artifact_type["instanceSchema"])["title"]


def _constant(value: dict):
    """A task parameter's value, in either of the spec's spellings."""
    value = value.get("runtimeValue", value)
    if "constant" in value:
        return value["constant"]
    constant = value.get("constantValue", {})
    for kind in ("stringValue", "intValue", "doubleValue"):
        if kind in constant:
            return int(constant[kind]) if kind == "intValue" else constant[kind]
    raise ValueError(f"unsupported parameter value {value}")


def _needs(tasks: dict, name: str) -> set:
    """The tasks `name` waits for: its dependentTasks and the producers of its input artifacts."""
    task = tasks[name]
    producers = {a["taskOutputArtifact"]["producerTask"] for a in task.get("inputs", {}).get("artifacts", {}).values()
                 if "taskOutputArtifact" in a}
    return set(task.get("dependentTasks", [])) | producers


def _order(tasks: dict) -> List[str]:
    """Task names, each after every task it depends on (dependentTasks and artifact producers)."""
    done, order = set(), []
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in done and _needs(tasks, n) <= done)
        if not ready:
            raise ValueError(f"the spec's tasks have a cycle among {sorted(set(tasks) - done)}")
        order += ready
        done |= set(ready)
    return order


class Store:
    """The artifacts of every run under a pipeline root: what KFP's metadata service keeps."""

    def __init__(self, pipeline_root: str):
        self.path = os.path.join(pipeline_root, ARTIFACTS)
        self.artifacts: List[dict] = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.artifacts = json.load(f)

    def add(self, artifact: dict) -> None:
        self.artifacts.append(artifact)

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.artifacts, f, indent=1)
        os.replace(self.path + ".tmp", self.path)

    def query(self, filter_text: str) -> Optional[dict]:
        """The latest LIVE artifact matching a KFP filter of `key=value` / `key="value"` terms joined by AND."""
        terms = []
        for term in re.split(r"\s+AND\s+", filter_text.strip()):
            key, value = term.split("=", 1)
            terms.append((key.strip(), value.strip().strip('"')))

        def matches(artifact):
            for key, value in terms:
                if key == "schema_title":
                    got = artifact["type"]["schemaTitle"]
                elif key == "state":
                    got = "LIVE" if artifact.get("live") else "PENDING"
                elif key == "name":
                    got = artifact["name"]
                elif key.startswith("metadata."):
                    field = key.split(".")[1]
                    got = artifact.get("metadata", {}).get(field)
                    got = str(int(got)) if isinstance(got, (int, float)) else got
                    value = str(int(float(value))) if key.endswith("number_value") else value
                else:
                    raise ValueError(f"unsupported resolver filter term {key}")
                if str(got) != value:
                    return False
            return True

        found = [a for a in self.artifacts if matches(a)]
        return found[-1] if found else None


def _placeholders(text: str, inputs: Dict[str, List[dict]]) -> str:
    """Resolves {{$.inputs.artifacts['key'].metadata['field']}} from the task's input artifacts."""
    def value(match):
        artifact = inputs[match.group(1)][0]
        got = artifact.get("metadata", {}).get(match.group(2), "")
        return str(int(got)) if isinstance(got, float) and got.is_integer() else str(got)

    return re.sub(r"\{\{\$\.inputs\.artifacts\['([^']+)'\]\.metadata\['([^']+)'\]\}\}", value, text)


def _run_container(name: str, container: dict, executor_input: dict, produced: dict, beam_args: List[str],
                   task_root: str) -> None:
    """Runs a task's steps (the driver's preCacheCheck, then the container) as their own processes; what each
    step writes to the output file (the ExampleGen driver: the resolved span) updates `produced`."""
    steps = [container["lifecycle"]["preCacheCheck"]] if "preCacheCheck" in container.get("lifecycle", {}) else []
    log_path = os.path.join(task_root, "log.txt")
    for step in steps + [container]:
        argv = [sys.executable if part == "python" else part for part in step["command"]]
        argv += [json.dumps(executor_input) if part == "{{$}}" else part for part in step["args"]]
        if step is container:
            argv += beam_args
        with open(log_path, "a") as task_log:
            code = subprocess.call(argv, stdout=task_log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
        if code != 0:
            raise TaskFailed(name, code, log_path)
        with open(executor_input["outputs"]["outputFile"]) as f:
            written = json.load(f).get("artifacts", {})
        for key, artifacts in produced.items():
            for artifact, update in zip(artifacts, written.get(key, {}).get("artifacts", [])):
                artifact["metadata"].update(update.get("metadata", {}))


def execute(spec_file: str, pipeline_root: str, beam_args: Optional[List[str]] = None,
            parallel: Optional[int] = None) -> Dict[str, Dict[str, list]]:
    """Executes every task of a compiled PipelineJob JSON; returns task → output key → artifacts. As KFP does,
    tasks whose inputs are ready run at the same time (at most `parallel`, default one per CPU core)."""
    with open(spec_file) as f:
        job = json.load(f)
    spec = job.get("pipelineSpec", job)
    tasks, components = spec["root"]["dag"]["tasks"], spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    store = Store(pipeline_root)
    run_id = time.strftime("run-%Y%m%d-%H%M%S")
    outputs: Dict[str, Dict[str, list]] = {}
    order = _order(tasks)
    done, running, started, failure = set(), {}, {}, None

    def start(name: str) -> Optional[tuple]:
        """Resolves or imports at once (returns None); else the container's work, to run in the pool."""
        task, component = tasks[name], components[tasks[name]["componentRef"]["name"]]
        executor = executors[component["executorLabel"]]
        inputs = {key: outputs.get(source["taskOutputArtifact"]["producerTask"], {}).get(
                      source["taskOutputArtifact"]["outputArtifactKey"], [])
                  for key, source in task.get("inputs", {}).get("artifacts", {}).items()}
        inputs = {key: artifacts for key, artifacts in inputs.items() if artifacts}  # optional inputs left empty
        if "resolver" in executor:
            outputs[name] = {}
            for key, query in executor["resolver"]["outputArtifactQueries"].items():
                try:
                    found = store.query(_placeholders(query["filter"], inputs))
                except KeyError:  # the filter reads an input that resolved to nothing
                    found = None
                outputs[name][key] = [found] if found else []
            log.info("%s: resolved %s", name, {k: [a["name"] for a in v] for k, v in outputs[name].items()})
            return None
        task_root = os.path.join(pipeline_root, run_id, name)
        if "importer" in executor:
            importer = executor["importer"]
            uri = _constant(task["inputs"]["parameters"]["artifact_uri"]) if "artifact_uri" in task.get(
                "inputs", {}).get("parameters", {}) else _constant(importer["artifactUri"])
            artifact = {"name": f"{run_id}/{name}/result", "uri": uri, "live": True,
                        "type": {"schemaTitle": _schema_title(importer["typeSchema"])}, "metadata": {}}
            store.add(artifact)
            outputs[name] = {"result": [artifact]}
            return None
        declared = component.get("outputDefinitions", {}).get("artifacts", {})
        produced = {key: [{"name": f"{run_id}/{name}/{key}", "uri": os.path.join(task_root, key),
                           "type": {"schemaTitle": _schema_title(d["artifactType"])}, "metadata": {}}]
                    for key, d in declared.items()}
        declared_parameters = task.get("inputs", {}).get("parameters", {})
        executor_input = {  # parameters in both spellings: Value protos (pipeline spec 2.0) and plain values
            "inputs": {"parameters": {key: value["runtimeValue"]["constantValue"] for key, value
                                      in declared_parameters.items() if "constantValue" in value.get("runtimeValue", {})},
                       "parameterValues": {key: _constant(value) for key, value in declared_parameters.items()},
                       "artifacts": {key: {"artifacts": [{k: a[k] for k in ("name", "uri", "type", "metadata")}
                                                         for a in artifacts]} for key, artifacts in inputs.items()}},
            "outputs": {"artifacts": {key: {"artifacts": artifacts} for key, artifacts in produced.items()},
                        "outputFile": os.path.join(task_root, "executor_output.json")}}
        os.makedirs(task_root, exist_ok=True)
        return (name, executor["container"], executor_input, produced, list(beam_args or []), task_root)

    with futures.ThreadPoolExecutor(parallel or os.cpu_count() or 1) as pool:
        while len(done) < len(tasks) and failure is None:
            progressed = True
            while progressed:  # resolvers and importers answer at once and may make more tasks ready
                progressed = False
                for name in order:
                    if name in done or name in running or not _needs(tasks, name) <= done:
                        continue
                    work = start(name)
                    if work is None:
                        done.add(name)
                        progressed = True
                    else:
                        running[name], started[name] = pool.submit(_run_container, *work), time.time()
                        outputs[name] = work[3]
            if not running:
                break
            finished, _ = futures.wait(running.values(), return_when=futures.FIRST_COMPLETED)
            for name in [n for n, f in running.items() if f in finished]:
                future = running.pop(name)
                try:
                    future.result()
                except TaskFailed as e:
                    failure = failure or e
                    continue
                for artifacts in outputs[name].values():
                    for artifact in artifacts:
                        artifact["live"] = True
                        store.add(artifact)
                store.save()
                done.add(name)
                log.info("%s: done in %.1f s", name, time.time() - started[name])
        futures.wait(running.values())  # a failure lets the tasks already running finish, as KFP does
    store.save()
    if failure is not None:
        raise failure
    return outputs


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


def compile_spec(config: PipelineConfig, pipeline_root: str, image: str, output_file: str,
                 serving_dir: Optional[str] = None, data: Optional[formats.DataFacts] = None) -> Dict:
    """Writes a Kubeflow Pipelines v2 spec (JSON) offline; returns it parsed. The Pusher pushes to
    `serving_dir` (default <pipeline_root>/serving/<model>); `data` is what the pipeline reads (default:
    found from config.data). The Trainer starts from --base-model when given; else, unless --no-warm-start,
    from the latest pushed model when there is one (continuous training: each run on a new span
    warm-starts from what is being served)."""
    from tfx import v1 as tfx

    data = data or _compile_data(config)
    base = user_base_model(config, data) if config.base_model else dag.LATEST_PUSHED if config.warm_start else None
    pipeline = dag.create_pipeline(config, data, pipeline_root=pipeline_root,
                                   beam_args=config.beam_args or [WORKERS_HAVE_TFX],
                                   serving_dir=serving_dir or os.path.join(pipeline_root, "serving", config.model_name),
                                   base_model=base)
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
    with open(os.path.join(output_dir, filename + ".tmp")) as f:
        job = json.load(f)
    for executor in job["pipelineSpec"]["deploymentSpec"]["executors"].values():
        container = executor.get("container", {})
        for step in [container, container.get("lifecycle", {}).get("preCacheCheck", {})]:
            if step.get("command", [])[:2] == ["python", "-m"]:  # TFX's entrypoint, started lean
                step["command"] = ["python", "-m", "pipeline.task"] + step["command"][2:]
    with open(os.path.join(output_dir, filename + ".tmp"), "w") as f:
        json.dump(job, f, sort_keys=True)
    os.replace(os.path.join(output_dir, filename + ".tmp"), os.path.join(output_dir, filename))
    return job


@dataclasses.dataclass
class KubeflowLocalResult:
    spec_file: str
    pushed_dir: Optional[str]  # None: not pushed
    verdict: Optional[Verdict]  # the QualityGate's checks (None: it did not run)
    refusal: str  # why the model was not pushed, one line per failed check
    outputs: Dict[str, Dict[str, list]]  # task → output key → artifacts (as `execute` records them)


def run_here(config: PipelineConfig) -> KubeflowLocalResult:
    """Compiles the pipeline for Kubeflow and executes the compiled spec here (`execute`):
    every task through its container command, artifacts under <output>/kubeflow_root."""
    data = prepare_data(config)  # writes the bundled digits when no --data is given
    log.info("%s", data.describe())
    root = os.path.abspath(os.path.join(config.output_dir, "kubeflow_root"))
    spec_file = os.path.join(root, "pipeline.json")
    compile_spec(config, root, image="local", output_file=spec_file, serving_dir=config.serving_dir, data=data)
    outputs = execute(spec_file, root, beam_args=local_beam_args(config, data))
    pushed = outputs.get(dag.PUSHER, {}).get("pushed_model", [{}])[0].get("metadata", {})
    gate = outputs.get(dag.GATE, {}).get("blessing", [{}])[0].get("uri")
    canary = outputs.get(dag.CANARY, {}).get("blessing", [{}])[0].get("metadata", {})
    verdict = Verdict.load(gate) if gate else None
    return KubeflowLocalResult(
        spec_file=spec_file, pushed_dir=pushed.get("pushed_destination") if pushed.get("pushed") else None,
        verdict=verdict, refusal=lineage.refusal(verdict, canary.get("reason", "")), outputs=outputs)


def submit(spec_file: str, host: str, experiment: str, run_name: Optional[str] = None,
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
