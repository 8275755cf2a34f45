"""What `slmloop eval` says beside its tables: a prior's effect and an abstaining classifier's trade-off."""

from __future__ import annotations

from slmloop.cli.evaluation import prior_lines


def test_eval_says_what_abstention_catches_and_what_it_costs() -> None:
    metrics = {
        "accuracy": 0.85,
        "in_scope_accuracy": 0.9,
        "oos_recall": 0.62,
        "oos_precision": 0.7,
        "oos_auroc": 0.91,
        "ci": {"in_scope_accuracy": [0.88, 0.92], "oos_recall": [0.55, 0.69]},
        "runtime": {"abstain": {"label": "oos", "temperature": 1.2, "threshold": 0.4321}},
    }
    (line,) = prior_lines(metrics)
    assert "below confidence 0.432" in line
    assert "in-scope accuracy 0.9000 [0.880, 0.920]" in line and "out-of-scope recall 0.6200 [0.550, 0.690]" in line
    assert "AUROC 0.9100" in line
    assert prior_lines({"accuracy": 0.9, "runtime": {}}) == []
