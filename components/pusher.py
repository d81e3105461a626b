"""Pusher: TFX's Pusher, with a push that is all or nothing and a record of the model being served.

- The model is copied to `<base>/.<version>.partial` and then renamed to `<base>/<version>`, so a
  run killed during the copy leaves no version directory (TF Serving and serving/ ignore names that
  are not numbers); the next push removes such leftovers. On object stores, where a rename is a
  copy, the model server's complete-version check is what protects it.
- `serving_record` is a ModelBlessing naming the model served after this run (blessed=1,
  current_model_id): the pushed model, or when nothing was pushed the model the Evaluator compared
  with (blessed=0 when nothing is served). The next run's Evaluator compares against the model it
  names, never against a model that was blessed but whose push did not happen. Under Kubeflow, whose
  compiled resolver takes the latest blessed=1 ModelBlessing of any producer, the Pusher's record is
  the latest one of every run that reaches the Pusher.
"""
import logging
import os
import time

import tensorflow as tf
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import io_utils, proto_utils

SERVING_RECORD = "serving_record"
PARTIAL = ".partial"
log = logging.getLogger(__name__)


class PusherSpec(standard_component_specs.PusherSpec):
    OUTPUTS = {**standard_component_specs.PusherSpec.OUTPUTS,
               SERVING_RECORD: ChannelParameter(type=standard_artifacts.ModelBlessing)}


class Executor(pusher_executor.Executor):
    """Pushes to a filesystem destination through a temporary directory and a rename."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        record = artifact_utils.get_single_instance(output_dict[SERVING_RECORD])
        record.set_int_custom_property("blessed", 0)
        tf.io.gfile.makedirs(record.uri)
        blessing = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_BLESSING_KEY])
        if not self.CheckBlessing(input_dict):
            model_push.set_int_custom_property("pushed", 0)  # TFX's PushedModel properties, as its Pusher sets them
            if blessing.has_custom_property("baseline_model_id"):  # the model compared with is still served
                record.set_int_custom_property("blessed", 1)
                for key in ("current_model", "current_model_id"):
                    record.mlmd_artifact.custom_properties[key].CopyFrom(
                        blessing.mlmd_artifact.custom_properties[key.replace("current", "baseline")])
            return
        model_path = self.GetModelPath(input_dict)
        destination = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], pusher_pb2.PushDestination())
        base = destination.filesystem.base_directory
        tf.io.gfile.makedirs(base)
        for name in tf.io.gfile.listdir(base):  # leftovers of a push that was killed
            if name.rstrip("/").endswith(PARTIAL):
                log.info("Removing %s, left by an interrupted push", os.path.join(base, name))
                tf.io.gfile.rmtree(os.path.join(base, name.rstrip("/")))
        version = str(int(time.time()))
        target = os.path.join(base, version)
        while tf.io.gfile.exists(target):  # two pushes within one second
            version = str(int(version) + 1)
            target = os.path.join(base, version)
        partial = os.path.join(base, f".{version}{PARTIAL}")
        io_utils.copy_dir(model_path, partial)
        tf.io.gfile.rename(partial, target)
        log.info("Model pushed to %s", target)
        io_utils.copy_dir(model_path, model_push.uri)  # the archived copy, as TFX's Pusher keeps it
        model_push.set_int_custom_property("pushed", 1)
        model_push.set_string_custom_property("pushed_destination", target)
        model_push.set_string_custom_property("pushed_version", version)
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        record.set_int_custom_property("blessed", 1)
        record.set_string_custom_property("current_model", model.uri)
        record.set_int_custom_property("current_model_id", model.id)
        if blessing.has_custom_property("current_model_id"):  # the blessed model as the orchestrator names it
            record.mlmd_artifact.custom_properties["current_model_id"].CopyFrom(
                blessing.mlmd_artifact.custom_properties["current_model_id"])
        record.set_string_custom_property("pushed_version", version)


class Pusher(base_component.BaseComponent):
    """Pushes `model` to `push_destination` (a filesystem) when both blessings say yes."""

    SPEC_CLASS = PusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 infra_blessing: types.BaseChannel, push_destination: pusher_pb2.PushDestination):
        super().__init__(spec=PusherSpec(
            model=model, model_blessing=model_blessing, infra_blessing=infra_blessing,
            push_destination=push_destination,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
            **{SERVING_RECORD: types.Channel(type=standard_artifacts.ModelBlessing)}))
