"""Real tasks at real size, on hand-built cases: leakage subsets, gold files, schemas, auto labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from slmloop.evaluate.evaluate import neighbour_subsets
from slmloop.evaluate.scoring import score_answers
from slmloop.manifest import EvalConfig, TaskConfig
from tests.conftest import write_project
from tests.tiny import toy_rows

CLS = TaskConfig(type="classification", labels=["a", "b"])


def test_neighbour_subsets_by_hand() -> None:
    rows = [{"text": str(i), "label": lab} for i, lab in enumerate("aabbab")]
    preds = ["a", "a", "b", "a", "b", "a"]  # right, right, right, wrong, wrong, wrong
    sims = np.array([0.95, 0.20, 0.91, 0.50, 0.99, 0.10])  # rows 0, 2, 4 have a close training neighbour
    out = neighbour_subsets(score_answers(CLS, rows, preds), sims, 0.9, ["accuracy"], EvalConfig(bootstrap=200))
    assert out["close_share"] == pytest.approx(0.5)
    close, clear = out["close_neighbour"], out["no_close_neighbour"]
    assert (close["n"], clear["n"]) == (3, 3)
    assert close["accuracy"] == pytest.approx(2 / 3) and clear["accuracy"] == pytest.approx(1 / 3)
    for part in (close, clear):
        lo, hi = part["ci"]["accuracy"]
        assert 0.0 <= lo <= part["accuracy"] <= hi <= 1.0 and hi - lo > 0
    everyone = neighbour_subsets(score_answers(CLS, rows, preds), np.ones(6), 0.9, ["accuracy"], EvalConfig())
    assert everyone["no_close_neighbour"] == {"n": 0, "ci": {}} and everyone["close_neighbour"]["n"] == 6


def test_a_gold_file_with_a_duplicate_and_a_broken_row_is_fully_accounted(tmp_path: Path, tiny_model: Path) -> None:
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.project import open_project

    gold_lines = [
        json.dumps({"text": "see you at the library tomorrow", "label": "ham"}),
        json.dumps({"text": "WIN a free prize now, call 12345", "label": "spam"}),
        '{"text": "broken json line", "label": ',
        json.dumps({"text": "  See you at the   library TOMORROW ", "label": "ham"}),  # the first row again
        json.dumps({"text": "lunch at home", "label": "maybe"}),  # not a label
        json.dumps({"text": "meeting moved to the office", "label": "ham"}),
    ]
    root = write_project(tmp_path / "p", tiny_model, toy_rows(120), data={"gold": {"path": "data/gold.jsonl"}})
    (root / "data" / "gold.jsonl").write_text("\n".join(gold_lines) + "\n")
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    splits = prepare_dataset(p).splits
    g = splits.version.counts["gold_file"]
    assert g["rows_read"] == 6 and g["accepted"] == 3 == len(splits.gold)
    assert g["rejected"] == {"bad_json": 1, "duplicate_exact": 1, "label_not_in_schema": 1}
    rejects = {r["line"]: r for r in p.objects.read_jsonl(splits.version.rejects_object) if r.get("split")}
    assert set(rejects) == {3, 4, 5}
    assert "same input and answer as line 1" in rejects[4]["detail"]
    # no gold split is taken from the sources: every source row is train, validation or rejected
    c = splits.version.counts
    assert c["gold"] == 0 and c["train"] + c["validation"] + sum(c["rejected"].values()) == 120
    p.close()


def test_labels_auto_come_from_the_data_and_are_recorded(tmp_path: Path, tiny_model: Path) -> None:
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.project import open_project

    rows = [{"text": f"{w} number {i}", "label": w} for i in range(30) for w in ("red", "green", "blue")]
    root = write_project(tmp_path / "p", tiny_model, rows)
    manifest = yaml.safe_load((root / "slmloop.yaml").read_text())
    manifest["task"]["labels"] = "auto"
    (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest))
    p = open_project(root)
    with pytest.raises(Exception, match="auto"):
        _ = p.task  # nothing prepared yet: a clear error, not an empty label list
    import_source(p, p.manifest.data.sources[0])
    splits = prepare_dataset(p).splits
    assert p.task.labels == ["blue", "green", "red"] == splits.version.config["task"]["labels"]
    p.close()


@pytest.mark.integration
def test_preflight_refuses_a_run_that_would_cut_answers(tmp_path: Path, tiny_model: Path, capsys) -> None:
    from slmloop.cli import main

    long_answer = " ".join(["see you at the station tomorrow"] * 8)  # ~50 tokens of answer
    rows = [
        {"input": r["text"], "output": long_answer if i % 20 == 0 else r["label"]} for i, r in enumerate(toy_rows(120))
    ]
    root = write_project(
        tmp_path / "p",
        tiny_model,
        rows,
        task={"type": "generation", "instruction": "Answer.", "labels": None},
        model={"max_length": 40},
    )
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    capsys.readouterr()
    assert main(["train", "--dry-run", "-p", str(root)]) == 1  # the forecast shows the cut answers
    assert "answers cut" in capsys.readouterr().out
    assert main(["train", "-p", str(root)]) == 1
    err = capsys.readouterr().err
    assert "do not fit model.max_length with their whole answer" in err and "model.max_length to at least" in err
    assert main(["train", "--max-length", "80", "--max-steps", "2", "-p", str(root)]) == 0


def test_a_gate_on_an_extraction_pack_with_a_json_schema_judges_the_schema_aware_rate(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Every answer has only known keys (the plain schema check passes), but every third one writes the
    amount as a string, which the pack's JSON schema forbids: the gate must judge the schema-aware rate."""
    import httpx

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.data.versions import current_gold_rows
    from slmloop.evaluate.evaluate import evaluate, failed_gates
    from slmloop.project import open_project

    rows = [{"text": f"Client{i} paid {i} pounds", "output": {"name": f"Client{i}", "amount": i}} for i in range(60)]
    task = {"type": "extraction", "instruction": "Extract the payment.", "labels": None, "fields": ["name", "amount"]}
    p = open_project(write_project(tmp_path / "p", tiny_model, rows, task=task))
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)

    def handler(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][-1]["content"]
        i = int(text.split()[2])
        answer = {"name": f"Client{i}", "amount": str(i) if i % 3 == 0 else i}
        return httpx.Response(200, json={"choices": [{"message": {"content": json.dumps(answer)}}]})

    _, gold = current_gold_rows(p)
    expected = sum(r["output"]["amount"] % 3 != 0 for r in gold) / len(gold)
    assert 0 < expected < 1
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "amount": {"type": "integer"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    threshold = (expected + 1) / 2  # the schema-less rate (1.0) would pass it, the schema-aware one fails
    pack = EvalConfig(
        endpoints={"api": {"url": "https://api.example/v1", "model": "m"}},
        checks={"json_schema": schema},
        gates=[{"metric": "schema_pass_rate", "threshold": threshold, "significant": False, "required": True}],
        compare={"baseline": "none"},
    )
    ev = evaluate(p, "endpoint:api", pack=pack, transport=httpx.MockTransport(handler))
    assert ev.metrics["schema_pass_rate"] == pytest.approx(expected)
    lo, hi = ev.metrics["ci"]["schema_pass_rate"]
    assert lo < expected < hi  # the interval is of the same, schema-aware, number
    gate = ev.metrics["gates"][0]
    assert gate["value"] == pytest.approx(expected) and gate["passed"] is False and failed_gates(ev)
    # without the schema, every answer passes the keys check and the same gate passes
    plain = pack.model_copy(update={"checks": EvalConfig().checks})
    ev2 = evaluate(p, "endpoint:api", pack=plain, transport=httpx.MockTransport(handler))
    assert ev2.metrics["schema_pass_rate"] == pytest.approx(1.0) and ev2.metrics["gates"][0]["passed"] is True
