"""Every metric on a case small enough to check by hand."""

from __future__ import annotations

import pytest

from slmloop.evaluate.metrics import (
    classification_metrics,
    extraction_metrics,
    generation_metrics,
    parse_json_object,
)


def test_classification_by_hand() -> None:
    refs = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", "x", "c"]  # "x" is not a label: invalid
    m = classification_metrics(refs, preds, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["invalid_rate"] == pytest.approx(1 / 6)
    # a: P=2/2 R=2/3 F=0.8; b: P=1/2 R=1/2 F=0.5; c: P=1 R=1 F=1
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    # micro: TP=4, FP=1 (the b predicted for an a), FN=2 -> P=0.8, R=4/6
    assert m["micro_f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert m["confusion"]["columns"] == ["a", "b", "c", "<invalid>"]
    assert m["confusion"]["matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]


def test_classification_agrees_with_sklearn() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    refs = ["x", "y", "y", "x", "z", "y", "z", "x"]
    preds = ["x", "y", "x", "x", "y", "y", "z", "z"]
    m = classification_metrics(refs, preds, ["x", "y", "z"])
    assert m["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert m["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))


def test_generation_by_hand() -> None:
    m = generation_metrics(["the cat sat", "a b c d"], ["the cat sat", "a x c"])
    assert m["exact_match"] == 0.5
    # second pair: LCS "a c" = 2 tokens, P=2/3, R=2/4 -> F=4/7
    assert m["rouge_l"] == pytest.approx((1.0 + 4 / 7) / 2)


def test_extraction_by_hand() -> None:
    refs = [{"name": "Ann", "amount": 5}, {"name": "Bo", "amount": 7}]
    preds = ['{"name": "Ann", "amount": 5}', 'Sure! {"name": "Bo", "amount": 8, "extra": 1}']
    m = extraction_metrics(refs, preds, ["name", "amount"])
    assert m["json_valid_rate"] == 1.0
    assert m["exact_match"] == 0.5
    # pairs: TP=3 (name Ann, amount 5, name Bo), FP=2 (amount 8, extra 1), FN=1 (amount 7)
    assert m["micro_precision"] == pytest.approx(3 / 5)
    assert m["micro_recall"] == pytest.approx(3 / 4)
    assert m["field_accuracy"] == {"name": 1.0, "amount": 0.5}
    # amount: TP=1 (5), FP=1 (8), FN=1 (7) -> F1 = 2/(2+1+1); name: all right
    assert m["field_f1"] == {"name": 1.0, "amount": pytest.approx(0.5)}
    assert m["schema_pass_rate"] == 0.5  # the second answer has an extra key


def test_parse_json_object() -> None:
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object("no json here") is None
    assert parse_json_object("[1, 2]") is None
