"""The Keras network: a small CNN whose input size and class count follow the data."""
import tf_keras as keras
from tensorflow.python.autograph.core import config as autograph_config

# AutoGraph leaves `keras` alone but not `tf_keras`: without this it transpiles hundreds of tf_keras
# functions at every first fit (about 20 s a stage on 2 cores, measured). tf_keras needs no conversion.
if not any(getattr(rule, "_prefix", None) == "tf_keras" for rule in autograph_config.CONVERSION_RULES):
    autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("tf_keras"),) + autograph_config.CONVERSION_RULES


def build_model(image_shape, num_classes: int, hp) -> keras.Model:
    """A convolutional classifier of [H, W, C] images in [0, 1] (as the transform graph emits them) into class
    probabilities.

    hp: conv_filters (one 3x3 conv per entry), dense_units, dropout, learning_rate.
    """
    height, width, channels = image_shape
    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = inputs
    for filters in hp["conv_filters"]:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if x.shape[1] >= 16:  # keep at least 8x8 feature maps for small inputs
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hp["dense_units"], activation="relu")(x)
    x = keras.layers.Dropout(hp["dropout"])(x)
    x = keras.layers.Dense(num_classes)(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model
