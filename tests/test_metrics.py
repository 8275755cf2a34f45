"""The metric registry on cases small enough to check by hand, and against scikit-learn / sacrebleu."""

from __future__ import annotations

import numpy as np
import pytest

from slmloop.evaluate.scoring import score_answers
from slmloop.manifest import TaskConfig
from slmloop.metrics import HEADLINE, METRICS, metric_names, summarize
from slmloop.predict.parsing import field_diff, parse_json_object, value_pairs

CLS = TaskConfig(type="classification", labels=["a", "b", "c"])


def _cls(refs: list[str], preds: list[str], labels: list[str] | None = None):
    task = CLS if labels is None else TaskConfig(type="classification", labels=labels)
    return score_answers(task, [{"text": str(i), "label": r} for i, r in enumerate(refs)], preds)


def test_classification_by_hand() -> None:
    s = _cls(["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "x", "c"])  # "x" is not a label: invalid
    m = summarize(s)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["invalid_rate"] == pytest.approx(1 / 6)
    # a: P=2/2 R=2/3 F=0.8; b: P=1/2 R=1/2 F=0.5; c: P=1 R=1 F=1
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["support"] == 3
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    # micro: TP=4, FP=1 (the b predicted for an a), FN=2 -> P=0.8, R=4/6
    assert m["micro_f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert m["confusion"]["columns"] == ["a", "b", "c", "<invalid>"]
    assert m["confusion"]["matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]


def test_classification_agrees_with_sklearn_on_subsets_with_repeats() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    labels = ["x", "y", "z"]
    refs = ["x", "y", "y", "x", "z", "y", "z", "x"]
    preds = ["x", "y", "x", "x", "y", "y", "z", "z"]
    s = _cls(refs, preds, labels)
    for idx in (np.arange(8), np.array([0, 3, 3, 5, 6, 6, 7, 1])):  # a bootstrap draw repeats rows
        r, p = [refs[i] for i in idx], [preds[i] for i in idx]
        assert s.metric("accuracy", idx) == pytest.approx(accuracy_score(r, p))
        assert s.metric("macro_f1", idx) == pytest.approx(f1_score(r, p, labels=labels, average="macro"))
        assert s.metric("micro_f1", idx) == pytest.approx(f1_score(r, p, labels=labels, average="micro"))


def test_mix_takes_the_other_models_rows() -> None:
    a = _cls(["a"] * 4, ["a", "a", "b", "b"])
    b = _cls(["a"] * 4, ["b", "b", "a", "a"])
    assert a.mix(b, np.array([False, False, True, True])).metric("accuracy") == 1.0
    assert a.mix(b, np.ones(4, bool)).metric("accuracy") == b.metric("accuracy") == 0.5


EXT = TaskConfig(type="extraction", fields=["name", "amount", "city"], required=["name"])


def test_extraction_by_hand_with_optional_fields_and_repeated_values() -> None:
    rows = [
        {"text": "x", "output": {"name": "Ann", "amount": 5}},
        {"text": "y", "output": {"name": "Bo", "amount": 7}},
        {"text": "z", "output": {"name": "Cy", "city": ["Paris", "Rome"]}},
    ]
    raws = [
        '{"name": "Ann", "amount": 5}',
        'Sure! {"name": "Bo", "amount": 8, "extra": 1}',
        '{"name": " Cy ", "city": ["Rome", "Oslo"]}',
    ]
    m = summarize(score_answers(EXT, rows, raws, raws))
    assert m["json_valid_rate"] == 1.0
    assert m["exact_match"] == pytest.approx(1 / 3)
    # TP: Ann, 5, Bo, Cy, Rome = 5; FP: 8, extra 1, Oslo = 3; FN: 7, Paris = 2
    assert m["micro_precision"] == pytest.approx(5 / 8)
    assert m["micro_recall"] == pytest.approx(5 / 7)
    assert m["per_field"]["name"]["f1"] == 1.0
    assert m["per_field"]["amount"] == {"f1": pytest.approx(0.5), "tp": 1, "fp": 1, "fn": 1, "support": 2}
    assert m["per_field"]["city"]["f1"] == pytest.approx(0.5)
    assert m["per_field"]["<other keys>"]["fp"] == 1
    # schema: keys ⊆ fields and required ⊆ keys — the second answer has a key outside the schema
    assert m["schema_pass_rate"] == pytest.approx(2 / 3)


def test_an_answer_without_json_is_never_an_exact_match() -> None:
    rows = [{"text": "x", "output": {}}, {"text": "y", "output": {}}]
    s = score_answers(EXT, rows, ["no fields here", "{}"])
    assert s.arrays["exact"].tolist() == [False, True] and s.metric("micro_f1") == 0.0


def test_a_sparse_extraction_answer_passes_the_schema() -> None:
    rows = [{"text": "x", "output": {"name": "Ann"}}]
    assert score_answers(EXT, rows, ['{"name": "Ann"}']).metric("schema_pass_rate") == 1.0
    assert score_answers(EXT, rows, ['{"amount": 3}']).metric("schema_pass_rate") == 0.0  # required name missing
    schema = {"type": "object", "properties": {"amount": {"type": "integer"}}}
    ok = score_answers(EXT, rows, ['{"name": "Ann", "amount": 3}'], json_schema=schema)
    bad = score_answers(EXT, rows, ['{"name": "Ann", "amount": "3"}'], json_schema=schema)
    assert (ok.metric("schema_pass_rate"), bad.metric("schema_pass_rate")) == (1.0, 0.0)


def test_field_diff_names_missing_wrong_and_extra() -> None:
    diff = field_diff({"name": "Ann", "amount": 5, "city": "Oslo"}, {"name": "Ann", "amount": 6, "day": "mon"})
    kinds = {d["field"]: d["kind"] for d in diff}
    assert kinds == {"amount": "wrong", "city": "missing", "day": "extra"}
    assert field_diff({"a": [1, 2]}, {"a": [2, 1]}) == []
    assert value_pairs({"a": None, "b": [], "c": " x  y "}) == {("c", "x y"): 1}


def test_generation_by_hand_and_bleu_agrees_with_sacrebleu() -> None:
    from sacrebleu.metrics import BLEU

    task = TaskConfig(type="generation")
    refs = ["the cat sat on the mat", "a b c d"]
    preds = ["the cat sat on a mat", "a x c"]
    rows = [{"input": str(i), "output": r} for i, r in enumerate(refs)]
    s = score_answers(task, rows, preds, regex=r"[a-z ]+")
    m = summarize(s)
    assert m["exact_match"] == 0.0
    # second pair: LCS "a c" = 2 tokens, P=2/3, R=2/4 -> F=4/7; first: LCS 5 of 6 -> F=5/6
    assert m["rouge_l"] == pytest.approx((5 / 6 + 4 / 7) / 2)
    assert m["bleu"] == pytest.approx(BLEU().corpus_score(preds, [refs]).score / 100)
    assert m["regex_pass_rate"] == 1.0
    assert 0 < m["chrf"] < 1


def test_the_registry_names_every_metric_once() -> None:
    for task, names in HEADLINE.items():
        assert set(names) <= set(metric_names(task)), task
    assert "schema_pass_rate" in metric_names("generation") and "schema_pass_rate" not in metric_names(
        "generation", configured=False
    )
    assert all(m.name == name for name, m in METRICS.items())
    assert METRICS["invalid_rate"].higher_is_better is False


def test_asking_for_an_unknown_metric_is_a_clear_error() -> None:
    from slmloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"rouge_l.*not a metric"):
        _cls(["a"], ["a"]).metric("rouge_l")


def test_parse_json_object() -> None:
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object("no json here") is None
    assert parse_json_object("[1, 2]") is None


def test_an_out_of_scope_label_adds_in_scope_accuracy_recall_precision_and_auroc() -> None:
    from slmloop.evaluate.scoring import score_answers
    from slmloop.manifest import TaskConfig

    task = TaskConfig(type="classification", labels=["a", "b"], out_of_scope="oos")
    rows = [{"label": x} for x in ["a", "a", "b", "b", "oos", "oos", "oos", "oos"]]
    preds = ["a", "oos", "b", "a", "oos", "oos", "a", "oos"]
    conf = [0.9, 0.3, 0.8, 0.7, 0.2, 0.1, 0.6, 0.4]
    scores = score_answers(task, rows, preds, confidence=conf)
    assert scores.metric("in_scope_accuracy") == pytest.approx(2 / 4)  # the abstention on an "a" row is wrong
    assert scores.metric("oos_recall") == pytest.approx(3 / 4)
    assert scores.metric("oos_precision") == pytest.approx(3 / 4)  # one abstention was on an in-scope row
    # low confidence finds out-of-scope rows: 14 of the 16 (oos, in-scope) pairs are ordered right
    assert scores.metric("oos_auroc") == pytest.approx(14 / 16)
    assert (
        "oos_recall"
        not in score_answers(TaskConfig(type="classification", labels=["a", "b"]), rows[:4], preds[:4]).names
    )
