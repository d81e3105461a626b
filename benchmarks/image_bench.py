"""Colour photo folders at real sizes: the pipeline against keras-io's image-folder recipe, in the same run.

    .venv/bin/python benchmarks/image_bench.py [--counts 2000,10000] [--sizes 64,160] [--epochs N] [--work DIR]
    .venv/bin/python benchmarks/image_bench.py --suite [--folders objects,small] [--sizes 64,128]

--suite: the photo-folder suite (benchmarks/photo_suite.py: eight kinds of colour folders generated from the
photographs the installed packages ship, each hard in its own way), each run with no flag but --image-shape,
beside keras-io's recipe with the same network for RECIPE_EPOCHS epochs (its best validation accuracy); then
a summary: served minus recipe per folder, their mean, the folders more than 1 point below, wall and
throughput ratios.

For each count, a generated JPEG folder (benchmarks/photos.py: 5 classes, 100-260 px, textured
backgrounds; no network). For each size, `python -m pipeline run --image-shape S,S,3 --no-cache`, with the
RSS of its whole process tree sampled every 0.2 s and attributed to the component running at the time;
then, in a fresh process, the recipe a user would write instead: `image_dataset_from_directory` (80/20
split), Rescaling, the same augmentation and the same network (models/networks.py, with Keras' own BatchNorm
momentum) at Adam's constant learning rate for RECIPE_EPOCHS epochs, scored by its best validation accuracy. Prints one JSON object per workload: wall time and peak RSS per component,
ExampleGen + Transform bytes against the folder's, Trainer images/s, served (compressed) accuracy, the
recipe's figures and the ratios the targets are stated in.

--suite --transfer: the same on photographs (benchmarks/photo_suite.py): the pipeline pretrains on shapes 5-9
drawn on photo crops, and its pushed model is fine-tuned onto shapes 0-4 (image_bench.suite_transfer).
--transfer: pretrain once, fine-tune many times. The model pushed by the first workload is the
--base-model of runs on another generated set with 3 other classes (ring, bar, diamond) at 10, 30 and
100 images per class, against the same network from scratch; both are scored on 100 held-out images per
class (compression off: this measures the start, not the compression).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import psutil  # noqa: E402

from benchmarks.photos import write_photo_folder  # noqa: E402

RECIPE = r'''
import json, os, resource, sys, time
start = time.perf_counter()
import tensorflow as tf, tf_keras as keras
import models
from models import augment, networks
folder, size, epochs, network = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hp = json.loads(sys.argv[5])
keras.utils.set_random_seed(0)
train, val = keras.utils.image_dataset_from_directory(folder, validation_split=0.2, subset="both", seed=1,
                                                      image_size=(size, size), batch_size=hp["batch_size"])
classes = len(train.class_names)
augmentation = augment.layers(0)
train = train.map(lambda x, y: (augmentation(x / 255.0, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
train, val = train.prefetch(tf.data.AUTOTUNE), val.map(lambda x, y: (x / 255.0, y)).prefetch(tf.data.AUTOTUNE)
model = networks.compile_model(networks.build(network, (size, size, 3), classes, hp), hp["learning_rate"])
fit_start = time.perf_counter()
history = model.fit(train, validation_data=val, epochs=epochs, verbose=2)
fit_seconds = time.perf_counter() - fit_start
n = sum(int(y.shape[0]) for _, y in train)
print(json.dumps({"wall_seconds": time.perf_counter() - start, "best_val_accuracy": max(history.history["val_accuracy"]),
                  "fit_images_per_second": epochs * n / fit_seconds, "epochs": epochs,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''
RECIPE_EPOCHS = 30  # keras-io's image-classification-from-scratch trains for a fixed number of epochs
PROGRESS = re.compile(r"^\d\d:\d\d:\d\d (\w+): (running|done in)")


def tree_rss_mb(process: psutil.Process) -> float:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_pipeline(args: list) -> dict:
    """Runs the CLI; returns wall seconds, the log, and the peak tree RSS per component (and overall)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    watched, current, peaks, lines = psutil.Process(proc.pid), ["(start-up)"], {}, []

    def sample():
        while proc.poll() is None:
            rss = tree_rss_mb(watched)
            peaks[current[0]] = max(peaks.get(current[0], 0.0), rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        lines.append(line)
        match = PROGRESS.match(line)
        if match:
            current[0] = match.group(1) if match.group(2) == "running" else "(between components)"
    proc.wait()
    sampler.join()
    return {"exit_code": proc.returncode, "wall_seconds": time.perf_counter() - start, "log": "".join(lines),
            "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()}}


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def measure(folder: str, size: int, work: str, epochs=None) -> dict:
    from pipeline import lineage

    name = os.path.basename(folder)
    output = os.path.join(work, f"{name}_{size}")
    flags = ["--data", folder, "--image-shape", f"{size},{size},3", "--output", output, "--no-cache"]
    run = run_pipeline(flags + (["--epochs", str(epochs)] if epochs else []))
    result = lineage.latest_run(os.path.join(output, "metadata.sqlite"), name)
    training = result.training
    report = result.compression_report
    served = report.stages[report.final_model_stage]
    hp = training["hparams"]
    recipe = subprocess.run([sys.executable, "-c", RECIPE, folder, str(size), str(RECIPE_EPOCHS),
                             training["network"], json.dumps({**hp, "bn_momentum": 0.99})], cwd=ROOT,
                            capture_output=True, text=True,
                            env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    if recipe.returncode != 0:
        raise RuntimeError(recipe.stderr[-3000:])
    recipe = json.loads(recipe.stdout.strip().splitlines()[-1])
    root = os.path.join(output, "pipeline_root")
    source, written = folder_bytes(folder), folder_bytes(os.path.join(root, "FileBasedExampleGen")) + folder_bytes(
        os.path.join(root, "Transform"))
    return {
        "workload": f"{name} at {size}px", "images": sum(len(f) for _, _, f in os.walk(folder)),
        "exit_code": run["exit_code"], "pushed": result.pushed,
        "pipeline_wall_seconds": round(run["wall_seconds"], 1),
        "components_seconds": {c.name: round(c.seconds, 1) for c in result.components},
        "peak_rss_mb": run["peak_rss_mb"],
        "source_bytes": source, "examplegen_transform_bytes": written,
        "network": training["network"], "augment": training["augment"], "epochs_run": training["epochs_run"],
        "stopped": training.get("stopped"),
        "trainer_images_per_second": round(training["examples_per_second"], 1),
        "eval_accuracy": {s: round(m.accuracy, 4) for s, m in report.stages.items()},
        "gzip_bytes": {s: m.gzip_bytes for s, m in report.stages.items()},
        "recipe": {k: round(v, 4) for k, v in recipe.items()},
        "ratios": {
            "artifacts_over_source_bytes": round(written / source, 3),
            "served_accuracy_minus_recipe_best_points": round(100 * (served.accuracy - recipe["best_val_accuracy"]), 2),
            "pipeline_over_recipe_wall": round(run["wall_seconds"] / recipe["wall_seconds"], 2),
            "trainer_over_recipe_fit_throughput": round(training["examples_per_second"] /
                                                        recipe["fit_images_per_second"], 3),
            "baseline_over_served_gzip": round(report.stages["baseline"].gzip_bytes / served.gzip_bytes, 2),
        },
        "refusal": result.refusal if not result.pushed else "", "pushed_dir": result.pushed_dir,
        "trainer_model": result.uri("Trainer", "model"),
    }


def transfer(base_pushed_dir: str, size: int, work: str, pool: str = None, classes=("bar", "diamond", "ring")) -> dict:
    """`base_pushed_dir` fine-tuned on `classes` of `pool` (sorted; at least 200 images each) at 10, 30 and
    100 images per class, against the same network from scratch; scored on images 100-199 of each class."""
    import numpy as np
    import tensorflow as tf

    from pipeline import lineage

    pool = pool or write_photo_folder(os.path.join(work, "other_pool"), 8 * 200, classes=8, sizes=(100, 260), seed=77)
    files = {c: sorted(os.listdir(os.path.join(pool, c))) for c in classes}
    held_out = [(os.path.join(pool, c, f), i) for i, c in enumerate(classes) for f in files[c][100:200]]
    figures = {}
    for per_class in (10, 30, 100):
        data = os.path.join(work, f"other_{per_class}")
        for c in classes:
            os.makedirs(os.path.join(data, c), exist_ok=True)
            for f in files[c][:per_class]:
                target = os.path.join(data, c, f)
                if not os.path.exists(target):
                    os.link(os.path.join(pool, c, f), target)
        row = {}
        for name, flags in (("fine_tuned", ["--base-model", base_pushed_dir]), ("from_scratch", [])):
            output = os.path.join(work, f"other_{per_class}_{name}")
            run = run_pipeline(["--data", data, "--image-shape", f"{size},{size},3", "--output", output, "--no-cache",
                                "--no-prune", "--no-qat", "--min-accuracy", "0", "--min-class-accuracy", "0",
                                "--max-regression", "1", *flags])
            result = lineage.latest_run(os.path.join(output, "metadata.sqlite"), os.path.basename(data))
            served = tf.saved_model.load(os.path.join(result.uri("Trainer", "model"), "Format-Serving"))
            predicted = np.concatenate([served.signatures["predict_images"](images=tf.constant(
                [open(p, "rb").read() for p, _ in held_out[i:i + 64]]))["classes"].numpy()
                for i in range(0, len(held_out), 64)])
            row[name] = {"held_out_accuracy": round(float(np.mean(predicted == [label for _, label in held_out])), 4),
                         "wall_seconds": round(run["wall_seconds"], 1), "epochs_run": result.training["epochs_run"]}
        row["fine_tuned_minus_scratch_points"] = round(
            100 * (row["fine_tuned"]["held_out_accuracy"] - row["from_scratch"]["held_out_accuracy"]), 1)
        figures[f"{per_class}_per_class"] = row
        print(json.dumps({"transfer": {f"{per_class}_per_class": row}}), flush=True)
    return figures


def suite_transfer(work: str, size: int) -> dict:
    """Pretrain once with the pipeline on shapes 5-9 of the photo suite's objects (200 per class), then
    fine-tune its pushed model onto shapes 0-4 (other classes, same kind of photographs)."""
    from benchmarks.photo_suite import SHAPES10, objects
    from pipeline import lineage

    pretrain = objects(os.path.join(work, "suite", "pretrain_shapes_5_9"), per_class=200, seed=11, shapes=SHAPES10[5:])
    output = os.path.join(work, f"pretrain_{size}")
    run = run_pipeline(["--data", pretrain, "--image-shape", f"{size},{size},3", "--output", output, "--no-cache",
                        "--no-prune", "--no-qat", "--min-accuracy", "0", "--min-class-accuracy", "0"])
    result = lineage.latest_run(os.path.join(output, "metadata.sqlite"), os.path.basename(pretrain))
    base = result.pushed_dir or result.uri("Trainer", "model")
    pretrained = {"val_accuracy": max(e["val_accuracy"] for e in result.training["epochs"]),
                  "wall_seconds": round(run["wall_seconds"], 1), "stopped": result.training.get("stopped")}
    print(json.dumps({"pretrained": pretrained}), flush=True)
    pool = objects(os.path.join(work, "suite", "transfer_pool_shapes_0_4"), per_class=200, seed=12)
    return {"pretrained": pretrained, **transfer(base, size, work, pool, tuple(sorted(SHAPES10[:5])))}


def suite(work: str, sizes: list, names) -> None:
    from benchmarks.photo_suite import write_suite

    results = []
    for name, folder in write_suite(os.path.join(work, "suite"), names).items():
        for size in sizes:
            row = measure(folder, size, work)
            row.pop("trainer_model"), row.pop("pushed_dir")
            results.append(row)
            print(json.dumps(row), flush=True)
    served_minus_recipe = {r["workload"]: r["ratios"]["served_accuracy_minus_recipe_best_points"] for r in results}
    print(json.dumps({"suite": {
        "served_minus_recipe_points": served_minus_recipe,
        "mean_points": round(sum(served_minus_recipe.values()) / len(results), 2),
        "more_than_1_point_below": [w for w, d in served_minus_recipe.items() if d < -1],
        "pipeline_over_recipe_wall": {r["workload"]: r["ratios"]["pipeline_over_recipe_wall"] for r in results},
        "trainer_over_recipe_fit_throughput": {r["workload"]: r["ratios"]["trainer_over_recipe_fit_throughput"]
                                               for r in results}}}, indent=1), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="2000,10000")
    parser.add_argument("--sizes", default="64,160")
    parser.add_argument("--epochs", type=int, help="epoch ceiling for the pipeline (default: the network's budget)")
    parser.add_argument("--work", default=None, help="folder for data and runs (default: a new temporary one)")
    parser.add_argument("--transfer", action="store_true", help="also pretrain once, fine-tune on other classes")
    parser.add_argument("--suite", action="store_true", help="the photo-folder suite instead of --counts")
    parser.add_argument("--folders", help="--suite: these folders only (default: all)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="image_bench_")
    if args.suite and args.transfer:
        print(json.dumps({"suite_transfer": suite_transfer(work, int(args.sizes.split(",")[0]))}, indent=1))
        return None
    if args.suite:
        return suite(work, [int(s) for s in args.sizes.split(",")], args.folders.split(",") if args.folders else None)
    results = []
    for count in (int(c) for c in args.counts.split(",")):
        folder = write_photo_folder(os.path.join(work, f"photos{count}"), count, classes=5, sizes=(100, 260), seed=count)
        for size in (int(s) for s in args.sizes.split(",")):
            results.append(measure(folder, size, work, args.epochs))
            print(json.dumps(results[-1], indent=1), flush=True)
    if args.transfer:
        first = results[0]
        print(json.dumps({"transfer": transfer(first["pushed_dir"] or first["trainer_model"], int(first["workload"].split(" at ")[1][:-2]),
                                               work)}, indent=1))
    by_size = {}
    for r in results:
        by_size.setdefault(r["workload"].split(" at ")[1], []).append(r)
    for size, runs in by_size.items():
        if len(runs) == 2:
            small, large = sorted(runs, key=lambda r: r["images"])
            print(json.dumps({"size": size, "peak_rss_large_over_small": {
                k: round(large["peak_rss_mb"][k] / small["peak_rss_mb"][k], 3)
                for k in large["peak_rss_mb"] if k in small["peak_rss_mb"] and small["peak_rss_mb"][k]}}, indent=1))


if __name__ == "__main__":
    main()
