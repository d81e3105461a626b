"""Ingestion: an ExampleGen over image folders, IDX files and TFRecords (see formats.py)."""
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.ingest import executor


def ImageExampleGen(input_base: str, input_pattern: str, data_config: dict, buckets=(4, 1)) -> FileBasedExampleGen:
    """An ExampleGen that turns the files under `input_base` into canonical tf.Examples.

    Args:
      input_base: the data folder (spans live in `span-N/` sub-folders).
      input_pattern: glob relative to input_base; `{SPAN}` selects the latest span.
      data_config: format, image_shape, class_names, image_feature, label_feature, skip_bad_files.
      buckets: hash buckets of the train and eval splits (a deterministic split).
    """
    return FileBasedExampleGen(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=input_pattern)]),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=buckets[0]),
            example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=buckets[1]),
        ])),
        custom_config=data_config,
        custom_executor_spec=executor_spec.BeamExecutorSpec(executor.Executor),
    )
