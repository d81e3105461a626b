"""Starting from an existing model: warm start on new data, or the Keras transfer-learning recipe.

A base model is the float model behind an earlier pushed version (a Model artifact holding
Format-Keras/model.keras) or the user's own Keras model (a SavedModel folder, `.keras` or `.h5` file):
Sequential, functional with branches and residual adds (every keras.applications model), or with a
backbone nested as a layer. Its graph is rebuilt on the pipeline's own `image` input with nested
models inlined (TFMOT prunes and quantizes only flat graphs); its layers, and so its weights, are reused.
"""
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tf_keras as keras

from models import contract, data


class IncompatibleBaseModel(ValueError):
    """The base model cannot be used on this data; the message names the layer or shape and why."""


FEATURE_ENDS = (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)

# The pixel ranges a base model may expect, as (scale, offset) from the pipeline's [0, 1] images.
PIXELS = {"0..1": (1.0, 0.0), "0..255": (255.0, 0.0), "-1..1": (2.0, -1.0)}
# keras.applications models that rescale nothing inside: the range their preprocess_input gives, by model-name
# prefix. (Those that rescale inside, e.g. EfficientNet, MobileNetV3, ConvNeXt, start with a Rescaling layer.)
APPLICATIONS = (("mobilenetv2", "-1..1"), ("mobilenet_", "-1..1"), ("resnet50v2", "-1..1"), ("resnet101v2", "-1..1"),
                ("resnet152v2", "-1..1"), ("inception", "-1..1"), ("xception", "-1..1"), ("nasnet", "-1..1"),
                ("resnet", "0..255"), ("vgg", "0..255"), ("densenet", "0..1"))


def _first_layers(model: keras.Model, depth: int = 4) -> list:
    """The first few layers a model applies to its input, nested models opened (and listed too)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += _first_layers(layer, depth)
        if len(found) >= depth:
            break
    return found[:depth]


def pixels_for(base: keras.Model, stated: Optional[str]) -> Tuple[str, str]:
    """(the pixel range to feed `base`, why): `stated` (--base-model-pixels) when given, else input_pixels."""
    return (stated, "--base-model-pixels") if stated else input_pixels(base)


def input_pixels(base: keras.Model) -> Tuple[str, str]:
    """(the pixel range `base` expects, one of PIXELS; why): read from a Rescaling layer among its first layers
    (a scale under 1/100 reads 0..255), else a keras.applications model's known preprocessing, else this
    pipeline's own 0..1."""
    for layer in _first_layers(base):
        if isinstance(layer, keras.layers.Rescaling):
            scale = float(np.mean(layer.scale))
            pixels = "0..255" if scale < 0.01 else "0..1"
            return pixels, f"its layer '{layer.name}' rescales by {scale:.4g} (it reads {pixels})"
        name = layer.name.lower() if isinstance(layer, keras.Model) else ""
        for model_name in [base.name.lower(), name]:
            for prefix, pixels in APPLICATIONS:
                if model_name.startswith(prefix):
                    return pixels, (f"'{model_name}' is a keras.applications model whose preprocess_input gives "
                                    f"{pixels}")
    return "0..1", "no Rescaling layer or known keras.applications model at its input; --base-model-pixels " \
                   "to change"


def keras_file(uri: str) -> str:
    """The Keras model at `uri`: a Model artifact's float model (Format-Keras/), the float model inside a
    pushed version (serving/<model>/<version>/assets.extra/) or inside the Compressor's Model artifact, or the
    user's file itself.

    (The Trainer's fn_args.base_model is `uri`/Format-Serving.)"""
    for own in (data.keras_model_path(uri), os.path.join(uri, contract.PUSHED_FLOAT_MODEL),
                os.path.join(uri, "Format-Serving", contract.PUSHED_FLOAT_MODEL),  # a compressed Model artifact
                os.path.join(os.path.dirname(uri), contract.PUSHED_FLOAT_MODEL)):
        if os.path.exists(own):
            return own
    return uri


def load(path: str, trust_code: bool = False) -> keras.Model:
    """The Keras model at `path`, loaded in Keras' safe mode whatever its format (.keras, .h5, a legacy
    SavedModel, an HDF5 file named .keras): a layer that carries Python code (a Lambda's bytecode) is refused
    before it can run, unless `trust_code` (--trust-base-model-code)."""
    from tf_keras.src.saving import serialization_lib

    try:
        with serialization_lib.SafeModeScope(not trust_code):  # the .h5 and SavedModel loaders read the scope
            return keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as e:  # unreadable files raise many types
        if "arbitrary code execution" in str(e):
            raise IncompatibleBaseModel(
                f"--base-model {path}: holds a Lambda layer with Python code, which the pipeline does not run "
                "from a model file (Keras' safe mode). Replace the Lambda with built-in Keras layers, or pass "
                "--trust-base-model-code if you trust the file.") from e
        raise IncompatibleBaseModel(f"--base-model {path}: not a loadable Keras model ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200]}). Give a Keras SavedModel folder, a .keras "
                                    "or an .h5 file.") from e


class _Inlined:
    """A model's computation replayed on new inputs, layer by layer, with nested models inlined."""

    def __init__(self):
        self.called: List[keras.layers.Layer] = []  # every reused layer, in call order
        self.feature_end = None  # output of the last Flatten / global pooling called
        self.last_dense: Optional[keras.layers.Dense] = None
        self.dense_input = None  # what the last Dense called reads

    def call(self, layer, x):
        if isinstance(layer, keras.Model):
            return self.model(layer, x)
        try:
            y = layer(x)
        except Exception as e:  # a layer that cannot read what comes before it here
            raise IncompatibleBaseModel(f"base model layer '{layer.name}' ({type(layer).__name__}) cannot be "
                                        f"rebuilt on this data: {str(e).splitlines()[0][:200]}") from e
        self.called.append(layer)
        if isinstance(layer, FEATURE_ENDS):
            self.feature_end = y
        if isinstance(layer, keras.layers.Dense):
            self.last_dense, self.dense_input = layer, x
        return y

    def model(self, model: keras.Model, x):
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise IncompatibleBaseModel(f"base model '{model.name}' has {len(model.inputs)} inputs and "
                                        f"{len(model.outputs)} outputs; the pipeline feeds one image and needs one "
                                        "class-probability output.")
        if isinstance(model, keras.Sequential):
            for layer in model.layers:
                x = self.call(layer, x)
            return x
        config = model.get_config()  # the functional graph: each layer's inbound nodes, by layer name
        (input_name, _, _), = config["input_layers"]
        tensors = {(input_name, 0, 0): x}
        pending = [entry for entry in config["layers"] if entry["class_name"] != "InputLayer"]
        while pending:  # layers in graph order; a shared layer's later node may wait for its inputs
            waiting = []
            for entry in pending:
                nodes = entry["inbound_nodes"]
                done = sum(1 for key in tensors if key[0] == entry["name"] and key[2] == 0)
                ready = all((n[0], n[1], n[2]) in tensors for n in nodes[done])
                if not ready:
                    waiting.append(entry)
                    continue
                inputs = [tensors[(n[0], n[1], n[2])] for n in nodes[done]]
                outputs = self.call(model.get_layer(entry["name"]), inputs[0] if len(inputs) == 1 else inputs)
                for index, tensor in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
                    tensors[(entry["name"], done, index)] = tensor
                if done + 1 < len(nodes):
                    waiting.append(entry)
            if len(waiting) == len(pending):
                raise IncompatibleBaseModel(f"base model '{model.name}': layer '{waiting[0]['name']}' reads "
                                            "tensors the pipeline cannot rebuild (not from the model's input).")
            pending = waiting
        (name, node, index), = config["output_layers"]
        return tensors[(name, node, index)]


def _input_check(base: keras.Model, image_shape) -> None:
    if len(base.inputs) != 1 or len(base.outputs) != 1:
        raise IncompatibleBaseModel(f"base model '{base.name}' has {len(base.inputs)} inputs and "
                                    f"{len(base.outputs)} outputs; the pipeline feeds one image and needs one "
                                    "class-probability output.")
    expected = tuple(base.input_shape[1:])
    flat = (int(np.prod(image_shape)),)
    fits = expected is not None and (expected == flat or (len(expected) == 3 and all(
        e is None or e == d for e, d in zip(expected, image_shape))))
    if not fits:
        raise IncompatibleBaseModel(
            f"the base model expects inputs of shape {expected}, but this data's images are "
            f"{'x'.join(map(str, image_shape))} ({flat[0]} values). Pass --image-shape to resize the data to "
            "what the base model reads, or choose another base model.")


def check(base: keras.Model, image_shape: Tuple[int, int, int]) -> None:
    """Raises IncompatibleBaseModel unless `base` can be rebuilt on images of `image_shape`."""
    adapt(base, image_shape, num_classes=2, pixels="0..1")


def adapt(base: keras.Model, image_shape, num_classes: int, pixels: str, class_names: Sequence[str] = (),
          base_classes: Optional[Sequence[str]] = None) -> Tuple[keras.Model, list, Optional[str]]:
    """A model of the pipeline's contract (`image` [H, W, C] input in [0, 1], `probabilities` output) reusing
    `base`'s layers; `pixels` (one of PIXELS) is the range `base` reads, which a Rescaling layer maps [0, 1] to.

    With as many outputs as classes, the whole network is reused (warm start), unless `base_classes` (the
    class names it was trained on, when known) are not `class_names`: then, as with another count, its classifier
    top is dropped, as `include_top=False` does in keras.applications: the layers up to its last Flatten /
    global pooling (up to its last Dense layer's input if it has none) get a new Dense head.
    Returns (model, the reused feature layers, why the head was replaced or None if it was kept).
    """
    _input_check(base, image_shape)
    inputs = keras.Input(shape=tuple(image_shape), name=contract.IMAGE_KEY)
    x = inputs
    if pixels != "0..1":
        scale, offset = PIXELS[pixels]
        x = keras.layers.Rescaling(scale, offset=offset, name="base_model_pixels")(x)
    x = keras.layers.Flatten()(x) if len(base.input_shape) == 2 else x
    replay = _Inlined()
    outputs = replay.model(base, x)
    head = replay.last_dense
    if head is None:
        raise IncompatibleBaseModel(f"base model '{base.name}' has no Dense layer (its last layer is "
                                    f"'{base.layers[-1].name}'): the pipeline replaces or reuses a Dense head.")
    other_classes = base_classes is not None and list(base_classes) != list(class_names)
    if head.units == num_classes and tuple(outputs.shape[1:]) == (num_classes,) and not other_classes:
        last = replay.called[-1]
        if last.name != contract.PROBABILITIES:  # not already this pipeline's contract
            if getattr(last, "activation", None) is not keras.activations.softmax:
                outputs = keras.layers.Activation("softmax", dtype="float32")(outputs)
            outputs = keras.layers.Activation("linear", name=contract.PROBABILITIES)(outputs)
        model = keras.Model(inputs, outputs)
        return model, list(dict.fromkeys(replay.called)), None
    features = replay.feature_end if replay.feature_end is not None else replay.dense_input
    body = keras.Model(inputs, features)
    x = keras.layers.Dense(num_classes, name="new_head")(features)
    outputs = keras.layers.Activation("softmax", dtype="float32", name=contract.PROBABILITIES)(x)
    why = (f"the base model was trained on other classes ({', '.join(list(base_classes)[:6])}"
           f"{', …' if len(base_classes) > 6 else ''}) than this data's ({', '.join(list(class_names)[:6])}"
           f"{', …' if len(class_names) > 6 else ''})" if head.units == num_classes else
           f"the base model has {head.units} outputs and this data {num_classes} classes")
    return (keras.Model(inputs, outputs), [layer for layer in body.layers if not isinstance(layer, keras.layers.InputLayer)],
            why)


def trained_classes(uri: str) -> Optional[List[str]]:
    """The class names the model at `uri` was trained on, when it says (a pushed version or a Model artifact of
    this pipeline: assets/class_names.txt); None for a user's own Keras file."""
    for export_dir in (uri, os.path.join(uri, "Format-Serving"), os.path.dirname(uri)):
        if os.path.isfile(os.path.join(export_dir, "assets", contract.CLASS_NAMES_FILE)):
            from models.signatures import class_names_of

            return class_names_of(export_dir)
    return None
