"""Prune → strip → prune-preserving QAT → full-integer TFLite, and what each stage costs and buys."""
import gzip
import io
import os
import tarfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from models import compat, contract


# ----------------------------------------------------------------------------- the stages
PRUNE_END_FRACTION = 0.7  # of the pruning steps: reach the target, then recover accuracy at it


def pruning_schedule(total_steps: int, target_sparsity: float):
    """Polynomial decay to `target_sparsity` that lands on a pruning step, so the target is always reached.

    TFMOT updates the masks only on steps that are multiples of `frequency` from `begin_step`, up to
    `end_step`; the end step is placed on such a step, at about PRUNE_END_FRACTION of the run.
    """
    if total_steps < 3:
        return tfmot.sparsity.keras.ConstantSparsity(target_sparsity, begin_step=0, frequency=1)
    frequency = max(1, min(100, total_steps // 10))  # about ten mask updates
    end_step = max(frequency, int(total_steps * PRUNE_END_FRACTION) // frequency * frequency)
    return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target_sparsity,
                                                begin_step=0, end_step=end_step, frequency=frequency)


def _has_kernel(layer) -> bool:
    return any(w.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel") for w in layer.weights)


def prunable(model, schedule):
    """`model` with every layer TFMOT can prune wrapped for pruning on `schedule`, and the names of the layers
    with kernels it cannot prune (kept dense)."""
    kept = []

    def wrap(layer):
        if not layer.weights:
            return layer
        try:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        except ValueError:  # TFMOT's answer for a layer type it does not support
            if _has_kernel(layer):
                kept.append(layer.name)
            return layer

    return keras.models.clone_model(model, clone_function=wrap), kept


@compat.libraries_not_converted()
def prune(model, schedule, epochs: int, steps_per_epoch: int, train, callbacks, compile_fn, verbose: int = 2):
    """Magnitude pruning on `schedule`, fine-tuned for `epochs`, then stripped of its wrappers.
    Returns (the pruned model, names of layers with kernels TFMOT could not prune)."""
    pruned, kept = prunable(model, schedule)
    pruned = compile_fn(pruned)
    pruned.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks])
    return tfmot.sparsity.keras.strip_pruning(pruned), kept


class KeepFloat(tfmot.quantization.keras.QuantizeConfig):
    """Leaves a layer TFMOT cannot quantize (Rescaling, Normalization, ...) in float: TFMOT's documented
    no-op QuantizeConfig."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def quantizable(model, scheme=None):
    """`model` with 8-bit fake quantization (Conv-BatchNorm-ReLU folded, as TFMOT's QAT does) on every layer
    TFMOT can quantize; the others stay float. Returns (the QAT model, names of the layers kept float)."""
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()
    kept = []

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if registry.supports(layer) or isinstance(layer, keras.layers.BatchNormalization):  # BN: folded
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        kept.append(layer.name)
        return tfmot.quantization.keras.quantize_annotate_layer(layer, KeepFloat())

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with tfmot.quantization.keras.quantize_scope({"KeepFloat": KeepFloat}):
        quantized = tfmot.quantization.keras.quantize_apply(annotated, scheme or
                                                            tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme())
    return quantized, kept


@compat.libraries_not_converted()
def quantize_aware(model, sparse: bool, epochs: int, steps_per_epoch: int, train, callbacks, compile_fn,
                   verbose: int = 2):
    """8-bit quantization-aware training; with `sparse`, the prune-preserving scheme (PQAT) keeps zeros.
    Returns (the QAT model, names of the layers kept float)."""
    scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme() if sparse else None
    quantized, kept = quantizable(model, scheme)
    quantized = compile_fn(quantized)
    quantized.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose, callbacks=callbacks)
    return quantized, kept


def for_serving(quantized, float_model):
    """The QAT model rebuilt with the default 8-bit scheme and the same weights, kernels on the int8 grid.

    It computes what `quantized` computes at inference (the fake-quant of an on-grid kernel is the
    kernel itself), but without the prune-preserve scheme's mask constants in the graph, and
    its on-grid float kernels take ~1 byte per non-zero weight once gzip-compressed.
    `float_model` is a fresh float model of the same architecture.
    """
    clone, _ = quantizable(float_model)
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


@compat.libraries_not_converted()
def to_tflite(model, representative_images=None, sparse: bool = False) -> bytes:
    """Float TFLite, or full-integer int8 (int8 inputs and outputs) given representative images.

    With `sparse`, pruned weights are stored in TFLite's sparse format (only the non-zeros).
    """
    # From the inference function, variables frozen: `from_keras_model` first saves the model as a SavedModel,
    # tracing every layer's functions (35 s of a 37 s conversion for MobileNetV2; 2 s this way, same kernels).
    inference = tf.function(lambda images: model(images, training=False), autograph=False).get_concrete_function(
        tf.TensorSpec([None, *model.input_shape[1:]], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([inference])
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
GZIP_LEVEL = 6  # gzip's default level, as `gzip` and `tar czf` compress a model for download
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
    for op in compat.tflite_ops(interpreter):
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op["inputs"]) > 1:
            index = int(op["inputs"][1])
            name = f"{len(kernels)}:{op['op_name'].lower()}:{details[index]['name'].split(';')[0]}"
            kernels.append((name, interpreter.get_tensor(index)))
    return kernels


def sizes(path: str, exclude: str = ""):
    """(bytes on disk, bytes of a gzip-compressed tar) of a directory, without its `exclude` sub-folder."""
    skip = os.path.join(path, exclude) if exclude else None
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
                if not (skip and (d + "/").startswith(skip + "/")))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=GZIP_LEVEL) as tar:
        tar.add(path, arcname=".", filter=lambda info: None if skip and info.name.lstrip("./").startswith(exclude)
                else info)
    return total, len(buffer.getvalue())


def sizes_of_bytes(content: bytes):
    """(bytes, gzip-compressed bytes) of a file's content."""
    return len(content), len(gzip.compress(content, GZIP_LEVEL))


def median_latency_ms(call, repeats: int = 50) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def savedmodel_pixels(export_dir: str):
    """The exported model's `predict_pixels` signature (pixels in [0, 255]), loaded."""
    return tf.saved_model.load(export_dir).signatures[contract.PREDICT_PIXELS]


def savedmodel_classifier(signature):
    """A function from [0, 1] images to class predictions, through a `predict_pixels` signature."""
    return lambda images: signature(pixels=tf.convert_to_tensor(images) * 255.0)[contract.CLASSES].numpy()


def savedmodel_latency_ms(signature, image_shape) -> float:
    """Median single-image call of a `predict_pixels` signature."""
    pixels = tf.zeros([1, *image_shape], tf.float32)
    return median_latency_ms(lambda: signature(pixels=pixels))


def tflite_classifier(tflite_model: bytes):
    """A function from flat [0, 1] images to class predictions, on one TFLite interpreter (inputs
    quantized where the model takes int8)."""
    interpreter = tf.lite.Interpreter(model_content=tflite_model)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def classify(images) -> np.ndarray:
        predictions = []
        for image in np.asarray(images):
            x = image[None].astype(np.float32)
            if source["dtype"] == np.int8:
                scale, zero = source["quantization"]
                x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
            interpreter.set_tensor(source["index"], x)
            interpreter.invoke()
            predictions.append(int(np.argmax(interpreter.get_tensor(target["index"])[0])))
        return np.asarray(predictions)

    return classify


def tflite_run(tflite_model: bytes, images: np.ndarray) -> np.ndarray:
    """Class predictions of a TFLite model for flat [0, 1] images."""
    return tflite_classifier(tflite_model)(images)


def streamed_accuracy(classify, batches) -> float:
    """Accuracy of `classify` (images → class predictions) over (features, labels) batches, streamed."""
    correct = total = 0
    for features, labels in batches:
        predictions = classify(features[contract.IMAGE_KEY])
        correct += int(np.sum(predictions == np.asarray(labels).reshape(-1)))
        total += len(predictions)
    return correct / max(total, 1)


def tflite_latency_ms(tflite_model: bytes) -> float:
    interpreter = tf.lite.Interpreter(model_content=tflite_model)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    x = np.zeros(source["shape"], dtype=source["dtype"])

    def call():
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()

    return median_latency_ms(call, repeats=200)
