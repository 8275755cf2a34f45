"""A user's edits to their data take effect, through the CLI: corrections win, removals remove, conflicts
are refused with both lines named, imports can be dropped and restored, and prepare says what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmloop.cli import main
from slmloop.data.versions import load_dataset
from slmloop.project import open_project
from slmloop.store import Event, Import
from tests.conftest import write_project
from tests.tiny import toy_rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "p", "unused", toy_rows(60))
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    return root


def _where(root: Path, text: str) -> list[tuple[str, str]]:
    """(split, label) of every row with this text in the current dataset version."""
    p = open_project(root)
    splits = load_dataset(p)
    p.close()
    return [
        (name, r["label"])
        for name, rows in (("train", splits.train), ("validation", splits.validation), ("gold", splits.gold))
        for r in rows
        if r["text"] == text
    ]


def _training_row(root: Path) -> dict:
    p = open_project(root)
    row = load_dataset(p).train[0]
    p.close()
    return {"text": row["text"], "label": row["label"]}


def _said(capsys) -> str:
    """What the CLI printed, with line wrapping undone."""
    return " ".join(capsys.readouterr().out.split())


def _other(label: str) -> str:
    return "spam" if label == "ham" else "ham"


def test_a_relabel_imported_later_wins_and_prepare_says_so(project: Path, tmp_path: Path, capsys) -> None:
    row = _training_row(project)
    fixed = _write(tmp_path / "fixed.jsonl", [{"text": row["text"], "label": _other(row["label"])}])
    capsys.readouterr()
    assert main(["data", "import", str(fixed), "-p", str(project)]) == 0
    assert main(["data", "prepare", "-p", str(project)]) == 0
    shown = _said(capsys)
    assert "created" in shown and "1 relabelled" in shown and "rejected: corrected" in shown
    assert _where(project, row["text"]) == [("train", _other(row["label"]))]
    assert main(["data", "rejects", "-p", str(project)]) == 0
    listed = capsys.readouterr().out
    assert "corrected" in listed and "fixed.jsonl:1" in listed
    assert main(["data", "diff", "-p", str(project)]) == 0
    diff = capsys.readouterr().out
    assert "relabelled (1)" in diff and f"{row['label']}" in diff and _other(row["label"]) in diff


def test_a_row_deleted_from_its_source_leaves_the_data(project: Path, capsys) -> None:
    source = project / "data" / "train.jsonl"
    lines = source.read_text().splitlines(keepends=True)
    row = _training_row(project)
    kept = [line for line in lines if json.loads(line)["text"] != row["text"]]
    assert len(kept) == len(lines) - 1
    source.write_text("".join(kept))
    capsys.readouterr()
    assert main(["data", "import", "-p", str(project)]) == 0
    assert "replaces imp-" in capsys.readouterr().out
    assert main(["data", "prepare", "-p", str(project)]) == 0
    shown = _said(capsys)
    assert "1 removed" in shown and "superseded by" in shown
    assert _where(project, row["text"]) == []
    p = open_project(project)
    imports = p.store.list(Import, Import.created_at)
    assert [i.active for i in imports] == [False, True] and imports[0].state_note == f"superseded by {imports[1].id}"
    assert p.store.events("data.supersede")[0].subject == imports[0].id
    p.close()


def test_a_changed_answer_in_the_same_file_is_taken_when_the_file_is_imported_again(project: Path) -> None:
    source = project / "data" / "train.jsonl"
    row = _training_row(project)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    for r in rows:
        if r["text"] == row["text"]:
            r["label"] = _other(row["label"])
    _write(source, rows)
    assert main(["data", "import", "-p", str(project)]) == 0
    assert main(["data", "prepare", "-p", str(project)]) == 0
    assert _where(project, row["text"]) == [("train", _other(row["label"]))]


def test_two_answers_in_one_import_are_a_conflict_naming_both_lines(tmp_path: Path, capsys) -> None:
    rows = toy_rows(60)
    rows.append({"text": rows[5]["text"], "label": _other(rows[5]["label"])})  # line 61 answers line 6's input
    root = write_project(tmp_path / "p", "unused", rows)
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    capsys.readouterr()
    assert _where(root, rows[5]["text"]) == []
    p = open_project(root)
    rejects = p.objects.read_jsonl(load_dataset(p).version.rejects_object)
    p.close()
    conflicts = [r for r in rejects if r["reason"] == "conflict"]
    assert sorted(r["line"] for r in conflicts) == [6, 61]
    assert all("train.jsonl:6" in r["detail"] and "train.jsonl:61" in r["detail"] for r in conflicts)


def test_a_later_import_settles_a_conflict(tmp_path: Path) -> None:
    rows = toy_rows(60)
    rows.append({"text": rows[5]["text"], "label": _other(rows[5]["label"])})
    root = write_project(tmp_path / "p", "unused", rows)
    assert main(["data", "import", "-p", str(root)]) == 0
    fix = _write(tmp_path / "fix.jsonl", [{"text": rows[5]["text"], "label": rows[5]["label"]}])
    assert main(["data", "import", str(fix), "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    (where,) = _where(root, rows[5]["text"])
    assert where[1] == rows[5]["label"]


def test_drop_and_restore_an_import_by_id_audited(project: Path, tmp_path: Path, capsys) -> None:
    row = _training_row(project)
    fixed = _write(tmp_path / "fixed.jsonl", [{"text": row["text"], "label": _other(row["label"])}])
    assert main(["data", "import", str(fixed), "-p", str(project)]) == 0
    assert main(["data", "prepare", "-p", str(project)]) == 0
    p = open_project(project)
    _, corrected = p.store.list(Import, Import.created_at)
    versions = [e.subject for e in reversed(p.store.events("data.prepare"))]
    p.close()
    capsys.readouterr()
    assert main(["data", "drop", corrected.id, "--note", "wrong file", "-p", str(project)]) == 0
    assert main(["data", "prepare", "-p", str(project)]) == 0
    shown = _said(capsys)
    # the rows come out as the first version again: prepare says so, and names the import it left out and why
    assert f"{versions[0]} (unchanged" in shown and "earlier version, current again" in shown
    assert "dropped: wrong file" in shown
    assert _where(project, row["text"]) == [("train", row["label"])]
    assert main(["data", "restore", corrected.id, "-p", str(project)]) == 0
    assert main(["data", "prepare", "-p", str(project)]) == 0
    assert _where(project, row["text"]) == [("train", _other(row["label"]))]
    p = open_project(project)
    kinds = [e.kind for e in reversed(p.store.events()) if e.subject == corrected.id]
    assert kinds == ["data.import", "data.drop", "data.restore"]
    assert p.store.events("data.drop")[0].payload["note"] == "wrong file"
    p.close()
    assert main(["data", "drop", "imp-nothere", "-p", str(project)]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_importing_old_bytes_again_makes_that_import_active_again(project: Path) -> None:
    source = project / "data" / "train.jsonl"
    original = source.read_text()
    source.write_text("".join(original.splitlines(keepends=True)[:-5]))
    assert main(["data", "import", "-p", str(project)]) == 0
    source.write_text(original)
    assert main(["data", "import", "-p", str(project)]) == 0
    p = open_project(project)
    first, second = p.store.list(Import, Import.created_at)
    assert first.active and not second.active and second.state_note == f"superseded by {first.id}"
    assert first.seq > second.seq
    p.close()


def test_every_row_of_every_import_is_placed_and_the_warning_counts_what_the_table_counts(
    project: Path, tmp_path: Path
) -> None:
    p = open_project(project)
    gold = load_dataset(p).gold
    p.close()
    # near copies of gold inputs (one word changed) from a second source: leaks, counted alike everywhere
    near = [{"text": g["text"] + " ok", "label": _other(g["label"])} for g in gold[:5]]
    _write(tmp_path / "near.jsonl", near)
    assert main(["data", "import", str(tmp_path / "near.jsonl"), "-p", str(project)]) == 0
    from slmloop.data.prepare import prepare_dataset

    p = open_project(project)
    done = prepare_dataset(p)
    p.close()
    c = done.counts
    assert c["train"] + c["validation"] + c["gold"] + sum(c["rejected"].values()) == c["rows_in"] == 65
    assert c["gold"] == len(gold)  # the frozen gold rows' own source rows, not leaks
    for entry in done.imports:
        placed = entry["train"] + entry["validation"] + entry["gold"] + sum(entry["rejected"].values())
        assert placed == entry["rows"]
    (warning,) = [w for w in c["warnings"] if "copies of gold rows" in w]
    assert warning.startswith(f"{c['rejected']['leaks_gold']} of ")


def test_near_inputs_with_other_answers_are_not_duplicates(tmp_path: Path) -> None:
    base = "please confirm the delivery address for order number one two three before friday"
    rows = [*toy_rows(60), {"text": base, "label": "ham"}, {"text": base + " now", "label": "spam"}]
    rows.append({"text": base + " please", "label": "ham"})  # the same answer: a near copy
    root = write_project(tmp_path / "p", "unused", rows)
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    p = open_project(root)
    rejects = p.objects.read_jsonl(load_dataset(p).version.rejects_object)
    p.close()
    near = [(r["raw"], r["of"]["text"]) for r in rejects if r["reason"] == "duplicate_near"]
    assert near == [(base + " please", base)]


def test_a_store_of_schema_2_gains_the_import_order_and_evaluation_data(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from slmloop.store import Store

    url = f"sqlite:///{tmp_path / 'v2.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"))
        c.execute(text("INSERT INTO meta VALUES ('schema_version', '2')"))
        c.execute(
            text(
                "CREATE TABLE imports (id VARCHAR(32) PRIMARY KEY, created_at DATETIME, source_path TEXT, "
                "source_sha256 VARCHAR(64), format VARCHAR(16), rows_read INTEGER, accepted INTEGER, rejected INTEGER, "
                "accepted_object VARCHAR(64), rejects_object VARCHAR(64), reasons JSON, mapping JSON, active BOOLEAN)"
            )
        )
        c.execute(
            text(
                "INSERT INTO imports VALUES ('imp-old', '2026-01-01 00:00:00', '/x.jsonl', 'h', 'jsonl', 1, 1, 0, "
                "'a', 'b', '{}', '{}', 1)"
            )
        )
    engine.dispose()
    store = Store(url)
    (row,) = store.list(Import)
    assert (row.id, row.seq, row.state_note, row.active) == ("imp-old", 0, "", True)
    assert store.get_meta("schema_version") == "3"
    assert isinstance(store.events(), list) and not [e for e in store.events() if isinstance(e, Event) and e.kind]
    store.close()
