"""Gates that stop a run: bad data before training; a model under the quality bar before push."""
import dataclasses
import json
import os
from typing import List, Optional

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts
# TFX's public names, imported from where they live: tfx.v1 would import every extension (Google Cloud AI
# Platform among them, 2 s) into each Kubeflow task that runs this component.
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component

from components.compressor.report import MODEL_STAGES, CompressionReport, CompressionReportArtifact
from models import contract

CLASS_SLICE = contract.CLASS_NAME_KEY  # the example feature the Evaluator slices classes on
ACCURACY_METRIC, ACCURACY_KEY = "SparseCategoricalAccuracy", "sparse_categorical_accuracy"  # TFMA's class, its key
SERVED_MODEL_CHANGE = " change vs. the served model"  # ends a regression check's metric name
SPARSITY_TOLERANCE = 0.005  # measured sparsity may fall this far under the target (rounding per layer)
VERDICT_FILE = "verdict.json"  # in the QualityGate's blessing: every check (a Verdict)


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


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of the QualityGate: a figure against its bound, and whether it counted."""

    name: str  # "accuracy", "accuracy change vs. the served model", "compression accuracy loss", "weight sparsity"
    slice: str  # "overall", "class 'zero'", or "compression"
    value: Optional[float]  # None: the figure does not exist (no model served yet)
    bound: str  # e.g. ">= 0.9", "<= 0.01"
    examples: Optional[int]  # eval examples behind the value (None for compression figures)
    passed: bool
    judged: bool = True  # False: reported only, it does not decide the blessing
    why_not_judged: str = ""
    detail: str = ""  # for a failure: what the figure means and what to do

    def __str__(self) -> str:
        value = "none" if self.value is None else f"{self.value:.4f}"
        examples = f" ({self.examples} eval examples)" if self.examples is not None else ""
        text = f"{self.slice}: {self.name} {value}, needs {self.bound}{examples}"
        if not self.judged:
            return text + f" [not judged: {self.why_not_judged}]"
        return text + (f": {self.detail}" if self.detail and not self.passed else "")


@dataclasses.dataclass
class Verdict:
    """What the QualityGate decided and every check behind it; stored with its blessing as VERDICT_FILE."""

    blessed: bool
    checks: List[Check]
    served_model: str = ""  # the model the regression checks compared with ("" before the first push)

    @property
    def failed(self) -> List[Check]:
        return [c for c in self.checks if c.judged and not c.passed]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        data = json.loads(text)
        return cls(blessed=data["blessed"], checks=[Check(**c) for c in data["checks"]],
                   served_model=data.get("served_model", ""))

    @classmethod
    def load(cls, blessing_uri: str) -> Optional["Verdict"]:
        path = os.path.join(blessing_uri, VERDICT_FILE)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            return cls.from_json(f.read())


def compression_checks(report: CompressionReport, max_accuracy_drop: float, target_sparsity: float) -> List[Check]:
    """The compressed model's accuracy loss against this run's baseline (at most `max_accuracy_drop`) and its
    measured weight sparsity (at least `target_sparsity`, less SPARSITY_TOLERANCE; 0: pruning was off)."""
    stages = [s for s in MODEL_STAGES if s in report.stages]
    final = report.final_model_stage
    baseline, served = report.stages["baseline"].accuracy, report.stages[final].accuracy
    lost = baseline - served
    steps = ", ".join(f"{a}→{b}: {100 * (report.stages[a].accuracy - report.stages[b].accuracy):+.2f} points lost"
                      for a, b in zip(stages, stages[1:]))
    checks = [Check("compression accuracy loss", "compression", lost, f"<= {max_accuracy_drop:g}", None,
                    passed=lost <= max_accuracy_drop,
                    detail=f"compression lost {100 * lost:.2f} accuracy points (baseline {baseline:.4f} → {final} "
                           f"{served:.4f}; {steps}), more than the budget of {100 * max_accuracy_drop:.2f} points "
                           "(--max-accuracy-drop)")]
    if target_sparsity > 0:
        measured = report.stages[final].sparsity
        checks.append(Check("weight sparsity", "compression", measured, f">= {target_sparsity:g}", None,
                            passed=measured >= target_sparsity - SPARSITY_TOLERANCE,
                            detail=f"the {final} model's measured weight sparsity is {measured:.3f}, under the "
                                   f"target sparsity {target_sparsity:.3f} (--target-sparsity): pruning did not "
                                   "reach its target; give it more steps (--prune-epochs) or lower the target"))
    return checks


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
            elif kv.key.name == ACCURACY_KEY:
                entry["served_accuracy" if baseline else "accuracy"] = value
    return dict(sorted(found.items(), key=lambda item: (item[0] != "overall", item[0])))


def evaluation_checks(evaluation_uri: str, min_slice_examples: int) -> List[Check]:
    """Every accuracy threshold of the Evaluator's config (ACCURACY_METRIC: the figure slice_metrics reads) on
    every slice it covers, passed or not (as the Evaluator judged it); per-class checks of classes with fewer than `min_slice_examples` eval examples are not judged,
    and a change threshold before any model is served has no value and is not judged."""
    import tensorflow_model_analysis as tfma

    metrics = slice_metrics(evaluation_uri)
    failures = set()
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        for failure in per_slice.failures:
            failures.add((_slice_name(per_slice.slice_key), failure.metric_key.name, failure.metric_key.is_diff))
    checks = []
    for spec in tfma.load_eval_result(evaluation_uri).config.metrics_specs:
        for metric in (m for m in spec.metrics if m.class_name == ACCURACY_METRIC):
            for per_slice in metric.per_slice_thresholds:
                threshold = per_slice.threshold
                by_class = any(list(s.feature_keys) == [CLASS_SLICE] for s in per_slice.slicing_specs)
                for name, m in metrics.items():
                    if (name != "overall") != by_class:
                        continue
                    judged = name == "overall" or m["examples"] >= min_slice_examples
                    why = "" if judged else f"fewer than --min-slice-examples {min_slice_examples} eval examples"
                    if threshold.HasField("value_threshold"):
                        checks.append(Check("accuracy", name, m["accuracy"],
                                            f">= {threshold.value_threshold.lower_bound.value:g}", m["examples"],
                                            passed=(name, ACCURACY_KEY, False) not in failures, judged=judged,
                                            why_not_judged=why))
                    if threshold.HasField("change_threshold"):
                        served = m["served_accuracy"]
                        change = None if served is None or m["accuracy"] is None else m["accuracy"] - served
                        checks.append(Check("accuracy" + SERVED_MODEL_CHANGE, name, change,
                                            f">= {threshold.change_threshold.absolute.value:+.4f}", m["examples"],
                                            passed=(name, ACCURACY_KEY, True) not in failures,
                                            judged=judged and served is not None,
                                            why_not_judged=why or ("" if served is not None else "no model served yet")))
    return checks


@component
def QualityGate(report: InputArtifact[CompressionReportArtifact],
                evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
                evaluator_blessing: InputArtifact[standard_artifacts.ModelBlessing],
                blessing: OutputArtifact[standard_artifacts.ModelBlessing],
                max_accuracy_drop: Parameter[float], target_sparsity: Parameter[float],
                min_slice_examples: Parameter[int]):
    """Blesses the compressed model when it meets every Evaluator threshold (per-class floors only for classes
    with at least `min_slice_examples` eval examples), compression cost at most `max_accuracy_drop` against
    this run's baseline, and pruning reached `target_sparsity` (0: pruning was off, nothing to check).

    The Pusher reads this blessing. Every check (name, slice, value, bound, eval examples, passed, judged or
    why not) is stored with it as VERDICT_FILE (a Verdict); the `reason` custom property names the failed
    ones, one per line, for people reading ML Metadata.
    """
    checks = evaluation_checks(evaluation.uri, min_slice_examples)
    checks += compression_checks(CompressionReport.load(report.uri), max_accuracy_drop, target_sparsity)
    served = evaluator_blessing.get_string_custom_property("baseline_model") \
        if evaluator_blessing.has_custom_property("baseline_model") else ""
    for key in ("current_model", "current_model_id", "baseline_model", "baseline_model_id"):
        # What the Evaluator compared, as it wrote it: ids are ints under TFX's runners and artifact names
        # (strings) under Kubeflow, where the resolver looks models up by name.
        if evaluator_blessing.has_custom_property(key):
            blessing.mlmd_artifact.custom_properties[key].CopyFrom(
                evaluator_blessing.mlmd_artifact.custom_properties[key])
    checks = [dataclasses.replace(c, detail=f"compared with the served model {served}")
              if c.name.endswith(SERVED_MODEL_CHANGE) else c for c in checks]
    verdict = Verdict(blessed=all(c.passed for c in checks if c.judged), checks=checks, served_model=served)
    blessing.set_int_custom_property("blessed", int(verdict.blessed))
    blessing.set_string_custom_property("reason", "\n".join(str(c) for c in verdict.failed))
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, VERDICT_FILE + ".tmp"), "w") as f:
        f.write(verdict.to_json())
    tf.io.gfile.rename(os.path.join(blessing.uri, VERDICT_FILE + ".tmp"), os.path.join(blessing.uri, VERDICT_FILE),
                       overwrite=True)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if verdict.blessed else "NOT_BLESSED"), "w") as f:
        f.write("\n".join(str(c) for c in verdict.failed))
