"""The compiled Kubeflow spec, executed: every task through its own container command and arguments
(pipeline.kubeflow_runner), and the parts of `submit` and of the image that run without a cluster."""
import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from components.ingest import formats
from pipeline import kubeflow_runner
from tests.conftest import e2e_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _compiled(tmp_path):
    out = tmp_path / "spec.json"
    kubeflow_runner.compile_spec(e2e_config(tmp_path), "gs://bucket/root", "img:1", str(out))
    with open(out) as f:
        return out, json.load(f)["pipelineSpec"]


def test_every_module_and_class_the_spec_names_imports_as_named(tmp_path):
    """What the image must hold: each task's `python -m pipeline.task MODULE` and each class path and custom
    artifact type in its arguments, imported in a fresh interpreter of the project's environment."""
    _, spec = _compiled(tmp_path)
    modules, classes = set(), set()
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor.get("container")
        if not container:
            continue
        for step in [container, *container.get("lifecycle", {}).values()]:
            assert step["command"][:3] == ["python", "-m", "pipeline.task"], step["command"]
            modules.add(step["command"][3])
            args = step["args"]
            if "--executor_class_path" in args:
                classes.add(args[args.index("--executor_class_path") + 1])
    for component in spec["components"].values():
        for direction in ("inputDefinitions", "outputDefinitions"):
            for artifact in component.get(direction, {}).get("artifacts", {}).values():
                title = kubeflow_runner._schema_title(artifact["artifactType"])
                if not title.startswith("tfx."):
                    classes.add(title)  # custom types: TFX's entrypoint imports the schema title
    assert {"tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor",
            "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"} <= modules
    assert "components.CompressionReportArtifact" in classes and "components.pusher.Executor" in classes
    code = ("import importlib, sys\nfrom tfx.utils import import_utils\n"
            f"for m in {sorted(modules)!r}: importlib.util.find_spec(m) or sys.exit('missing module ' + m)\n"
            f"for c in {sorted(classes)!r}: import_utils.import_class_by_path(c)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_task_imports_its_executor_and_not_every_tfx_component(tmp_path):
    """pipeline.task: submodules of `tfx.components` (every component), TFMA and TFDV import without their
    package's __init__, which still runs when a name is asked of the package; the module runs as __main__
    with the arguments given, and a bare or unknown module is a one-line error."""
    code = ("import sys\nfrom pipeline import task\n"
            "for name in task.DEFERRED_PACKAGES: task.defer_package_init(name)\n"
            "import tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor\n"
            "import tfx.components.example_validator.executor\n"
            "assert 'tfx.components.transform.executor' not in sys.modules, sorted(sys.modules)\n"
            "assert 'tensorflow_model_analysis.api.model_eval_lib' not in sys.modules and 'nltk' not in sys.modules\n"
            "import tensorflow_model_analysis as tfma\n"
            "assert callable(tfma.run_model_analysis)  # a name of the package: its __init__ runs\n"
            "import tfx.components as package\n"
            "assert package.statistics_gen.__name__ == 'tfx.components.statistics_gen'  # a submodule, imported\n"
            "assert 'tfx.components.transform.executor' not in sys.modules\n"
            "from tfx.components import Transform\n"
            "assert Transform.__module__ == 'tfx.components.transform.component'\n")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp_path / "x.json").write_text('{"b": 1, "a": [2]}')
    proc = subprocess.run([sys.executable, "-m", "pipeline.task", "json.tool", "--sort-keys", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.split() == ["{", '"a":', "[", "2", "],", '"b":', "1", "}"], proc
    proc = subprocess.run([sys.executable, "-m", "pipeline.task"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "usage: python -m pipeline.task MODULE" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pipeline.task", "no_such.entrypoint"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "error: no module named no_such.entrypoint" in proc.stderr, proc.stderr


def test_task_order_and_resolver_filters():
    tasks = {"b": {"dependentTasks": ["a"]}, "a": {},
             "c": {"inputs": {"artifacts": {"x": {"taskOutputArtifact": {"producerTask": "b"}}}}}}
    assert kubeflow_runner._order(tasks) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="cycle"):
        kubeflow_runner._order({"a": {"dependentTasks": ["b"]}, "b": {"dependentTasks": ["a"]}})


def test_submit_without_a_server_fails_clearly(tmp_path):
    spec_file, _ = _compiled(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--spec", str(spec_file), "--host",
                           f"http://127.0.0.1:{port}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and f"could not submit to http://127.0.0.1:{port}" in proc.stderr, proc.stderr[-2000:]
    package = yaml.safe_load(open(os.path.splitext(spec_file)[0] + ".pipeline.yaml"))  # what was uploaded
    assert package["schemaVersion"] == "2.1.0" and "Pusher" in package["root"]["dag"]["tasks"]
    proc = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--spec", str(tmp_path / "nope.json"),
                           "--host", "http://x"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def training(result) -> dict:
    with open(os.path.join(result.outputs["Trainer"]["model_run"][0]["uri"], "training.json")) as f:
        return json.load(f)


@pytest.mark.e2e
def test_compiled_spec_runs_end_to_end_and_a_second_run_resolves_the_pushed_model(tmp_path):
    """Two executions of the compiled spec through TFX's v2 entrypoint, on two spans: the first trains from
    scratch and pushes a blessed model; the second's resolver finds it, the Trainer warm-starts from it on
    the new span and the Evaluator compares the new model with it."""
    config = e2e_config(tmp_path)
    config.hparams.epochs, config.compression.prune_epochs = 3, 1
    config.compression.max_accuracy_drop = 0.05  # the launcher contract is under test here, not compression:
    # 3 + 1 epochs leave the pruned model 1-2 points short of a 1-point budget on some splits
    first = kubeflow_runner.run_here(config)
    assert first.pushed_dir and os.path.isfile(os.path.join(first.pushed_dir, "saved_model.pb")), first.refusal
    assert os.path.dirname(first.pushed_dir) == config.serving_dir
    assert first.outputs["latest_pushed_model_resolver-model-resolver"]["model"] == []  # nothing served yet

    assert training(first)["start"] == "from scratch (no model pushed yet)"

    formats.write_digits(os.path.join(config.output_dir, "data", "digits"), span=2, seed=7)  # new data lands
    second = kubeflow_runner.run_here(config)
    assert second.pushed_dir and second.pushed_dir != first.pushed_dir, second.refusal
    # Continuous training: the Trainer warm-started from the model the first run pushed, on span 2.
    assert second.outputs["FileBasedExampleGen"]["examples"][0]["metadata"]["custom:span"] == 2  # KFP spelling
    pushed_model = first.outputs["Compressor"]["compressed_model"][0]["uri"]
    assert training(second)["start"] == f"warm-started from the latest pushed model {pushed_model}"
    assert {e["phase"] for e in training(second)["epochs"]} == {"warm start"}
    resolved = second.outputs["latest_pushed_model_resolver-model-resolver"]["model"]
    assert [a["uri"] for a in resolved] == [first.outputs["Compressor"]["compressed_model"][0]["uri"]]
    evaluation = second.outputs["Evaluator"]["blessing"][0]["metadata"]
    assert evaluation["baseline_model_id"] == first.outputs["Compressor"]["compressed_model"][0]["name"]
    assert sorted(os.listdir(config.serving_dir)) == sorted(
        os.path.basename(p) for p in (first.pushed_dir, second.pushed_dir))
