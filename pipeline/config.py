"""One typed settings object for a pipeline run.

The CLI maps its flags onto `PipelineConfig`; nothing else reads flags. The parts that code
inside the pipeline needs travel to it as JSON (`custom_config`), never as module globals.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import List, Optional, Tuple

from models.contract import MAX_IMAGE_PIXELS

FORMATS = ("auto", "images", "idx", "tfrecord")
BUNDLED_NAME = "digits"  # the model and pipeline name of a run on the bundled digits


def model_name_of(data_path: Optional[str]) -> str:
    """The default model name: the data folder's name (letters, digits, '-', '_', '.'), digits when bundled."""
    if not data_path:
        return BUNDLED_NAME
    name = os.path.basename(os.path.normpath(data_path.split("://")[-1]))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or BUNDLED_NAME
    return name


@dataclasses.dataclass
class HParams:
    """Training hyperparameters (models/networks.py and models/trainer.py read them)."""

    network: Optional[str] = None  # one of models.networks.NETWORKS; None: small_cnn for small grey images, else convnet
    backbone_weights: Optional[str] = None  # a keras.applications backbone's no-top weights file (None: Keras' cache or random)
    augment: Optional[bool] = None  # random flip/rotation/zoom/contrast in training; None: on for colour images
    epochs: Optional[int] = None  # a ceiling (early stopping on validation accuracy); None: the network's budget
    patience: Optional[int] = None  # epochs without a better validation accuracy before stopping; None: the network's
    warmup: Optional[int] = None  # epochs before early stopping judges; None: the network's budget
    batch_size: int = 32
    learning_rate: float = 1e-3
    conv_filters: Tuple[int, ...] = (32, 64)  # small_cnn
    dense_units: int = 256  # small_cnn
    convnet_filters: Tuple[int, ...] = (32, 64, 128, 256)  # convnet: one conv-BN-ReLU-MaxPool block each
    alpha: float = 1.0  # mobilenet_v2's width multiplier
    dropout: float = 0.3
    bn_momentum: float = 0.9  # BatchNorm's moving statistics (Keras' 0.99 lags the weights with ~20 steps an epoch)
    # Starting from an existing model (models/transfer.py):
    fine_tune_epochs: int = 6  # ceiling when warm-starting, and of the unfrozen phase of transfer learning
    head_epochs: int = 20  # transfer learning: the new head alone, on the frozen base (early-stopped)
    fine_tune_learning_rate: float = 1e-4  # transfer learning: the unfrozen base and head together


@dataclasses.dataclass
class Tuning:
    """Hyperparameter search (TFX Tuner + KerasTuner; the search space is models/tuning.py's)."""

    enabled: bool = False
    trials: int = 10
    trial_epochs: int = 5  # ceiling per trial (early stopping on validation loss)


@dataclasses.dataclass
class Compression:
    """Pruning and quantization-aware training after the float baseline."""

    prune: bool = True
    target_sparsity: float = 0.8
    prune_epochs: int = 4
    qat: bool = True
    qat_epochs: int = 2
    max_accuracy_drop: float = 0.01  # PQAT may lose at most this much accuracy vs. the baseline


@dataclasses.dataclass
class Thresholds:
    """The quality gate on the eval split (the Evaluator's checks, judged by the gate)."""

    min_accuracy: float = 0.9  # overall
    min_class_accuracy: float = 0.75  # each class with at least min_slice_examples eval examples
    min_slice_examples: int = 30  # smaller classes are reported, not judged (one example is > 3 points there)
    max_regression: float = 0.02  # overall accuracy drop allowed against the model being served (latest pushed)


@dataclasses.dataclass
class DataSpec:
    """What the user says about the input data; what is not said is found by the probe
    (`components.ingest.formats.probe`, which returns a DataFacts value)."""

    path: Optional[str] = None  # None: the bundled scikit-learn digits
    format: str = "auto"
    image_feature: str = "image"
    label_feature: str = "label"
    image_shape: Optional[Tuple[int, int, int]] = None
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    input_pattern: str = ""  # relative to `path`; default: by format ({SPAN} when spans exist)
    skip_bad_files: bool = False  # leave unreadable files and records out (counted) instead of stopping
    pixel_range: Optional[Tuple[float, float]] = None  # numeric pixels: the values mapped to 0..255 (None: probed)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # width × height bound of one image, checked from its header before decoding


@dataclasses.dataclass
class PipelineConfig:
    pipeline_name: str = BUNDLED_NAME
    model_name: str = BUNDLED_NAME
    output_dir: str = "artifacts"
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    hparams: HParams = dataclasses.field(default_factory=HParams)
    compression: Compression = dataclasses.field(default_factory=Compression)
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    tuning: Tuning = dataclasses.field(default_factory=Tuning)
    warm_start: bool = True  # new span: start from the float model behind the latest pushed version
    base_model: Optional[str] = None  # the user's Keras model to fine-tune (replaces warm start)
    base_model_pixels: Optional[str] = None  # the range the base model reads (models.transfer.PIXELS); None: detected
    trust_base_model_code: bool = False  # load --base-model outside Keras' safe mode (its Lambda layers run code)
    eval_fraction_buckets: Tuple[int, int] = (4, 1)  # train:eval hash buckets
    seed: int = 0  # seeds training and compression: reruns on the CPU give identical models
    beam_args: List[str] = dataclasses.field(default_factory=list)  # empty: DirectRunner, mode by data size
    enable_cache: bool = True

    # Where things live under the output directory (absolute: TFX and Beam workers need it).
    @property
    def pipeline_root(self) -> str:
        return os.path.abspath(os.path.join(self.output_dir, "pipeline_root"))

    @property
    def metadata_path(self) -> str:
        return os.path.abspath(os.path.join(self.output_dir, "metadata.sqlite"))

    @property
    def serving_dir(self) -> str:
        return os.path.abspath(os.path.join(self.output_dir, "serving", self.model_name))

    @property
    def report_dir(self) -> str:
        return os.path.abspath(os.path.join(self.output_dir, "report"))

    @property
    def data_facts_path(self) -> str:
        """What the probe found and decided about the data (for the run report)."""
        return os.path.join(self.report_dir, "data.txt")

    def trainer_config(self, image_shape, class_names) -> dict:
        """The settings the Trainer's run_fn receives as custom_config: hyperparameters with the choices that
        depend on the data made (network, its epoch budget, augmentation)."""
        from models import networks

        hp = dataclasses.asdict(self.hparams)
        hp["network"] = hp["network"] or networks.default_network(image_shape)
        budget = networks.BUDGETS[hp["network"]]
        for field in ("epochs", "patience", "warmup"):
            hp[field] = hp[field] or getattr(budget, field)
        hp["augment"] = image_shape[2] == 3 if hp["augment"] is None else hp["augment"]
        return {"image_shape": list(image_shape), "class_names": list(class_names), "seed": self.seed, "hparams": hp}

    def tuner_config(self, image_shape, class_names, pipeline_root: str) -> dict:
        """The settings models.tuning.tuner_fn receives as custom_config."""
        return {**self.trainer_config(image_shape, class_names), "trials": self.tuning.trials,
                "trial_epochs": self.tuning.trial_epochs, "logdir": os.path.join(pipeline_root, "Tuner", "hparams")}
