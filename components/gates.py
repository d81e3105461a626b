"""Gates that stop a run: bad data before training, a costly compression before push."""
import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.v1.dsl.components import InputArtifact, OutputArtifact, Parameter, component

from components.compressor.report import MODEL_STAGES, CompressionReport, CompressionReportArtifact

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


@component
def CompressionGate(report: InputArtifact[CompressionReportArtifact],
                    evaluation: InputArtifact[standard_artifacts.ModelBlessing],
                    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
                    max_accuracy_drop: Parameter[float]):
    """Blesses the compressed model only if the Evaluator did, compression cost at most
    `max_accuracy_drop` against this run's baseline, and pruning reached its target sparsity.

    The Pusher reads this blessing; the reason for a refusal is in its `reason` custom property.
    """
    reasons = []
    if evaluation.get_int_custom_property("blessed") != 1:
        reasons.append("the Evaluator did not bless the model (accuracy under the threshold, or a "
                       "regression against the last blessed model; see its metrics)")
    verdict = compression_verdict(CompressionReport.load(report.uri), max_accuracy_drop)
    if verdict:
        reasons.append(verdict)
    for key in ("current_model", "baseline_model"):  # what the Evaluator compared, for the Resolver
        if evaluation.has_custom_property(key):
            blessing.set_string_custom_property(key, evaluation.get_string_custom_property(key))
        if evaluation.has_custom_property(key + "_id"):
            blessing.set_int_custom_property(key + "_id", evaluation.get_int_custom_property(key + "_id"))
    blessed = not reasons
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", "; ".join(reasons))
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write("; ".join(reasons))
