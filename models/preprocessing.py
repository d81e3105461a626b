"""preprocessing_fn for tf.Transform: decoding and scaling happen here and only here.

The transform graph is part of every exported signature, so TF Serving receives raw inputs
(canonical `image` pixel values in 0..255) and applies exactly what training saw.
"""
import tensorflow as tf

IMAGE_KEY = "image"
LABEL_KEY = "label"


def preprocessing_fn(inputs, custom_config):
    """Scales pixels to [0, 1] floats of shape [batch, H*W*C]; passes the label through.

    custom_config["image_shape"]: [H, W, C] of the canonical examples.
    """
    height, width, channels = custom_config["image_shape"]
    pixels = tf.reshape(inputs[IMAGE_KEY], [-1, height * width * channels])
    outputs = {IMAGE_KEY: tf.cast(pixels, tf.float32) / 255.0}
    if LABEL_KEY in inputs:
        outputs[LABEL_KEY] = tf.reshape(inputs[LABEL_KEY], [-1])
    return outputs
