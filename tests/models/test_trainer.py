"""The Trainer's run_fn through TFX's own FnArgs plumbing: streamed input, bounded memory."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.conftest import e2e_config

pytestmark = pytest.mark.xdist_group("component_inputs")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs run_fn in a fresh process (argv: examples uri, transform graph uri, output dir) and prints its peak RSS.
RUN_FN = """
import json, resource, sys
import models
from tfx.components.trainer import fn_args_utils
from tfx.types import standard_artifacts
from tests.conftest import tfx_artifact
from models import trainer
examples, graph, out, config = sys.argv[1:5]
fn_args = fn_args_utils.get_common_fn_args(
    {"examples": [tfx_artifact(standard_artifacts.Examples, examples, splits=("train", "eval"))],
     "transform_graph": [tfx_artifact(standard_artifacts.TransformGraph, graph)]},
    {"train_args": '{"num_steps": 40}', "eval_args": '{"num_steps": 4}', "custom_config": config})
fn_args.serving_model_dir, fn_args.model_run_dir = out + "/model/Format-Serving", out + "/run"
trainer.run_fn(fn_args)
print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_split(source_files, target_dir, copies: int) -> int:
    """`copies` times the records of `source_files`, as a gzip TFRecord split; returns the record count."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(source_files, compression_type="GZIP")]
    os.makedirs(target_dir)
    with tf.io.TFRecordWriter(os.path.join(target_dir, "data.gz"), options="GZIP") as writer:
        for _ in range(copies):
            for record in records:
                writer.write(record)
    return len(records) * copies


def peak_rss_mb(component_inputs, tmp_path, copies: int) -> float:
    transformed = component_inputs["examples"]
    examples = tmp_path / f"examples_{copies}"
    for split in ("train", "eval"):
        write_split(tf.io.gfile.glob(os.path.join(transformed, f"Split-{split}", "*")),
                    str(examples / f"Split-{split}"), copies if split == "train" else 1)
    config = json.dumps(e2e_config(tmp_path).trainer_config((8, 8, 1), [str(i) for i in range(10)]))
    proc = subprocess.run([sys.executable, "-c", RUN_FN, str(examples), component_inputs["transform_graph"],
                           str(tmp_path / f"out_{copies}"), config], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / f"out_{copies}" / "run" / "training.json") as f:
        summary = json.load(f)
    assert summary["train_examples"] > 1000 * copies and summary["steps_per_epoch"] * 6 == 42  # TrainArgs' 40 steps
    return float(proc.stdout.split("PEAK_RSS_MB")[-1])


def test_trainer_streams_its_input_so_memory_does_not_grow_with_the_split(component_inputs, tmp_path):
    """A train split 100x larger (~144k examples, ~37 MB as float32 once decoded, several times that as
    parsed tf.Examples) must not raise the Trainer's peak RSS: nothing collects a split into memory."""
    small, large = peak_rss_mb(component_inputs, tmp_path, 2), peak_rss_mb(component_inputs, tmp_path, 200)
    assert large - small < 30, (small, large)
