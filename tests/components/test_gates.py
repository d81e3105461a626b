import pytest

from components.gates import compression_verdict


def _report(*accuracies):
    return {stage: {"accuracy": a} for stage, a in zip(("baseline", "pruned", "pqat"), accuracies)}


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
    assert compression_verdict({"baseline": {"accuracy": 0.9}, "pruned": {"accuracy": 0.7}}, 0.05)
