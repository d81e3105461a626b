import pytest

from components.compressor.report import CompressionReport, StageMetrics
from components.gates import Check, Verdict, compression_checks


def _report(*accuracies, sparsity=0.8, target=0.8):
    stages = {stage: StageMetrics(accuracy=a, sparsity=0.0 if stage == "baseline" else sparsity, layer_sparsity={},
                                  size_bytes=1, gzip_bytes=1, latency_ms=1.0)
              for stage, a in zip(("baseline", "pruned", "pqat"), accuracies)}
    return CompressionReport(stages=stages, target_sparsity=target)


def compression_verdict(report, budget):
    """The gate's compression checks with the report's own target as the bound (0: pruning was off)."""
    return "; ".join(c.detail for c in compression_checks(report, budget, report.target_sparsity or 0.0)
                     if not c.passed)


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


def test_compression_checks_are_structured_and_name_their_bounds():
    loss, sparsity = compression_checks(_report(0.95, 0.90, 0.92, sparsity=0.5), 0.01, 0.8)
    assert (loss.name, loss.slice, round(loss.value, 4), loss.bound, loss.passed) == (
        "compression accuracy loss", "compression", 0.03, "<= 0.01", False)
    assert (sparsity.name, sparsity.value, sparsity.bound, sparsity.passed) == ("weight sparsity", 0.5, ">= 0.8", False)
    assert [c.name for c in compression_checks(_report(0.95, 0.95), 0.01, 0.0)] == ["compression accuracy loss"]


def test_verdict_round_trips_and_lists_only_judged_failures():
    checks = [Check("accuracy", "overall", 0.95, ">= 0.9", 360, passed=True),
              Check("accuracy", "class '3'", 0.5, ">= 0.75", 4, passed=False, judged=False,
                    why_not_judged="fewer than --min-slice-examples 30 eval examples"),
              Check("accuracy change vs. the served model", "overall", -0.05, ">= -0.0200", 360, passed=False,
                    detail="compared with the served model /m/1")]
    verdict = Verdict(blessed=False, checks=checks, served_model="/m/1")
    assert Verdict.from_json(verdict.to_json()) == verdict
    assert verdict.failed == [checks[2]]
    assert str(checks[1]) == ("class '3': accuracy 0.5000, needs >= 0.75 (4 eval examples) "
                              "[not judged: fewer than --min-slice-examples 30 eval examples]")
    assert str(checks[2]) == ("overall: accuracy change vs. the served model -0.0500, needs >= -0.0200 "
                              "(360 eval examples): compared with the served model /m/1")
