"""Every source layout the importer accepts, and mapping inspection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmloop.data.importer import import_source
from slmloop.data.inspect import inspect_records
from slmloop.errors import DataError
from slmloop.manifest import SourceConfig, TaskConfig
from slmloop.project import open_project
from tests.conftest import write_project
from tests.tiny import toy_rows

CLS = TaskConfig(type="classification", labels=["ham", "spam"])
GEN = TaskConfig(type="generation")


@pytest.fixture
def project(tmp_path: Path):
    p = open_project(write_project(tmp_path / "p", "unused", toy_rows(4)))
    yield p
    p.close()


def _rows(p, res) -> list[dict]:
    return p.objects.read_jsonl(res.record.accepted_object)


def test_parquet_source(project, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table(
            {"message": ["hi there", "win cash", None], "category": ["ham", "spam", "ham"], "source": ["a", "b", "c"]}
        ),
        f,
    )
    res = import_source(project, SourceConfig(path=str(f), fields={"text": "message", "label": "category"}))
    assert (res.record.accepted, res.record.rejected) == (2, 1)
    assert res.rejects[0]["line"] == 3 and res.rejects[0]["reason"] == "missing_field"
    assert _rows(project, res)[1]["_meta"] == {"source": "b"}  # other columns ride along


def test_hf_save_to_disk_folder(project, tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"text": ["a b c", "d e f"], "label": ["ham", "spam"]}).save_to_disk(str(folder))
    res = import_source(project, SourceConfig(path=str(folder)))
    assert res.record.accepted == 2 and [r["label"] for r in _rows(project, res)] == ["ham", "spam"]


def test_hf_hub_id_offline_is_a_clear_error(project, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as exc:
        import_source(project, SourceConfig(path="no-such-org/no-such-dataset", format="hf"))
    assert "save_to_disk" in (exc.value.hint or "")


def test_openai_chat_jsonl_maps_user_and_assistant(project, tmp_path: Path) -> None:
    f = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Classify."},
                {"role": "user", "content": "win a prize"},
                {"role": "assistant", "content": "spam"},
            ]
        },
        {"messages": [{"role": "user", "content": "no answer here"}]},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = import_source(project, SourceConfig(path=str(f)))
    assert res.inspection is not None and res.inspection.layout == "openai-chat"
    assert _rows(project, res)[0]["text"] == "win a prize" and _rows(project, res)[0]["label"] == "spam"
    assert res.rejects[0]["reason"] == "missing_field"  # the row without an assistant turn


def test_alpaca_layout_for_generation(tmp_path: Path) -> None:
    p = open_project(write_project(tmp_path / "g", "unused", [], task={"type": "generation", "labels": None}))
    f = tmp_path / "alpaca.json"
    f.write_text(
        json.dumps(
            [
                {"instruction": "Translate to French", "input": "cat", "output": "chat"},
                {"instruction": "Say hi", "input": "", "output": "hi"},
            ]
        )
    )
    res = import_source(p, SourceConfig(path=str(f)))
    rows = _rows(p, res)
    assert res.inspection.layout == "alpaca"
    assert rows[0]["input"] == "Translate to French\n\ncat" and rows[0]["output"] == "chat"
    assert rows[1]["input"] == "Say hi"
    p.close()


def test_inspection_proposes_a_mapping_with_reasons() -> None:
    records = [
        {"id": i, "body": f"message number {i} with some longer text", "category": "spam" if i % 2 else "ham"}
        for i in range(50)
    ]
    found = inspect_records(CLS, records)
    assert found.mapping == {"text": "body", "label": "category"}
    label = next(p for p in found.proposals if p.task_field == "label")
    assert label.confidence >= 0.9 and "task labels" in label.reason


def test_low_confidence_mapping_needs_force(project, tmp_path: Path) -> None:
    f = tmp_path / "odd.csv"
    f.write_text("col_a,col_b\nsome free text here that is long enough,x1\nmore free text for the model,x2\n")
    with pytest.raises(DataError) as exc:
        import_source(project, SourceConfig(path=str(f)))
    assert "no confident mapping" in exc.value.message and "--map" in (exc.value.hint or "")
    assert "--force" in (exc.value.hint or "")


def test_confident_inferred_mapping_is_applied_and_recorded(project, tmp_path: Path) -> None:
    f = tmp_path / "named.csv"
    f.write_text("message,category\nhello friend how are you,ham\nwin cash now call,spam\n")
    res = import_source(project, SourceConfig(path=str(f)))
    assert res.record.accepted == 2
    assert res.record.mapping["inferred_mapping"]["text"]["column"] == "message"
