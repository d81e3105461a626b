"""A SchemaGen that writes the schema the data must meet, from the pipeline's settings.

Inferring a schema from the first span would accept whatever that span holds; this one states
the contract: every example has one encoded image, one label in 0..num_classes-1 and its class name
from the class list, and no split is empty (ExampleGen has checked that each image decodes and is
within the pixel bound). ExampleValidator then flags each violation as an anomaly.
"""
import json
import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.types import standard_artifacts
# TFX's public names, imported from where they live: tfx.v1 would import every extension (Google Cloud AI
# Platform among them, 2 s) into each Kubeflow task that runs this component.
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component

from models.contract import CLASS_NAME_KEY, IMAGE_KEY, LABEL_KEY


def make_schema(class_names) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    schema.dataset_constraints.min_examples_count = 1
    image = schema.feature.add(name=IMAGE_KEY, type=schema_pb2.BYTES)
    image.shape.dim.add().size = 1
    image.presence.min_fraction = 1.0
    label = schema.feature.add(name=LABEL_KEY, type=schema_pb2.INT)
    label.shape.dim.add().size = 1
    label.presence.min_fraction = 1.0
    label.int_domain.min, label.int_domain.max = 0, len(class_names) - 1
    name = schema.feature.add(name=CLASS_NAME_KEY, type=schema_pb2.BYTES)
    name.shape.dim.add().size = 1
    name.presence.min_fraction = 1.0
    name.string_domain.value.extend(class_names)
    return schema


@component
def ConfigSchemaGen(schema: OutputArtifact[standard_artifacts.Schema], class_names: Parameter[str]):
    """Writes schema.pbtxt for canonical examples of these classes; `class_names` is a JSON list."""
    from google.protobuf import text_format

    tf.io.gfile.makedirs(schema.uri)
    with tf.io.gfile.GFile(os.path.join(schema.uri, "schema.pbtxt"), "w") as f:
        f.write(text_format.MessageToString(make_schema(json.loads(class_names))))
