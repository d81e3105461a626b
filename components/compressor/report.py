"""The compression report: one typed record of what each stage costs and buys.

Written by the Compressor into its `CompressionReport` artifact; read by the QualityGate, the
CLI summary, the HTML run report and the benchmarks through `CompressionReport.load`. Files in the
artifact: compression.json (this record), compression.md (the table), compression.png (accuracy
against gzip size).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
from tfx.types import artifact

STAGES = ("baseline", "pruned", "pqat", "tflite_int8")  # in order; the first three are Keras models
MODEL_STAGES = STAGES[:3]
JSON, MARKDOWN, PLOT = "compression.json", "compression.md", "compression.png"


class CompressionReportArtifact(artifact.Artifact):
    """TFX artifact type of a compression report (a folder holding the three files above)."""

    # An import path of this class of the form module.Class (components/__init__.py exports it): a KFP v2
    # schema title must have that form, and TFX's Kubeflow entrypoint imports the class from it.
    TYPE_NAME = "components.CompressionReportArtifact"


@dataclasses.dataclass
class StageMetrics:
    accuracy: float  # on the eval split
    sparsity: float  # fraction of zero weights over every conv/dense kernel, read from the exported model
    layer_sparsity: Dict[str, float]
    size_bytes: int
    gzip_bytes: int
    latency_ms: float  # median single-example call


@dataclasses.dataclass
class CompressionReport:
    stages: Dict[str, StageMetrics]  # keys in STAGES order; absent stages were switched off
    target_sparsity: Optional[float]  # None when pruning was off
    settings: Dict[str, object] = dataclasses.field(default_factory=dict)  # epochs, steps, device, seed...
    baseline_float_tflite_bytes: int = 0
    baseline_float_tflite_gzip_bytes: int = 0
    # Where the component's wall time went: "total", "fit" (inside model.fit, every stage) and each phase.
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def final_model_stage(self) -> str:
        """The stage that is served (the last Keras stage that ran)."""
        return [s for s in MODEL_STAGES if s in self.stages][-1]

    def rows(self) -> List[list]:
        """stage, accuracy, sparsity, size KB, gzip KB, latency ms: one row per stage that ran."""
        return [[s, f"{m.accuracy:.4f}", f"{m.sparsity:.3f}", f"{m.size_bytes / 1024:.1f}",
                 f"{m.gzip_bytes / 1024:.1f}", f"{m.latency_ms:.3f}"] for s, m in self.stages.items()]

    HEADER = ["stage", "accuracy", "sparsity", "size KB", "gzip KB", "latency ms"]

    # ------------------------------------------------------------------------- files
    def save(self, uri: str) -> None:
        tf.io.gfile.makedirs(uri)
        _atomic_write(os.path.join(uri, JSON), json.dumps(dataclasses.asdict(self), indent=2).encode())
        table = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        table += ["| " + " | ".join(row) + " |" for row in self.rows()]
        _atomic_write(os.path.join(uri, MARKDOWN), ("\n".join(table) + "\n").encode())
        _atomic_write(os.path.join(uri, PLOT), self._plot())

    @classmethod
    def load(cls, uri: str) -> "CompressionReport":
        with tf.io.gfile.GFile(os.path.join(uri, JSON)) as f:
            raw = json.load(f)
        raw["stages"] = {s: StageMetrics(**raw["stages"][s]) for s in STAGES if s in raw["stages"]}
        return cls(**raw)

    def _plot(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for (stage, m), marker in zip(self.stages.items(), "osD^v"):  # a legend: stages of equal accuracy
            ax.scatter(m.gzip_bytes / 1024, 100 * m.accuracy, s=60, marker=marker, label=stage)  # overlap
        ax.legend(fontsize=9, loc="best")
        ax.set_xscale("log")
        ax.set_xlabel("gzip-compressed size (KB, log scale)")
        ax.set_ylabel("eval accuracy (%)")
        ax.set_title("Accuracy vs. compressed size per stage")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        return buffer.getvalue()


def _atomic_write(path: str, data: bytes) -> None:
    with tf.io.gfile.GFile(path + ".tmp", "wb") as f:
        f.write(data)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
