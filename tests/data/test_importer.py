from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmloop.data.importer import import_source
from slmloop.errors import DataError
from slmloop.manifest import SourceConfig
from slmloop.project import open_project
from tests.conftest import write_project
from tests.tiny import toy_rows


@pytest.fixture
def project(tmp_path: Path):
    p = open_project(write_project(tmp_path / "p", "unused-model", toy_rows(10)))
    yield p
    p.close()


def _accounting(res) -> None:
    rec = res.record
    assert rec.accepted + rec.rejected == rec.rows_read
    assert len(res.rejects) == rec.rejected


def test_csv_with_malformed_missing_and_undecodable_rows(project, tmp_path: Path) -> None:
    f = tmp_path / "mixed.csv"
    f.write_bytes(
        b"text,label\n"
        b"hello there,ham\n"  # line 2 ok
        b'"broken "quote,spam\n'  # line 3 malformed quoting
        b"only one field\n"  # line 4 missing a column
        b"caf\xe9 latin-1 bytes,ham\n"  # line 5 not UTF-8
        b"win a prize,spam\n"  # line 6 ok
        b",ham\n"  # line 7 empty input
        b"fine,unknown\n"  # line 8 label not in schema
    )
    res = import_source(project, SourceConfig(path=str(f)))
    _accounting(res)
    by_line = {r["line"]: r["reason"] for r in res.rejects}
    assert by_line == {
        3: "bad_csv",
        4: "wrong_field_count",
        5: "decode_error",
        7: "empty_input",
        8: "label_not_in_schema",
    }
    assert res.record.accepted == 2
    assert res.record.rows_read == 7


def test_latin1_override_accepts_the_row(project, tmp_path: Path) -> None:
    f = tmp_path / "latin.csv"
    f.write_bytes(b"text,label\ncaf\xe9 ok,ham\n")
    res = import_source(project, SourceConfig(path=str(f), encoding="latin-1"))
    assert res.record.accepted == 1
    rows = project.objects.read_jsonl(res.record.accepted_object)
    assert rows[0]["text"] == "café ok"


def test_jsonl_bad_json_non_object_and_missing_field(project, tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text(
        json.dumps({"text": "a", "label": "ham"})
        + "\n"
        + "{not json\n"
        + "\n"
        + "[1, 2]\n"
        + json.dumps({"text": "b"})
        + "\n"
        + json.dumps({"message": "c", "label": "SPAM"})
        + "\n",
        encoding="utf-8",
    )
    res = import_source(project, SourceConfig(path=str(f)))
    _accounting(res)
    assert {r["line"]: r["reason"] for r in res.rejects} == {
        2: "bad_json",
        4: "not_an_object",
        5: "missing_field",
        6: "missing_field",
    }
    assert res.blank_lines == 1
    mapped = import_source(project, SourceConfig(path=str(f), fields={"text": "message"}))
    rows = project.objects.read_jsonl(mapped.record.accepted_object)
    assert [r["label"] for r in rows] == ["spam"]  # case-insensitive label mapped to the schema's spelling


def test_headerless_tsv_without_quoting(project, tmp_path: Path) -> None:
    f = tmp_path / "sms.tsv"
    f.write_text('ham\tHe said "hi\nspam\tWIN "big" now\n', encoding="utf-8")
    src = SourceConfig(path=str(f), header=False, columns=["label", "text"], quoting=False)
    res = import_source(project, src)
    assert res.record.accepted == 2
    rows = project.objects.read_jsonl(res.record.accepted_object)
    assert rows[0]["text"] == 'He said "hi'
    assert rows[0]["_src"]["line"] == 1 and rows[1]["_src"]["line"] == 2


def test_utf8_bom_and_crlf(project, tmp_path: Path) -> None:
    f = tmp_path / "bom.csv"
    f.write_bytes(b"\xef\xbb\xbftext,label\r\nhi there,ham\r\n")
    res = import_source(project, SourceConfig(path=str(f)))
    assert res.record.accepted == 1


def test_reimport_is_idempotent(project, tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "a", "label": "ham"}) + "\n")
    first = import_source(project, SourceConfig(path=str(f)))
    second = import_source(project, SourceConfig(path=str(f)))
    assert not first.reused and second.reused
    assert first.record.id == second.record.id


def test_folder_source_reads_every_file(project, tmp_path: Path) -> None:
    d = tmp_path / "folder"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"text": "a", "label": "ham"}) + "\n")
    (d / "b.csv").write_text("text,label\nb,spam\n")
    res = import_source(project, SourceConfig(path=str(d)))
    assert res.record.accepted == 2


def test_unknown_suffix_and_missing_file_are_clear_errors(project, tmp_path: Path) -> None:
    (tmp_path / "data.xyz").write_text("x")
    with pytest.raises(DataError, match="format"):
        import_source(project, SourceConfig(path=str(tmp_path / "data.xyz")))
    with pytest.raises(DataError, match="does not exist"):
        import_source(project, SourceConfig(path=str(tmp_path / "nope.csv")))


def test_json_nested_too_deep_is_a_rejected_row_not_an_aborted_import(project, tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    deep = '{"text": "x", "label": "ham", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"  # past the parser's limit
    nested = {"text": "y", "label": "ham", "meta": 0}
    for _ in range(100):  # the parser reads it; every later json.dumps would recurse 100 levels
        nested["meta"] = [nested["meta"]]
    f.write_text(
        json.dumps({"text": "a", "label": "ham"})
        + "\n"
        + deep
        + "\n"
        + json.dumps(nested)
        + "\n"
        + json.dumps({"text": "b", "label": "spam"})
        + "\n",
        encoding="utf-8",
    )
    res = import_source(project, SourceConfig(path=str(f)))
    _accounting(res)
    assert {r["line"]: r["reason"] for r in res.rejects} == {2: "bad_json", 3: "bad_json"}
    assert all("levels deep" in r["detail"] for r in res.rejects)
    assert [r["text"] for r in project.objects.read_jsonl(res.record.accepted_object)] == ["a", "b"]
