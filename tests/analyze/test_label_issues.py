"""Label issues found out of sample, exported with the given and the suggested label, and corrected by importing the
labelled export: the corrections win, and rows a person confirmed are not suggested again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmloop.analyze.label_issues import confident_learning, label_suspects
from slmloop.cli import main
from slmloop.data.versions import load_dataset
from slmloop.project import open_project
from tests.conftest import write_project
from tests.tiny import toy_rows


@pytest.fixture
def noisy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A toy project whose training file has 12 of 240 labels flipped; returns it and the clean label of each text."""
    rows = toy_rows(240, seed=3)
    clean = {r["text"]: r["label"] for r in rows}
    flipped = list(range(5, 240, 20))
    for i in flipped:
        rows[i] = {**rows[i], "label": "ham" if rows[i]["label"] == "spam" else "spam"}
    root = write_project(tmp_path / "p", "unused", rows)
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    return root, clean


def test_suspects_are_the_flipped_rows_scored_by_models_that_did_not_see_them(noisy) -> None:
    root, clean = noisy
    p = open_project(root)
    data = load_dataset(p)
    wrong = {r["text"] for r in data.train + data.validation if r["label"] != clean[r["text"]]}
    suspects = label_suspects(p)
    p.close()
    top = suspects[: len(wrong)]
    assert sum(s.text in wrong for s in top) >= len(wrong) - 2  # the flips lead the ranking
    assert all(s.suggested == clean[s.text] for s in top if s.text in wrong)
    assert [s.margin for s in suspects] == sorted((s.margin for s in suspects), reverse=True)


def test_the_labelled_export_corrects_the_rows_and_reviewed_rows_are_not_asked_again(noisy, tmp_path, capsys) -> None:
    root, clean = noisy
    p = open_project(root)
    data = load_dataset(p)
    p.close()
    wrong = {r["text"] for r in data.train + data.validation if r["label"] != clean[r["text"]]}
    assert len(wrong) >= 6  # the rest of the 12 flips went to gold
    assert main(["eval", "--model", "baseline:tfidf-lr", "-p", str(root)]) == 0
    export = tmp_path / "round1.jsonl"
    code = main(["analyze", "eval-1", "--train", "--export", str(export), "--limit", "20", "-p", str(root)])
    assert code == 0
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    suspects = [r for r in rows if "suggested_label" in r]
    assert len(wrong) <= len(suspects) <= 20 and len(wrong & {r["text"] for r in suspects}) >= len(wrong) - 1
    assert all(r["label"] == r["given_label"] and r["reviewed"] is False for r in suspects)
    for r in rows:  # the person: the right label, and confirmed
        r["label"], r["reviewed"] = clean.get(r["text"], r["label"]), True
    export.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "import", str(export), "-p", str(root)]) == 0
    capsys.readouterr()
    assert main(["data", "prepare", "-p", str(root)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    p = open_project(root)
    data = load_dataset(p)
    still_wrong = [r["text"] for r in data.train + data.validation if r["label"] != clean[r["text"]]]
    fixed = sum(1 for r in suspects if r["given_label"] != clean[r["text"]])
    assert f"{fixed} relabelled" in shown and fixed >= len(wrong) - 1
    assert len(still_wrong) == len(wrong) - fixed
    # every row a person reviewed is left out of the next round's suspects
    again = {s.text for s in label_suspects(p)}
    assert not again & {r["text"] for r in rows}
    p.close()
    # exporting over an imported file would replace that import and lose its corrections: refused
    assert main(["analyze", "eval-1", "--train", "--export", str(export), "-p", str(root)]) != 0
    assert "source of the active import" in capsys.readouterr().err


def test_confident_learning_ranks_by_margin() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.3, 0.7], [0.45, 0.55]])
    # thresholds: label 0 -> mean(.6, .1) = .35, label 1 -> mean(.7, .55) = .625. Row 1 counts as 1 (.9), row 3 as 0
    # (.45 >= .35 while .55 < .625); rows 0 and 2 as their own labels. Ranked by p(suggested) - p(given).
    found = confident_learning(labels, probs)
    assert [(i, j) for i, j, _ in found] == [(1, 1), (3, 0)]
    assert [m for _, _, m in found] == pytest.approx([0.8, -0.1])
