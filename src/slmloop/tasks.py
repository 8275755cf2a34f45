"""How each task shape turns a row into chat messages, and an answer into a prediction.

A *row* is the task-shaped dict every stage passes around:

    classification  {"text": str, "label": str}
    extraction      {"text": str, "output": {field: value, ...}}
    generation      {"input": str, "output": str}
    chat            {"messages": [{"role": ..., "content": ...}, ...]}   (last = assistant)

Training, evaluation and serving all call :func:`prompt_messages` and
:func:`target_text`, so the model sees exactly the same format everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

from slmloop.manifest import TaskConfig

__all__ = [
    "TASK_FIELDS",
    "input_text",
    "parse_prediction",
    "prompt_messages",
    "target_text",
]

#: the fields a source must provide, per task
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "extraction": ("text", "output"),
    "generation": ("input", "output"),
    "chat": ("messages",),
}


def input_text(task: TaskConfig, row: dict[str, Any]) -> str:
    """The user-side text of a row: what dedupe, leakage and drift compare."""
    if task.type == "chat":
        return "\n".join(m["content"] for m in row["messages"][:-1] if m["role"] != "system")
    if task.type == "generation":
        return str(row["input"])
    return str(row["text"])


def _system(task: TaskConfig) -> str:
    text = task.instruction.strip()
    if task.type == "classification" and task.labels:
        text = (text + "\n" if text else "") + "Labels: " + ", ".join(task.labels) + "."
    if task.type == "extraction" and task.fields:
        text = (text + "\n" if text else "") + "JSON keys: " + ", ".join(task.fields) + "."
    return text


def prompt_messages(task: TaskConfig, row: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation up to (not including) the answer."""
    if task.type == "chat":
        return [dict(m) for m in row["messages"][:-1]]
    system = _system(task)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": input_text(task, row)})
    return messages


def target_text(task: TaskConfig, row: dict[str, Any]) -> str:
    """The answer the model should produce for this row."""
    if task.type == "classification":
        return str(row["label"])
    if task.type == "extraction":
        out = row["output"]
        if isinstance(out, str):
            return out
        return json.dumps(out, ensure_ascii=False, separators=(", ", ": "))
    if task.type == "chat":
        return str(row["messages"][-1]["content"])
    return str(row["output"])


def parse_prediction(task: TaskConfig, text: str) -> str:
    """Turn generated text into the task's prediction.

    classification: the label the answer starts with (case-insensitive), else
    the first label mentioned anywhere, else ``""`` (counted as invalid).
    """
    text = text.strip()
    if task.type != "classification" or not task.labels:
        return text
    lowered = text.lower()
    by_lower = {lab.lower(): lab for lab in task.labels}
    if lowered in by_lower:
        return by_lower[lowered]
    # the earliest label mentioned as whole words; at equal positions the longest ("not spam" over "spam")
    best: tuple[int, int, str] | None = None
    for lab in task.labels:
        m = re.search(r"(?<![\w-])" + re.escape(lab.lower()) + r"(?![\w-])", lowered)
        if m and (best is None or (m.start(), -len(lab)) < (best[0], best[1])):
            best = (m.start(), -len(lab), lab)
    return best[2] if best else ""
