"""How model code reads examples: canonical (encoded) examples streamed through TFX's data accessor and
decoded by the transform graph as they are read; nothing is written decoded, and only a split whose decoded
images fit CACHE_DECODED_BYTES is held in memory."""
import math
import os
import weakref
from typing import List

import tensorflow as tf
from tfx_bsl.public import tfxio

from models.contract import IMAGE_KEY, LABEL_KEY

SHUFFLE_BUFFER_BYTES = 64 << 20  # the shuffle buffer holds at most this much of (encoded) examples
SHUFFLE_BUFFER_MAX = 10_000
CACHE_DECODED_BYTES = 32 << 20  # a split whose decoded float images fit this is decoded once, kept in memory
MIN_STEPS_PER_EPOCH = 20  # on tiny data an "epoch" (a validation interval) is several passes
# Where a model only predicts (validation, a stage's measurements): up to this many examples a call, as long as
# their decoded images stay within EVAL_BATCH_BYTES (large images keep the training batch, and its memory).
EVAL_BATCH, EVAL_BATCH_BYTES = 256, 8 << 20


_LAYERS = weakref.WeakKeyDictionary()  # TFTransformOutput → its transform layer, loaded once per process
_DECODERS = weakref.WeakKeyDictionary()  # TFTransformOutput → its image decoder, traced once per process


def transform_layer(tft_output):
    """The transform graph as a Keras layer, loaded once for every dataset and export that reads it (each
    load takes about a second)."""
    if tft_output not in _LAYERS:
        _LAYERS[tft_output] = tft_output.transform_features_layer()
    return _LAYERS[tft_output]


def image_decoder(tft_output):
    """Encoded images → decoded float images, by the transform graph: one tf.function for every dataset
    that reads this graph, so the graph is traced once (about 0.8 s a trace), not once per dataset."""
    if tft_output not in _DECODERS:
        transform = transform_layer(tft_output)
        _DECODERS[tft_output] = tf.function(lambda encoded: transform({IMAGE_KEY: encoded})[IMAGE_KEY],
                                            autograph=False)  # no Python control flow to convert (2 s)
    return _DECODERS[tft_output]


class DataError(ValueError):
    """The input data cannot be used; the message says what is wrong and what to do."""


def require_examples(file_patterns: List[str], split: str) -> None:
    """A DataError when a split holds no example (reads at most one record)."""
    if not any(True for _ in _records(file_patterns).take(1)):
        raise DataError(f"the {split} split is empty: the deterministic hash split put no example there. "
                        "Add examples (a few dozen at least), then run again.")


def dataset(fn_args, file_patterns: List[str], tft_output, batch_size: int, seed: int,
            train: bool, augment: bool = False) -> tf.data.Dataset:
    """({"image": [B, H, W, C] floats}, label [B]) batches of a split of canonical examples, decoded by the
    transform graph (`tft_output`) in parallel as they stream.

    A split whose decoded images take at most CACHE_DECODED_BYTES is decoded once and kept in memory (later
    epochs skip the decode); a larger one streams, decoded every epoch, and is never held in memory.
    train: shuffled (seeded) and repeated forever (fit with steps_per_epoch); otherwise one ordered pass.
    augment: random training-only changes (models/augment.py) after decoding; never in a served graph.
    """
    decode_images = image_decoder(tft_output)

    def decode(features, label):
        return {IMAGE_KEY: decode_images(features[IMAGE_KEY])}, tf.reshape(label, [-1])

    def raw(**options):
        return fn_args.data_accessor.tf_dataset_factory(file_patterns, tfxio.TensorFlowDatasetOptions(
            label_key=LABEL_KEY, **options), tft_output.raw_metadata.schema)

    num_examples = count_examples(file_patterns)
    if num_examples * decoded_image_bytes(tft_output) <= CACHE_DECODED_BYTES:
        examples = raw(batch_size=256, num_epochs=1, shuffle=False).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE).unbatch().cache()
        if train:
            examples = examples.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True).repeat()
        batches = examples.batch(batch_size)
    else:
        sample = [len(r) for r in _records(file_patterns).take(100).as_numpy_iterator()]
        record_bytes = max(1, sum(sample) // max(1, len(sample)))
        batches = raw(batch_size=batch_size, num_epochs=None if train else 1, shuffle=train, shuffle_seed=seed,
                      shuffle_buffer_size=max(batch_size, min(SHUFFLE_BUFFER_MAX, SHUFFLE_BUFFER_BYTES // record_bytes))
                      ).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment:
        from models import augment as augmentation

        batches = augmentation.apply(batches, seed)
    return batches.prefetch(tf.data.AUTOTUNE)


def decoded_image_bytes(tft_output) -> int:
    """Bytes of one image as the transform graph decodes it (float32)."""
    return 4 * math.prod(tft_output.transformed_feature_spec()[IMAGE_KEY].shape)


def eval_batch_size(tft_output, batch_size: int) -> int:
    """Examples per predict-only call for images of the transform graph's shape (at least `batch_size`)."""
    return max(batch_size, min(EVAL_BATCH, EVAL_BATCH_BYTES // decoded_image_bytes(tft_output)))


def _records(file_patterns: List[str]) -> tf.data.Dataset:
    """The raw records of the (gzip) TFRecord files, unparsed."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    return tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=4)


def count_examples(file_patterns: List[str]) -> int:
    """Records in the (gzip) TFRecord files, counted in one streamed pass without parsing them."""
    return int(_records(file_patterns).reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def steps(num_examples: int, batch_size: int) -> int:
    """Steps per epoch: one pass over the examples, at least MIN_STEPS_PER_EPOCH."""
    return max(MIN_STEPS_PER_EPOCH, math.ceil(num_examples / batch_size))


def keras_model_path(model_uri: str) -> str:
    """The float Keras model beside the serving SavedModel in a Model artifact (uri/Format-Serving)."""
    return os.path.join(model_uri, "Format-Keras", "model.keras")


