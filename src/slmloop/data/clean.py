"""Text normalisation and the keys used to find duplicates."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from slmloop.manifest import TaskConfig

__all__ = ["dedupe_key", "normalize_row", "normalize_text"]

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
