"""The leakage gate: paraphrases of gold rows planted in training data block `slmloop train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmloop.cli import main
from slmloop.data.dedupe import Signatures, find_near_duplicates, nearest_matches
from slmloop.data.leakage import gold_leaks
from slmloop.manifest import LeakageConfig
from slmloop.project import open_project
from slmloop.store import Run
from tests.conftest import write_project
from tests.tiny import toy_rows

PLANTED = [  # (row that is in the training data, paraphrase that later enters gold)
    (
        "The meeting has been moved to Thursday afternoon because the manager is travelling.",
        "Because the manager is travelling, the meeting has been moved to Thursday afternoon.",
    ),
    (
        "Your parcel is waiting at the post office, bring your ID to collect it.",
        "Bring your ID to the post office to collect your parcel, it is waiting there.",
    ),
    (
        "Congratulations, you have won a free cruise! Call now to claim your prize.",
        "You have won a free cruise, congratulations! Claim your prize by calling now.",
    ),
]


def test_near_duplicate_clusters_by_hand() -> None:
    texts = [
        "the cat sat on the mat today",
        "the cat sat on the mat today!",
        "a completely different line",
        "the cat sat on the mat today!!",
    ]
    near = find_near_duplicates(Signatures(texts), 0.8)
    assert near.representative == [0, 0, 2, 0]  # stars around the first row, no chaining
    matches = nearest_matches(Signatures(["the cat sat on a mat today"]), Signatures(texts), 0.5)
    assert matches[0][0] in (0, 1, 3)


def test_gold_leaks_by_kind() -> None:
    gold = ["Please send me the invoice for last month by Friday.", "Completely unrelated gold sentence here."]
    rows = [
        "please send me the invoice for last month by friday.",  # exact after case folding
        "Please send me the invoice for last month by Friday!!",  # near
        "something else entirely about football",
    ]
    found = gold_leaks(rows, gold, LeakageConfig(semantic="off"))
    assert found[0][1] == "exact" and found[1][1] == "near" and 2 not in found


def test_semantic_check_uses_cosine_of_embeddings() -> None:
    import numpy as np

    vectors = {"gold one": [1.0, 0.0], "para of one": [0.95, 0.312], "far away": [0.0, 1.0]}

    def embed(texts: list[str]) -> np.ndarray:
        v = np.array([vectors[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    found = gold_leaks(
        ["para of one", "far away"], ["gold one"], LeakageConfig(semantic="block", semantic_threshold=0.9), embed
    )
    assert found == {0: (0, "semantic", pytest.approx(0.95, abs=1e-3))}


@pytest.mark.integration
def test_train_refuses_planted_paraphrases_and_records_the_override(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = toy_rows(120) + [{"text": a, "label": "ham"} for a, _ in PLANTED]
    # paraphrases block only when asked to (by default they are measured and reported)
    root = write_project(
        tmp_path / "p", tiny_model, rows, train={"max_steps": 2}, data={"leakage": {"semantic": "block"}}
    )
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    p = open_project(root)
    from slmloop.data.versions import load_dataset

    in_train = {r["text"] for r in load_dataset(p).train + load_dataset(p).validation}
    planted_in_train = [a for a, _ in PLANTED if a in in_train]
    assert planted_in_train  # at least one planted row landed in train/validation
    paraphrases = tmp_path / "gold_more.jsonl"
    paraphrases.write_text(
        "".join(json.dumps({"text": b, "label": "ham"}) + "\n" for a, b in PLANTED if a in planted_in_train)
    )
    assert main(["gold", "add", str(paraphrases), "-p", str(root)]) == 0
    capsys.readouterr()

    assert main(["train", "-p", str(root)]) == 1
    err = capsys.readouterr().err
    assert "copy gold rows" in err and ("near" in err or "semantic" in err) and "--allow-leakage" in err
    for a in planted_in_train:
        assert a[:40] in err  # each leaking pair is listed
    assert not p.store.list(Run)

    assert main(["train", "--allow-leakage", "-p", str(root)]) == 0
    run = p.store.list(Run)[-1]
    assert run.status == "completed"
    assert run.config["leakage"]["overridden"] is True
    assert run.config["leakage"]["leaks"] == len(planted_in_train)
    assert any(e.kind == "leakage.override" for e in p.store.events())
    meta = json.loads((p.locate(run.path) / "run.json").read_text())
    assert meta["leakage"]["overridden"] is True
    # after a fresh prepare the training data keeps clear of the new gold rows: no override needed
    assert main(["data", "prepare", "-p", str(root)]) == 0
    assert main(["train", "-p", str(root)]) == 0
    p.close()
