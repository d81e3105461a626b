"""ExampleGen executor: image folders, IDX files and TFRecords of any tf.Example layout → canonical tf.Examples
(the image encoded: a file's own bytes, numeric pixels as PNG; formats.py says how).

The probe (formats.probe) has read the whole span before this runs; what it decided arrives in
custom_config. A problem found here anyway (a file changed since, an image whose header reads but
whose body does not) is a DataError naming the file, unless skip_bad_files leaves it out.
"""
import glob
import json
import logging
import os

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor

from components.ingest import formats

_LEFT_OUT = beam.metrics.Metrics.counter("ImageExampleGen", "bad_files_left_out")


def _guarded(read, skip_bad_files: bool):
    """`read` (item → iterable of (encoded image, label)) that leaves out bad items when skip_bad_files is set."""
    def guarded(item):
        try:
            return list(read(item))
        except formats.DataError as e:
            if not skip_bad_files:
                raise
            _LEFT_OUT.inc()
            logging.warning("left out (--skip-bad-files): %s", e)
            return []
    return guarded


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _files_to_examples(pipeline: beam.Pipeline, exec_properties: dict, split_pattern: str) -> beam.PCollection:
    config = exec_properties.get("custom_config") or "{}"
    config = json.loads(config) if isinstance(config, str) else dict(config)
    fmt, shape, class_names = config["format"], tuple(config["image_shape"]), list(config["class_names"])
    skip, max_pixels = bool(config.get("skip_bad_files")), int(config["max_image_pixels"])
    pixel_range = tuple(config["pixel_range"]) if config.get("pixel_range") else None
    pattern = os.path.join(exec_properties["input_base"], split_pattern)
    files = tf.io.gfile.glob(os.path.join(glob.escape(exec_properties["input_base"]), split_pattern))
    if not files:
        raise formats.DataError(f"{pattern}: matches no files.")
    if fmt == "tfrecord":
        image_feature, label_feature = config["image_feature"], config["label_feature"]

        def read(named_record):
            filename, record = named_record
            yield formats.parse_record(record, image_feature, label_feature, shape, class_names, where=filename,
                                       pixel_range=pixel_range, max_pixels=max_pixels)

        pairs = (pipeline
                 | "ListFiles" >> beam.Create(sorted(files))
                 | "ReadTFRecords" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                 | "Parse" >> beam.FlatMap(_guarded(read, skip)))
    else:
        if fmt == "images":
            read = lambda path: formats.read_image_file(path, class_names, max_pixels)  # noqa: E731
        elif fmt == "idx":
            read = lambda path: formats.read_idx_file(path, len(class_names))  # noqa: E731
        else:
            raise formats.DataError(f"unknown data format '{fmt}'; use images, idx or tfrecord.")
        pairs = (pipeline
                 | "ListFiles" >> beam.Create(sorted(files))
                 | "Reshuffle" >> beam.Reshuffle()
                 | "Read" >> beam.FlatMap(_guarded(read, skip)))
    return pairs | "ToExample" >> beam.MapTuple(formats.to_example, class_names)


class Executor(BaseExampleGenExecutor):
    """Reads the data format named in custom_config and emits canonical tf.Examples."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _files_to_examples
