"""Hyperparameter tuning with KerasTuner inside TFX's Tuner component: the search space, declared once.

custom_config (pipeline.config.PipelineConfig.tuner_config): image_shape, class_names, seed, hparams
(the defaults the search starts from), trials, trial_epochs, logdir (TensorBoard HParams logs).
"""
import copy
import logging
import os
import time

import keras_tuner
import tensorflow_transform as tft
import tf_keras as keras
from tensorboard.plugins.hparams import api as hparams_api
from tfx.components.tuner.component import TunerFnResult

from models import compat, data, devices, networks

log = logging.getLogger(__name__)
OBJECTIVE = "val_loss"


def search_space(hp: keras_tuner.HyperParameters) -> dict:
    """What tuning may change, as HParams fields (models/networks.py), for the trial `hp` describes."""
    filters = hp.Choice("conv_filters", [16, 32, 64])
    return {"conv_filters": [filters, 2 * filters],
            "dense_units": hp.Choice("dense_units", [64, 128, 256]),
            "dropout": hp.Float("dropout", 0.1, 0.5, step=0.1),
            "learning_rate": hp.Choice("learning_rate", [3e-4, 1e-3, 3e-3])}


def tuned_hparams(hparams: dict, best_hyperparameters: dict) -> dict:
    """`hparams` with the Tuner's best values (its best_hyperparameters.txt, as Trainer's fn_args has it)."""
    hp = keras_tuner.HyperParameters.from_config(best_hyperparameters)
    return {**hparams, **search_space(hp)}


class _Search(keras_tuner.RandomSearch):
    """Random search whose trials train the tf_keras CNN (KerasTuner's own fit loop expects Keras 3)."""

    def __init__(self, base_hparams: dict, image_shape, num_classes: int, logdir: str, **kwargs):
        super().__init__(**kwargs)
        self.base_hparams, self.image_shape, self.num_classes, self.logdir = (
            base_hparams, image_shape, num_classes, logdir)

    @compat.libraries_not_converted()
    def run_trial(self, trial, train, evaluation, steps_per_epoch: int, epochs: int):
        hp = {**self.base_hparams, **search_space(trial.hyperparameters)}
        model = networks.compile_model(networks.build(hp["network"], self.image_shape, self.num_classes, hp), hp["learning_rate"])
        trial_dir = os.path.join(self.logdir, trial.trial_id)
        hparams = {name: (str(value) if isinstance(value, list) else value)
                   for name, value in trial.hyperparameters.values.items()}
        history = model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=evaluation,
                            verbose=0, callbacks=[
                                keras.callbacks.EarlyStopping(monitor=OBJECTIVE, patience=hp["patience"]),
                                keras.callbacks.TensorBoard(trial_dir),
                                hparams_api.KerasCallback(trial_dir, hparams, trial_id=trial.trial_id)])
        best = min(history.history[OBJECTIVE])
        log.info("Tuning trial %s: %s → %s %.4f", trial.trial_id, hparams, OBJECTIVE, best)
        return {OBJECTIVE: best, "val_accuracy": max(history.history["val_accuracy"])}


def tuner_fn(fn_args) -> TunerFnResult:
    config = fn_args.custom_config
    hp, seed = copy.deepcopy(config["hparams"]), int(config["seed"])
    devices.seed_everything(seed, devices.plan_devices(devices.visible_gpus()))
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    train = data.dataset(fn_args, fn_args.train_files, tft_output, hp["batch_size"], seed, train=True)
    evaluation = data.dataset(fn_args, fn_args.eval_files, tft_output, hp["batch_size"], seed, train=False)
    logdir = os.path.join(config["logdir"], time.strftime("%Y%m%d-%H%M%S"))  # one folder per search
    search = _Search(hp, tuple(config["image_shape"]), len(config["class_names"]), logdir,
                     objective=keras_tuner.Objective(OBJECTIVE, "min"), max_trials=int(config["trials"]),
                     seed=seed, directory=fn_args.working_dir, project_name="search", overwrite=True)
    return TunerFnResult(tuner=search, fit_kwargs={
        "train": train, "evaluation": evaluation, "epochs": int(config["trial_epochs"]),
        "steps_per_epoch": data.steps(data.count_examples(fn_args.train_files), hp["batch_size"])})
