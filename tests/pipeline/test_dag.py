"""The wiring itself, without running it: what the lineage reads and the runners rely on."""
from components.ingest import formats
from pipeline import dag
from pipeline.config import PipelineConfig


def pipeline_of(config=None, **kwargs):
    data = formats.DataFacts(path="/data", format="tfrecord", input_pattern="span-{SPAN}/*",
                             image_shape=formats.DIGITS_SHAPE, class_names=formats.DIGITS_CLASSES)
    return dag.create_pipeline(config or PipelineConfig(), data, pipeline_root="/root", serving_dir="/serving",
                               beam_args=[], **kwargs)


def test_the_pushed_model_lineage_is_the_wiring():
    """Each (component, input key) of PUSHED_MODEL_LINEAGE is an input produced by the next component, the
    last by ExampleGen: the warm-start walk in pipeline/lineage.py follows exactly these edges."""
    nodes = {c.id: c for c in pipeline_of().components}
    producers = [node for node, _ in dag.PUSHED_MODEL_LINEAGE[1:]] + [dag.EXAMPLE_GEN]
    for (node, key), producer in zip(dag.PUSHED_MODEL_LINEAGE, producers):
        assert nodes[node].inputs[key].producer_component_id == producer, (node, key)


def test_component_ids_are_dag_constants():
    ids = {c.id for c in pipeline_of().components}
    assert {dag.EXAMPLE_GEN, dag.STATISTICS_GEN, dag.EXAMPLE_VALIDATOR, dag.TRANSFORM, dag.TRAINER, dag.COMPRESSOR,
            dag.EVALUATOR, dag.GATE, dag.CANARY, dag.PUSHER} <= ids
