"""Training-only augmentation, in the input pipeline (never in the model, so never in a served graph):
random horizontal flip, rotation, zoom and contrast, as keras-io's image recipes do. On by default for
colour photos, off for grey images such as digits (a flipped 2 is not a 2); --augment / --no-augment."""
import tensorflow as tf
import tf_keras as keras

from models.contract import IMAGE_KEY

ROTATION = 0.1  # fraction of a full turn, either way
ZOOM = 0.1
CONTRAST = 0.1


def layers(seed: int) -> keras.Sequential:
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(ROTATION, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(ZOOM, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomContrast(CONTRAST, seed=seed + 3),
    ], name="augmentation")


def apply(batches: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """({"image": [B, H, W, C] in [0, 1]}, label) batches → the same, randomly changed, still in [0, 1]."""
    augmentation = layers(seed)

    def change(features, label):
        images = augmentation(features[IMAGE_KEY], training=True)
        return {IMAGE_KEY: tf.clip_by_value(images, 0.0, 1.0)}, label

    return batches.map(change, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
