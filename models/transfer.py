"""Starting from an existing model: warm start on new data, or the Keras transfer-learning recipe.

A base model is either the float model behind an earlier pushed version (a Model artifact holding
Format-Keras/model.keras) or the user's own Keras model (a SavedModel folder, `.keras` or `.h5` file)
whose layers form one chain from its input to its last Dense layer (the head).
"""
import os
from typing import Optional, Tuple

import numpy as np
import tf_keras as keras

from models import data


class IncompatibleBaseModel(ValueError):
    """The base model cannot read this data; the message says what it expects."""


def keras_file(uri: str) -> str:
    """The Keras model at `uri`: a Model artifact's float model (Format-Keras/), or the user's file itself.

    (The Trainer's fn_args.base_model is `uri`/Format-Serving.)"""
    own = data.keras_model_path(uri)
    return own if os.path.exists(own) else uri


def load(path: str) -> keras.Model:
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # unreadable files raise many types
        raise IncompatibleBaseModel(f"--base-model {path}: not a loadable Keras model ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200]}). Give a Keras SavedModel folder, a .keras "
                                    "or an .h5 file.") from e


def _chain(base: keras.Model):
    """The base's layers after its input, up to (not including) its last Dense layer, and that layer."""
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise IncompatibleBaseModel(f"base model '{base.name}' has no Dense layer to use as its head.")
    previous = base.layers[0]  # its InputLayer
    for layer in layers:  # in the base's own graph (node 0), each layer reads the one before it
        inbound = layer._inbound_nodes[0].inbound_layers
        if isinstance(inbound, list) or inbound is not previous:
            raise IncompatibleBaseModel(f"base model '{base.name}' is not a single chain of layers (layer "
                                        f"'{layer.name}' does not read only the layer before it); give a "
                                        "sequential model.")
        previous = layer
    return layers[:dense[-1]], layers[dense[-1]]


def check(base: keras.Model, image_shape: Tuple[int, int, int]) -> None:
    """Raises IncompatibleBaseModel unless `base` reads images of `image_shape` (flat or H,W,C)."""
    expected = tuple(base.input_shape[1:])
    flat = (int(np.prod(image_shape)),)
    if expected not in (tuple(image_shape), flat):
        raise IncompatibleBaseModel(
            f"the base model expects inputs of shape {expected}, but this data's images are "
            f"{'x'.join(map(str, image_shape))} ({flat[0]} values). Pass --image-shape to resize the data to "
            "what the base model reads, or choose another base model.")
    _chain(base)


FEATURE_ENDS = (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def adapt(base: keras.Model, image_shape, num_classes: int) -> Tuple[keras.Model, list, Optional[str]]:
    """A model of the pipeline's contract (`image` [H, W, C] input, `probabilities` output) reusing `base`'s layers.

    With as many outputs as classes, the whole network is reused (warm start). Otherwise its classifier
    top is dropped, as `include_top=False` does in keras.applications: the feature layers up to its
    last Flatten/global pooling (up to its last Dense layer if it has none) get a new Dense head.
    Returns (model, the reused feature layers, why the head was replaced or None if it was kept).
    """
    check(base, image_shape)
    body, head = _chain(base)
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    x = keras.layers.Flatten()(inputs) if len(base.input_shape) == 2 else inputs
    if head.units == num_classes:
        for layer in body + [head]:
            x = layer(x)
        if head.activation is not keras.activations.softmax:  # ours apply softmax in a separate layer
            x = keras.layers.Activation("softmax", dtype="float32")(x)
        return keras.Model(inputs, keras.layers.Activation("linear", name="probabilities")(x)), body, None
    ends = [i for i, layer in enumerate(body) if isinstance(layer, FEATURE_ENDS)]
    features = body[:ends[-1] + 1] if ends else body
    for layer in features:
        x = layer(x)
    x = keras.layers.Dense(num_classes, name="new_head")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return (keras.Model(inputs, outputs), features,
            f"the base model has {head.units} outputs and this data {num_classes} classes")
