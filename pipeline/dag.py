"""create_pipeline(config, facts): the one place where components are wired together.

ExampleGen → StatisticsGen → (schema) → ExampleValidator → DataGate ┐
                                    └→ Transform (the decode graph) → Trainer (float baseline) → Compressor ┐
    Resolver (latest pushed model) → Evaluator (judges the compressed model) → QualityGate ┐   │
                                                Compressor → Canary (serve on loopback) ───────┴→ Pusher
"""
import dataclasses
import json
from typing import Optional

import tensorflow_model_analysis as tfma
# TFX's public names (tfx.v1), imported from where they live: tfx.v1 would import every extension (Google
# Cloud AI Platform among them, 2 s) into every run.
from tfx.components import Evaluator, ExampleValidator, StatisticsGen, Trainer, Transform, Tuner
from tfx.dsl.components.common.importer import Importer
from tfx.dsl.components.common.resolver import Resolver
from tfx.orchestration.pipeline import Pipeline
from tfx.proto.pusher_pb2 import PushDestination
from tfx.proto.trainer_pb2 import EvalArgs, TrainArgs
from tfx.types.channel import Channel
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.types import standard_artifacts

from components import canary, gates, ingest, pusher, schema
from components.compressor.component import Compressor
from components.ingest.formats import DataFacts
from models import contract
from pipeline.config import PipelineConfig

# Component ids: the runners, lineage reads, the CLI and the report find outputs by them.
EXAMPLE_GEN, STATISTICS_GEN, EXAMPLE_VALIDATOR, TRANSFORM = (
    "FileBasedExampleGen", "StatisticsGen", "ExampleValidator", "Transform")
TUNER, TRAINER, COMPRESSOR, EVALUATOR, GATE, CANARY, PUSHER = (
    "Tuner", "Trainer", "Compressor", "Evaluator", "QualityGate", "Canary", "Pusher")
# From a pushed model back to the examples its float model was trained on: (component, its input key), each
# input produced by the next component. Warm start reads this walk (pipeline/lineage.py);
# tests/pipeline/test_dag.py checks that create_pipeline wires exactly these inputs.
PUSHED_MODEL_LINEAGE = ((PUSHER, "model"), (COMPRESSOR, "model"), (TRAINER, "examples"))


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """Accuracy overall (a floor, and a bound on regression vs. the served model) and per class name (its
    own floor; the QualityGate applies it only to classes with enough eval examples); the confusion matrix."""
    t = config.thresholds
    overall, per_class = tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[gates.CLASS_SLICE])
    accuracy = tfma.MetricConfig(class_name=gates.ACCURACY_METRIC, per_slice_thresholds=[
        tfma.PerSliceMetricThreshold(slicing_specs=[overall], threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": t.min_accuracy}),
            change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                         absolute={"value": -t.max_regression}))),
        tfma.PerSliceMetricThreshold(slicing_specs=[per_class], threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": t.min_class_accuracy})))])
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=contract.SERVING_DEFAULT, label_key=contract.LABEL_KEY,
                                    prediction_key=contract.PROBABILITIES)],
        slicing_specs=[overall, per_class],
        metrics_specs=[tfma.MetricsSpec(metrics=[accuracy, tfma.MetricConfig(class_name="ExampleCount"),
                                                 tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot")])])


@dataclasses.dataclass(frozen=True)
class BaseModel:
    """What the Trainer starts from: a Model artifact's uri or the user's Keras model path, and why; or, with
    no uri, the latest pushed model as TFX's resolver finds it when the run starts (warm start in a compiled
    pipeline: nothing the first time)."""

    uri: Optional[str]
    description: str


LATEST_PUSHED = BaseModel(None, "the latest pushed model, resolved when the run starts")


def create_pipeline(config: PipelineConfig, data: DataFacts, pipeline_root: str, serving_dir: str,
                    beam_args: list, base_model: Optional[BaseModel] = None,
                    metadata_connection_config=None) -> Pipeline:
    """The TFX pipeline for `config` on `data`; pushes to `serving_dir`/<version>.

    base_model: the model the Trainer starts from, imported as its `base_model` input (pinned by uri, so
    an unchanged rerun stays cached), or LATEST_PUSHED (the served model's resolver feeds it); None trains
    from scratch.
    """
    example_gen = ingest.ImageExampleGen(
        input_base=data.path, input_pattern=data.input_pattern, data_config=data.example_gen_config(),
        buckets=config.eval_fraction_buckets).with_id(EXAMPLE_GEN)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"]).with_id(STATISTICS_GEN)
    schema_gen = schema.ConfigSchemaGen(class_names=json.dumps(list(data.class_names)))
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]).with_id(EXAMPLE_VALIDATOR)
    data_gate = gates.DataGate(anomalies=example_validator.outputs["anomalies"])

    # The transform graph decodes and resizes; its output is not materialized (a decoded image is many times
    # its encoded bytes): the Trainer and the Compressor apply the graph to ExampleGen's examples as they read.
    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn="models.preprocessing.preprocessing_fn", materialize=False, disable_statistics=True,
        custom_config={"image_shape": list(data.image_shape), "max_image_pixels": data.max_image_pixels}
    ).with_id(TRANSFORM)
    transform.add_upstream_node(data_gate)  # no training on data with anomalies

    model_resolver = Resolver(  # the model being served: the Pusher's record names it
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing, producer_component_id=PUSHER,
                                       output_key=pusher.SERVING_RECORD),
    ).with_id("latest_pushed_model_resolver")
    optional = []  # nodes that only some settings add
    trainer_inputs = {}
    if base_model is LATEST_PUSHED:
        trainer_inputs["base_model"] = model_resolver.outputs["model"]
    elif base_model:
        importer = Importer(source_uri=base_model.uri, artifact_type=standard_artifacts.Model,
                                    reimport=False).with_id("base_model_importer")
        trainer_inputs["base_model"] = importer.outputs["result"]
        optional.append(importer)
    if config.tuning.enabled:
        tuner = Tuner(
            tuner_fn="models.tuning.tuner_fn", examples=example_gen.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"], schema=schema_gen.outputs["schema"],
            train_args=TrainArgs(splits=["train"]), eval_args=EvalArgs(splits=["eval"]),
            custom_config=config.tuner_config(data.image_shape, data.class_names, pipeline_root)).with_id(TUNER)
        trainer_inputs["hyperparameters"] = tuner.outputs["best_hyperparameters"]
        optional.append(tuner)
    trainer = Trainer(
        run_fn="models.trainer.run_fn",
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=TrainArgs(splits=["train"]),  # no num_steps: epochs over the whole split
        eval_args=EvalArgs(splits=["eval"]),
        custom_config={**config.trainer_config(data.image_shape, data.class_names),
                       "start": base_model.description if base_model else "from scratch",
                       "base_model_pixels": config.base_model_pixels if config.base_model else None,
                       "trust_base_model_code": bool(config.base_model and config.trust_base_model_code),
                       "resolved": base_model is LATEST_PUSHED},
        **trainer_inputs).with_id(TRAINER)
    c = config.compression
    compressor = Compressor(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"], image_shape=data.image_shape,
        prune=c.prune, target_sparsity=c.target_sparsity,
        prune_epochs=c.prune_epochs, qat=c.qat, qat_epochs=c.qat_epochs, batch_size=config.hparams.batch_size,
        learning_rate=config.hparams.learning_rate, seed=config.seed).with_id(COMPRESSOR)
    candidate = compressor.outputs["compressed_model"]  # what is judged, canaried and pushed

    evaluator = Evaluator(
        examples=example_gen.outputs["examples"], model=candidate,
        baseline_model=model_resolver.outputs["model"], eval_config=eval_config(config)).with_id(EVALUATOR)

    quality_gate = gates.QualityGate(
        report=compressor.outputs["report"], evaluation=evaluator.outputs["evaluation"],
        evaluator_blessing=evaluator.outputs["blessing"], max_accuracy_drop=c.max_accuracy_drop,
        target_sparsity=c.target_sparsity if c.prune else 0.0,
        min_slice_examples=config.thresholds.min_slice_examples).with_id(GATE)
    canary_check = canary.Canary(model=candidate, examples=example_gen.outputs["examples"],
                                 model_name=config.model_name).with_id(CANARY)
    push = pusher.Pusher(
        model=candidate, model_blessing=quality_gate.outputs["blessing"],
        infra_blessing=canary_check.outputs["blessing"],
        push_destination=PushDestination(filesystem=PushDestination.Filesystem(
            base_directory=serving_dir))).with_id(PUSHER)

    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate, transform,
                    model_resolver, *optional, trainer, compressor, evaluator, quality_gate, canary_check, push],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_args)
