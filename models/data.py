"""How model code reads transformed examples: streamed through TFX's data accessor, never held in memory."""
import math
import os
from typing import List

import tensorflow as tf
from tfx_bsl.public import tfxio

from models.preprocessing import LABEL_KEY

SHUFFLE_BUFFER_BYTES = 64 << 20  # the shuffle buffer holds at most this much of decoded examples
MIN_STEPS_PER_EPOCH = 20  # on tiny data an "epoch" (a validation interval) is several passes


class DataError(ValueError):
    """The input data cannot be used; the message says what is wrong and what to do."""


def require_examples(file_patterns: List[str], split: str) -> None:
    """A DataError when a split holds no example (reads at most one record)."""
    if not any(True for _ in _records(file_patterns).take(1)):
        raise DataError(f"the {split} split is empty: the deterministic hash split put no example there. "
                        "Add examples (a few dozen at least), then run again.")


def dataset(fn_args, file_patterns: List[str], tft_output, batch_size: int, seed: int,
            train: bool) -> tf.data.Dataset:
    """(features, label) batches of a transformed split.

    train: shuffled (seeded) and repeated forever (fit with steps_per_epoch); otherwise one ordered pass.
    """
    schema = tft_output.transformed_metadata.schema
    example_bytes = 4 * sum(math.prod(getattr(f, "shape", None) or [1])
                            for f in tft_output.transformed_feature_spec().values())
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size, label_key=LABEL_KEY, num_epochs=None if train else 1, shuffle=train,
        shuffle_seed=seed, shuffle_buffer_size=max(batch_size, min(10_000, SHUFFLE_BUFFER_BYTES // example_bytes)))
    return fn_args.data_accessor.tf_dataset_factory(file_patterns, options, schema)


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
