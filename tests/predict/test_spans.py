"""The span prior: a CRF tagger's reading weighed against an extractor's answer (hand-built cases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmloop.predict.companion import Companion, load_companion
from slmloop.predict.inline import unmark
from slmloop.predict.spans import FEATURES, SpanJudge, SpanPrior, fuse_spans, mark_scores
from slmloop.predict.tagger import SpanTagger
from slmloop.predict.tasks import Hints
from tests.baselines.test_crf import EXT, TRAIN, _rows

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


def _reading(judge: SpanJudge) -> dict:
    spans = [[0, 4], [5, 7], [8, 10], [11, 14], [15, 17], [18, 20], [21, 27], [28, 34]]
    assert [TEXT[a:b] for a, b in spans] == TEXT.split()
    return {"judge": judge.as_list(), "fields": ["date", "time"], "tokens": spans, "tags": TAGS, "marginals": MARGINALS}


def _judge(threshold: float, bias: float, **weights: float) -> SpanJudge:
    return SpanJudge(tuple(weights.get(name, 0.0) for name in FEATURES), bias, threshold)


def test_the_judge_keeps_likely_values_of_either_and_the_likelier_of_overlapping_ones() -> None:
    # P(time = "six") = 0.9 x (1 - 0.9) = 0.09 (it would have to end before "am"); P(date = "please") = 0.05;
    # P(time = "six am") = 0.81; P(date = "friday") = 0.7; "alarm_type" is no span field
    assert fuse_spans(TEXT, ANSWER, _reading(SpanJudge())) == ANSWER  # no weights: the model alone
    # a judge that trusts the tagger: sigmoid(10 p - 5) is 0.96 for "six am", 0.88 for "friday", 0.02 for
    # "six" and 0.01 for "please"
    assert fuse_spans(TEXT, ANSWER, _reading(_judge(0.5, -5.0, p=10.0))) == {
        "alarm_type": "wake up",  # not judged: the model's alone
        "time": "six am",
        "date": "friday",
    }
    # one that trusts the model: sigmoid(4 model + 2 p - 3) is 0.77 for "six", 0.75 for "please", 0.20 for
    # "six am" and 0.17 for "friday"
    trusts_model = _judge(0.5, -3.0, model=4.0, p=2.0)
    assert fuse_spans(TEXT, ANSWER, _reading(trusts_model)) == ANSWER
    # at a threshold of 0.1 all four pass, but "six am" overlaps "six", which is likelier and taken first
    low = SpanJudge(trusts_model.weights, trusts_model.bias, 0.1)
    assert fuse_spans(TEXT, ANSWER, _reading(low)) == {**ANSWER, "date": ["please", "friday"]}
    # a broken answer gets the tagger's values the judge keeps
    assert fuse_spans(TEXT, None, _reading(_judge(0.5, -5.0, p=10.0))) == {"time": "six am", "date": "friday"}


def test_the_model_is_asked_to_mark_every_value_where_it_occurs_and_the_judge_reads_it() -> None:
    asked = []

    def score(rows: list[int], prefixes: list[str], marks: list[str]) -> list[float]:
        asked.extend(zip(rows, prefixes, marks, strict=True))
        return [-0.1 if "six am" in m else -6.0 for m in marks]  # the model believes "six am", not "friday"

    answer = {"time": "six am", "alarm_type": "wake up"}
    (reading,) = mark_scores([TEXT], [answer], [_reading(SpanJudge())], score)
    # its own value and the tagger's, each after the request's text up to it (the space moves into the mark);
    # "alarm_type" is no span field and is not asked about
    assert asked == [(0, "wake me at", " [time: six am]"), (0, "wake me at six am on", " [date: friday]")]
    assert reading["marks"] == {"time\tsix am": -0.1, "date\tfriday": -6.0}
    # a judge that reads only the mark's probability: sigmoid(10 P - 5) is 0.98 for "six am" (P = 0.90) and
    # 0.007 for "friday" (P = 0.0025); without marks (a JSON answer) it reads 0 and keeps nothing it judges
    judge = _judge(0.5, -5.0, mark_p=10.0)
    assert judge.reads_marks and not _judge(0.5, -5.0, unmarked=1.0).reads_marks
    assert fuse_spans(TEXT, answer, {**_reading(judge), "marks": reading["marks"]}) == answer
    assert fuse_spans(TEXT, answer, _reading(judge)) == {"alarm_type": "wake up"}
    # a judge saved before the mark features existed reads the features it knows
    old = SpanJudge(_judge(0.5, -5.0, p=10.0).weights[: FEATURES.index("mark_p")], -5.0, 0.5)
    assert fuse_spans(TEXT, answer, _reading(old)) == fuse_spans(TEXT, answer, _reading(_judge(0.5, -5.0, p=10.0)))
    assert list(old.summary()["weights"]) == list(FEATURES[: FEATURES.index("mark_p")])


def test_the_judge_weighs_the_taggers_other_likely_readings_where_it_was_fit_with_them() -> None:
    # the tagger's best reading finds nothing; its marginals hold "six am" (0.81), "friday" (0.7), "six" (0.09)
    # and "please" (0.05); a judge that trusts the span's probability keeps those it weighs
    nothing = {**_reading(SpanJudge()), "tags": ["O"] * len(TAGS)}
    judge = _judge(0.5, -5.0, p=10.0)
    assert fuse_spans(TEXT, {}, {**nothing, "judge": judge.as_list()}) == {}  # a judge fit before: best reading only
    assert fuse_spans(TEXT, {}, {**nothing, "judge": judge.as_list(), "alternative_p": 0.1}) == {
        "time": "six am",
        "date": "friday",
    }
    # at 0.05 "six" and "please" are weighed too: "six" (0.02) and "please" (0.01) fall under the threshold
    assert fuse_spans(TEXT, {}, {**nothing, "judge": judge.as_list(), "alternative_p": 0.05}) == {
        "time": "six am",
        "date": "friday",
    }
    asked: list[str] = []

    def score(rows: list[int], prefixes: list[str], marks: list[str]) -> list[float]:
        asked.extend(marks)
        return [-1.0] * len(marks)

    mark_scores([TEXT], [{}], [nothing], score, alternative_p=0.05)
    assert sorted(asked) == [" [date: friday]", " [date: please]", " [time: six am]", " [time: six]"]


def _val() -> list[dict]:
    pairs = []
    for i, (c, d) in enumerate([(c, d) for c in ("paris", "rome", "oslo") for d in ("monday", "friday")] * 4):
        pairs.append((f"book a flight to {c} on {d}", {"city": c, "day": d, "intent": "flight_booking"}))
        if i % 3 == 0:
            pairs.append((f"cancel my trip to {c}", {"city": c, "intent": "trip_cancel"}))
    return _rows(pairs)


def _answers(rows: list[dict], drop: str | None) -> list[dict]:
    """The truth, less ``drop``'s values, and every fourth row's city wrong: a model that misses a field."""
    out = [{k: v for k, v in r["output"].items() if k != drop} for r in rows]
    for i, a in enumerate(out):
        if drop and i % 4 == 0:
            a["city"] = "flight"
    return out


def test_the_judge_learns_where_the_tagger_is_right_and_stays_off_where_the_model_is() -> None:
    prior = SpanPrior.fit(EXT, TRAIN)
    assert prior is not None and prior.tagger.fields == ["city", "day"]  # "intent" is no span
    val = _val()
    # a model that never gives the day and now and then a wrong city: the judge adds the tagger's days and
    # drops the wrong cities
    choice = prior.choose_judge(EXT, val, _answers(val, "day"))
    assert choice["model_alone_micro_f1"] < 0.8 and choice["micro_f1"] == pytest.approx(1.0)
    assert prior.judge.active and choice["judge"]["weights"]["tagger"] > 0 and choice["rows"] == len(val)
    (reading,) = prior.readings([val[0]["text"]])
    assert fuse_spans(val[0]["text"], _answers(val, "day")[0], reading) == val[0]["output"]
    # a model that is always right: there is nothing to judge, so the tagger stays off
    choice = prior.choose_judge(EXT, val, _answers(val, None))
    assert choice["micro_f1"] == choice["model_alone_micro_f1"] == 1.0 and not prior.judge.active
    # too few rows to cross-validate on: the model alone
    choice = prior.choose_judge(EXT, val[:5], _answers(val[:5], "day"))
    assert choice["judge"] is None and not prior.judge.active


def test_the_tagger_is_cached_by_its_rows_and_an_index_ships_it(tmp_path: Path) -> None:
    fields = {"city", "day"}
    first = SpanTagger.fit(EXT, TRAIN, fields, tmp_path)
    assert first.context is not None and len(first.context.coarse) <= len(TRAIN)
    (cached,) = (tmp_path / "crf").iterdir()
    other = SpanTagger.fit(EXT, TRAIN[:-1], fields)  # other rows: another model
    assert other.model != first.model
    np.savez(cached, **other.arrays(""))  # what the cache holds is read back, not trained again
    assert SpanTagger.fit(EXT, TRAIN, fields, tmp_path).model == other.model
    SpanTagger.fit(EXT, TRAIN[:-1], fields, tmp_path)
    assert len(list((tmp_path / "crf").iterdir())) == 2

    index = Companion.empty()
    index.spans = SpanPrior(first)  # the model alone: not in use, not shipped
    assert not index.in_use and index.hints(EXT, TRAIN[:1]) == [Hints()]
    index.spans.judge = SpanJudge(_judge(0.5, -5.0, p=10.0).weights, -5.0, 0.5, alternative_p=0.1)
    assert index.in_use
    (hints,) = index.hints(EXT, _rows([("fly to paris on friday", {})]))
    reading = hints.spans
    assert reading is not None and not hints.examples
    assert reading["judge"] == index.spans.judge.as_list() and reading["fields"] == ["city", "day"]
    assert reading["alternative_p"] == 0.1  # the tagger's other readings it was fit with
    assert reading["tags"] == ["O", "O", "B-city", "O", "B-day"]
    index.save(tmp_path)
    loaded = load_companion(tmp_path)
    assert loaded is not None and loaded.spans is not None and loaded.spans.judge == index.spans.judge
    assert loaded.spans.tagger.model == first.model and loaded.k == 0 and loaded.prior is None
    assert loaded.spans.tagger.context is not None
    assert np.array_equal(loaded.spans.tagger.context.words, first.context.words)
    assert loaded.hints(EXT, _rows([("fly to paris on friday", {})])) == [hints]
    assert json.loads(json.dumps(reading)) == reading  # a reading travels as JSON


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
    for i in range(240):  # a place after "to" in half the rows: a CRF's task, not yet a tiny model's
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
    recorded = json.loads((run_dir / "run.json").read_text())
    assert recorded["task"]["answer"] == "inline"  # auto: every value is a span of its request
    choice = recorded["span_prior"]
    assert choice["fields"] == 1 and choice["rows"] == len(splits.validation) and choice["judge"] is not None
    assert choice["micro_f1"] > choice["model_alone_micro_f1"]  # the tagger finds the places the model misses
    index = load_companion(run_dir / "adapter")
    assert index is not None and index.k == 0 and index.active_spans is not None
    ev = evaluate(p, run.name)
    runtime = ev.metrics["runtime"]
    assert runtime["span_prior"] == choice["judge"] and runtime["answer"] == "inline"
    assert ev.metrics["micro_f1"] > runtime["model_alone_micro_f1"]  # on gold too
    preds = p.store.predictions(ev.id)
    release = export_release(p, run.name)
    card = (p.locate(release.path) / "README.md").read_text()
    assert "span prior" in card and "answer format: inline" in card
    served = load_predictor(p, release.version).predict_many([x.input for x in preds])
    # the server weighs the same tagger with the same judge: the answers evaluation stored
    assert [s["raw"] for s in served] == [x.prediction for x in preds]
    assert all("model_raw" in s and "model_text" in s for s in served)
    # what the model wrote, marked inline, is what evaluation stored as its own answer once unmarked
    assert [json.loads(s["model_raw"]) for s in served] == [
        unmark(s["model_text"], x.input) for s, x in zip(served, preds, strict=True)
    ]
    p.close()


def test_eval_prints_what_a_prior_did_beside_the_models_own_score() -> None:
    from slmloop.cli.evaluation import prior_lines

    assert prior_lines({"micro_f1": 0.7, "runtime": {}}) == []
    rt = {"span_prior": {"threshold": 0.25, "bias": -1.0, "weights": {}}, "model_alone_micro_f1": 0.711}
    (line,) = prior_lines({"micro_f1": 0.754, "runtime": rt})
    assert "judge threshold 0.25" in line and "micro_f1 0.7540" in line and "alone: 0.7110" in line
    (line,) = prior_lines({"accuracy": 0.933, "runtime": {"label_prior": 1.0, "model_alone_accuracy": 0.903}})
    assert "weight 1" in line and "accuracy 0.9330" in line and "alone: 0.9030" in line
