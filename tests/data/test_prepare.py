from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from slmloop.data.clean import dedupe_key, normalize_text
from slmloop.data.importer import import_source
from slmloop.data.prepare import prepare_dataset
from slmloop.data.versions import load_dataset
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
    return _imported(tmp_path, rows, split={"validation": 0.1, "gold": 0.2, "seed": 1, **split})[0]


def test_prepare_accounts_for_every_row_and_stratifies(tmp_path: Path) -> None:
    rows = toy_rows(300)
    rows += [dict(rows[0]), {"text": rows[1]["text"].upper(), "label": rows[1]["label"]}]  # 2 exact dupes
    p = _project(tmp_path, rows)
    prepared = prepare_dataset(p)
    splits, reused = prepared.splits, prepared.reused
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
    first = prepare_dataset(p).splits
    prepared = prepare_dataset(p)
    again, reused = prepared.splits, prepared.reused
    assert reused and again.version.id == first.version.id
    assert prepared.counts["gold"] == len(first.gold) and prepared.counts["gold_new"] == 0  # its own rows, read again
    # new data arrives, with another answer for a gold input: gold must not move, the row must not train
    gold_row = next(r for r in first.gold if r["label"] == "spam")
    extra = tmp_path / "more.jsonl"
    extra.write_text(
        "".join(json.dumps(r) + "\n" for r in [*toy_rows(50, seed=7), {"text": gold_row["text"], "label": "ham"}])
    )
    import_source(p, SourceConfig(path=str(extra)))
    prepared = prepare_dataset(p)
    second, reused = prepared.splits, prepared.reused
    assert not reused
    assert second.version.gold_id == first.version.gold_id
    c = prepared.counts
    # the gold rows' own source rows are placed in gold, not counted as leaks; the new answer to a gold
    # input corrects the old row (corrected) and is itself kept out of training (leaks_gold), with a warning
    assert c["gold"] == len(first.gold) - 1 and c["rejected"]["corrected"] == 1
    assert c["rejected"]["leaks_gold"] >= 1
    assert any("another answer than the gold set" in w for w in c["warnings"])
    assert gold_row["text"] not in {r["text"] for r in second.train + second.validation}
    assert c["train"] + c["validation"] + c["gold"] + sum(c["rejected"].values()) == c["rows_in"]
    assert load_dataset(p).version.id == second.version.id


def test_max_rows_samples_and_records_the_rest(tmp_path: Path) -> None:
    p = _project(tmp_path, toy_rows(200), max_rows=100)
    splits = prepare_dataset(p).splits
    c = splits.version.counts
    assert c["rejected"]["sampled_out"] == 100
    assert c["train"] + c["validation"] + c["gold"] == 100


def test_prepare_without_imports_says_what_to_do(tmp_path: Path) -> None:
    p = open_project(write_project(tmp_path / "p", "unused", []))
    with pytest.raises(DataError, match="no imported data"):
        prepare_dataset(p)


def _imported(tmp_path: Path, rows: list[dict], **data) -> tuple:
    data = {"sources": [{"path": "data/train.jsonl"}], "split": {"validation": 0.1, "gold": 0.2, "seed": 1}, **data}
    p = open_project(write_project(tmp_path / "p", "unused", rows, data=data))
    return p, import_source(p, p.manifest.data.sources[0])


def _prepare_rows(tmp_path: Path, rows: list[dict], **data) -> tuple:
    p, imp = _imported(tmp_path, rows, **data)
    splits = prepare_dataset(p).splits
    return p, splits, p.objects.read_jsonl(splits.version.rejects_object), imp


def test_near_duplicates_are_dropped_keeping_the_first(tmp_path: Path) -> None:
    rows = toy_rows(100)
    base = "please confirm the delivery address for order number one two three before friday"
    rows += [{"text": base, "label": "ham"}, {"text": base.replace("friday", "monday"), "label": "ham"}]
    _, splits, rejects, _ = _prepare_rows(tmp_path, rows)
    near = [r for r in rejects if r["reason"] == "duplicate_near"]
    assert len(near) == 1 and near[0]["raw"].endswith("monday") and near[0]["of"]["text"].endswith("friday")
    every = {r["text"] for r in splits.train + splits.validation + splits.gold}
    assert base in every


def test_group_mode_keeps_near_duplicates_in_one_split(tmp_path: Path) -> None:
    rows = toy_rows(60)
    family = [f"your parcel {w} is waiting at the depot collect it with your id card today" for w in "abcdefgh"]
    rows += [{"text": t, "label": "ham"} for t in family]
    _, splits, rejects, _ = _prepare_rows(tmp_path, rows, dedupe={"near": "group"})
    assert not [r for r in rejects if r["reason"] == "duplicate_near"]
    homes = {
        name
        for name, part in (("train", splits.train), ("validation", splits.validation), ("gold", splits.gold))
        for r in part
        if r["text"] in family
    }
    assert len(homes) == 1  # the whole cluster lives in exactly one split


def test_group_by_field_and_stratify_by_field(tmp_path: Path) -> None:
    rows = [dict(r, customer=f"c{i % 10}", region="north" if i % 2 else "south") for i, r in enumerate(toy_rows(200))]
    _, splits, _, _ = _prepare_rows(
        tmp_path, rows, split={"validation": 0.1, "gold": 0.2, "seed": 1, "group_by": "customer", "stratify": "region"}
    )
    owners = {}
    for name, part in (("train", splits.train), ("validation", splits.validation), ("gold", splits.gold)):
        for r in part:
            owners.setdefault(r["_meta"]["customer"], set()).add(name)
    assert all(len(v) == 1 for v in owners.values())
    regions = Counter(r["_meta"]["region"] for r in splits.gold)
    assert regions["north"] == regions["south"]


def test_pii_redaction_counts_by_type(tmp_path: Path) -> None:
    rows = [
        *toy_rows(40),
        {"text": "mail me at jane.doe@example.com or call +44 7700 900123", "label": "ham"},
        {"text": "card 4111 1111 1111 1111 from 192.168.1.20", "label": "spam"},
    ]
    _, splits, _, _ = _prepare_rows(tmp_path, rows, pii={"mode": "redact"})
    c = splits.version.counts
    assert c["pii"] == {"email": 1, "phone": 1, "card": 1, "ipv4": 1}
    texts = {r["text"] for r in splits.train + splits.validation + splits.gold}
    assert "mail me at [EMAIL] or call [PHONE]" in texts and "card [CARD] from [IPV4]" in texts


def test_pii_block_rejects_the_row(tmp_path: Path) -> None:
    rows = [*toy_rows(40), {"text": "reach me on jane@example.org", "label": "ham"}]
    _, _splits, rejects, _ = _prepare_rows(tmp_path, rows, pii={"mode": "block"})
    assert [r["reason"] for r in rejects] == ["pii_blocked"] and "1 email" in rejects[0]["detail"]


def test_too_long_rows_are_rejected_in_model_tokens(tmp_path: Path, tiny_model: Path) -> None:
    rows = [*toy_rows(40), {"text": "word " * 300, "label": "ham"}]
    p = open_project(
        write_project(
            tmp_path / "p", tiny_model, rows, data={"sources": [{"path": "data/train.jsonl"}], "max_tokens": 120}
        )
    )
    import_source(p, p.manifest.data.sources[0])
    splits = prepare_dataset(p).splits
    rejects = p.objects.read_jsonl(splits.version.rejects_object)
    assert [r["reason"] for r in rejects] == ["too_long"] and "> data.max_tokens = 120" in rejects[0]["detail"]


GOLD = "The meeting has been moved to Thursday afternoon because the manager is travelling."
# 5-gram Jaccard 0.54 (under the 0.6 near bar), MiniLM cosine 0.95 (over the 0.9 semantic/contamination bar)
PARAPHRASE = "The manager is travelling so we moved the meeting to Thursday afternoon."


def _prepare_with_gold_paraphrase(tmp_path: Path, semantic: str) -> tuple[Any, Any]:
    """Prepare, add GOLD to the gold set, import its PARAPHRASE, prepare again: (project, second splits)."""
    from slmloop.data.versions import current_gold, freeze_gold

    p, first, _, _ = _prepare_rows(tmp_path, toy_rows(100), leakage={"semantic": semantic})
    freeze_gold(p, [*first.gold, {"text": GOLD, "label": "ham"}], current_gold(p).id, "curated")
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"text": PARAPHRASE, "label": "ham"}) + "\n")
    import_source(p, SourceConfig(path=str(extra)))
    second = prepare_dataset(p).splits
    return p, second


@pytest.mark.integration
def test_paraphrase_of_a_gold_row_is_dropped_as_leak_when_semantic_blocks(tmp_path: Path) -> None:
    p, second = _prepare_with_gold_paraphrase(tmp_path, "block")
    rejects = p.objects.read_jsonl(second.version.rejects_object)
    leak = [r for r in rejects if r["raw"] == PARAPHRASE]
    assert leak and leak[0]["reason"] == "leaks_gold" and leak[0]["of"]["text"] == GOLD
    assert second.version.counts["leakage"].get("semantic", 0) >= 1  # not a near copy: the embedding caught it


@pytest.mark.integration
def test_by_default_a_paraphrase_of_gold_is_kept_and_measured(tmp_path: Path) -> None:
    """semantic: report keeps the paraphrase for training and counts the gold row as having a close neighbour."""
    _, second = _prepare_with_gold_paraphrase(tmp_path, "report")
    assert PARAPHRASE in {r["text"] for r in second.train + second.validation}
    k = second.version.counts["contamination"]
    assert k["close"] >= 1 and k["gold_rows"] == len(second.gold) and 0 < k["rate"] <= 1
