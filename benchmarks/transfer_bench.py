"""Warm start on a new span, and few-shot transfer from a user's model, against training from scratch.

    .venv/bin/python benchmarks/transfer_bench.py [--work DIR]
(a) New span: 28x28 digits (benchmarks/scale_bench.py's generator), span 1 then a new span 2 of 10,000
    examples each. On span 2 the Trainer runs from scratch (--no-warm-start) and warm-started from the
    span-1 model; for each: epochs, Trainer seconds, and the epochs and seconds until its validation
    accuracy first reached the from-scratch run's best.
(b) Few-shot: a base model trained (plain Keras) on classes 0-4; the pipeline fine-tunes it with
    --base-model on 10, 30 and 100 examples per class of classes 5-9, and trains from scratch on the
    same examples; accuracy on 2,000 held-out images of classes 5-9.
Compression is off in both (it does not change what is measured here). Prints one JSON object.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402

from scale_bench import digit_images  # noqa: E402


def write_span(folder: str, span: int, images, labels) -> None:
    import tensorflow as tf

    from components.ingest import formats

    os.makedirs(os.path.join(folder, f"span-{span}"))
    with tf.io.TFRecordWriter(os.path.join(folder, f"span-{span}", "data.tfrecord")) as writer:
        for pixels, label in zip(images, labels):
            writer.write(formats.to_example(pixels, int(label)).SerializeToString())


def run(output: str, data: str, *flags) -> dict:
    """One pipeline run (compression off); returns the Trainer's summary and component seconds."""
    from pipeline import lineage
    from pipeline.config import PipelineConfig

    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--data", data, "--output", output, "--no-prune",
                           "--no-qat", "--min-accuracy", "0", "--image-shape", "28,28,1", *flags], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr[-3000:])
    result = lineage.latest_run(PipelineConfig(output_dir=output).metadata_path, "digits")
    seconds = {c.name: c.seconds for c in result.components}
    return {"training": result.training, "trainer_seconds": seconds["Trainer"], "model": result.uri("Trainer", "model")}


def to_reach(training: dict, accuracy: float):
    """Epochs until the validation accuracy first reached `accuracy`, and the training seconds they took."""
    reached = next((i + 1 for i, e in enumerate(training["epochs"]) if e["val_accuracy"] >= accuracy), None)
    per_epoch = training["train_seconds"] / training["epochs_run"]
    return reached, (round(reached * per_epoch, 1) if reached else None)


def new_span(work: str) -> dict:
    data, output = os.path.join(work, "spans"), os.path.join(work, "spans_out")
    for span, seed in ((1, 0), (2, 1)):
        images, labels = digit_images(10_000, 28, False, seed=seed)
        write_span(data, span, images, labels)
        if span == 1:
            run(output, data)
    scratch = run(output, data, "--no-warm-start")
    warm = run(output, data)  # the span-1 model is the latest pushed one trained on an earlier span
    assert warm["training"]["start"].startswith("warm-started"), warm["training"]["start"]
    target = max(e["val_accuracy"] for e in scratch["training"]["epochs"])
    figures = {}
    for name, r in (("from_scratch", scratch), ("warm_start", warm)):
        epochs, seconds = to_reach(r["training"], target)
        figures[name] = {"epochs_run": r["training"]["epochs_run"], "trainer_seconds": round(r["trainer_seconds"], 1),
                         "best_val_accuracy": round(max(e["val_accuracy"] for e in r["training"]["epochs"]), 4),
                         "epochs_to_reach_scratch_best": epochs, "train_seconds_to_reach_scratch_best": seconds}
    figures["scratch_best_val_accuracy"] = round(target, 4)
    figures["ratio_trainer_seconds_warm_over_scratch"] = round(warm["trainer_seconds"] / scratch["trainer_seconds"], 3)
    return figures


def few_shot(work: str) -> dict:
    import tensorflow as tf
    import tf_keras as keras

    from models import networks

    images, labels = digit_images(20_000, 28, False, seed=2)
    old, new = labels < 5, labels >= 5
    keras.utils.set_random_seed(0)
    hp = {"conv_filters": [32, 64], "dense_units": 256, "dropout": 0.3}
    base = networks.compile_model(networks.small_cnn((28, 28, 1), 5, hp), 1e-3)
    base.fit(images[old].reshape(-1, 28, 28, 1) / 255.0, labels[old], epochs=5, batch_size=64, verbose=0)
    base_path = os.path.join(work, "base_0_4.keras")
    base.save(base_path)
    new_images, new_labels = images[new], labels[new]
    held_out = slice(len(new_labels) - 2000, None)
    figures = {}
    for per_class in (10, 30, 100):
        picks = np.concatenate([np.flatnonzero(new_labels[:held_out.start] == c)[:per_class] for c in range(5, 10)])
        data = os.path.join(work, f"few_{per_class}")
        write_span(data, 1, new_images[picks], new_labels[picks])
        row = {}
        for name, flags in (("fine_tuned", ["--base-model", base_path]), ("from_scratch", [])):
            r = run(os.path.join(work, f"few_{per_class}_{name}"), data, "--num-classes", "10", *flags)
            served = tf.saved_model.load(os.path.join(r["model"], "Format-Serving")).signatures["predict_pixels"]
            predictions = served(pixels=tf.constant(new_images[held_out], tf.float32))["classes"].numpy()
            row[name] = round(float(np.mean(predictions == new_labels[held_out])), 4)
        row["points_better"] = round(100 * (row["fine_tuned"] - row["from_scratch"]), 1)
        figures[f"{per_class}_per_class"] = row
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="folder for data and runs (default: a new temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="transfer_bench_")
    print(json.dumps({"new_span": new_span(work), "few_shot": few_shot(work)}, indent=1))


if __name__ == "__main__":
    main()
