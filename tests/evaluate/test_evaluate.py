from __future__ import annotations

import pytest

from slmloop.evaluate.evaluate import evaluate, latest_evaluations

pytestmark = pytest.mark.integration  # trains the tiny model


@pytest.fixture
def project(trained_copy):
    return trained_copy


def test_eval_stores_every_prediction_and_consistent_metrics(project) -> None:
    ev = evaluate(project, "run-1")
    preds = project.store.predictions(ev.id)
    assert len(preds) == ev.n_rows > 0
    acc = sum(p.correct for p in preds) / len(preds)
    assert ev.metrics["accuracy"] == pytest.approx(acc)
    assert all(p.prediction in ("ham", "spam") for p in preds)  # rank mode never gives invalid answers
    for p in preds:  # probabilities of the labels, largest first: the prediction is the most likely one
        probs = p.scores["probs"]
        assert abs(sum(probs.values()) - 1) < 1e-3 and next(iter(probs)) == p.prediction
    report = project.reports_dir / ev.name
    assert (report / "confusion.png").exists() and (report / "index.html").exists()


def test_fine_tuned_beats_base_on_the_toy_task(project) -> None:
    base = evaluate(project, "base")
    tuned = evaluate(project, "run-1")
    assert tuned.metrics["accuracy"] > base.metrics["accuracy"]
    refs = [e.model_ref for e in latest_evaluations(project, tuned.gold_id)]
    assert refs == ["base", "run-1"]


def test_release_eval_scores_the_shipped_files_like_the_run(project) -> None:
    run_eval = evaluate(project, "run-1")
    rel_eval = evaluate(project, "v1")
    assert rel_eval.model_ref == "release-1"
    # merged fp32 weights answer like base + adapter
    assert rel_eval.metrics["accuracy"] == pytest.approx(run_eval.metrics["accuracy"])


def test_generate_mode_parses_answers(project) -> None:
    project.manifest.eval.mode = "generate"
    ev = evaluate(project, "run-1")
    assert ev.mode == "generate"
    preds = project.store.predictions(ev.id)
    # each prediction is the label its raw answer names ("" when it names none), and the rates add up
    from slmloop.predict.tasks import parse_prediction

    assert all(p.prediction == parse_prediction(project.task, p.raw) for p in preds)
    assert ev.metrics["invalid_rate"] == pytest.approx(sum(p.prediction == "" for p in preds) / len(preds))
    assert ev.metrics["accuracy"] == pytest.approx(sum(p.correct for p in preds) / len(preds))
