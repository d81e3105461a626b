"""create_pipeline(config): the one place where components are wired together.

ExampleGen → StatisticsGen → (schema) → ExampleValidator → DataGate ┐
                                                                   └→ Transform → Trainer ┐
                         Resolver (latest blessed model) → Evaluator ─────────────────────┴→ CompressionGate ┐
                                                               Trainer → Canary (serve on loopback) ┴→ Pusher
"""
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.types import standard_artifacts

from components import canary, gates, ingest, schema
from pipeline.config import PipelineConfig

# Component ids, used by the runners and the CLI to find outputs.
TRAINER, EVALUATOR, GATE, CANARY, PUSHER = "Trainer", "Evaluator", "CompressionGate", "Canary", "Pusher"


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """Accuracy overall and per class; an absolute floor and a bound on regression vs. the last blessed model."""
    accuracy = tfma.MetricConfig(
        class_name="SparseCategoricalAccuracy",
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.thresholds.min_accuracy}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -config.thresholds.max_accuracy_regression})))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key="label",
                                    prediction_key="probabilities")],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["label"])],
        metrics_specs=[tfma.MetricsSpec(metrics=[accuracy, tfma.MetricConfig(class_name="ExampleCount")])])


def create_pipeline(config: PipelineConfig, data_root: str, pipeline_root: str, serving_dir: str,
                    metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """The TFX pipeline for `config`: reads data under `data_root`, pushes to `serving_dir`/<version>."""
    data = config.data
    height, width, channels = data.image_shape
    example_gen = ingest.ImageExampleGen(
        input_base=data_root, input_pattern=data.input_pattern,
        data_config={"format": data.format, "image_shape": list(data.image_shape),
                     "class_names": data.class_names, "image_feature": data.image_feature,
                     "label_feature": data.label_feature},
        buckets=config.eval_fraction_buckets)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = schema.ConfigSchemaGen(image_size=height * width * channels, num_classes=data.num_classes)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    data_gate = gates.DataGate(anomalies=example_validator.outputs["anomalies"])

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn="models.preprocessing.preprocessing_fn",
        custom_config={"image_shape": list(data.image_shape)})
    transform.add_upstream_node(data_gate)  # no training on data with anomalies

    trainer = tfx.components.Trainer(
        run_fn="models.trainer.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=config.trainer_config()).with_id(TRAINER)

    model_resolver = tfx.dsl.Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing,
                                       producer_component_id=GATE),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"], eval_config=eval_config(config)).with_id(EVALUATOR)

    compression_gate = gates.CompressionGate(
        model_run=trainer.outputs["model_run"], evaluation=evaluator.outputs["blessing"],
        max_accuracy_drop=config.compression.max_accuracy_drop).with_id(GATE)
    canary_check = canary.Canary(model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
                                 model_name=config.model_name).with_id(CANARY)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=compression_gate.outputs["blessing"],
        infra_blessing=canary_check.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=serving_dir))).with_id(PUSHER)

    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate, transform,
                    trainer, model_resolver, evaluator, compression_gate, canary_check, pusher],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.beam_args)
