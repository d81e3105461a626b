"""The compression report's figures on the bundled digits, from one pipeline run.

    .venv/bin/python benchmarks/compression_bench.py [--output DIR] [--reuse]
With --reuse, reads the latest run under --output instead of running the pipeline.
Prints one JSON object: each stage's figures and the ratios the targets are stated in.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from pipeline import lineage, local_runner  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", help="output folder (default: a new temporary one)")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    output = args.output or tempfile.mkdtemp(prefix="compression_bench_")
    config = PipelineConfig(output_dir=output, enable_cache=not args.reuse)
    if args.reuse:
        result = lineage.latest_run(os.path.join(output, "metadata.sqlite"), config.pipeline_name)
    else:
        result = local_runner.run(config)
    r = result.compression_report
    stages = {s: {k: v for k, v in vars(m).items() if k != "layer_sparsity"} for s, m in r.stages.items()}
    print(json.dumps({
        "stages": stages,
        "layer_sparsity_pqat": r.stages["pqat"].layer_sparsity,
        "pqat_accuracy_drop_points": round(100 * (r.stages["baseline"].accuracy - r.stages["pqat"].accuracy), 3),
        "gzip_ratio_baseline_over_pqat_savedmodel": round(r.stages["baseline"].gzip_bytes / r.stages["pqat"].gzip_bytes, 2),
        "size_ratio_float_tflite_over_int8_tflite": round(
            r.baseline_float_tflite_bytes / r.stages["tflite_int8"].size_bytes, 2),
        "gzip_ratio_float_tflite_over_int8_tflite": round(
            r.baseline_float_tflite_gzip_bytes / r.stages["tflite_int8"].gzip_bytes, 2),
        "latency_ratio_pqat_over_baseline": round(r.stages["pqat"].latency_ms / r.stages["baseline"].latency_ms, 2),
        "pushed": result.pushed, "target_sparsity": r.target_sparsity, "settings": r.settings,
    }, indent=2, default=str))


if __name__ == "__main__":
    main()
