"""The pipeline at scale against a plain Keras script on the same files, measured in the same run.

    .venv/bin/python benchmarks/scale_bench.py [--workloads bundled,digits28-10000,digits28-60000,colour32-50000]
                                               [--work DIR]
Workloads are generated here (no network): the bundled 8x8 digits as they are; upscaled to 28x28 grey with
random rotations and shifts, written as MNIST-format IDX files; or 32x32 RGB on random colours, written as
TFRecords of raw bytes. For each workload it prints one JSON object: wall time per component, the
Trainer's and Compressor's peak RSS (each re-run alone in a fresh process on the run's own artifacts,
children included), Trainer examples/s, eval accuracy, pushed size, and the plain Keras script's figures
(the same CNN and epoch count, reading the same files with tf.data) with the ratios the targets are stated in.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------------- workloads
def digit_images(count: int, size: int, colour: bool, seed: int = 0):
    """`count` digits (sklearn's 8x8, upscaled, rotated ±15°, shifted ±3 px) as uint8 [N, size, size, C]."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(digits.target), count)
    images = np.zeros((count, size, size, 3 if colour else 1), np.uint8)
    inner = size - 8
    for i, pick in enumerate(picks):
        glyph = Image.fromarray(np.rint(digits.images[pick] * 255 / 16).astype(np.uint8)).resize(
            (inner, inner), Image.BILINEAR).rotate(float(rng.uniform(-15, 15)), Image.BILINEAR)
        canvas = np.zeros((size, size), np.float32)
        dy, dx = rng.integers(0, 9, 2)
        canvas[dy:dy + inner, dx:dx + inner] = np.asarray(glyph, np.float32) / 255
        if colour:
            background, ink = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            images[i] = np.rint(255 * (background * (1 - canvas[..., None]) + ink * canvas[..., None]))
        else:
            images[i, ..., 0] = np.rint(255 * canvas)
    return images, digits.target[picks].astype(np.uint8)


def write_workload(name: str, folder: str):
    """Writes the workload under folder/span-1/ once; returns (run flags, reader for the plain script)."""
    span = os.path.join(folder, "span-1")
    kind, count = name.split("-")
    if not os.path.isdir(span):
        os.makedirs(span + ".tmp", exist_ok=True)
        images, labels = digit_images(int(count), 28 if kind == "digits28" else 32, kind == "colour32")
        if kind == "digits28":
            for file, array in (("train-images-idx3-ubyte", images[..., 0]), ("train-labels-idx1-ubyte", labels)):
                with open(os.path.join(span + ".tmp", file), "wb") as f:
                    f.write(struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape))
                    f.write(array.tobytes())
        else:
            import tensorflow as tf

            with tf.io.TFRecordWriter(os.path.join(span + ".tmp", "data.tfrecord")) as writer:
                for image, label in zip(images, labels):
                    writer.write(tf.train.Example(features=tf.train.Features(feature={
                        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}))
                        .SerializeToString())
        os.rename(span + ".tmp", span)
    if kind == "digits28":
        return ["--data", folder, "--format", "idx"], (28, 28, 1)
    return ["--data", folder, "--format", "tfrecord", "--image-shape", "32,32,3"], (32, 32, 3)


# ----------------------------------------------------------------------------- the plain Keras script
PLAIN = r'''
import json, os, resource, sys, time
start = time.perf_counter()
import numpy as np, tensorflow as tf
import models
from models import networks
folder, shape, epochs, hp = sys.argv[1], tuple(json.loads(sys.argv[2])), int(sys.argv[3]), json.loads(sys.argv[4])
files = sorted(os.listdir(folder))
if any("idx3" in f for f in files):
    raw = open(os.path.join(folder, "train-images-idx3-ubyte"), "rb").read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, int(np.prod(shape)))
    y = np.frombuffer(open(os.path.join(folder, "train-labels-idx1-ubyte"), "rb").read(), np.uint8, offset=8)
else:
    records = tf.data.TFRecordDataset([os.path.join(folder, f) for f in files])
    raw = tf.train.Example.FromString(next(iter(records)).numpy()).features.feature["image"].bytes_list.value
    image = tf.io.FixedLenFeature([], tf.string) if raw else tf.io.FixedLenFeature([int(np.prod(shape))], tf.int64)
    spec = {"image": image, "label": tf.io.FixedLenFeature([], tf.int64)}
    parsed = records.map(lambda r: tf.io.parse_single_example(r, spec))
    x = np.stack([(tf.io.decode_png(p["image"]).numpy().reshape(-1) if p["image"][:4] == b"\x89PNG"  # bundled
                   else np.frombuffer(p["image"], np.uint8)) if raw else p["image"] for p in parsed.as_numpy_iterator()])
    y = np.array([p["label"] for p in parsed.as_numpy_iterator()])
x = x.astype("float32").reshape(-1, *shape) / 255.0
n = int(len(y) * 0.8)
train = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).shuffle(n, seed=0).batch(hp["batch_size"]).prefetch(2)
model = networks.compile_model(networks.small_cnn(shape, 10, hp), hp["learning_rate"])
fit_start = time.perf_counter()
model.fit(train, epochs=epochs, verbose=0)
fit_seconds = time.perf_counter() - fit_start
accuracy = model.evaluate(x[n:], y[n:], verbose=0, return_dict=True)["accuracy"]
print(json.dumps({"wall_seconds": time.perf_counter() - start, "fit_examples_per_second": epochs * n / fit_seconds,
                  "eval_accuracy": accuracy, "epochs": epochs,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

# Re-runs one executor alone (Trainer's run_fn or the Compressor) on a pipeline run's artifacts; prints peak RSS.
ALONE = r'''
import json, resource, sys
import models
from tfx.components.trainer import fn_args_utils
from tfx.types import artifact_utils, standard_artifacts
which, model, examples, graph, out, config = sys.argv[1:7]
def artifact(cls, uri, splits=None):
    a = cls(); a.uri = uri
    if splits: a.split_names = artifact_utils.encode_split_names(splits)
    return a
inputs = {"examples": [artifact(standard_artifacts.Examples, examples, ["train", "eval"])],
          "transform_graph": [artifact(standard_artifacts.TransformGraph, graph)]}
if which == "Trainer":
    from models import trainer
    fn_args = fn_args_utils.get_common_fn_args(inputs, {"train_args": "{}", "eval_args": "{}", "custom_config": config})
    fn_args.serving_model_dir, fn_args.model_run_dir = out + "/model/Format-Serving", out + "/run"
    trainer.run_fn(fn_args)
else:
    from components.compressor.executor import Executor
    from components.compressor.report import CompressionReportArtifact
    inputs["model"] = [artifact(standard_artifacts.Model, model)]
    Executor().Do(inputs, {"compressed_model": [artifact(standard_artifacts.Model, out + "/model")],
                           "report": [artifact(CompressionReportArtifact, out + "/report")],
                           "model_run": [artifact(standard_artifacts.ModelRun, out + "/run")]}, json.loads(config))
print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
'''


def python(*args, **kwargs) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"), **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def peak_rss_alone(which: str, result, config: str, out: str) -> float:
    stdout = python("-c", ALONE, which, result.uri("Trainer", "model") or "",
                    result.uri("FileBasedExampleGen", "examples"), result.uri("Transform", "transform_graph"),
                    out, config)
    return round(float(stdout.split("PEAK_RSS_MB")[-1]), 1)


def measure(name: str, work: str) -> dict:
    from components.compressor.report import CompressionReport
    from pipeline import lineage
    from pipeline.config import PipelineConfig

    output = os.path.join(work, name, "out")
    if name == "bundled":
        flags, shape = [], (8, 8, 1)
        data_folder = os.path.join(output, "data", "digits", "span-1")
    else:
        flags, shape = write_workload(name, os.path.join(work, name, "data"))
        data_folder = os.path.join(work, name, "data", "span-1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--output", output, "--no-cache",
                           "--model-name", "digits", *flags],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    wall = time.perf_counter() - start
    config = PipelineConfig(output_dir=output)
    result = lineage.latest_run(config.metadata_path, config.pipeline_name)
    report: CompressionReport = result.compression_report
    with open(os.path.join(result.uri("Trainer", "model_run"), "training.json")) as f:
        training = json.load(f)
    hp = dict(vars(config.hparams))
    plain = json.loads(python("-c", PLAIN, data_folder, json.dumps(list(shape)), str(training["epochs_run"]),
                              json.dumps(hp)).strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as scratch:
        trainer_config = json.dumps(config.trainer_config(shape, [str(i) for i in range(10)]))
        c = config.compression
        compressor_config = json.dumps({"prune": 1, "target_sparsity": c.target_sparsity, "prune_epochs": c.prune_epochs,
                                        "qat": 1, "qat_epochs": c.qat_epochs, "batch_size": hp["batch_size"],
                                        "learning_rate": hp["learning_rate"], "seed": config.seed,
                                        "image_shape": json.dumps(list(shape))})
        rss = {"Trainer": peak_rss_alone("Trainer", result, trainer_config, os.path.join(scratch, "t")),
               "Compressor": peak_rss_alone("Compressor", result, compressor_config, os.path.join(scratch, "c"))}
    pushed = result.pushed_dir
    component_seconds = {c.name: c.seconds for c in result.components}
    served = report.stages[report.final_model_stage]
    figures = {
        "workload": name, "exit_code": proc.returncode, "pushed": result.pushed,
        "pipeline_wall_seconds": round(wall, 1),
        "components_seconds": {name: round(seconds, 1) for name, seconds in component_seconds.items()},
        "compressor_seconds": report.seconds,  # where the Compressor's time went, by its own clock
        "peak_rss_mb_alone": rss,
        "train_examples": training["train_examples"], "epochs_run": training["epochs_run"],
        "trainer_examples_per_second": round(training["examples_per_second"], 1),
        "eval_accuracy": {s: round(m.accuracy, 4) for s, m in report.stages.items()},
        "gzip_bytes": {s: m.gzip_bytes for s, m in report.stages.items()},
        "plain_keras": {k: round(v, 4) for k, v in plain.items()},
        "ratios": {
            "trainer_over_plain_fit_throughput": round(training["examples_per_second"] / plain["fit_examples_per_second"], 3),
            "pipeline_over_plain_script_wall": round(wall / plain["wall_seconds"], 2),
            "served_accuracy_minus_plain_points": round(100 * (served.accuracy - plain["eval_accuracy"]), 2),
            "baseline_over_served_gzip": round(report.stages["baseline"].gzip_bytes / served.gzip_bytes, 2),
            # the Compressor's time outside model.fit, over its wall time as the run timed the component
            "compressor_outside_fit_share": round(1 - report.seconds["fit"] / component_seconds["Compressor"], 3),
        },
        "pushed_dir": pushed,
    }
    if proc.returncode not in (0, 1):
        figures["stderr_tail"] = proc.stderr[-2000:]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="bundled,digits28-10000,digits28-60000,colour32-50000")
    parser.add_argument("--work", default=None, help="folder for data and runs (default: a new temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="scale_bench_")
    results = []
    for name in args.workloads.split(","):
        results.append(measure(name, work))
        print(json.dumps(results[-1], indent=1), flush=True)
    if len(results) > 1:
        by_name = {r["workload"]: r for r in results}
        if {"digits28-10000", "digits28-60000"} <= set(by_name):
            small, large = by_name["digits28-10000"], by_name["digits28-60000"]
            print(json.dumps({"peak_rss_60000_over_10000": {
                k: round(large["peak_rss_mb_alone"][k] / small["peak_rss_mb_alone"][k], 3)
                for k in ("Trainer", "Compressor")}}, indent=1))


if __name__ == "__main__":
    main()
