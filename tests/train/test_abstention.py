"""An abstaining classifier end to end: its threshold chosen after training, shipped, served and monitored."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from tests.conftest import write_project
from tests.tiny import toy_rows

pytestmark = pytest.mark.integration  # trains the tiny model


def test_an_abstaining_classifier_is_trained_evaluated_served_and_monitored(tmp_path, tiny_model) -> None:
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.monitor.drift import score_window
    from slmloop.predict.abstain import Abstention
    from slmloop.predict.companion import load_companion
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.release.profile import build_profile
    from slmloop.serve.app import create_app
    from slmloop.serve.server import load_predictor
    from slmloop.train.recipe import train

    rng = random.Random(3)
    hotel = ["book", "a", "room", "hotel", "tonight", "suite", "check", "in", "late", "breakfast", "view"]
    rows = toy_rows(150) + [{"text": " ".join(rng.sample(hotel, 6)) + f" {i}", "label": "oos"} for i in range(45)]
    root = write_project(
        tmp_path / "proj",
        tiny_model,
        rows,
        task={"labels": ["ham", "spam", "oos"], "out_of_scope": "oos", "abstain": {"max_in_scope_drop": 0.05}},
        train={"epochs": 3},
    )
    project = open_project(root)
    import_source(project, project.manifest.data.sources[0])
    prepare_dataset(project)
    run = train(project)
    # the threshold and calibration were chosen on validation after training, recorded and shipped
    chosen = json.loads((project.locate(run.path) / "run.json").read_text())["abstain"]
    assert chosen["label"] == "oos" and chosen["rows"] > 0 and 0.1 <= chosen["temperature"] <= 10
    assert chosen["closed_world_accuracy"] - chosen["in_scope_accuracy"] <= 0.05 + 1e-9
    shipped = load_companion(project.locate(run.path) / "adapter")
    assert shipped is not None and shipped.abstain == Abstention("oos", chosen["temperature"], chosen["threshold"])
    # evaluation answers through it: every answer has its calibrated confidence; an abstention is the oos label
    ev = evaluate(project, run.name)
    preds = project.store.predictions(ev.id)
    assert all("confidence" in p.scores for p in preds)
    assert all(p.prediction == "oos" for p in preds if p.scores.get("abstained"))
    for name in ("in_scope_accuracy", "oos_recall", "oos_precision", "oos_auroc"):  # reported with their CIs
        assert name in ev.metrics and name in ev.metrics["ci"]
    release = export_release(project, run.name)
    # served: an unsure answer is an abstention (here every answer is: the threshold is set above any confidence)
    predictor = load_predictor(project, release.version)
    assert predictor.companion is not None and predictor.companion.abstain is not None
    predictor.companion.abstain = replace(predictor.companion.abstain, threshold=1.01)
    with TestClient(create_app(predictor, project.store)) as client:
        said = [client.post("/v1/predict", json={"text": r["text"]}).json() for r in toy_rows(12, seed=9)]
    assert all(a["label"] is None and a["abstained"] is True and a["out_of_scope"] == "oos" for a in said)
    assert all(0.0 <= a["confidence"] <= 1.0 and a["scores"] for a in said)
    # the monitor counts abstentions: against a reference that abstained on 2 of 100 rows, this window drifts
    logged = [r for r in project.store.requests() if r.endpoint == "/v1/predict"]
    assert len(logged) == 12 and all(json.loads(r.output)["abstained"] for r in logged)
    profile = replace(build_profile(project, release.version, run.dataset_id, run.id), abstained=(2, 100))
    from slmloop.models.embedder import embed

    texts = [r.input for r in logged]
    signals = score_window(profile, texts, [r.output for r in logged], embed(texts), project.manifest.monitor)
    (abstain,) = [s for s in signals if s.name == "abstain"]
    assert abstain.verdict == "drift" and abstain.detail["live_rate"] == 1.0
    assert not any(s.name == "invalid" and s.verdict != "ok" for s in signals)  # an abstention is not invalid
    project.close()
