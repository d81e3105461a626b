"""Gates that stop a run: bad data before training; a model under the quality bar before push."""
import dataclasses
import os
from typing import List

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.v1.dsl.components import InputArtifact, OutputArtifact, Parameter, component

from components.compressor.report import MODEL_STAGES, CompressionReport, CompressionReportArtifact

CLASS_SLICE = "class_name"  # the example feature the Evaluator slices classes on
SERVED_MODEL_CHANGE = " change vs. the served model"  # ends a regression check's metric name
SPARSITY_TOLERANCE = 0.005  # measured sparsity may fall this far under the target (rounding per layer)


class DataAnomaliesError(RuntimeError):
    """ExampleValidator found anomalies; the run stops before training."""


def describe_anomalies(anomalies_uri: str, split_names: str) -> list:
    """One line per anomaly: split, feature and TFDV's description."""
    lines = []
    for split in artifact_utils.decode_split_names(split_names):
        path = os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb")
        if not tf.io.gfile.exists(path):
            continue
        with tf.io.gfile.GFile(path, "rb") as f:
            anomalies = anomalies_pb2.Anomalies.FromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"[{split}] feature '{feature}': {info.short_description}: {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"[{split}] dataset: {info.short_description}: {info.description}")
    return lines


@component
def DataGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]):
    """Fails the run when ExampleValidator reported any anomaly, naming each one."""
    lines = describe_anomalies(anomalies.uri, anomalies.split_names)
    if lines:
        raise DataAnomaliesError(
            "the data does not match the schema, so nothing was trained or pushed:\n  "
            + "\n  ".join(lines) + "\nFix or remove the offending examples (or pass --num-classes / "
            "--image-shape that match the data) and run again.")


def compression_verdict(report: CompressionReport, max_accuracy_drop: float) -> str:
    """Empty when the served stage is within budget of the baseline and as sparse as asked, else why not."""
    reasons = []
    stages = [s for s in MODEL_STAGES if s in report.stages]
    final = report.final_model_stage
    baseline, served = report.stages["baseline"].accuracy, report.stages[final].accuracy
    if baseline - served > max_accuracy_drop:
        steps = ", ".join(f"{a}→{b}: {100 * (report.stages[a].accuracy - report.stages[b].accuracy):+.2f} points lost"
                          for a, b in zip(stages, stages[1:]))
        reasons.append(f"compression lost {100 * (baseline - served):.2f} accuracy points "
                       f"(baseline {baseline:.4f} → {final} {served:.4f}; {steps}), more than the budget of "
                       f"{100 * max_accuracy_drop:.2f} points (--max-accuracy-drop)")
    if report.target_sparsity is not None:
        measured = report.stages[final].sparsity
        if measured < report.target_sparsity - SPARSITY_TOLERANCE:
            reasons.append(f"the {final} model's measured weight sparsity is {measured:.3f}, under the target "
                           f"sparsity {report.target_sparsity:.3f} (--target-sparsity): pruning did not reach "
                           "its target; give it more steps (--prune-epochs) or lower the target")
    return "; ".join(reasons)


@dataclasses.dataclass(frozen=True)
class FailedCheck:
    """One Evaluator threshold that a slice missed."""

    slice: str  # "overall" or "class 'zero'"
    metric: str  # e.g. "accuracy", "accuracy change vs. the served model"
    value: float
    threshold: str  # e.g. ">= 0.9"
    examples: int  # eval examples in the slice
    judged: bool  # False: a class with fewer than min_slice_examples eval examples (reported only)

    def __str__(self) -> str:
        text = f"{self.slice}: {self.metric} {self.value:.4f}, needs {self.threshold} ({self.examples} eval examples)"
        return text if self.judged else text + " [not judged: fewer than --min-slice-examples]"


def _slice_name(slice_key) -> str:
    keys = list(slice_key.single_slice_keys)
    if not keys:
        return "overall"
    value = keys[0].bytes_value.decode("utf-8", "replace") if keys[0].HasField("bytes_value") else (
        keys[0].int64_value if keys[0].HasField("int64_value") else keys[0].float_value)
    return f"class '{value}'" if keys[0].column == CLASS_SLICE else f"{keys[0].column} '{value}'"


def slice_metrics(evaluation_uri: str) -> dict:
    """Slice name ("overall", "class 'zero'") → {"accuracy", "examples", "served_accuracy" (None without a
    served model)}, from the Evaluator's output; classes in name order after the overall slice."""
    import tensorflow_model_analysis as tfma

    found = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        entry = found.setdefault(_slice_name(metrics.slice_key),
                                 {"accuracy": None, "examples": 0, "served_accuracy": None})
        for kv in metrics.metric_keys_and_values:
            if kv.key.is_diff:
                continue
            value, baseline = kv.value.double_value.value, kv.key.model_name == "baseline"
            if kv.key.name == "example_count" and not baseline:
                entry["examples"] = int(value)
            elif kv.key.name == "sparse_categorical_accuracy":
                entry["served_accuracy" if baseline else "accuracy"] = value
    return dict(sorted(found.items(), key=lambda item: (item[0] != "overall", item[0])))


def failed_checks(evaluation_uri: str, min_slice_examples: int) -> List[FailedCheck]:
    """Every threshold the Evaluator found missed, with the slice's example count; per-class checks of
    classes with fewer than `min_slice_examples` eval examples are marked not judged."""
    import tensorflow_model_analysis as tfma

    counts = {name: entry["examples"] for name, entry in slice_metrics(evaluation_uri).items()}
    checks = []
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        name = _slice_name(per_slice.slice_key)
        for failure in per_slice.failures:
            threshold = failure.metric_threshold
            metric = failure.metric_key.name.replace("sparse_categorical_", "")
            if failure.metric_key.is_diff:
                metric += SERVED_MODEL_CHANGE
                bound = f">= {threshold.change_threshold.absolute.value:+.4f}"
            else:
                bound = f">= {threshold.value_threshold.lower_bound.value:g}"
            examples = counts.get(name, 0)
            checks.append(FailedCheck(name, metric, failure.metric_value.double_value.value, bound, examples,
                                      judged=name == "overall" or examples >= min_slice_examples))
    return checks


@component
def QualityGate(report: InputArtifact[CompressionReportArtifact],
                evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
                evaluator_blessing: InputArtifact[standard_artifacts.ModelBlessing],
                blessing: OutputArtifact[standard_artifacts.ModelBlessing],
                max_accuracy_drop: Parameter[float], min_slice_examples: Parameter[int]):
    """Blesses the compressed model when it meets every Evaluator threshold (per-class floors only for classes
    with at least `min_slice_examples` eval examples), compression cost at most `max_accuracy_drop` against
    this run's baseline, and pruning reached its target sparsity.

    The Pusher reads this blessing. A refusal names every failing check in its `reason` custom property
    (also in `checks`, one per line, with the checks that were not judged).
    """
    checks = failed_checks(evaluation.uri, min_slice_examples)
    reasons = [str(c) for c in checks if c.judged]
    if any(c.judged and c.metric.endswith(SERVED_MODEL_CHANGE) for c in checks):
        reasons.append(f"compared with the served model "
                       f"{evaluator_blessing.get_string_custom_property('baseline_model')}")
    verdict = compression_verdict(CompressionReport.load(report.uri), max_accuracy_drop)
    if verdict:
        reasons.append(verdict)
    for key in ("current_model", "current_model_id", "baseline_model", "baseline_model_id"):
        # What the Evaluator compared, as it wrote it: ids are ints under TFX's runners and artifact names
        # (strings) under Kubeflow, where the resolver looks models up by name.
        if evaluator_blessing.has_custom_property(key):
            blessing.mlmd_artifact.custom_properties[key].CopyFrom(
                evaluator_blessing.mlmd_artifact.custom_properties[key])
    blessed = not reasons
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", "\n".join(reasons))
    blessing.set_string_custom_property("checks", "\n".join(str(c) for c in checks))
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write("\n".join(reasons))
