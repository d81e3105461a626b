import os
import sys

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET_SPARSITY = 0.8


def pytest_collection_modifyitems(items):
    """Whole-pipeline tests first: `make test` spreads the suite over two pytest-xdist workers (tests that share
    a module or session fixture carry one `xdist_group`), and starting the long ones early lets both finish
    together."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


def e2e_config(output_dir, **compression_overrides):
    """The pipeline's settings on the bundled digits, with epochs trimmed to keep `make test` short."""
    from pipeline.config import PipelineConfig

    config = PipelineConfig(output_dir=str(output_dir))
    config.hparams.epochs = 6
    config.hparams.fine_tune_epochs = 3  # warm start on a new span
    config.compression.prune_epochs = 4  # at 3, one seed in three lost more than the 1-point budget
    config.compression.qat_epochs = 1
    config.compression.target_sparsity = TARGET_SPARSITY
    for key, value in compression_overrides.items():
        setattr(config.compression, key, value)
    return config


@pytest.fixture(scope="session")
def first_run(tmp_path_factory):
    """One real pipeline run on the bundled digits, shared by every test that needs its artifacts."""
    from pipeline import local_runner

    output = tmp_path_factory.mktemp("e2e")
    return output, local_runner.run(e2e_config(output))


def chromium(page: str, profile_dir, *, screenshot=None, width: int = 1200, height: int = 4000) -> str:
    """Debian's headless Chromium on file `page`: the DOM after load (the report's script has recorded each
    image's natural and rendered widths), or with `screenshot` a PNG written there (returns '')."""
    import shutil
    import subprocess

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Debian's chromium is needed (make test installs it)"
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile_dir}", "--virtual-time-budget=5000", f"--window-size={width},{height}"]
    flags += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    return subprocess.run(flags + [f"file://{page}"], capture_output=True, text=True, timeout=120).stdout


def tfx_artifact(artifact_type, uri: str, splits=None):
    """A TFX artifact object at `uri` (as an executor receives it)."""
    from tfx.types import artifact_utils

    artifact = artifact_type()
    artifact.uri = uri
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(list(splits))
    return artifact


@pytest.fixture(scope="session")
def component_inputs(tmp_path_factory):
    """What the Trainer and the Compressor consume, written by the components' own executors on the bundled
    digits with the properties the pipeline gives them (pipeline.dag), without a pipeline run or ML Metadata
    (as TFX's executor tests use written artifacts): ExampleGen's train/eval examples (our executor), the
    schema, TFX's Transform executor's graph and a Trainer model (run_fn, 2 epochs). Returns artifact name →
    uri; about 10 s."""
    from google.protobuf import json_format, text_format
    from tfx.components.example_gen import utils as example_gen_utils
    from tfx.components.trainer import fn_args_utils
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import path_utils

    from components import schema
    from components.ingest import formats
    from models import trainer
    from pipeline import dag
    from pipeline.config import DataSpec

    root = tmp_path_factory.mktemp("component_inputs")
    uris = {name: str(root / name) for name in ("examples", "schema", "transform_graph", "model", "model_run")}
    config = e2e_config(root)
    config.hparams.epochs = 2
    formats.write_digits(str(root / "data"))
    data = formats.probe(DataSpec(path=str(root / "data"), image_shape=formats.DIGITS_SHAPE))
    nodes = {node.id: node for node in dag.create_pipeline(config, data, str(root / "pipeline_root"),
                                                            str(root / "serving"), beam_args=[]).components}
    properties = {node: dict(nodes[node].exec_properties) for node in (dag.EXAMPLE_GEN, dag.TRANSFORM, dag.TRAINER)}
    # ExampleGen's driver puts the latest span into the input pattern; TFX's own helper does it here.
    input_config = json_format.Parse(properties[dag.EXAMPLE_GEN]["input_config"], example_gen_pb2.Input())
    example_gen_utils.calculate_splits_fingerprint_span_and_version(data.path, input_config.splits)
    properties[dag.EXAMPLE_GEN]["input_config"] = json_format.MessageToJson(input_config)

    def run(node, inputs, outputs):
        nodes[node].executor_spec.executor_class().Do(inputs, outputs, properties[node])

    examples = tfx_artifact(standard_artifacts.Examples, uris["examples"])
    graph = tfx_artifact(standard_artifacts.TransformGraph, uris["transform_graph"])
    run(dag.EXAMPLE_GEN, {}, {"examples": [examples]})
    os.makedirs(uris["schema"])
    with open(os.path.join(uris["schema"], "schema.pbtxt"), "w") as f:
        f.write(text_format.MessageToString(schema.make_schema(data.class_names)))
    run(dag.TRANSFORM, {"examples": [examples], "schema": [tfx_artifact(standard_artifacts.Schema, uris["schema"])]},
        {"transform_graph": [graph]})
    fn_args = fn_args_utils.get_common_fn_args({"examples": [examples], "transform_graph": [graph]},
                                               properties[dag.TRAINER])
    fn_args.serving_model_dir = path_utils.serving_model_dir(uris["model"])
    fn_args.model_run_dir = uris["model_run"]
    trainer.run_fn(fn_args)
    return uris
