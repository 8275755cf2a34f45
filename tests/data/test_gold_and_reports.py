"""Gold versions through the CLI, dataset diffs and the data report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmloop.cli import main
from slmloop.data.report import diff_datasets, write_data_report
from slmloop.data.versions import current_gold, load_dataset
from slmloop.project import open_project
from tests.conftest import write_project
from tests.tiny import toy_rows


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "p", "unused", toy_rows(150))
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    return root


def test_gold_add_remove_freeze_make_versions_with_history(prepared: Path, tmp_path: Path, capsys) -> None:
    p = open_project(prepared)
    first = current_gold(p)
    extra = tmp_path / "more_gold.jsonl"
    extra.write_text(
        json.dumps({"text": "a brand new curated gold example", "label": "ham"})
        + "\n"
        + json.dumps({"text": first and "x", "label": "nope"})
        + "\n"
    )
    assert main(["gold", "add", str(extra), "-p", str(prepared)]) == 0
    assert "1 row(s) added" in capsys.readouterr().out
    second = current_gold(p)
    assert second.id != first.id and second.parent_id == first.id and second.rows == first.rows + 1

    assert main(["gold", "remove", "0", "1", "-p", str(prepared)]) == 0
    third = current_gold(p)
    assert third.rows == second.rows - 2 and third.parent_id == second.id
    assert main(["gold", "remove", "9999", "-p", str(prepared)]) == 1
    assert "do not exist" in capsys.readouterr().err

    curated = tmp_path / "curated.jsonl"
    curated.write_text("".join(json.dumps(r) + "\n" for r in toy_rows(20, seed=42)))
    assert main(["gold", "freeze", str(curated), "-p", str(prepared)]) == 0
    assert current_gold(p).rows == 20
    assert main(["gold", "list", "-p", str(prepared)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("gold-") >= 4 and "→" in listing
    kinds = [e.kind for e in p.store.events(kind="gold.freeze")]
    assert len(kinds) == 4  # first freeze + add + remove + freeze
    # going back to an earlier gold content makes that version current again
    from slmloop.data.gold import gold_replace

    gold_replace(p, p.objects.read_jsonl(first.object))
    assert current_gold(p).id == first.id
    p.close()


def test_diff_reports_added_removed_changed_and_labels(tmp_path: Path) -> None:
    rows = toy_rows(150)
    root = write_project(tmp_path / "p", "unused", rows)
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    p = open_project(root)
    v1 = load_dataset(p).version.id
    train_row = load_dataset(p).train[0]
    flipped = dict(train_row, label="spam" if train_row["label"] == "ham" else "ham")
    flipped.pop("_src", None)
    new_rows = [r for r in rows if r["text"] != train_row["text"]] + [flipped] + toy_rows(10, seed=77)
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new_rows))
    assert main(["data", "import", "-p", str(root)]) == 0  # the same path again: it supersedes the old import
    assert main(["data", "prepare", "-p", str(root)]) == 0
    v2 = load_dataset(p).version.id
    d = diff_datasets(p, v1, v2)
    assert [(x["input"], x["old"], x["new"]) for x in d.relabelled] == [
        (train_row["text"], train_row["label"], flipped["label"])
    ]
    assert len(d.added) == 10 and d.counts("gold")["removed"] == 0
    assert set(d.labels["train"]) == {"ham", "spam"}
    assert diff_datasets(p).relabelled == d.relabelled  # by default: the current version against the one before
    p.close()


def test_data_report_writes_plots_and_html(prepared: Path, capsys) -> None:
    p = open_project(prepared)
    folder, summary = write_data_report(p)
    assert (folder / "data.png").stat().st_size > 10_000
    html = (folder / "index.html").read_text()
    assert "Where every row went" in html and "Duplicate clusters" in html
    assert summary["lengths"]["unit"] == "words"  # "unused" model: the report falls back to words
    assert main(["data", "report", "-p", str(prepared)]) == 0
    assert "report:" in capsys.readouterr().out
    p.close()
