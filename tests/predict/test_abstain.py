"""Abstention: the threshold and temperature chosen on hand-made validation answers, and the answer it gives."""

from __future__ import annotations

from typing import Any

import pytest

from slmloop.manifest import TaskConfig
from slmloop.predict.abstain import Abstention, choose_threshold, fit_temperature
from slmloop.predict.answers import answer_rows
from slmloop.predict.tasks import Hints


def test_without_out_of_scope_rows_the_threshold_costs_at_most_the_allowed_in_scope_accuracy() -> None:
    # ten in-scope rows: eight right (confidence 0.95 ... 0.60), two wrong (0.55, 0.50)
    conf = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    top = ["a"] * 8 + ["b", "b"]
    truth = ["a"] * 10
    threshold, choice = choose_threshold(conf, top, truth, "oos", max_in_scope_drop=0.1)
    # losing one right row of ten (0.1) is allowed, two are not: the threshold sits between 0.60 and 0.65
    assert 0.6 < threshold <= 0.65
    assert choice["closed_world_accuracy"] == pytest.approx(0.8) and choice["in_scope_accuracy"] == pytest.approx(0.7)
    assert choice["abstain_rate"] == pytest.approx(0.3) and choice["oos_recall"] is None
    assert choose_threshold(conf, top, truth, "oos", max_in_scope_drop=0.0)[0] < 0.6  # nothing right may go


def test_with_out_of_scope_rows_the_lowest_threshold_reaching_the_recall_target_wins() -> None:
    conf = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.65, 0.4]
    top = ["a", "b", "a", "b", "a", "b", "a", "oos"]
    truth = ["a", "b", "a", "b", "a", "oos", "oos", "oos"]  # three out-of-scope rows; one answered "oos" itself
    threshold, choice = choose_threshold(conf, top, truth, "oos", max_in_scope_drop=0.0, min_oos_recall=0.6)
    # the "oos" answer and the 0.2 row are caught below 0.3: two of three reach 0.6 at the lowest threshold
    assert 0.2 < threshold <= 0.3 and choice["oos_recall"] == pytest.approx(2 / 3)
    assert choice["in_scope_accuracy"] == pytest.approx(1.0) and choice["oos_rows"] == 3
    full, every = choose_threshold(conf, top, truth, "oos", max_in_scope_drop=0.0, min_oos_recall=1.0)
    assert 0.65 < full <= 0.7 and every["oos_recall"] == 1.0 and every["in_scope_accuracy"] == pytest.approx(0.6)


def test_an_overconfident_model_is_calibrated_by_a_temperature_above_one() -> None:
    # it says 0.99 and is right 70 % of the time
    probs = [{"a": 0.99, "b": 0.01}] * 10
    truth = ["a"] * 7 + ["b"] * 3
    t = fit_temperature(probs, truth)
    assert t > 1.5
    calibrated = Abstention("oos", t, 0.0).calibrate({"a": 0.99, "b": 0.01})
    assert calibrated["a"] == pytest.approx(0.7, abs=0.05)
    assert fit_temperature([{"a": 0.7, "b": 0.3}] * 10, truth) == pytest.approx(1.0, rel=0.1)


def test_an_unsure_or_out_of_scope_answer_abstains() -> None:
    rule = Abstention("oos", 1.0, 0.6)
    assert rule.decide({"a": 0.9, "b": 0.1}) == (False, pytest.approx(0.9))
    assert rule.decide({"a": 0.5, "b": 0.5})[0] is True
    assert rule.decide({"oos": 0.8, "a": 0.2}) == (True, pytest.approx(0.2))  # the out-of-scope label itself


class Ranked:
    """An engine that ranks from a script: log P(label) per row (the fusion under test, not a model)."""

    tokenizer = None
    can_rank = True

    def __init__(self, scores: list[dict[str, float]]) -> None:
        self.scores = scores

    def rank(self, prompts: list[str], labels: list[str], **kw: Any) -> list[list[float | None]]:
        return [[row.get(lab) for lab in labels] for row in self.scores]


def test_ranked_answers_abstain_below_the_threshold(monkeypatch) -> None:
    import math

    monkeypatch.setattr("slmloop.predict.answers.render_prompt", lambda tok, messages: "prompt")
    task = TaskConfig(type="classification", labels=["a", "b"], abstain={"max_in_scope_drop": 0.02})
    assert task.out_of_scope == "out_of_scope" and task.label_list == ["a", "b", "out_of_scope"]
    rule = Abstention("out_of_scope", 1.0, 0.7)
    engine = Ranked([{"a": math.log(0.9), "b": math.log(0.1)}, {"a": math.log(0.55), "b": math.log(0.45)}])
    rows = [{"text": "sure"}, {"text": "unsure"}]
    sure, unsure = answer_rows(
        task, "full", "rank", engine, rows, [Hints(abstain=rule)] * 2, batch_size=2, max_new_tokens=4, margin=None
    )
    assert sure.prediction == "a" and not sure.scores.get("abstained") and sure.scores["confidence"] > 0.7
    assert unsure.prediction == "out_of_scope" and unsure.scores["abstained"] is True
    assert unsure.scores["answered_label"] == "a" and unsure.scores["confidence"] == pytest.approx(0.55, abs=1e-3)
