"""Generation data: one input may have several right answers. Every distinct pair trains, a gold input keeps all
its references and is scored against all of them; inputs that differ in one value are not duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmloop.data.importer import import_source
from slmloop.data.prepare import prepare_dataset
from slmloop.evaluate.scoring import score_answers
from slmloop.manifest import TaskConfig
from slmloop.metrics import HEADLINE
from slmloop.project import open_project
from tests.conftest import write_project

GAMES = ["Dirt Showdown", "Halo Wars", "Portal Two", "Stardew Valley", "Hollow Knight", "Celeste", "Doom Eternal"]
GENRES = ["racing", "strategy", "puzzle", "simulation", "platformer", "shooter"]
YEARS = ["2009", "2012", "2015", "2018"]


def _rows() -> list[dict[str, str]]:
    """Meaning representations with three human-like references each; many inputs differ in one value."""
    rows = []
    for g in GAMES:
        for genre in GENRES[:4]:
            for year in YEARS[:2]:
                mr = f"inform(name[{g}], genres[{genre}], release_year[{year}])"
                rows += [
                    {"input": mr, "output": f"{g} is a {genre} game from {year}."},
                    {"input": mr, "output": f"Released in {year}, {g} is a {genre} game."},
                    {"input": mr, "output": f"{g} came out in {year}; it is a {genre} title."},
                ]
    return rows


def _project(tmp_path: Path, rows: list[dict], **data) -> Path:
    return write_project(
        tmp_path / "p",
        "unused",
        rows,
        task={"type": "generation", "instruction": "Describe the game.", "labels": None},
        data={"sources": [{"path": "data/train.jsonl"}], "split": {"validation": 0.1, "gold": 0.2, "seed": 1}, **data},
    )


def test_every_distinct_pair_is_kept_and_gold_keeps_all_references(tmp_path: Path) -> None:
    rows = _rows()
    rows.append(dict(rows[0]))  # an exact copy of a pair
    rows.append({"input": rows[1]["input"], "output": "  " + rows[1]["output"].upper()})  # the same, other case
    # (these inputs share a template: at the default leakage bar most would be near copies of a gold input,
    # docs/leakage.md; this test is about duplicates)
    p = open_project(_project(tmp_path, rows, leakage={"semantic": "off", "near_threshold": 0.99}))
    import_source(p, p.manifest.data.sources[0])
    done = prepare_dataset(p)
    c, splits = done.counts, done.splits
    distinct = len(rows) - 2
    assert c["rejected"] == {"duplicate_exact": 2}
    assert c["train"] + c["validation"] + c["gold"] == distinct
    # gold: one row per input, with all three references
    assert c["gold"] == 3 * len(splits.gold) and splits.version.gold_id
    assert {len(g["references"]) for g in splits.gold} == {3}
    for g in splits.gold:
        assert g["output"] == g["references"][0]
    # no input is both learned and judged (or both trained and validated)
    homes: dict[str, set[str]] = {}
    for name, part in (("train", splits.train), ("validation", splits.validation), ("gold", splits.gold)):
        for r in part:
            homes.setdefault(r["input"], set()).add(name)
    assert all(len(h) == 1 for h in homes.values())
    p.close()


def test_a_gold_file_merges_the_answers_of_an_input_into_references(tmp_path: Path) -> None:
    rows = _rows()
    gold_lines = [
        {"input": "inform(name[Fez], genres[puzzle], release_year[2012])", "output": "Fez is a 2012 puzzle game."},
        {"input": "inform(name[Fez], genres[puzzle], release_year[2012])", "output": "Fez, from 2012, is a puzzler."},
        {"input": "inform(name[Fez], genres[puzzle], release_year[2012])", "output": "fez is a 2012 puzzle game."},
        {"input": "inform(name[Limbo], genres[puzzle], release_year[2010])", "output": "Limbo is a puzzle game."},
    ]
    root = _project(
        tmp_path, rows, gold={"path": "data/gold.jsonl"}, leakage={"semantic": "off", "near_threshold": 0.99}
    )
    (root / "data" / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gold_lines))
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    done = prepare_dataset(p)
    acc = done.counts["gold_file"]
    assert (acc["rows_read"], acc["accepted"], acc["gold_rows"], acc["rejected"]) == (4, 3, 2, {"duplicate_exact": 1})
    fez = next(g for g in done.splits.gold if "Fez" in g["input"])
    assert fez["references"] == ["Fez is a 2012 puzzle game.", "Fez, from 2012, is a puzzler."]
    # every training pair is kept: nothing of the sources is gold or a near copy of it here
    assert done.counts["train"] + done.counts["validation"] == len(rows)
    p.close()


def test_inputs_that_differ_in_one_value_are_not_near_duplicates(tmp_path: Path) -> None:
    rows = _rows()
    mr = "inform(name[Fez], genres[puzzle], release_year[2012], rating[excellent])"
    long = "Fez is an excellent puzzle game from 2012 that rotates its world to reveal hidden paths and secrets."
    rows.append({"input": mr, "output": long})
    rows.append({"input": mr, "output": long.replace("reveal", "show")})  # two wordings of one input: two rows
    rows.append({"input": mr.replace("2012", "2013"), "output": long})  # a near input, the same answer: a copy
    p = open_project(_project(tmp_path, rows, leakage={"semantic": "off", "near_threshold": 0.99}))
    import_source(p, p.manifest.data.sources[0])
    done = prepare_dataset(p)
    assert done.counts["rejected"] == {"duplicate_near": 1}
    assert done.counts["train"] + done.counts["validation"] + done.counts["gold"] == len(rows) - 1
    p.close()
    p = open_project(tmp_path / "p")
    (near,) = [r for r in p.objects.read_jsonl(done.splits.version.rejects_object) if r["reason"] == "duplicate_near"]
    assert "2013" in near["raw"] and "2012" in near["of"]["text"]
    p.close()


def test_scores_read_every_reference() -> None:
    task = TaskConfig(type="generation")
    gold = [
        {"input": "a", "output": "Fez is a puzzle game.", "references": ["Fez is a puzzle game.", "A puzzler: Fez."]},
        {"input": "b", "output": "Limbo is dark.", "references": ["Limbo is dark.", "Limbo is a gloomy game."]},
    ]
    second_refs = ["A puzzler: Fez.", "Limbo is a gloomy game."]
    multi = score_answers(task, gold, second_refs)
    single = score_answers(task, [{k: v for k, v in g.items() if k != "references"} for g in gold], second_refs)
    assert multi.metric("exact_match") == 1.0 and single.metric("exact_match") == 0.0
    assert multi.metric("chrf") == 1.0 > single.metric("chrf")
    assert multi.metric("rouge_l") == 1.0 > single.metric("rouge_l")
    assert np.isclose(multi.metric("bleu"), 1.0) and single.metric("bleu") < 0.5
    assert HEADLINE["generation"][0] == "chrf"  # the gate compares a similarity, not exact match
