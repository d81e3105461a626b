"""ExampleGen executor: image folders, IDX files and TFRecords of any tf.Example layout → canonical tf.Examples."""
import json
import os

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor

from components.ingest import formats


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _files_to_examples(pipeline: beam.Pipeline, exec_properties: dict, split_pattern: str) -> beam.PCollection:
    config = exec_properties.get("custom_config") or "{}"
    config = json.loads(config) if isinstance(config, str) else dict(config)
    fmt, shape = config["format"], tuple(config["image_shape"])
    class_names = config.get("class_names")
    pattern = os.path.join(exec_properties["input_base"], split_pattern)

    if fmt == "tfrecord":
        image_feature, label_feature = config["image_feature"], config["label_feature"]
        pairs = (pipeline
                 | "ReadTFRecords" >> beam.io.ReadFromTFRecord(pattern)
                 | "Parse" >> beam.Map(formats.parse_record, image_feature, label_feature, shape, class_names))
    else:
        files = tf.io.gfile.glob(pattern)
        if not files:
            raise formats.DataError(f"{pattern}: matches no files.")
        if fmt == "images":
            read = lambda path: formats.read_image_file(path, class_names, shape)  # noqa: E731
        elif fmt == "idx":
            read = lambda path: formats.read_idx_file(path, shape)  # noqa: E731
        else:
            raise formats.DataError(f"unknown data format '{fmt}'; use images, idx or tfrecord.")
        pairs = (pipeline
                 | "ListFiles" >> beam.Create(sorted(files))
                 | "Reshuffle" >> beam.Reshuffle()
                 | "Read" >> beam.FlatMap(read))
    return pairs | "ToExample" >> beam.MapTuple(formats.to_example)


class Executor(BaseExampleGenExecutor):
    """Reads the data format named in custom_config and emits canonical tf.Examples."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _files_to_examples
