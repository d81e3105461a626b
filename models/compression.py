"""Prune → strip → prune-preserving QAT → full-integer TFLite, and what each stage costs and buys."""
import gzip
import io
import json
import os
import tarfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

STAGES = ("baseline", "pruned", "pqat", "tflite_int8")


# ----------------------------------------------------------------------------- the stages
def prune(model, target_sparsity: float, epochs: int, train, steps_per_epoch: int, callbacks, compile_fn,
          verbose: int = 2):
    """Magnitude pruning on a polynomial-decay schedule to `target_sparsity`, fine-tuned, then stripped."""
    end_step = max(1, int(epochs * steps_per_epoch * 0.7))  # reach the target, then recover accuracy
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target_sparsity, begin_step=0, end_step=end_step, frequency=10)
    pruned = compile_fn(tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule))
    pruned.fit(train, epochs=epochs, verbose=verbose,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks])
    return tfmot.sparsity.keras.strip_pruning(pruned)


def quantize_aware(model, sparse: bool, epochs: int, train, callbacks, compile_fn, verbose: int = 2):
    """8-bit quantization-aware training; with `sparse`, the prune-preserving scheme (PQAT) keeps zeros."""
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    if sparse:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        quantized = tfmot.quantization.keras.quantize_apply(annotated, scheme)
    else:
        quantized = tfmot.quantization.keras.quantize_apply(annotated)
    quantized = compile_fn(quantized)
    quantized.fit(train, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return quantized


def for_serving(quantized, float_model):
    """The QAT model rebuilt with the default 8-bit scheme and the same weights, kernels on the int8 grid.

    It computes what `quantized` computes at inference (the fake-quant of an on-grid kernel is the
    kernel itself), but without the prune-preserve scheme's mask constants in the graph, and
    its on-grid float kernels take ~1 byte per non-zero weight once gzip-compressed.
    `float_model` is a fresh float model of the same architecture.
    """
    clone = tfmot.quantization.keras.quantize_apply(tfmot.quantization.keras.quantize_annotate_model(float_model))
    clone.set_weights(quantized.get_weights())
    for layer in clone.layers:
        weights = {w.name.split("/")[-1].split(":")[0]: w for w in layer.weights}
        if not {"kernel", "kernel_min", "kernel_max"} <= set(weights):
            continue
        kernel, low, high = weights["kernel"], weights["kernel_min"], weights["kernel_max"]
        if len(low.shape):  # per output channel (convolutions)
            snapped = tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, low, high, 8, True)
        else:
            snapped = tf.quantization.fake_quant_with_min_max_vars(kernel, low, high, 8, True)
        kernel.assign(snapped)
    return clone


def to_tflite(model, representative_images=None, sparse: bool = False) -> bytes:
    """Float TFLite, or full-integer int8 (int8 inputs and outputs) given representative images.

    With `sparse`, pruned weights are stored in TFLite's sparse format (only the non-zeros).
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative_images is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if sparse:
            converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        converter.representative_dataset = lambda: ([image[None]] for image in representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


# ----------------------------------------------------------------------------- measurements
def weight_sparsity(named_weights):
    """Fraction of zeros per kernel and overall, from (name, array) pairs of weight matrices."""
    per_layer, zeros, total = {}, 0, 0
    for name, value in named_weights:
        value = np.asarray(value)
        per_layer[name] = float(np.mean(value == 0))
        zeros, total = zeros + int(np.sum(value == 0)), total + value.size
    return (zeros / total if total else 0.0), per_layer


def savedmodel_kernels(export_dir: str):
    """(checkpoint key, value) of every weight matrix (conv/dense kernel) in a SavedModel's variables."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    return [(key[len("weights/"):-len(suffix)].replace("..", "."), reader.get_tensor(key))  # unescape "."
            for key, shape in sorted(reader.get_variable_to_shape_map().items())
            if key.startswith("weights/") and key.endswith("kernel" + suffix) and len(shape) >= 2]


def tflite_kernels(tflite_model: bytes):
    """(name, value) of the weight input of every convolution and fully connected op (densified if sparse)."""
    interpreter = tf.lite.Interpreter(model_content=tflite_model, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    interpreter.set_tensor(source["index"], np.zeros(source["shape"], source["dtype"]))
    interpreter.invoke()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    kernels = []
    for op in interpreter._get_ops_details():  # the public API has no op list
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op["inputs"]) > 1:
            index = int(op["inputs"][1])
            name = f"{len(kernels)}:{op['op_name'].lower()}:{details[index]['name'].split(';')[0]}"
            kernels.append((name, interpreter.get_tensor(index)))
    return kernels


def sizes(path: str):
    """(bytes on disk, bytes of a gzip-compressed tar) of a file or directory."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        return len(data), len(gzip.compress(data, 9))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as tar:
        tar.add(path, arcname=".")
    return total, len(buffer.getvalue())


def median_latency_ms(call, repeats: int = 50) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def savedmodel_latency_ms(export_dir: str, image_shape) -> float:
    signature = tf.saved_model.load(export_dir).signatures["predict_pixels"]
    pixels = tf.zeros([1, *image_shape], tf.float32)
    return median_latency_ms(lambda: signature(pixels=pixels))


def tflite_run(tflite_model: bytes, images: np.ndarray) -> np.ndarray:
    """Class predictions of a TFLite model for flat [0, 1] images, quantizing inputs where needed."""
    interpreter = tf.lite.Interpreter(model_content=tflite_model)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    predictions = []
    for image in images:
        x = image[None].astype(np.float32)
        if source["dtype"] == np.int8:
            scale, zero = source["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_tensor(target["index"])[0])))
    return np.asarray(predictions)


def tflite_latency_ms(tflite_model: bytes, image: np.ndarray) -> float:
    interpreter = tf.lite.Interpreter(model_content=tflite_model)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    x = np.zeros(source["shape"], dtype=source["dtype"])

    def call():
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()

    return median_latency_ms(call, repeats=200)


# ----------------------------------------------------------------------------- the report
def write_report(report: dict, out_dir: str) -> None:
    """compression.json, compression.md and compression.png (accuracy against gzip size) in out_dir."""
    tf.io.gfile.makedirs(out_dir)
    stages = [s for s in STAGES if s in report]
    _atomic_write(os.path.join(out_dir, "compression.json"), json.dumps(report, indent=2).encode())
    rows = ["| stage | accuracy | sparsity | size (KB) | gzip (KB) | latency (ms) |",
            "|---|---|---|---|---|---|"]
    for s in stages:
        r = report[s]
        rows.append(f"| {s} | {r['accuracy']:.4f} | {r['sparsity']:.3f} | {r['size_bytes'] / 1024:.1f} | "
                    f"{r['gzip_bytes'] / 1024:.1f} | {r['latency_ms']:.3f} |")
    _atomic_write(os.path.join(out_dir, "compression.md"), ("\n".join(rows) + "\n").encode())

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for s in stages:
        ax.scatter(report[s]["gzip_bytes"] / 1024, 100 * report[s]["accuracy"], s=60)
        ax.annotate(s, (report[s]["gzip_bytes"] / 1024, 100 * report[s]["accuracy"]),
                    textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("gzip-compressed size (KB, log scale)")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("Accuracy vs. compressed size per stage")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    _atomic_write(os.path.join(out_dir, "compression.png"), buffer.getvalue())


def _atomic_write(path: str, data: bytes) -> None:
    with tf.io.gfile.GFile(path + ".tmp", "wb") as f:
        f.write(data)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
