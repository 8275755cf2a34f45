from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from slmloop.data.clean import dedupe_key, normalize_text
from slmloop.data.importer import import_source
from slmloop.data.prepare import load_dataset, prepare_dataset
from slmloop.errors import DataError
from slmloop.manifest import SourceConfig
from slmloop.project import open_project
from tests.conftest import write_project
from tests.tiny import toy_rows


def test_normalize_text() -> None:
    assert normalize_text("  a\u00a0\u00a0b\tc \x07\r\n\n d ") == "a b c\nd"
    assert normalize_text("e\u0301") == "é"  # NFC
    assert dedupe_key("Hello  World") == dedupe_key("hello world")


def _project(tmp_path: Path, rows: list[dict], **split):
    p = open_project(
        write_project(
            tmp_path / "p",
            "unused",
            rows,
            data={
                "sources": [{"path": "data/train.jsonl"}],
                "split": {"validation": 0.1, "gold": 0.2, "seed": 1, **split},
            },
        )
    )
    import_source(p, p.manifest.data.sources[0])
    return p


def test_prepare_accounts_for_every_row_and_stratifies(tmp_path: Path) -> None:
    rows = toy_rows(300)
    rows += [dict(rows[0]), {"text": rows[1]["text"].upper(), "label": rows[1]["label"]}]  # 2 exact dupes
    p = _project(tmp_path, rows)
    splits, reused = prepare_dataset(p)
    c = splits.version.counts
    assert not reused
    assert c["rejected"] == {"duplicate_exact": 2}
    assert c["train"] + c["validation"] + c["gold"] + 2 == c["rows_in"] == 302
    assert c["gold"] == 60 and c["validation"] == 30
    for split in (splits.train, splits.validation, splits.gold):  # spam share ~1/3 everywhere
        share = Counter(r["label"] for r in split)["spam"] / len(split)
        assert 0.28 < share < 0.39
    # no input in two splits
    keys = [{dedupe_key(r["text"]) for r in s} for s in (splits.train, splits.validation, splits.gold)]
    assert not (keys[0] & keys[2]) and not (keys[1] & keys[2]) and not (keys[0] & keys[1])


def test_same_data_same_version_and_gold_stays_frozen(tmp_path: Path) -> None:
    p = _project(tmp_path, toy_rows(200))
    first, _ = prepare_dataset(p)
    again, reused = prepare_dataset(p)
    assert reused and again.version.id == first.version.id
    # new data arrives, including a copy of a gold row: gold must not move, the copy must not train
    gold_text = first.gold[0]["text"]
    extra = tmp_path / "more.jsonl"
    extra.write_text(
        "".join(json.dumps(r) + "\n" for r in [*toy_rows(50, seed=7), {"text": gold_text, "label": "ham"}])
    )
    import_source(p, SourceConfig(path=str(extra)))
    second, reused = prepare_dataset(p)
    assert not reused
    assert second.version.gold_id == first.version.gold_id
    rejected = second.version.counts["rejected"]
    assert rejected["in_gold"] == len(first.gold)  # the gold rows themselves never re-enter training
    assert rejected["duplicate_exact"] >= 1  # the copy of a gold row
    assert gold_text not in {r["text"] for r in second.train + second.validation}
    assert load_dataset(p).version.id == second.version.id


def test_max_rows_samples_and_records_the_rest(tmp_path: Path) -> None:
    p = _project(tmp_path, toy_rows(200), max_rows=100)
    splits, _ = prepare_dataset(p)
    c = splits.version.counts
    assert c["rejected"]["sampled_out"] == 100
    assert c["train"] + c["validation"] + c["gold"] == 100


def test_prepare_without_imports_says_what_to_do(tmp_path: Path) -> None:
    p = open_project(write_project(tmp_path / "p", "unused", []))
    with pytest.raises(DataError, match="no imported data"):
        prepare_dataset(p)
