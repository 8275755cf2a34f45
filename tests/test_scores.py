"""Per-row scores reproduce the reference metrics, on any subset of rows, and mix row by row."""

from __future__ import annotations

import numpy as np
import pytest

from slmloop.evaluate.metrics import classification_metrics, extraction_metrics, generation_metrics
from slmloop.evaluate.scores import score_predictions
from slmloop.manifest import TaskConfig

CLS = TaskConfig(type="classification", labels=["a", "b", "c"])


def test_classification_scores_match_the_reference_metrics() -> None:
    rows = [{"text": str(i), "label": lab} for i, lab in enumerate(["a", "a", "a", "b", "b", "c"])]
    preds = ["a", "a", "b", "b", "x", "c"]
    s = score_predictions(CLS, rows, preds)
    ref = classification_metrics([r["label"] for r in rows], preds, ["a", "b", "c"])
    for name in ("accuracy", "macro_f1", "micro_f1"):
        assert s.metric(name) == pytest.approx(ref[name])
    idx = np.array([0, 3, 5, 5])  # a subset with a repeat, as the bootstrap draws
    sub = classification_metrics(["a", "b", "c", "c"], ["a", "b", "c", "c"], ["a", "b", "c"])
    assert s.metric("macro_f1", idx) == pytest.approx(sub["macro_f1"]) == 1.0


def test_mix_takes_the_other_models_rows() -> None:
    rows = [{"text": str(i), "label": "a"} for i in range(4)]
    a = score_predictions(CLS, rows, ["a", "a", "b", "b"])
    b = score_predictions(CLS, rows, ["b", "b", "a", "a"])
    swapped = a.mix(b, np.array([False, False, True, True]))
    assert swapped.metric("accuracy") == 1.0
    assert a.mix(b, np.ones(4, bool)).metric("accuracy") == b.metric("accuracy")


def test_extraction_scores_match_the_reference_metrics() -> None:
    task = TaskConfig(type="extraction", fields=["name", "amount"])
    rows = [{"text": "x", "output": {"name": "Ann", "amount": 5}}, {"text": "y", "output": {"name": "Bo", "amount": 7}}]
    preds = ['{"name": "Ann", "amount": 5}', 'Sure! {"name": "Bo", "amount": 8, "extra": 1}']
    s = score_predictions(task, rows, preds)
    ref = extraction_metrics([r["output"] for r in rows], preds, ["name", "amount"])
    for name in ("micro_f1", "json_valid_rate", "exact_match", "micro_precision", "micro_recall", "schema_pass_rate"):
        assert s.metric(name) == pytest.approx(ref[name])


def test_generation_scores_and_checks() -> None:
    task = TaskConfig(type="generation")
    rows = [{"input": "q1", "output": "42"}, {"input": "q2", "output": "the cat sat"}]
    preds = ["42", "the cat"]
    s = score_predictions(task, rows, preds, regex=r"\d+", json_schema=None)
    ref = generation_metrics(["42", "the cat sat"], preds)
    assert s.metric("exact_match") == ref["exact_match"] == 0.5
    assert s.metric("rouge_l") == pytest.approx(ref["rouge_l"])
    assert s.metric("regex_pass_rate") == 0.5
    assert 0 < s.metric("chrf") < 1
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    js = score_predictions(task, rows, ['{"n": 3}', '{"n": "x"}'], json_schema=schema)
    assert js.metric("schema_pass_rate") == 0.5
