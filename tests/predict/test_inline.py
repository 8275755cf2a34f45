"""Inline answers: the request with its values marked, and back to the JSON object (hand-built cases)."""

from __future__ import annotations

import json

import pytest

from slmloop.errors import ConfigError
from slmloop.manifest import TaskConfig
from slmloop.predict.answers import generated_answer
from slmloop.predict.inline import inline_fits, mark, unmark
from slmloop.predict.parsing import value_pairs
from slmloop.predict.tasks import answer_json, answer_target, resolve_answer, target_text

TEXT = "Wake me at six am tomorrow and six  pm in Camden"
OUT = {"date": "tomorrow", "place": "camden", "time": ["six am", "six pm"], "zone": "gmt"}
EXT = TaskConfig(type="extraction", fields="auto")
INLINE = EXT.model_copy(update={"answer": "inline"})


def test_values_are_marked_where_they_occur_and_the_rest_after_the_request() -> None:
    # "six pm" matches "six  pm" (whole tokens, any spacing); the mark writes the value as the answer does
    # ("camden", "six pm"); "gmt" is no span of the request, so it is marked after it
    want = "Wake me at [time: six am] [date: tomorrow] and [time: six pm] in [place: camden] [zone: gmt]"
    assert mark(TEXT, OUT) == want
    assert unmark(want) == {"time": ["six am", "six pm"], "date": "tomorrow", "place": "camden", "zone": "gmt"}
    assert value_pairs(unmark(mark(TEXT, OUT), TEXT)) == value_pairs(OUT)
    # a value occurring twice takes its first free occurrence: the second "am" is the second value's
    assert mark("am or am", {"a": ["am", "am"]}) == "[a: am] or [a: am]"
    # a whole word, not a part of one: "am" is not in "camera"
    assert mark("camera am", {"a": "am"}) == "camera [a: am]"
    assert mark("no values here", {}) == "no values here"


def test_unmark_skips_what_the_request_itself_holds_and_broken_marks() -> None:
    request = "copy [note: x] to mom"
    assert unmark("copy [note: x] to [person: mom]", request) == {"person": "mom"}
    # an empty value, a mark never closed and a mark without a field give nothing
    assert unmark("[a: ] [b: x [c:y] [: z] [d: ok]") == {"d": "ok"}
    assert unmark("plain text") == {}


def test_inline_fits_string_spans_and_says_why_not() -> None:
    texts = ["wake me at six", "play jazz", "book it"]
    assert inline_fits(texts, [{"time": "six"}, {"genre": "jazz"}, {}]) == (
        True,
        "100% of the values are spans of their request",
    )
    fits, why = inline_fits(texts, [{"time": "six"}, {"genre": "blues"}, {"n": "2"}])
    assert not fits and why.startswith("33% of the values")
    fits, why = inline_fits(texts, [{"time": 6}, {}, {}])
    assert not fits and "not a string (int)" in why
    fits, why = inline_fits(texts, [{"a:b": "six"}, {}, {}])
    assert not fits and "bracket or a colon" in why
    assert inline_fits(texts, [{}, {}, {}]) == (False, "no answer holds a value")


def test_auto_answers_inline_where_it_fits_and_json_elsewhere() -> None:
    rows = [{"text": "wake me at six", "output": {"time": "six"}}, {"text": "play jazz", "output": {"genre": "jazz"}}]
    task, why = resolve_answer(EXT, rows, "compact")
    assert task.answer == "inline" and "100%" in why
    assert resolve_answer(EXT, rows, "full")[0].answer == "json"  # the full prompt asks for the JSON object
    assert resolve_answer(EXT.model_copy(update={"answer": "json"}), rows, "compact")[0].answer == "json"
    normalised = [{"text": "wake me at six", "output": {"time": "06:00"}}]
    assert resolve_answer(EXT, normalised, "compact")[0].answer == "json"
    assert resolve_answer(INLINE, normalised, "compact")[0].answer == "inline"  # asked for: allowed, only weaker
    with pytest.raises(ConfigError, match="not a string"):
        resolve_answer(INLINE, [{"text": "x", "output": {"n": 1}}], "compact")
    cls = TaskConfig(type="classification", labels=["a", "b"])
    assert resolve_answer(cls, [], "compact") == (cls, "")


def test_the_model_is_taught_the_marks_and_every_stage_sees_the_json_object() -> None:
    row = {"text": TEXT, "output": OUT}
    assert answer_target(INLINE, row) == mark(TEXT, OUT)
    assert answer_target(EXT, row) == target_text(EXT, row) == target_text(INLINE, row)  # the reference: JSON
    assert json.loads(target_text(INLINE, row)) == OUT
    said = "Wake me at [time: six am] tomorrow and six pm in [place: camden]"
    assert json.loads(answer_json(INLINE, row, said)) == {"time": "six am", "place": "camden"}
    assert answer_json(EXT, row, '{"a": 1}') == '{"a": 1}'  # a JSON answer is left as written
    a = generated_answer(INLINE, row, said, 12)
    assert json.loads(a.raw) == json.loads(a.prediction) == {"time": "six am", "place": "camden"}
    assert a.scores == {"new_tokens": 12, "model_text": said}
