"""The networks a run can train, by name. Each reads [H, W, C] images in [0, 1] (as the transform graph
emits them), ends in global pooling or a flatten, a new Dense head and a float32 `probabilities` softmax,
and is one flat Keras graph (no nested models), as TFMOT's pruning and quantization need.

  small_cnn        two 3x3 convolutions, Flatten, Dense: small grey images such as digits
  convnet          conv-BatchNorm-ReLU-MaxPool blocks, global average pooling, dropout (keras-io's
                   image-folder recipe); its size does not grow with the image: the default for colour
                   images and images over 32 px
  mobilenet_v2, efficientnet_b0, resnet50_v2
                   tf_keras.applications backbones without their top, random weights or weights from a
                   local file (never downloaded)
"""
import dataclasses
import os
from typing import Optional

import tf_keras as keras

from models import contract


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long a network trains from scratch: an epoch ceiling, the warm-up (epochs before early stopping
    judges; the learning rate's own ramp is RAMP_EPOCHS) and the patience (epochs without a better validation
    accuracy before stopping). Decided on the photo-folder suite against keras-io's recipe and on the digits
    (benchmarks/image_bench.py --suite, README)."""

    epochs: int
    patience: int
    warmup: int


BUDGETS = {"small_cnn": Budget(20, 4, 2), "convnet": Budget(30, 8, 10), "mobilenet_v2": Budget(30, 8, 10),
           "efficientnet_b0": Budget(30, 8, 10), "resnet50_v2": Budget(30, 8, 10)}
NETWORKS = tuple(BUDGETS)


class NetworkError(ValueError):
    """A network cannot be built as asked; the message says why and what to do."""


def default_network(image_shape) -> str:
    """small_cnn for small grey images (digits), convnet for colour images or images over 32 px."""
    height, width, channels = image_shape
    return "small_cnn" if channels == 1 and max(height, width) <= 32 else "convnet"


def _head(inputs, features, num_classes: int, dropout: float) -> keras.Model:
    x = keras.layers.Dropout(dropout)(features)
    x = keras.layers.Dense(num_classes, name="head")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name=contract.PROBABILITIES)(x)
    return keras.Model(inputs, outputs)


def small_cnn(image_shape, num_classes: int, hp) -> keras.Model:
    """hp: conv_filters (one 3x3 conv per entry), dense_units, dropout."""
    inputs = keras.Input(shape=tuple(image_shape), name=contract.IMAGE_KEY)
    x = inputs
    for filters in hp["conv_filters"]:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if x.shape[1] >= 16:  # keep at least 8x8 feature maps for small inputs
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hp["dense_units"], activation="relu")(x)
    return _head(inputs, x, num_classes, hp["dropout"])


def convnet(image_shape, num_classes: int, hp) -> keras.Model:
    """hp: convnet_filters (one conv-BN-ReLU-MaxPool block per entry), bn_momentum, dropout."""
    inputs = keras.Input(shape=tuple(image_shape), name=contract.IMAGE_KEY)
    x = inputs
    for filters in hp["convnet_filters"]:
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=hp["bn_momentum"])(x)
        x = keras.layers.ReLU()(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _head(inputs, x, num_classes, hp["dropout"])


# name → (application, its Keras weights file without the top, its input scaling from [0, 1]: (scale, offset))
BACKBONES = {
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5",
                     (2.0, -1.0)),
    "efficientnet_b0": ("EfficientNetB0", "efficientnetb0_notop.h5", (255.0, 0.0)),
    "resnet50_v2": ("ResNet50V2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", (2.0, -1.0)),
}


def cached_weights(name: str, image_shape, alpha: float = 1.0) -> Optional[str]:
    """The no-top weights file Keras itself would have cached under ~/.keras/models/ for this backbone, if there."""
    rows = image_shape[0] if image_shape[0] in (96, 128, 160, 192, 224) else 224
    path = os.path.join(os.path.expanduser("~"), ".keras", "models",
                        BACKBONES[name][1].format(alpha=float(alpha), rows=rows))
    return path if os.path.exists(path) else None


def backbone(name: str, image_shape, num_classes: int, hp, weights: Optional[str] = None) -> keras.Model:
    """A keras.applications backbone inlined into one graph (built on this model's own input), global
    average pooling and a new head. weights: a no-top weights file (.h5) or None for random weights."""
    application, _, (scale, offset) = BACKBONES[name]
    inputs = keras.Input(shape=tuple(image_shape), name=contract.IMAGE_KEY)
    x = keras.layers.Rescaling(scale, offset=offset)(inputs)
    if image_shape[2] == 1:  # backbones and their weights read RGB
        x = keras.layers.Concatenate()([x, x, x])
    options = {"alpha": hp["alpha"]} if name == "mobilenet_v2" else {}
    base = getattr(keras.applications, application)(input_tensor=x, include_top=False, weights=None, **options)
    for layer in base.layers:  # the applications' 0.99-0.999 lag far behind the weights on small data
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = hp["bn_momentum"]
    if weights:
        try:
            base.load_weights(weights)
        except (ValueError, OSError) as e:
            raise NetworkError(f"--backbone-weights {weights}: not the no-top weights of {application} at this "
                               f"input ({str(e).splitlines()[0][:200]}). Give the file Keras saves for "
                               f"{application}(include_top=False).") from e
    return _head(inputs, keras.layers.GlobalAveragePooling2D()(base.output), num_classes, hp["dropout"])


def build(name: str, image_shape, num_classes: int, hp, weights: Optional[str] = None) -> keras.Model:
    """The network `name` (one of NETWORKS) for images of `image_shape` and `num_classes` classes."""
    if name == "small_cnn":
        return small_cnn(image_shape, num_classes, hp)
    if name == "convnet":
        return convnet(image_shape, num_classes, hp)
    if name in BACKBONES:
        return backbone(name, image_shape, num_classes, hp, weights)
    raise NetworkError(f"--model {name}: unknown; choose one of {', '.join(NETWORKS)}.")


RAMP_EPOCHS = 2  # the learning rate's linear warm-up from a hundredth, before its cosine decay


def schedule(learning_rate: float, epochs: int, steps_per_epoch: int):
    """The learning rate over a phase: a linear ramp for RAMP_EPOCHS (none in phases under 10 epochs) up to
    `learning_rate`, then cosine decay to a tenth of it at the epoch ceiling (a hundredth left a baseline
    too sharp for pruning to 80 % within the gate's accuracy budget)."""
    total = max(1, epochs * steps_per_epoch)
    ramp = (RAMP_EPOCHS if epochs >= 10 else 0) * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(learning_rate / 100 if ramp else learning_rate, total - ramp,
                                                  alpha=0.1, warmup_target=learning_rate if ramp else None,
                                                  warmup_steps=ramp)


def compile_model(model: keras.Model, learning_rate) -> keras.Model:
    """Adam at `learning_rate` (a number or a schedule), sparse categorical cross-entropy, accuracy."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model
