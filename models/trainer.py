"""The Trainer's run_fn: streamed transformed examples → the float baseline CNN, exported for serving.

custom_config (pipeline.config.PipelineConfig.trainer_config): image_shape, num_classes, seed and
hparams (models/cnn.py). Compression is a separate component (components/compressor).
"""
import json
import logging
import os
import sys
import time

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from models import cnn, data, devices, signatures

log = logging.getLogger(__name__)
VERBOSE = 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, one line per epoch in logs
SUMMARY = "training.json"  # in the model-run directory: what the fit did


class TrainTime(keras.callbacks.Callback):
    """Seconds spent in training batches, validation excluded."""

    def on_train_begin(self, logs=None):
        self.seconds, self._start = 0.0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()


def run_fn(fn_args) -> None:
    config = fn_args.custom_config
    hp, seed = config["hparams"], int(config["seed"])
    image_shape, num_classes = tuple(config["image_shape"]), int(config["num_classes"])
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)

    plan = devices.plan_devices(devices.visible_gpus())
    devices.seed_everything(seed, plan)
    log.info("Training on %s, seed %d", plan.describe(), seed)

    # Step counts: TrainArgs/EvalArgs when given, else one pass over each split per epoch.
    train_examples = data.count_examples(fn_args.train_files)
    steps_per_epoch = (-(-fn_args.train_steps // hp["epochs"]) if fn_args.train_steps
                       else data.steps(train_examples, hp["batch_size"]))
    train = data.dataset(fn_args, fn_args.train_files, tft_output, hp["batch_size"], seed, train=True)
    evaluation = data.dataset(fn_args, fn_args.eval_files, tft_output, hp["batch_size"], seed, train=False)
    if fn_args.eval_steps:
        evaluation = evaluation.take(fn_args.eval_steps)

    keras.mixed_precision.set_global_policy("mixed_float16" if plan.mixed_precision else "float32")
    with devices.make_strategy(plan).scope():
        model = cnn.compile_model(cnn.build_model(image_shape, num_classes, hp), hp["learning_rate"])
    timer = TrainTime()
    history = model.fit(
        train, epochs=hp["epochs"], steps_per_epoch=steps_per_epoch, validation_data=evaluation, verbose=VERBOSE,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp["patience"],
                                                 restore_best_weights=True),
                   keras.callbacks.TensorBoard(os.path.join(fn_args.model_run_dir, "baseline"),
                                               histogram_freq=1), timer])
    keras.mixed_precision.set_global_policy("float32")

    # The float32 Keras model (for the Compressor and fine-tuning) and the serving SavedModel, side by side.
    baseline = cnn.build_model(image_shape, num_classes, hp)
    baseline.set_weights(model.get_weights())
    keras_path = data.keras_model_path(os.path.dirname(fn_args.serving_model_dir))
    tf.io.gfile.makedirs(os.path.dirname(keras_path))
    baseline.save(keras_path)  # uncompiled: no optimizer state
    signatures.export(baseline, tft_output, image_shape, fn_args.serving_model_dir)

    losses = history.history["val_loss"]
    summary = {"device": plan.describe(), "seed": seed, "train_examples": train_examples,
               "epochs_run": len(losses), "epochs_max": hp["epochs"], "best_epoch": 1 + losses.index(min(losses)),
               "steps_per_epoch": steps_per_epoch, "train_seconds": timer.seconds,
               "examples_per_second": len(losses) * steps_per_epoch * hp["batch_size"] / timer.seconds}
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1)
    log.info("Baseline: %d of at most %d epochs (best %d), %.0f examples/s",
             summary["epochs_run"], hp["epochs"], summary["best_epoch"], summary["examples_per_second"])
