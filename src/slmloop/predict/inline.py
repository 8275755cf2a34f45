"""Inline answers: an extractor that copies the request with each value marked where it occurs.

    request   wake me at six am tomorrow
    answer    wake me at [time: six am] [date: tomorrow]
    object    {"date": "tomorrow", "time": "six am"}

A fine-tuned extractor can write its answer as the JSON object itself or *inline*
(``task.answer``). Inline, the model reads the request left to right and decides at each
word whether a value starts there, which field it is and where it ends, as a sequence tagger
does; a JSON answer names the fields first and has to find each value again. On HWU64 slots
the same recipe scores better inline than as JSON (docs/training.md, "Inline answers for
extraction"). Values that are not spans of the request (a normalised date, an intent)
are written after it, marked the same way, so nothing a JSON answer can hold is lost as long
as values are strings.

Everything past the model sees the JSON object: :func:`unmark` turns an inline answer back
into it, and evaluation, serving and exports report that object (the model's own text is kept
beside it).

This module also holds the word tokens and span search the CRF tagger and the span prior use
(:func:`tokens`, :func:`find_span`), so a value is a span here exactly when it is one there.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

__all__ = ["INLINE_SHARE", "find_span", "inline_fits", "mark", "span_values", "tokens", "unmark"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
#: a mark: ``[field: value]`` (a field name holds no bracket or colon, a value no bracket)
MARK = re.compile(r"\[([^\[\]:]+): ([^\[\]]*)\]")
#: share of all training values that must be spans of their request for ``answer: auto`` to pick inline
INLINE_SHARE = 0.8


def tokens(text: str) -> list[tuple[str, int, int]]:
    """Word and punctuation tokens of ``text`` with their character offsets."""
    return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def find_span(toks: list[tuple[str, int, int]], value: str, taken: set[int]) -> tuple[int, int] | None:
    """Token range ``[a, b)`` of the first occurrence of ``value`` (whole tokens, any case) not in ``taken``."""
    want = [t.lower() for t, _, _ in tokens(value)]
    words = [t.lower() for t, _, _ in toks]
    if not want:
        return None
    for i in range(len(words) - len(want) + 1):
        if words[i : i + len(want)] == want and not taken & set(range(i, i + len(want))):
            return i, i + len(want)
    return None


def span_values(output: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(field, value)`` of every value an answer holds, fields in sorted order (empty values left out)."""
    return [
        (f, x)
        for f in sorted(output)
        for x in (output[f] if isinstance(output[f], list) else [output[f]])
        if x is not None and x != ""
    ]


def mark(text: str, output: dict[str, Any]) -> str:
    """``text`` with every value of ``output`` marked ``[field: value]`` where it occurs; values that are
    no span of it (a normalised value) are marked after it, in field order.

    A value is matched as whole tokens, ignoring case, at its first occurrence that no other value
    holds (fields in sorted order, as the CRF's BIO tags take them). The mark holds the value as the
    answer writes it (its case, its spacing), so the model learns the answer's conventions; the text
    around the marks is the request's own.
    """
    toks = tokens(text)
    taken: set[int] = set()
    spans: list[tuple[int, int, str, str]] = []
    after: list[str] = []
    for f, value in span_values(output):
        span = find_span(toks, str(value), taken) if isinstance(value, str) else None
        if span is None:
            after.append(f"[{f}: {value}]")
            continue
        taken.update(range(*span))
        spans.append((toks[span[0]][1], toks[span[1] - 1][2], f, value))
    parts, last = [], 0
    for a, b, f, value in sorted(spans):
        parts += [text[last:a], f"[{f}: {value}]"]
        last = b
    parts.append(text[last:])
    return " ".join(["".join(parts), *after])


def unmark(answer: str, request: str = "") -> dict[str, Any]:
    """The JSON object an inline ``answer`` marks: ``{field: value}``, a list where a field is marked
    more than once. A mark the ``request`` itself already holds verbatim is the request's text, not a value."""
    quoted = Counter(m.group(0) for m in MARK.finditer(request))
    out: dict[str, Any] = {}
    for m in MARK.finditer(answer):
        if quoted[m.group(0)] > 0:
            quoted[m.group(0)] -= 1
            continue
        f, value = m.group(1).strip(), " ".join(m.group(2).split())
        if not f or not value:
            continue
        if f in out:
            out[f] = [*out[f], value] if isinstance(out[f], list) else [out[f], value]
        else:
            out[f] = value
    return out


def inline_fits(texts: list[str], outputs: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether an extractor trained on these rows can answer inline, and why (for ``answer: auto``).

    Inline holds every answer whose values are strings (or lists of them) and whose field names and
    values hold no mark characters; it pays off when most values are spans of their request
    (:data:`INLINE_SHARE`).
    """
    spans = total = 0
    for text, output in zip(texts, outputs, strict=True):
        if not isinstance(output, dict):
            return False, "an answer is not a JSON object"
        toks = tokens(text)
        taken: set[int] = set()
        for f, value in span_values(output):
            if not isinstance(value, str):
                return False, f"field {f!r} holds a value that is not a string ({type(value).__name__})"
            if re.search(r"[\[\]:]", f) or re.search(r"[\[\]]", value):
                return False, f"field {f!r} or its value {value!r} holds a bracket or a colon"
            total += 1
            span = find_span(toks, value, taken)
            if span is not None:
                spans += 1
                taken.update(range(*span))
    if not total:
        return False, "no answer holds a value"
    share = spans / total
    if share < INLINE_SHARE:
        return False, f"{share:.0%} of the values are spans of their request (inline needs {INLINE_SHARE:.0%})"
    return True, f"{share:.0%} of the values are spans of their request"
