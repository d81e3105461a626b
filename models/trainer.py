"""The Trainer's run_fn: streamed canonical examples, decoded by the transform graph → the float baseline
network, exported for serving.

custom_config (pipeline.config.PipelineConfig.trainer_config): image_shape, class_names, seed,
hparams (the network by name, models/networks.py; augmentation, models/augment.py) and start (where the
model comes from, for provenance). The Trainer's standard
inputs decide how it trains: `base_model` (warm start, or a user's model through models/transfer.py)
and `hyperparameters` (the Tuner's best, models/tuning.py). Compression is a separate component
(components/compressor).
"""
import json
import logging
import os
import sys
import time

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from models import compat, contract, data, devices, networks, signatures, transfer

log = logging.getLogger(__name__)
SUMMARY = "training.json"  # in the model-run directory: what the fit did
TRAINING_IMAGES = "training_images.png"  # in the model-run directory: a batch as the network sees it
GRID = 16  # images in that grid
# TensorBoard's weight histograms on every this-many-th epoch (0, 5, 10, ...): writing them took 45 ms an epoch
# for small_cnn and 0.8 s for MobileNetV2 (alpha 0.35), more than an epoch of training on small data.
HISTOGRAM_FREQ = 5


def fit_verbosity() -> int:
    """Keras fit's `verbose`: a progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def write_training_images(train, run_dir: str) -> None:
    """A grid of training images as the network sees them (decoded, augmented) to TensorBoard and a PNG."""
    images = next(iter(train))[0][contract.IMAGE_KEY][:GRID]
    with tf.summary.create_file_writer(os.path.join(run_dir, "baseline", "images")).as_default():
        tf.summary.image("training images, as the network sees them", images, max_outputs=GRID, step=0)
    columns = 8
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    padded = tf.concat([images, tf.zeros([rows * columns - count, height, width, channels])], 0)
    grid = tf.reshape(tf.transpose(tf.reshape(padded, [rows, columns, height, width, channels]), [0, 2, 1, 3, 4]),
                      [rows * height, columns * width, channels])
    with tf.io.gfile.GFile(os.path.join(run_dir, TRAINING_IMAGES), "wb") as f:
        f.write(tf.io.encode_png(tf.cast(tf.round(grid * 255.0), tf.uint8)).numpy())


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


class BestEpoch(keras.callbacks.Callback):
    """Early stopping on validation accuracy that judges only after a warm-up, and keeps the best epoch.

    Validation loss misleads while a BatchNorm network's moving statistics settle (it rises for several
    epochs as the network starts to learn), so accuracy is judged, and not before `warmup` epochs. An epoch is
    better when its accuracy is higher by more than TIE, or within TIE and its loss lower (accuracy saturates
    on easy data, where a lower loss is the better-converged model). Training stops when no epoch has been
    better for `patience` epochs counted from the later of the best epoch and the warm-up's end (a best epoch
    inside the warm-up does not shorten the look after it); the best epoch's weights are restored at the end, however
    training ended. `reason` says why it ended."""

    TIE = 0.005  # accuracies this close are equal (half a point)

    def __init__(self, patience: int, warmup: int):
        super().__init__()
        self.patience, self.warmup = patience, warmup

    def on_train_begin(self, logs=None):
        self.best, self.best_loss, self.best_epoch, self.best_weights, self.reason = -1.0, float("inf"), None, None, ""
        self.first_epoch = self.last_epoch = None
        self.rates = []  # the learning rate at each epoch's end

    def on_epoch_end(self, epoch, logs=None):
        self.first_epoch = epoch if self.first_epoch is None else self.first_epoch
        self.last_epoch = epoch
        self.rates.append(float(self.model.optimizer.learning_rate))
        accuracy, loss = float(logs["val_accuracy"]), float(logs["val_loss"])
        if accuracy > self.best + self.TIE or (accuracy >= self.best - self.TIE and loss < self.best_loss):
            self.best, self.best_loss, self.best_epoch = accuracy, loss, epoch
            self.best_weights = self.model.get_weights()
        since = epoch - self.best_epoch
        warm_end = self.first_epoch + self.warmup - 1  # patience counts from the later of it and the best epoch
        if epoch - max(self.best_epoch, warm_end) >= self.patience:
            self.model.stop_training = True
            self.reason = (f"stopped at epoch {epoch + 1}: validation accuracy has not improved for {since} epochs "
                           f"since epoch {self.best_epoch + 1} (best {self.best:.4f})")

    def on_train_end(self, logs=None):
        if self.best_weights is None:
            return
        self.model.set_weights(self.best_weights)
        if not self.reason:
            self.reason = (f"ran all {self.last_epoch + 1 - self.first_epoch} epochs; kept epoch "
                           f"{self.best_epoch + 1} (best validation accuracy {self.best:.4f})")


@compat.libraries_not_converted()
def run_fn(fn_args) -> None:
    config = fn_args.custom_config
    hp, seed = dict(config["hparams"]), int(config["seed"])
    if fn_args.hyperparameters:  # the Tuner's best values
        from models import tuning  # imports KerasTuner (and Keras 3) only when tuning

        hp = tuning.tuned_hparams(hp, fn_args.hyperparameters)
    image_shape, num_classes = tuple(config["image_shape"]), len(config["class_names"])
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)

    plan = devices.plan_devices(devices.visible_gpus())
    devices.seed_everything(seed, plan)
    strategy = devices.make_strategy(plan)
    with strategy.scope():  # a base model's variables belong to the strategy that trains them
        base, start = _base_model(fn_args, config, image_shape)
    log.info("Training on %s, seed %d; %s; network %s; augmentation %s", plan.describe(), seed,
             start, hp["network"] if base is None else "of the base model", "on" if hp["augment"] else "off")

    # Step counts: TrainArgs/EvalArgs when given, else one pass over each split per epoch.
    data.require_examples(fn_args.train_files, "train")
    data.require_examples(fn_args.eval_files, "eval")
    train_examples = data.count_examples(fn_args.train_files)
    steps_per_epoch = (-(-fn_args.train_steps // hp["epochs"]) if fn_args.train_steps
                       else data.steps(train_examples, hp["batch_size"]))
    train = data.dataset(fn_args, fn_args.train_files, tft_output, hp["batch_size"], seed, train=True,
                         augment=hp["augment"])
    # EvalArgs.num_steps, when given, counts training-size batches; else validation predicts in bigger ones.
    eval_batch = hp["batch_size"] if fn_args.eval_steps else data.eval_batch_size(tft_output, hp["batch_size"])
    evaluation = data.dataset(fn_args, fn_args.eval_files, tft_output, eval_batch, seed, train=False)
    if fn_args.eval_steps:
        evaluation = evaluation.take(fn_args.eval_steps)
    write_training_images(train, fn_args.model_run_dir)

    keras.mixed_precision.set_global_policy("mixed_float16" if plan.mixed_precision else "float32")
    try:
        with strategy.scope():
            # Phases: (name, trainable layers or None for all, epoch ceiling, learning rate)
            if base is None:
                weights = hp["backbone_weights"]
                if hp["network"] in networks.BACKBONES and not weights:
                    weights = networks.cached_weights(hp["network"], image_shape, hp["alpha"])
                model, features, replaced = networks.build(hp["network"], image_shape, num_classes, hp, weights), [], None
                hp["backbone_weights"] = weights
                phases = [("from scratch", None, hp["epochs"], hp["learning_rate"])]
            else:
                pixels, why = transfer.pixels_for(base, config.get("base_model_pixels"))
                log.info("The base model reads pixels in %s: %s", pixels, why)
                hp["base_model_pixels"] = pixels
                model, features, replaced = transfer.adapt(
                    base, image_shape, num_classes, pixels, config["class_names"],
                    transfer.trained_classes(os.path.dirname(fn_args.base_model)))
                if replaced:  # the Keras recipe: the new head on the frozen base, then everything, gently
                    phases = [("new head, base frozen", features, hp["head_epochs"], hp["learning_rate"]),
                              ("fine-tune all layers", None, hp["fine_tune_epochs"], hp["fine_tune_learning_rate"])]
                else:  # warm start: the same network continues on the new data, for fewer epochs
                    phases = [("warm start", None, hp["fine_tune_epochs"], hp["learning_rate"])]
            history, timers, stops = [], [], []
            for name, frozen, epochs, learning_rate in phases:
                for layer in model.layers:  # BatchNorm of a reused base stays in inference mode (Keras' transfer guide)
                    layer.trainable = (not frozen or layer not in frozen) and not (
                        replaced and isinstance(layer, keras.layers.BatchNormalization) and layer in features)
                networks.compile_model(model, networks.schedule(learning_rate, epochs, steps_per_epoch))
                timers.append(TrainTime())
                stops.append(BestEpoch(hp["patience"], hp["warmup"]))
                fit = model.fit(train, initial_epoch=len(history), epochs=len(history) + epochs,
                                steps_per_epoch=steps_per_epoch, validation_data=evaluation, verbose=fit_verbosity(),
                                callbacks=[stops[-1], keras.callbacks.TensorBoard(
                                    os.path.join(fn_args.model_run_dir, "baseline"), histogram_freq=HISTOGRAM_FREQ),
                                    timers[-1]])
                history += [{"phase": name, "val_loss": loss, "val_accuracy": accuracy, "learning_rate": rate}
                            for loss, accuracy, rate in zip(fit.history["val_loss"], fit.history["val_accuracy"],
                                                            stops[-1].rates)]
                log.info("%s: %s", name, stops[-1].reason)
    finally:  # the policy is process-wide: whatever this process builds next is float32 again
        keras.mixed_precision.set_global_policy("float32")

    # The float32 Keras model (for the Compressor and later fine-tuning) and the serving SavedModel, side by side.
    baseline = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__.from_config(
        {**layer.get_config(), "dtype": "float32"}))  # a float32 copy, whatever policy trained it
    baseline.set_weights(model.get_weights())
    keras_path = data.keras_model_path(os.path.dirname(fn_args.serving_model_dir))
    tf.io.gfile.makedirs(os.path.dirname(keras_path))
    baseline.save(keras_path)  # uncompiled: no optimizer state
    signatures.export(baseline, tft_output, image_shape, config["class_names"], fn_args.serving_model_dir)

    seconds = sum(t.seconds for t in timers)
    summary = {"device": plan.describe(), "seed": seed, "train_examples": train_examples,
               "network": hp["network"] if base is None else "base model", "augment": hp["augment"],
               "start": start, "head_replaced": replaced,
               "tuned": bool(fn_args.hyperparameters), "hparams": hp, "epochs": history,
               "epochs_run": len(history), "epochs_max": sum(p[2] for p in phases),
               "stopped": [f"{p[0]}: {stop.reason}" for p, stop in zip(phases, stops)],
               "kept_epochs": [stop.best_epoch + 1 for stop in stops],
               "steps_per_epoch": steps_per_epoch, "train_seconds": seconds,
               "examples_per_second": len(history) * steps_per_epoch * hp["batch_size"] / seconds}
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1)
    with tf.summary.create_file_writer(os.path.join(fn_args.model_run_dir, "baseline", "provenance")).as_default():
        tf.summary.text("provenance", json.dumps({k: summary[k] for k in ("start", "network", "augment", "head_replaced",
                                                                          "tuned", "stopped", "hparams")},
                                                 indent=1), step=0)
    log.info("Baseline (%s): %d epochs, %.0f examples/s; %s", summary["start"], len(history),
             summary["examples_per_second"], "; ".join(summary["stopped"]))


def _base_model(fn_args, config, image_shape):
    """(the Keras model to start from or None, where the model comes from). custom_config `start` says why
    there is a base_model input; `resolved` (warm start in a compiled pipeline: the latest pushed model, found
    when the run starts) turns a missing or unusable one into training from scratch, with the reason."""
    resolved = bool(config.get("resolved"))
    if not fn_args.base_model:
        return None, "from scratch (no model pushed yet)" if resolved else config.get("start", "from scratch")
    uri = os.path.dirname(fn_args.base_model)  # fn_args.base_model is <artifact uri>/Format-Serving
    try:
        base = transfer.load(transfer.keras_file(uri), trust_code=bool(config.get("trust_base_model_code")))
        if resolved:
            transfer.check(base, image_shape)
    except transfer.IncompatibleBaseModel as e:
        if not resolved:
            raise
        log.warning("Not warm-starting from the latest pushed model %s: %s", uri, e)
        return None, f"from scratch (the latest pushed model {uri} does not fit this data)"
    return base, f"warm-started from the latest pushed model {uri}" if resolved else config.get("start")


def read_summary(model_run_uri: str) -> dict:
    """What a Trainer run did (training.json in its ModelRun): start, phases, epochs, hyperparameters."""
    with tf.io.gfile.GFile(os.path.join(model_run_uri, SUMMARY)) as f:
        return json.load(f)
