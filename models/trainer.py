"""The Trainer's run_fn: data → float baseline → prune → PQAT → export, measuring every stage.

custom_config (pipeline.config.PipelineConfig.trainer_config): image_shape, num_classes,
hparams (models/cnn.py), compression (prune, target_sparsity, prune_epochs, qat, qat_epochs).
"""
import dataclasses
import json
import logging
import os
import sys
import time
from typing import List

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from models import cnn, compression, signatures
from models.preprocessing import IMAGE_KEY, LABEL_KEY

log = logging.getLogger(__name__)
VERBOSE = 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, one line per epoch in logs
COMPRESSION_DIR = "compression"  # under the model-run directory; components/gates.py reads it


# ----------------------------------------------------------------------------- devices
@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """How to train on the visible devices."""

    kind: str  # "mirrored" | "one_gpu" | "cpu"
    devices: tuple
    mixed_precision: bool

    def describe(self) -> str:
        if self.kind == "mirrored":
            return f"MirroredStrategy over {len(self.devices)} GPUs {list(self.devices)}, mixed precision"
        if self.kind == "one_gpu":
            return f"one GPU ({self.devices[0]}), mixed precision"
        return "CPU (no GPU visible), float32"


def plan_devices(gpu_names: List[str]) -> DevicePlan:
    """All visible GPUs through one strategy with mixed precision; the CPU when there is none."""
    if len(gpu_names) > 1:
        return DevicePlan("mirrored", tuple(gpu_names), True)
    if len(gpu_names) == 1:
        return DevicePlan("one_gpu", tuple(gpu_names), True)
    return DevicePlan("cpu", ("/cpu:0",), False)


def make_strategy(plan: DevicePlan) -> tf.distribute.Strategy:
    if plan.kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(plan.devices))
    return tf.distribute.OneDeviceStrategy(plan.devices[0])


def visible_gpus() -> List[str]:
    return [f"/gpu:{i}" for i, _ in enumerate(tf.config.list_logical_devices("GPU"))]


# ----------------------------------------------------------------------------- data
def load_split(file_patterns, tft_output) -> tf.data.Dataset:
    """(image, label) pairs of a transformed split, unbatched and cached (the data sets are small)."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    spec = tft_output.transformed_feature_spec()
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    dataset = dataset.map(lambda record: tf.io.parse_single_example(record, spec),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(lambda f: (f[IMAGE_KEY], f[LABEL_KEY])).cache()


def as_arrays(dataset: tf.data.Dataset):
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images).astype(np.float32), np.asarray(labels).reshape(-1)


# ----------------------------------------------------------------------------- run_fn
def run_fn(fn_args) -> None:
    config = fn_args.custom_config
    hp, comp = config["hparams"], config["compression"]
    image_shape, num_classes = tuple(config["image_shape"]), int(config["num_classes"])
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    out_dir = os.path.join(fn_args.model_run_dir, COMPRESSION_DIR)
    tf.io.gfile.makedirs(out_dir)

    train_pairs = load_split(fn_args.train_files, tft_output)
    eval_images, eval_labels = as_arrays(load_split(fn_args.eval_files, tft_output))
    train_images, _ = as_arrays(train_pairs)
    steps_per_epoch = int(np.ceil(len(train_images) / hp["batch_size"]))
    train = train_pairs.shuffle(len(train_images), seed=0).batch(hp["batch_size"]).prefetch(2)

    plan = plan_devices(visible_gpus())
    log.info("Training on %s", plan.describe())
    strategy = make_strategy(plan)

    def compile_fn(model):
        return cnn.compile_model(model, hp["learning_rate"])

    def callbacks(stage):
        return [keras.callbacks.TensorBoard(os.path.join(fn_args.model_run_dir, stage),
                                            histogram_freq=1, write_graph=True)]

    def accuracy(model):
        return float(np.mean(np.argmax(model.predict(eval_images, batch_size=256, verbose=0), -1)
                             == eval_labels))

    # 1. float baseline (mixed precision on GPU)
    keras.mixed_precision.set_global_policy("mixed_float16" if plan.mixed_precision else "float32")
    with strategy.scope():
        baseline = compile_fn(cnn.build_model(image_shape, num_classes, hp))
    fit_start = time.perf_counter()
    baseline.fit(train, epochs=hp["epochs"], verbose=VERBOSE, callbacks=callbacks("baseline"),
                 validation_data=(eval_images, eval_labels))
    fit_seconds = time.perf_counter() - fit_start
    keras.mixed_precision.set_global_policy("float32")
    stages = {"baseline": baseline}  # stage name → Keras model, in order

    # 2. pruning (runs under the strategy; the float32 copy carries the baseline's weights)
    with strategy.scope():
        model = cnn.build_model(image_shape, num_classes, hp)
        model.set_weights(baseline.get_weights())
    if comp["prune"]:
        with strategy.scope():
            model = compression.prune(model, comp["target_sparsity"], comp["prune_epochs"], train,
                                      steps_per_epoch, callbacks("pruned"), compile_fn, VERBOSE)
        stages["pruned"] = model

    # 3. quantization-aware training: TFMOT's QAT does not support tf.distribute, so one device
    if comp["qat"]:
        if plan.kind == "mirrored":
            log.warning("QAT cannot run under MirroredStrategy (TFMOT); running it on %s only",
                        plan.devices[0])
        with tf.device(plan.devices[0] if plan.kind != "cpu" else "/cpu:0"):
            model = compression.quantize_aware(model, comp["prune"], comp["qat_epochs"], train,
                                               callbacks("pqat"), compile_fn, VERBOSE)
            model = compression.for_serving(model, cnn.build_model(image_shape, num_classes, hp))
        stages["pqat"] = model

    # 4. export the final model for serving, the earlier stages for measurement, and int8 TFLite
    final_stage = list(stages)[-1]
    export_dirs = {}
    for stage, stage_model in stages.items():
        export_dirs[stage] = (fn_args.serving_model_dir if stage == final_stage
                              else os.path.join(out_dir, "savedmodel_" + stage))
        signatures.export(stage_model, tft_output, image_shape, export_dirs[stage])
    representative = train_images[np.random.default_rng(0).permutation(len(train_images))[:200]]
    tflite_int8 = compression.to_tflite(stages[final_stage], representative, sparse=comp["prune"])
    tflite_float = compression.to_tflite(baseline)
    for name, content in (("model_int8.tflite", tflite_int8), ("baseline_float.tflite", tflite_float)):
        with tf.io.gfile.GFile(os.path.join(out_dir, name), "wb") as f:
            f.write(content)

    # 5. measure each stage from what was exported
    report = {}
    for stage, export_dir in export_dirs.items():
        overall, per_layer = compression.weight_sparsity(compression.savedmodel_kernels(export_dir))
        size, gz = compression.sizes(export_dir)
        report[stage] = {"accuracy": accuracy(stages[stage]), "sparsity": overall,
                         "layer_sparsity": per_layer, "size_bytes": size, "gzip_bytes": gz,
                         "latency_ms": compression.savedmodel_latency_ms(export_dir, image_shape)}
    tflite_predictions = compression.tflite_run(tflite_int8, eval_images)
    overall, per_layer = compression.weight_sparsity(compression.tflite_kernels(tflite_int8))
    size, gz = compression.sizes(os.path.join(out_dir, "model_int8.tflite"))
    float_size, float_gz = compression.sizes(os.path.join(out_dir, "baseline_float.tflite"))
    report["tflite_int8"] = {
        "accuracy": float(np.mean(tflite_predictions == eval_labels)), "sparsity": overall,
        "layer_sparsity": per_layer, "size_bytes": size, "gzip_bytes": gz,
        "latency_ms": compression.tflite_latency_ms(tflite_int8, eval_images[0]),
        "baseline_float_tflite_bytes": float_size, "baseline_float_tflite_gzip_bytes": float_gz}
    report["settings"] = {"device": plan.describe(), "final_stage": final_stage,
                          "eval_examples": int(len(eval_labels)), "train_examples": int(len(train_images)),
                          "baseline_fit_seconds": fit_seconds,
                          "baseline_examples_per_second": hp["epochs"] * len(train_images) / fit_seconds,
                          **comp}
    compression.write_report(report, out_dir)
    # The int8 model travels with the pushed version, outside the SavedModel proper (measured above).
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    tf.io.gfile.copy(os.path.join(out_dir, "model_int8.tflite"),
                     os.path.join(extra, "model_int8.tflite"), overwrite=True)
    log.info("Compression report:\n%s", json.dumps({s: report[s] for s in report if s != "settings"},
                                                   indent=1, default=str)[:4000])
