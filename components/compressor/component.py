"""Compressor: a trained float Model → pruned, quantization-aware serving Model + int8 TFLite + report."""
import json
from typing import Sequence

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.compressor import executor
from components.compressor.report import CompressionReportArtifact


class CompressorSpec(types.ComponentSpec):
    PARAMETERS = {
        "prune": ExecutionParameter(type=int),
        "target_sparsity": ExecutionParameter(type=float),
        "prune_epochs": ExecutionParameter(type=int),
        "qat": ExecutionParameter(type=int),
        "qat_epochs": ExecutionParameter(type=int),
        "batch_size": ExecutionParameter(type=int),
        "learning_rate": ExecutionParameter(type=float),
        "seed": ExecutionParameter(type=int),
        "image_shape": ExecutionParameter(type=str),  # JSON [H, W, C]
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {
        "compressed_model": ChannelParameter(type=standard_artifacts.Model),
        "report": ChannelParameter(type=CompressionReportArtifact),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun),
    }


class Compressor(base_component.BaseComponent):
    """Prunes and quantizes the Trainer's float model; changing a setting here never retrains it.

    Stages (each optional): magnitude pruning to `target_sparsity` on a schedule fitted to the data's
    step count, fine-tuned for `prune_epochs`; prune-preserving quantization-aware training for
    `qat_epochs`; then export with the same serving signatures as the baseline and a full-integer
    int8 TFLite model in `assets.extra/`. Every stage is measured into the `report` artifact;
    TensorBoard logs per stage go to `model_run`.
    """

    SPEC_CLASS = CompressorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 image_shape: Sequence[int], *, prune: bool = True, target_sparsity: float = 0.8, prune_epochs: int = 4, qat: bool = True,
                 qat_epochs: int = 2, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0):
        """
        Args:
          model: the Trainer's float Model (its Format-Keras/model.keras is what gets compressed).
          examples: ExampleGen's canonical examples with `train` and `eval` splits (fine-tuning reads them through
            the transform graph; eval examples become TF Serving warm-up requests in the model).
          transform_graph: Transform's output (the decode), exported into every serving signature.
          image_shape: [H, W, C] of the images the model reads (what the transform graph decodes to).
          prune, qat: which stages run; with both off the baseline is exported as is.
          target_sparsity: fraction of zero weights every conv/dense kernel ends with.
          prune_epochs, qat_epochs: fine-tuning epochs (passes over the train split) of each stage.
          batch_size, learning_rate: of the fine-tuning.
          seed: seeds shuffling and initialisation, so reruns on the CPU give identical models.
        """
        super().__init__(spec=CompressorSpec(
            model=model, examples=examples, transform_graph=transform_graph,
            compressed_model=types.Channel(type=standard_artifacts.Model),
            report=types.Channel(type=CompressionReportArtifact),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
            prune=int(prune), target_sparsity=target_sparsity, prune_epochs=prune_epochs, qat=int(qat),
            qat_epochs=qat_epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
            image_shape=json.dumps([int(d) for d in image_shape])))
