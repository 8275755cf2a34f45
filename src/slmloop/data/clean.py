"""Text normalisation and the keys used to find duplicates.

What counts as a duplicate depends on the task. A classifier or an extractor has one
right answer per input: rows are compared by :func:`input_key`, and :func:`answer_key`
tells a copy (same answer) from a conflict or a correction (another answer). A
generator or a chat model may have several right answers for one input: a row is the
pair of both keys, and every distinct pair counts (:func:`many_answers`).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from slmloop.manifest import TaskConfig
from slmloop.predict.tasks import input_text, target_text

__all__ = ["answer_key", "dedupe_key", "input_key", "many_answers", "normalize_row", "normalize_text"]

# C0/C1 control characters except tab and newline
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\s*\n\s*")


def normalize_text(text: str) -> str:
    """NFC, control characters removed, runs of spaces collapsed, ends stripped."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n", text)
    return text.strip()


def dedupe_key(text: str) -> str:
    """Two inputs are exact duplicates when their keys are equal (case and spacing ignored)."""
    folded = " ".join(normalize_text(text).casefold().split())
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()


def many_answers(task: TaskConfig) -> bool:
    """Whether one input may have several right answers (generation, chat): then every distinct
    (input, answer) pair is a row, and a gold input keeps all its references."""
    return task.type in ("generation", "chat")


def input_key(task: TaskConfig, row: dict[str, Any]) -> str:
    """Two rows ask the same thing when their keys are equal: the input (case and spacing ignored);
    for chat, the whole conversation before the answer, roles included."""
    if task.type == "chat":
        turns = [[m["role"], " ".join(normalize_text(m["content"]).casefold().split())] for m in row["messages"][:-1]]
        return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8")).hexdigest()
    return dedupe_key(input_text(task, row))


def _canonical(value: Any) -> Any:
    """An extraction value as answers are compared: strings with their spacing collapsed, list order ignored."""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, list):
        items = [_canonical(v) for v in value if v is not None and v != ""]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False))
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def answer_key(task: TaskConfig, row: dict[str, Any]) -> str:
    """Two answers to one input agree when their keys are equal: the label; the extraction object with
    empty fields dropped (as the metrics read it); a text with case and spacing ignored."""
    if task.type == "classification":
        return str(row["label"])
    if task.type == "extraction" and isinstance(row["output"], dict):
        kept = {k: _canonical(v) for k, v in row["output"].items() if v is not None and v != "" and v != []}
        return json.dumps(kept, sort_keys=True, ensure_ascii=False)
    return dedupe_key(target_text(task, row))


def normalize_row(task: TaskConfig, row: dict[str, Any], fn: Callable[[str], str] = normalize_text) -> dict[str, Any]:
    """``fn`` applied to every text of a task row (the input, and a generation's output)."""
    out = dict(row)
    if task.type == "generation":
        out["input"] = fn(row["input"])
        out["output"] = fn(row["output"])
    elif task.type in ("classification", "extraction"):
        out["text"] = fn(row["text"])
    elif task.type == "chat":
        out["messages"] = [{**m, "content": fn(m["content"])} for m in row["messages"]]
    return out
