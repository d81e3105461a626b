"""Wall time of a full pipeline run and of each component, and the Trainer's training throughput
against a plain Keras `fit` of the same model on the same data in this same process run.

    .venv/bin/python benchmarks/pipeline_bench.py [--output DIR] [--epochs N]
Prints one JSON object.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline import runners  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402


def plain_keras_fit(config: PipelineConfig, epochs: int) -> float:
    """examples/s of model.fit on the bundled digits (scaled like Transform does), same model and batch."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from models import cnn

    digits = load_digits()
    x = (np.rint(digits.images * 255.0 / 16.0) / 255.0).reshape(-1, 64).astype("float32")
    y = digits.target
    n = int(len(y) * 0.8)  # the size of the 4:1 train split
    hp = {k: v for k, v in vars(config.hparams).items()}
    model = cnn.compile_model(cnn.build_model((8, 8, 1), 10, hp), hp["learning_rate"])
    dataset = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).shuffle(n).batch(hp["batch_size"])
    start = time.perf_counter()
    model.fit(dataset, epochs=epochs, verbose=0)
    return epochs * n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", help="output folder (default: a new temporary one)")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    output = args.output or tempfile.mkdtemp(prefix="pipeline_bench_")
    config = PipelineConfig(output_dir=output, enable_cache=False)
    config.hparams.epochs = args.epochs
    start = time.perf_counter()
    result = runners.run_local(config)
    wall = time.perf_counter() - start
    settings = result.compression_report["settings"]
    trainer_eps = settings["baseline_examples_per_second"]
    plain_eps = plain_keras_fit(config, args.epochs)
    print(json.dumps({
        "pipeline_wall_seconds": round(wall, 1),
        "components_seconds": {c.name: round(c.seconds, 1) for c in result.components},
        "pushed": result.pushed,
        "train_examples": settings["train_examples"], "epochs": args.epochs,
        "trainer_examples_per_second": round(trainer_eps, 1),
        "plain_keras_fit_examples_per_second": round(plain_eps, 1),
        "trainer_vs_plain_fit_ratio": round(trainer_eps / plain_eps, 3),
        "note": "the Trainer's fit also validates each epoch and writes TensorBoard histograms",
    }, indent=2))


if __name__ == "__main__":
    main()
