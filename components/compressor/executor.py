"""Compressor executor: load the baseline Keras model, prune, PQAT, export, convert to int8 TFLite, measure."""
import json
import logging
import os
import time
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import types
from tensorflow_serving.apis import classification_pb2, prediction_log_pb2
from tfx.components.infra_validator import request_builder
from tfx.components.trainer import fn_args_utils
from tfx.dsl.components.base import base_executor
from tfx.proto import infra_validator_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from components.compressor.report import CompressionReport, StageMetrics
from models import compat, compression, contract, data, devices, networks, signatures
from models.trainer import HISTOGRAM_FREQ, fit_verbosity

log = logging.getLogger(__name__)
REPRESENTATIVE_EXAMPLES = 200  # calibration images for full-integer quantization
WARMUP_EXAMPLES = 16  # requests per signature: 64 in all (TF Serving reads at most 1,000)


def write_warmup(model: types.Artifact, examples: types.Artifact, tft_output) -> int:
    """Writes `assets.extra/tf_serving_warmup_requests` into the model: eval examples as requests to every
    signature. serving_default and classify get what TFX InfraValidator's request builder builds (as its
    `make_warmup`); predict_pixels and predict_images get the same images, decoded by the transform graph and
    as they are encoded. TF Serving
    (and `python -m serving`) replays them before the model serves, so no first request pays for warming."""
    spec = infra_validator_pb2.RequestSpec(
        tensorflow_serving=infra_validator_pb2.TensorFlowServingRequestSpec(
            signature_names=[contract.SERVING_DEFAULT, contract.CLASSIFY]),
        split_name="eval", num_examples=WARMUP_EXAMPLES)
    logs = []
    for request in request_builder.build_requests("model", model, examples, spec):
        entry = prediction_log_pb2.PredictionLog()
        if isinstance(request, classification_pb2.ClassificationRequest):
            entry.classify_log.request.CopyFrom(request)
        else:
            entry.predict_log.request.CopyFrom(request)
            record = tf.make_ndarray(request.inputs["examples"])[0]
            encoded = tf.train.Example.FromString(record).features.feature[contract.IMAGE_KEY].bytes_list.value[0]
            pixels = 255.0 * tft_output.transform_raw_features(
                {contract.IMAGE_KEY: tf.constant([[encoded]])})[contract.IMAGE_KEY].numpy()
            for name, key, value in ((contract.PREDICT_PIXELS, "pixels", pixels),
                                     (contract.PREDICT_IMAGES, "images", [encoded])):
                extra = prediction_log_pb2.PredictionLog()
                extra.predict_log.request.model_spec.signature_name = name
                extra.predict_log.request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
                logs.append(extra)
        logs.append(entry)
    io_utils.write_tfrecord_file(path_utils.warmup_file_path(path_utils.serving_model_dir(model.uri)), *logs)
    return len(logs)


class FitClock(keras.callbacks.Callback):
    """Adds the wall time of each `fit` it is given to, to `seconds["fit"]`: from the start of training (the
    first callback, it starts before the others' start-of-training work) to the end of the last epoch."""

    def __init__(self, seconds: Dict[str, float]):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds["fit"] = self.seconds.get("fit", 0.0) + time.perf_counter() - self.start


class Executor(base_executor.BaseExecutor):

    @compat.libraries_not_converted()
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        p = exec_properties
        seconds, clock = {}, [time.perf_counter()]  # phase → wall seconds; when the last phase ended

        def lap(name):
            """The time since the previous lap (or the start) went to phase `name`."""
            now = time.perf_counter()
            seconds[name] = seconds.get(name, 0.0) + now - clock[-1]
            clock.append(now)

        prune, qat, seed, batch_size = bool(p["prune"]), bool(p["qat"]), int(p["seed"]), int(p["batch_size"])
        # The Trainer's own input plumbing: train/eval file patterns and the data accessor.
        fn_args = fn_args_utils.get_common_fn_args(
            {k: input_dict[k] for k in ("examples", "transform_graph")}, {"train_args": "{}", "eval_args": "{}"})
        tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
        baseline_uri = artifact_utils.get_single_uri(input_dict["model"])
        serving_dir = path_utils.serving_model_dir(artifact_utils.get_single_uri(output_dict["compressed_model"]))
        run_dir = artifact_utils.get_single_uri(output_dict["model_run"])
        report_uri = artifact_utils.get_single_uri(output_dict["report"])

        plan = devices.plan_devices(devices.visible_gpus())
        devices.seed_everything(seed, plan)
        strategy = devices.make_strategy(plan)
        train_examples = data.count_examples(fn_args.train_files)
        steps_per_epoch = data.steps(train_examples, batch_size)
        train = data.dataset(fn_args, fn_args.train_files, tft_output, batch_size, seed, train=True)
        evaluation = data.dataset(fn_args, fn_args.eval_files, tft_output, data.eval_batch_size(tft_output, batch_size),
                                  seed, train=False)

        def compile_fn(model):
            return networks.compile_model(model, p["learning_rate"])

        def tensorboard(stage):
            return [FitClock(seconds),  # first: its clock starts before the other callbacks' start of training
                    keras.callbacks.TensorBoard(os.path.join(run_dir, stage), histogram_freq=HISTOGRAM_FREQ)]

        from tf_keras.src.saving import serialization_lib

        with strategy.scope(), serialization_lib.SafeModeScope(True):  # a model file never runs code
            baseline = compile_fn(keras.models.load_model(data.keras_model_path(baseline_uri), compile=False,
                                                          safe_mode=True))
        image_shape = tuple(json.loads(p["image_shape"]))
        decoded = tuple(tft_output.transformed_feature_spec()[contract.IMAGE_KEY].shape)
        if decoded != image_shape:
            raise ValueError(f"image_shape {list(image_shape)} is not what the transform graph decodes to "
                             f"({list(decoded)}): pass the shape the Transform was configured with")
        class_names = signatures.class_names_of(path_utils.serving_model_dir(baseline_uri))
        stages = {"baseline": baseline}  # stage → Keras model, in order
        lap("inputs")
        if prune:
            with strategy.scope():
                model = keras.models.clone_model(baseline)
                model.set_weights(baseline.get_weights())
                schedule = compression.pruning_schedule(p["prune_epochs"] * steps_per_epoch, p["target_sparsity"])
                stages["pruned"], not_pruned = compression.prune(model, schedule, p["prune_epochs"], steps_per_epoch,
                                                                 train, tensorboard("pruned"), compile_fn, fit_verbosity())
            if not_pruned:
                log.warning("TFMOT cannot prune %d layers with weights; kept them dense: %s", len(not_pruned),
                            ", ".join(not_pruned))
            lap("prune")
        if qat:  # TFMOT's QAT does not support tf.distribute: one device
            if plan.kind == "mirrored":
                log.warning("QAT cannot run under MirroredStrategy (TFMOT); running it on %s", plan.single_device)
            with tf.device(plan.single_device):
                source = stages.get("pruned", baseline)
                model = keras.models.clone_model(source)
                model.set_weights(source.get_weights())
                model, kept_float = compression.quantize_aware(model, prune, p["qat_epochs"], steps_per_epoch, train,
                                                               tensorboard("pqat"), compile_fn, fit_verbosity())
                if kept_float:
                    log.warning("TFMOT cannot quantize %d layers; kept them float: %s", len(kept_float),
                                ", ".join(kept_float))
                stages["pqat"] = compression.for_serving(model, keras.models.clone_model(baseline))
            lap("qat")

        # Export: the final stage for serving, intermediate ones for measurement (the Trainer exported the baseline).
        final = list(stages)[-1]
        # Each stage is measured through its predict_pixels signature: the function exported from this process,
        # or the Trainer's baseline as loaded from its SavedModel.
        export_dirs, pixels = {}, {}
        for stage, model in stages.items():
            if stage == "baseline" and stage != final:
                export_dirs[stage] = path_utils.serving_model_dir(baseline_uri)
                pixels[stage] = compression.savedmodel_pixels(export_dirs[stage])
                continue
            export_dirs[stage] = serving_dir if stage == final else os.path.join(run_dir, "savedmodel_" + stage)
            pixels[stage] = signatures.export(model, tft_output, image_shape, class_names,
                                              export_dirs[stage])[contract.PREDICT_PIXELS]
        lap("export")
        representative = np.concatenate([np.asarray(features[contract.IMAGE_KEY]) for features, _ in
                                         train.take(-(-REPRESENTATIVE_EXAMPLES // batch_size))])
        tflite_int8 = compression.to_tflite(stages[final], representative[:REPRESENTATIVE_EXAMPLES], sparse=prune)
        tflite_float = compression.to_tflite(baseline)
        lap("tflite")
        extra = os.path.join(serving_dir, "assets.extra")
        tf.io.gfile.makedirs(extra)
        with tf.io.gfile.GFile(os.path.join(extra, "model_int8.tflite"), "wb") as f:
            f.write(tflite_int8)
        tf.io.gfile.copy(data.keras_model_path(baseline_uri), os.path.join(serving_dir, contract.PUSHED_FLOAT_MODEL),
                         overwrite=True)  # a pushed version is a --base-model for fine-tuning
        warmup = write_warmup(output_dict["compressed_model"][0], input_dict["examples"][0], tft_output)
        log.info("Wrote %d warm-up requests to %s", warmup, path_utils.warmup_file_path(serving_dir))
        lap("warmup")

        # Measure every stage from what was exported.
        metrics = {}
        for stage in stages:
            sparsity, per_layer = compression.weight_sparsity(compression.savedmodel_kernels(export_dirs[stage]))
            size, gz = compression.sizes(export_dirs[stage], exclude="assets.extra")
            metrics[stage] = StageMetrics(
                accuracy=compression.streamed_accuracy(compression.savedmodel_classifier(pixels[stage]), evaluation),
                sparsity=sparsity, layer_sparsity=per_layer, size_bytes=size, gzip_bytes=gz,
                latency_ms=compression.savedmodel_latency_ms(pixels[stage], image_shape))
        sparsity, per_layer = compression.weight_sparsity(compression.tflite_kernels(tflite_int8))
        size, gz = compression.sizes_of_bytes(tflite_int8)
        metrics["tflite_int8"] = StageMetrics(
            accuracy=compression.streamed_accuracy(compression.tflite_classifier(tflite_int8), evaluation),
            sparsity=sparsity, layer_sparsity=per_layer,
            size_bytes=size, gzip_bytes=gz, latency_ms=compression.tflite_latency_ms(tflite_int8))
        float_size, float_gz = compression.sizes_of_bytes(tflite_float)
        lap("measure")
        seconds["total"] = clock[-1] - clock[0]
        report = CompressionReport(
            stages=metrics, target_sparsity=float(p["target_sparsity"]) if prune else None,
            baseline_float_tflite_bytes=float_size, baseline_float_tflite_gzip_bytes=float_gz,
            settings={"device": plan.describe(), "seed": seed, "train_examples": train_examples,
                      "steps_per_epoch": steps_per_epoch,
                      "prune": prune, "prune_epochs": p["prune_epochs"], "qat": qat, "qat_epochs": p["qat_epochs"],
                      "pruning_schedule": schedule.get_config() if prune else None,
                      "not_pruned": not_pruned if prune else [], "kept_float": kept_float if qat else []},
            seconds={k: round(v, 3) for k, v in seconds.items()})
        report.save(report_uri)
        log.info("Compression:\n%s", "\n".join("  " + "  ".join(row) for row in report.rows()))
        log.info("Compressor seconds: %s", ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
