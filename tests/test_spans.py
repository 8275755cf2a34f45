"""The span prior: a CRF tagger's reading weighed against an extractor's answer (hand-built cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmloop.baselines.crf import SpanTagger
from slmloop.shortlist import Shortlist, load_shortlist
from slmloop.spans import SpanPrior, SpanRule, fuse_spans
from slmloop.tasks import SPANS_KEY
from tests.test_real_size import EXT, TRAIN, _rows

TEXT = "wake me at six am on friday please"
OUT = {"O": 1.0}
# tokens: wake me at six am on friday please
MARGINALS = [
    OUT,
    OUT,
    OUT,
    {"B-time": 0.9, "O": 0.1},
    {"I-time": 0.9, "O": 0.1},
    OUT,
    {"B-date": 0.7, "O": 0.3},
    {"O": 0.95, "B-date": 0.05},
]
TAGS = ["O", "O", "O", "B-time", "I-time", "O", "B-date", "O"]
ANSWER = {"time": "six", "date": "please", "alarm_type": "wake up"}


def _reading(rule: SpanRule) -> dict:
    spans = [[0, 4], [5, 7], [8, 10], [11, 14], [15, 17], [18, 20], [21, 27], [28, 34]]
    assert [TEXT[a:b] for a, b in spans] == TEXT.split()
    return {"rule": rule.as_list(), "fields": ["date", "time"], "tokens": spans, "tags": TAGS, "marginals": MARGINALS}


def test_fusing_drops_unlikely_values_adds_confident_ones_and_replaces_weaker_overlaps() -> None:
    # P(time = "six") = 0.9 x (1 - 0.9) = 0.09 (it would have to end before "am"); P(date = "please") = 0.05;
    # P(time = "six am") = 0.81; P(date = "friday") = 0.7; "wake up" is not a span of the request
    assert fuse_spans(TEXT, ANSWER, _reading(SpanRule())) == ANSWER  # the first grid point: the model alone
    assert fuse_spans(TEXT, ANSWER, _reading(SpanRule(keep=0.08, add=0.5, prefer=0.25))) == {
        "alarm_type": "wake up",  # not a span: the model's alone
        "time": "six am",  # 0.81 > 0.09 + 0.25 replaces "six"
        "date": "friday",  # 0.7 >= 0.5, added; "please" (0.05 < 0.08) dropped
    }
    # "six am" must beat "six" by more than 0.75 (0.81 - 0.09 = 0.72 does not); "friday" below add=0.75
    assert fuse_spans(TEXT, ANSWER, _reading(SpanRule(keep=0.08, add=0.75, prefer=0.75))) == {
        "time": "six",
        "alarm_type": "wake up",
    }
    # keep=0.1 drops "six" (0.09) too: "six am" then has no rival
    assert fuse_spans(TEXT, ANSWER, _reading(SpanRule(keep=0.1, add=0.8, prefer=1.0))) == {
        "alarm_type": "wake up",
        "time": "six am",
    }
    # a value the tagger gives too always stays, and a broken answer gets the tagger's values
    both = {"time": "six am", "date": "please"}
    assert fuse_spans(TEXT, both, _reading(SpanRule(keep=0.9, add=1.01))) == {"time": "six am"}
    assert fuse_spans(TEXT, None, _reading(SpanRule(add=0.6))) == {"time": "six am", "date": "friday"}


def _answers(rows: list[dict], drop: str | None) -> list[dict]:
    """The truth, less ``drop``'s values: a model that always misses one field."""
    return [{k: v for k, v in r["output"].items() if k != drop} for r in rows]


def test_the_rule_adds_the_tagger_where_the_model_misses_and_stays_off_where_it_does_not() -> None:
    prior = SpanPrior.fit(EXT, TRAIN)
    assert prior is not None and prior.tagger.fields == ["city", "day"]  # "intent" is no span
    val = _rows(
        [
            ("book a flight to rome on monday", {"city": "rome", "day": "monday", "intent": "flight_booking"}),
            ("book a flight to oslo on friday", {"city": "oslo", "day": "friday", "intent": "flight_booking"}),
            ("cancel my trip to lima", {"city": "lima", "intent": "trip_cancel"}),
        ]
    )
    # a model that never gives the day: the tagger's days are added (5 of 7 values -> 7 of 7)
    choice = prior.choose_rule(EXT, val, _answers(val, "day"))
    assert choice["model_alone_micro_f1"] == pytest.approx(2 * 6 / (2 * 6 + 2))
    assert choice["micro_f1"] == pytest.approx(1.0) and prior.rule.active and prior.rule.add <= 1.0
    fused = fuse_spans(val[0]["text"], _answers(val, "day")[0], prior.reading(val[0]["text"]))
    assert fused == val[0]["output"]
    # a model that is always right: no rule beats it, so the tagger stays off
    choice = prior.choose_rule(EXT, val, _answers(val, None))
    assert choice["micro_f1"] == choice["model_alone_micro_f1"] == 1.0 and not prior.rule.active


def test_the_tagger_is_cached_by_its_rows_and_an_index_ships_it(tmp_path: Path) -> None:
    fields = {"city", "day"}
    first = SpanTagger.fit(EXT, TRAIN, fields, tmp_path / "crf")
    (cached,) = (tmp_path / "crf").iterdir()
    other = SpanTagger.fit(EXT, TRAIN[:-1], fields)  # other rows: another model
    assert other.model != first.model
    cached.write_bytes(other.model)  # what the cache holds is read back, not trained again
    assert SpanTagger.fit(EXT, TRAIN, fields, tmp_path / "crf").model == other.model
    SpanTagger.fit(EXT, TRAIN[:-1], fields, tmp_path / "crf")
    assert len(list((tmp_path / "crf").iterdir())) == 2

    index = Shortlist.empty()
    index.spans = SpanPrior(first)  # the model alone: not in use, not shipped
    assert not index.in_use and index.annotate(EXT, TRAIN[:1]) == TRAIN[:1]
    index.spans.rule = SpanRule(keep=0.05, add=0.6, prefer=0.25)
    assert index.in_use
    (row,) = index.annotate(EXT, _rows([("fly to paris on friday", {})]))
    assert row[SPANS_KEY]["rule"] == [0.05, 0.6, 0.25] and row[SPANS_KEY]["fields"] == ["city", "day"]
    assert row[SPANS_KEY]["tags"] == ["O", "O", "B-city", "O", "B-day"]
    index.save(tmp_path)
    loaded = load_shortlist(tmp_path)
    assert loaded is not None and loaded.spans is not None and loaded.spans.rule == index.spans.rule
    assert loaded.spans.tagger.model == first.model and loaded.k == 0 and loaded.prior is None
    assert loaded.annotate(EXT, _rows([("fly to paris on friday", {})])) == [row]
    assert json.loads(json.dumps(row[SPANS_KEY])) == row[SPANS_KEY]  # a reading travels as JSON


@pytest.mark.integration
def test_a_trained_extractor_is_weighed_with_its_span_prior_in_eval_and_serve(tmp_path: Path, tiny_model: Path) -> None:
    import random

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.data.versions import load_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.serve.server import load_predictor
    from slmloop.train.recipe import train
    from tests.conftest import write_extraction_project
    from tests.tiny import HAM_WORDS

    rng = random.Random(0)
    rows = []
    for i in range(120):  # a place after "to" in half the rows: a CRF's task, not yet a tiny model's
        a, b = rng.sample(HAM_WORDS, 2)
        rows.append(
            {"text": f"go to {a} with {b} {i}", "output": {"place": a}}
            if i % 2
            else {"text": f"{a} {b} {i}", "output": {}}
        )
    root = write_extraction_project(tmp_path / "p", tiny_model, rows, 64)
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    run = train(p)
    splits = load_dataset(p)
    run_dir = p.locate(run.path)
    choice = json.loads((run_dir / "run.json").read_text())["span_prior"]
    assert choice["fields"] == 1 and choice["rows"] == len(splits.validation) and choice["rules_tried"] > 1
    assert choice["micro_f1"] > choice["model_alone_micro_f1"]  # the tagger finds the places the model misses
    index = load_shortlist(run_dir / "adapter")
    assert index is not None and index.k == 0 and index.active_spans is not None
    ev = evaluate(p, run.name)
    runtime = ev.metrics["runtime"]
    assert runtime["span_prior"] == choice["rule"]
    assert ev.metrics["micro_f1"] > runtime["model_alone_micro_f1"]  # on gold too
    preds = p.store.predictions(ev.id)
    release = export_release(p, run.name)
    assert "span prior" in (p.locate(release.path) / "README.md").read_text()
    served = load_predictor(p, release.version).predict_many([x.input for x in preds])
    # the server weighs the same tagger with the same rule: the answers evaluation stored
    assert [s["raw"] for s in served] == [x.prediction for x in preds]
    assert all("model_raw" in s for s in served)
    p.close()


def test_eval_prints_what_a_prior_did_beside_the_models_own_score() -> None:
    from slmloop.cli.evaluation import prior_lines

    assert prior_lines({"micro_f1": 0.7, "runtime": {}}) == []
    rt = {"span_prior": {"keep": 0.01, "add": 0.5, "prefer": 1.0}, "model_alone_micro_f1": 0.711}
    (line,) = prior_lines({"micro_f1": 0.754, "runtime": rt})
    assert "keep 0.01, add 0.5, prefer 1" in line and "micro_f1 0.7540" in line and "alone: 0.7110" in line
    (line,) = prior_lines({"accuracy": 0.933, "runtime": {"label_prior": 1.0, "model_alone_accuracy": 0.903}})
    assert "weight 1" in line and "accuracy 0.9330" in line and "alone: 0.9030" in line
