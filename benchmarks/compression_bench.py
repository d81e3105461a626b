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

from pipeline import runners  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", help="output folder (default: a new temporary one)")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    output = args.output or tempfile.mkdtemp(prefix="compression_bench_")
    config = PipelineConfig(output_dir=output, enable_cache=not args.reuse)
    if args.reuse:
        result = runners.latest_run(os.path.join(output, "metadata.sqlite"), config.pipeline_name)
    else:
        result = runners.run_local(config)
    r = result.compression_report
    stages = {s: {k: r[s][k] for k in ("accuracy", "sparsity", "size_bytes", "gzip_bytes", "latency_ms")}
              for s in ("baseline", "pruned", "pqat", "tflite_int8") if s in r}
    print(json.dumps({
        "stages": stages,
        "layer_sparsity_pqat": r.get("pqat", {}).get("layer_sparsity"),
        "pqat_accuracy_drop_points": round(100 * (r["baseline"]["accuracy"] - r["pqat"]["accuracy"]), 3),
        "gzip_ratio_baseline_over_pqat_savedmodel": round(r["baseline"]["gzip_bytes"] / r["pqat"]["gzip_bytes"], 2),
        "size_ratio_float_tflite_over_int8_tflite": round(
            r["tflite_int8"]["baseline_float_tflite_bytes"] / r["tflite_int8"]["size_bytes"], 2),
        "gzip_ratio_float_tflite_over_int8_tflite": round(
            r["tflite_int8"]["baseline_float_tflite_gzip_bytes"] / r["tflite_int8"]["gzip_bytes"], 2),
        "latency_ratio_pqat_over_baseline": round(r["pqat"]["latency_ms"] / r["baseline"]["latency_ms"], 2),
        "pushed": result.pushed, "settings": r["settings"],
    }, indent=2, default=str))


if __name__ == "__main__":
    main()
