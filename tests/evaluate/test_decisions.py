"""Gates, eval packs, must-beat, endpoints and judges as models, compare and analyze — on the tiny project."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from slmloop.analyze.compare import compare_models
from slmloop.analyze.failures import analyze, export_for_labelling
from slmloop.analyze.label_issues import confident_learning
from slmloop.cli import main
from slmloop.evaluate.evaluate import evaluate, failed_gates
from slmloop.manifest import EvalConfig
from slmloop.project import open_project
from slmloop.store import GoldVersion, RequestLog
from tests.models.test_endpoint import fake_api

pytestmark = pytest.mark.integration  # trains the tiny model


@pytest.fixture
def project(trained_copy):
    return trained_copy


def test_metrics_carry_confidence_intervals(project) -> None:
    ev = evaluate(project, "run-1")
    for name in ("accuracy", "macro_f1"):
        lo, hi = ev.metrics["ci"][name]
        assert lo <= ev.metrics[name] <= hi
    lo, hi = ev.metrics["ci"]["accuracy"]
    assert hi - lo > 0.02  # a rate's (Wilson) interval keeps a width even when every gold row is right
    assert ev.metrics["runtime"]["cost_per_1k_requests"] > 0


def test_a_gate_above_the_score_fails_the_eval(project, capsys) -> None:
    pack = project.root / "strict.yaml"
    pack.write_text(
        yaml.safe_dump(
            {
                "gates": [
                    {"metric": "accuracy", "op": "gte", "threshold": 1.01, "required": True},
                    {"metric": "macro_f1", "op": "gte", "threshold": 0.0, "required": True},
                ],
                "compare": {"baseline": "none"},
            }
        )
    )
    assert main(["eval", "--model", "run-1", "--pack", str(pack), "-p", str(project.root)]) == 3
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "PASS" in captured.out
    assert "failed required gate(s): accuracy >= 1.01" in captured.err
    pack.write_text(
        yaml.safe_dump(
            {"gates": [{"metric": "accuracy", "op": "gte", "threshold": 0.0}], "compare": {"baseline": "none"}}
        )
    )
    assert main(["eval", "--model", "run-1", "--pack", str(pack), "-p", str(project.root)]) == 0


def test_significant_gate_judges_the_ci_bound(project) -> None:
    ev = evaluate(project, "run-1", pack=EvalConfig(gates=[]))
    lo, _ = ev.metrics["ci"]["accuracy"]
    value = ev.metrics["accuracy"]
    threshold = (lo + value) / 2  # between the bound and the estimate
    cfg = EvalConfig(gates=[{"metric": "accuracy", "threshold": threshold, "significant": True}])
    ev2 = evaluate(project, "run-1", pack=cfg)
    assert ev2.metrics["gates"][0]["passed"] is False and failed_gates(ev2)
    cfg = EvalConfig(gates=[{"metric": "accuracy", "threshold": threshold, "significant": False}])
    assert evaluate(project, "run-1", pack=cfg).metrics["gates"][0]["passed"] is True


def test_must_beat_base_runs_a_paired_test(project) -> None:
    ev = evaluate(project, "run-1", pack=EvalConfig(compare={"must_beat": "base", "alpha": 0.05}))
    beat = ev.metrics["must_beat"]
    assert beat["against"] == "base" and beat["test"].startswith("mcnemar")
    # the trained toy model is far better than the untrained one: a significant gain, the gate passes
    assert beat["verdict"] == "better" and beat["p_value"] < 0.05 and beat["diff"] > 0
    assert not any("must beat" in f for f in failed_gates(ev))
    # a gain smaller than min_effect does not count: "not distinguishable", and the required rule fails
    strict = EvalConfig(compare={"must_beat": "base", "min_effect": 1.5})  # a gain above 100 points
    ev2 = evaluate(project, "run-1", pack=strict)
    assert ev2.metrics["must_beat"]["verdict"] == "not distinguishable"
    assert any("must beat base" in f for f in failed_gates(ev2))


def test_compare_reports_gain_ci_and_p_value(project) -> None:
    report = compare_models(project, ["base", "run-1"])
    c = report.comparisons[0]
    assert c.metric == "accuracy" and c.a.model_ref == "base" and c.b.model_ref == "run-1"
    assert c.test.ci[0] <= c.test.diff <= c.test.ci[1]
    assert "run-1" in c.sentence and "CI" in c.sentence and ("p" in c.sentence)
    assert (report.path / "index.html").exists() and (report.path / "compare.png").exists()
    again = compare_models(project, ["base", "run-1"])  # stored evaluations are reused
    assert [e.id for e in again.evaluations] == [e.id for e in report.evaluations]
    # a cheap baseline is a model to compare like any other (fitted and scored once, then reused)
    with_baseline = compare_models(project, ["baseline:tfidf-lr", "run-1"], report=False)
    assert [e.model_ref for e in with_baseline.evaluations] == ["baseline:tfidf-lr", "run-1"]
    assert with_baseline.comparisons[0].a.model_ref == "baseline:tfidf-lr"
    reused = compare_models(project, ["baseline:tfidf-lr", "run-1"], report=False)
    assert reused.evaluations[0].id == with_baseline.evaluations[0].id


def test_endpoint_as_a_model_with_latency_cost_and_a_judge(project) -> None:
    endpoints = {
        "frontier": {
            "url": "https://api.example/v1",
            "model": "big",
            "price_per_1k_input": 1.0,
            "price_per_1k_output": 2.0,
        }
    }
    project.manifest.eval.endpoints = {k: v for k, v in EvalConfig(endpoints=endpoints).endpoints.items()}
    ev = evaluate(project, "endpoint:frontier", transport=fake_api())
    rt = ev.metrics["runtime"]
    assert ev.model_ref == "endpoint:frontier" and ev.mode == "generate"
    assert rt["latency_p50_s"] > 0 and rt["prompt_tokens"] > 0 and rt["cost"] > 0
    # the fake API says spam exactly when the message contains "win": its accuracy, by hand
    gold = project.objects.read_jsonl(project.store.get(GoldVersion, ev.gold_id, "", "").object)
    expected = sum(("spam" if "win" in r["text"].lower() else "ham") == r["label"] for r in gold) / len(gold)
    assert ev.metrics["accuracy"] == pytest.approx(expected)

    def judge_handler(request: httpx.Request) -> httpx.Response:
        payload = json.loads(json.loads(request.content)["messages"][-1]["content"])
        score = 5 if payload["answer"] == payload["reference"] else 1
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": json.dumps({"score": score, "reason": "compared"})}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            },
        )

    cfg = EvalConfig(endpoints=endpoints, judge={"endpoint": "frontier", "rubric": "exact label match"})
    judged = evaluate(project, "run-1", pack=cfg, transport=httpx.MockTransport(judge_handler))
    j = judged.metrics["judge"]
    assert j["rubric"] == "exact label match" and j["model"] == "big"
    assert judged.metrics["judge_score"] == pytest.approx(1 + 4 * judged.metrics["accuracy"])


def test_confident_learning_by_hand() -> None:
    import numpy as np

    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.05, 0.95], [0.2, 0.8], [0.3, 0.7], [0.55, 0.45]])
    # thresholds: label 0 -> mean(.9,.8,.05) = .583; label 1 -> mean(.8,.7,.45) = .65. Row 2 counts as 1 (.95 >= .65);
    # row 5 counts as 0 (.55 < .583: no), but 0 is likelier than its own 1 (margin .10)
    assert confident_learning(labels, probs, likelier=False) == [(2, 1, pytest.approx(0.90))]
    assert confident_learning(labels, probs) == [(2, 1, pytest.approx(0.90)), (5, 0, pytest.approx(0.10))]


def test_analyze_lists_slices_clusters_and_exports_rows_to_label(project, tmp_path: Path) -> None:
    ev = evaluate(project, "base")  # the untrained model fails plenty
    preds = project.store.predictions(ev.id)
    failing = [p.input for p in preds if not p.correct]
    assert failing
    for text in failing[:5]:  # live traffic resembling the failures
        project.store.add(
            RequestLog(
                release_version=1,
                endpoint="/v1/predict",
                status=200,
                input=text + " again",
                output=json.dumps({"label": "ham"}),
            )
        )
    a = analyze(project, ev.name, train_rows=True)
    assert {s.by for s in a.slices} >= {"label", "length (words)"}
    assert a.clusters and a.clusters[0].kind == "confusion" and a.clusters[0].exemplars
    assert sum(c.n for c in a.clusters) == len(failing)
    assert a.plan and (a.path / "index.html").exists() and (a.path / "slices.png").exists()
    out = tmp_path / "to_label.jsonl"
    counts = export_for_labelling(project, a, out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert counts.get("live traffic", 0) >= 1 and len(rows) == sum(counts.values())
    gold_inputs = {p.input for p in preds}
    assert not any(r.get("text") in gold_inputs for r in rows)  # gold never goes back into training
    assert main(["data", "import", str(out), "-p", str(project.root)]) == 0  # importable as is


def _eval_project(tmp_path: Path, tiny_model: Path, task: dict, rows: list[dict]):
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from tests.conftest import write_project

    root = write_project(
        tmp_path / task["type"], tiny_model, rows, task=task, eval={"mode": "generate", "max_new_tokens": 6}
    )
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    return p


def test_extraction_failures_cluster_by_error_type(tmp_path: Path, tiny_model: Path) -> None:
    import random

    rng = random.Random(0)
    words = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
    ]
    rows = [
        {"text": f"order from {a} on day {d} amount {n} {b} {c}", "output": {"name": a, "amount": n}}
        for a, b, c, d, n in (
            (rng.choice(words), rng.choice(words), rng.choice(words), i, rng.randint(1, 999)) for i in range(60)
        )
    ]
    p = _eval_project(tmp_path, tiny_model, {"type": "extraction", "fields": ["name", "amount"], "labels": None}, rows)
    p.manifest.eval.constrain = "off"  # free answers: the random model writes invalid JSON too
    ev = evaluate(p, "base")
    assert "micro_f1" in ev.metrics["ci"] and "schema_pass_rate" in ev.metrics
    a = analyze(p, ev.name)
    kinds = {c.kind for c in a.clusters}
    assert kinds == {"error type"} and any(c.title == "invalid JSON" for c in a.clusters)
    p.close()


def test_generation_failures_cluster_by_embedding(tmp_path: Path, tiny_model: Path) -> None:
    import numpy as np

    from slmloop.evaluate.results import row_scores

    topics = [
        "book a hotel room in paris for two nights",
        "refund my train ticket from monday",
        "what is the weather in rome tomorrow",
        "reset my bank card pin code please",
    ]
    rows = [
        {"input": f"{t} request {i}", "output": f"answer {i}"} for i in range(40) for t in topics[i % 4 : i % 4 + 1]
    ]
    p = _eval_project(tmp_path, tiny_model, {"type": "generation", "labels": None}, rows)
    ev = evaluate(p, "base")
    assert {"exact_match", "rouge_l"} <= set(ev.metrics["ci"]) and "bleu" in ev.metrics and "chrf" in ev.metrics
    a = analyze(p, ev.name)
    assert a.clusters and {c.kind for c in a.clusters} == {"embedding"}
    # a generator's failures: the worst quarter of the gold rows by chrF (several wordings can be right)
    chrf = row_scores(p, ev).arrays["chrf"]
    assert sorted(a.failing) == [i for i, x in enumerate(chrf) if x <= np.quantile(chrf, 0.25)]
    assert sum(c.n for c in a.clusters) == len(a.failing) >= 1
    assert all(c.exemplars for c in a.clusters)
    p.close()
