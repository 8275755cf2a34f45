"""Reading an answer: the JSON object a model wrote, and the (field, value) pairs extraction compares.

Extraction answers are compared as multisets of ``(field, value)`` pairs: a field whose value
is ``null`` (or an empty list) is absent, a list value counts each element, strings are
compared with surrounding whitespace trimmed and inner whitespace collapsed.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

__all__ = ["field_diff", "norm_value", "parse_json_object", "reference_object", "value_pairs"]


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (models sometimes wrap it in prose or fences)."""
    text = text.strip()
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def norm_value(v: Any) -> str:
    """A value as extraction metrics compare it: a string with its whitespace collapsed, else its JSON."""
    if isinstance(v, str):
        return " ".join(v.split())
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def value_pairs(obj: dict[str, Any] | None) -> Counter[tuple[str, str]]:
    """The multiset of ``(field, normalised value)`` pairs of an extraction answer."""
    out: Counter[tuple[str, str]] = Counter()
    for k, v in (obj or {}).items():
        for item in v if isinstance(v, list) else [v]:
            if item is not None and item != "":
                out[(k, norm_value(item))] += 1
    return out


def reference_object(stored: str) -> dict[str, Any]:
    """The JSON object a stored prediction's ``reference`` holds (``{}`` when it holds none)."""
    try:
        obj = json.loads(stored)
    except json.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def field_diff(reference: dict[str, Any], answer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Field-by-field difference: ``missing`` (expected, not given), ``wrong`` (both, different), ``extra``."""
    ref, got = value_pairs(reference), value_pairs(answer)
    out = []
    for f in dict.fromkeys([k for k, _ in ref] + [k for k, _ in got]):
        want = sorted(v for (k, v), n in ref.items() if k == f for _ in range(n))
        have = sorted(v for (k, v), n in got.items() if k == f for _ in range(n))
        if want == have:
            continue
        kind = "missing" if not have else ("extra" if not want else "wrong")
        out.append({"field": f, "kind": kind, "expected": want, "got": have})
    return out
