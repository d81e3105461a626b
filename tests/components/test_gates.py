import pytest

from components.compressor.report import CompressionReport, StageMetrics
from components.gates import compression_verdict


def _report(*accuracies, sparsity=0.8, target=0.8):
    stages = {stage: StageMetrics(accuracy=a, sparsity=0.0 if stage == "baseline" else sparsity, layer_sparsity={},
                                  size_bytes=1, gzip_bytes=1, latency_ms=1.0)
              for stage, a in zip(("baseline", "pruned", "pqat"), accuracies)}
    return CompressionReport(stages=stages, target_sparsity=target)


def test_within_budget_passes():
    assert compression_verdict(_report(0.95, 0.94, 0.945), 0.01) == ""


def test_over_budget_names_each_stage_and_the_loss():
    verdict = compression_verdict(_report(0.95, 0.90, 0.92), 0.01)
    assert "lost 3.00 accuracy points" in verdict
    assert "baseline→pruned: +5.00 points lost" in verdict and "pruned→pqat: -2.00 points lost" in verdict


@pytest.mark.parametrize("budget", [-1.0, -0.001])
def test_impossible_budget_always_refuses(budget):
    assert compression_verdict(_report(0.9, 0.9, 0.9), budget)


def test_final_stage_is_the_last_that_ran():
    assert compression_verdict(_report(0.9, 0.7), 0.05)


def test_sparsity_under_the_target_is_refused_with_both_figures():
    verdict = compression_verdict(_report(0.95, 0.95, 0.95, sparsity=0.31, target=0.8), 0.01)
    assert "measured weight sparsity is 0.310, under the target sparsity 0.800" in verdict


def test_no_sparsity_check_without_pruning():
    assert compression_verdict(_report(0.95, sparsity=0.0, target=None), 0.01) == ""


def test_report_round_trips_through_its_files(tmp_path):
    report = _report(0.95, 0.94, 0.945)
    report.settings["seed"] = 3
    report.save(str(tmp_path))
    assert CompressionReport.load(str(tmp_path)) == report
    assert (tmp_path / "compression.md").read_text().count("\n") == 2 + 3
    assert (tmp_path / "compression.png").stat().st_size > 1000 and not list(tmp_path.glob("*.tmp"))
