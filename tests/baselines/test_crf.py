"""The CRF baseline: span fields tagged by the CRF tagger, every other field classified from the whole input."""

from __future__ import annotations

import json

from slmloop.baselines.crf import fit_crf
from slmloop.manifest import TaskConfig
from slmloop.predict.inline import tokens
from slmloop.predict.tagger import bio_tags, decode_spans, span_fields


def _rows(pairs: list[tuple[str, dict]]) -> list[dict]:
    return [{"text": t, "output": o} for t, o in pairs]


TRAIN = _rows(
    [
        (f"book a flight to {c} on {d}", {"city": c, "day": d, "intent": "flight_booking"})
        for c in ("paris", "rome", "oslo")
        for d in ("monday", "friday")
    ]
    + [(f"cancel my trip to {c}", {"city": c, "intent": "trip_cancel"}) for c in ("paris", "rome", "oslo", "lima")]
    + [
        (f"what is the weather in {c} on {d}", {"city": c, "day": d, "intent": "forecast"})
        for c in ("paris", "lima")
        for d in ("monday", "sunday")
    ]
)
EXT = TaskConfig(type="extraction", fields=["city", "day", "intent"])


def test_crf_baseline_tags_spans_and_classifies_the_rest() -> None:
    assert tokens("to rome, now") == [("to", 0, 2), ("rome", 3, 7), (",", 7, 8), ("now", 9, 12)]
    toks, tags, missed = bio_tags("fly to new york now", {"city": "New York", "x": "zz"}, {"city", "x"})
    assert tags == ["O", "O", "B-city", "I-city", "O"] and missed == 1
    assert decode_spans("fly to new york now", toks, tags) == {"city": ["new york"]}
    shares = span_fields(EXT, TRAIN)
    assert shares["city"] == 1.0 and shares["day"] == 1.0 and shares["intent"] == 0.0
    predict, info = fit_crf(EXT, TRAIN)
    assert info["span_fields"] == ["city", "day"] and info["other_fields"] == ["intent"]
    answers = predict(_rows([("book a flight to lima on sunday", {}), ("cancel my trip to oslo", {})]))
    assert json.loads(answers[0].raw) == {"city": "lima", "day": "sunday", "intent": "flight_booking"}
    assert json.loads(answers[1].raw) == {"city": "oslo", "intent": "trip_cancel"}
