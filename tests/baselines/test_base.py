"""A baseline of an abstaining task abstains by the fine-tuned model's rule, so comparisons stay fair."""

from __future__ import annotations

import pytest

from slmloop.baselines.base import fit_baseline
from slmloop.manifest import TaskConfig
from tests.tiny import toy_rows


def _never(texts: list[str]) -> None:  # tfidf-lr reads no embeddings
    raise AssertionError("tfidf-lr does not embed")


@pytest.mark.parametrize(("drop", "all_abstain"), [(1.0, True), (0.0, False)])
def test_a_text_baseline_abstains_by_the_threshold_chosen_on_validation(drop: float, all_abstain: bool) -> None:
    task = TaskConfig(type="classification", labels=["ham", "spam"], abstain={"max_in_scope_drop": drop})
    rows = toy_rows(120)
    fitted = fit_baseline("tfidf-lr", task, rows[:90], _never, validation=rows[90:])  # type: ignore[arg-type]
    chosen = fitted.info["abstain"]
    assert chosen["rows"] == 30 and chosen["oos_rows"] == 0 and 0.1 <= chosen["temperature"] <= 10
    said = fitted.predict(rows[90:])
    assert all("confidence" in a.scores for a in said)
    abstained = [a for a in said if a.scores.get("abstained")]
    assert all(a.prediction == "out_of_scope" and a.scores["confidence"] < chosen["threshold"] for a in abstained)
    # losing all in-scope accuracy is allowed: it abstains on every validation row; losing none: on no right one
    assert (len(abstained) == len(said)) is all_abstain
    if not all_abstain:
        assert chosen["in_scope_accuracy"] == pytest.approx(chosen["closed_world_accuracy"])
