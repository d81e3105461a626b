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
    config.compression.prune_epochs = 3
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


def tfx_artifact(artifact_type, uri: str, splits=None):
    """A TFX artifact object at `uri` (as an executor receives it)."""
    from tfx.types import artifact_utils

    artifact = artifact_type()
    artifact.uri = uri
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(list(splits))
    return artifact
