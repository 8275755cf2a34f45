"""How each task shape turns a row into chat messages, and an answer into a prediction.

A *row* is the task-shaped dict every stage passes around:

    classification  {"text": str, "label": str}
    extraction      {"text": str, "output": {field: value, ...}}
    generation      {"input": str, "output": str}
    chat            {"messages": [{"role": ..., "content": ...}, ...]}   (last = assistant)

A gold row of a generation or chat task may hold several right answers: ``"references":
[str, ...]`` (the output / last assistant turn is the first of them); it is scored against
all of them (:func:`references`).

Training, evaluation and serving all call :func:`prompt_messages` and
:func:`target_text`, so the model sees exactly the same format everywhere.

Prompt styles (the style is part of the model: a run records it, a release ships it):

- ``full``: the instruction plus the label list / JSON keys in the system message,
  what a zero-shot model needs (base-model evaluation uses it);
- ``compact``: the instruction only; a fine-tuned model learns the labels / keys
  from the answers, so a row costs the same with 2 or 150 labels.

An extractor writes its answer as the JSON object, or *inline* (``task.answer``, see
:mod:`slmloop.predict.inline`): :func:`answer_target` is what the model is taught to write,
:func:`target_text` the reference answer every stage compares with, and :func:`answer_json`
turns what the model wrote into the JSON text evaluation and serving report.

What the companion index (:mod:`slmloop.predict.companion`) adds to a row travels beside it
as :class:`Hints`: a classifier trained with a shortlist (``train.shortlist``) also reads,
after the request, the labels of its most similar training requests (``hints.shortlist``);
an extractor reads its most similar training requests with their answers instead
(``hints.examples``). The label prior and the span reading are not shown in the prompt: the
answering code (:mod:`slmloop.predict.answers`) weighs the model's answer with them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from slmloop.errors import ConfigError
from slmloop.manifest import TaskConfig
from slmloop.predict.abstain import Abstention
from slmloop.predict.inline import inline_fits, mark, unmark

__all__ = [
    "PROMPT_STYLES",
    "TASK_FIELDS",
    "Hints",
    "answer_json",
    "answer_target",
    "answers_inline",
    "input_text",
    "parse_prediction",
    "prompt_messages",
    "references",
    "resolve_answer",
    "resolve_task",
    "system_message",
    "target_text",
]

PROMPT_STYLES = ("full", "compact")


@dataclass(frozen=True)
class Hints:
    """What the companion index adds to one row when a model is asked it.

    ``shortlist`` and ``examples`` are shown in the prompt after the request; ``prior`` and
    ``spans`` are not: the answering code weighs the model's answer with them.
    """

    #: a classifier's shortlist: the labels of the row's nearest training rows, most likely first
    shortlist: tuple[str, ...] = ()
    #: an extractor's examples: ``(input, answer)`` of the row's nearest training rows
    examples: tuple[tuple[str, str], ...] = ()
    #: a classifier's label prior: ``{label: weight x log P(label)}``, added to the model's label scores
    prior: dict[str, float] = field(default_factory=dict)
    #: an extractor's span reading: a CRF tagger's tags and marginals on the input's tokens, with the judge
    #: that weighs them against the model's answer (see :mod:`slmloop.predict.spans`)
    spans: dict[str, Any] | None = None
    #: a classifier's abstention: when its calibrated confidence is too low it answers the out-of-scope label
    abstain: Abstention | None = None


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


def system_message(task: TaskConfig, style: str = "full") -> str:
    """The system message of every example: the instruction, plus the schema in the ``full`` style."""
    if style not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {style!r}", hint=f"Use one of: {', '.join(PROMPT_STYLES)}.")
    text = task.instruction.strip()
    if style == "full" and task.type == "classification" and task.label_list:
        text = (text + "\n" if text else "") + "Labels: " + ", ".join(task.label_list) + "."
    if style == "full" and task.type == "extraction" and task.field_list:
        text = (text + "\n" if text else "") + "JSON keys: " + ", ".join(task.field_list) + "."
    return text


def prompt_messages(
    task: TaskConfig, row: dict[str, Any], style: str = "full", hints: Hints | None = None
) -> list[dict[str, str]]:
    """The conversation up to (not including) the answer; ``hints`` shows a shortlist or examples."""
    if task.type == "chat":
        return [dict(m) for m in row["messages"][:-1]]
    system = system_message(task, style)
    messages = [{"role": "system", "content": system}] if system else []
    content = input_text(task, row)
    if hints is not None and hints.shortlist:
        content += "\n(similar requests: " + ", ".join(hints.shortlist) + ")"
    for text, answer in hints.examples if hints is not None else ():
        content += f"\n(similar request: {text} -> {answer})"
    messages.append({"role": "user", "content": content})
    return messages


def resolve_task(task: TaskConfig, rows: list[dict[str, Any]]) -> TaskConfig:
    """``labels: auto`` / ``fields: auto`` filled in from ``rows`` (sorted, so the order is stable)."""
    update: dict[str, Any] = {}
    if task.labels == "auto":
        update["labels"] = sorted({str(r["label"]) for r in rows})
    if task.fields == "auto":
        keys = {k for r in rows if isinstance(r.get("output"), dict) for k in r["output"]}
        update["fields"] = sorted(keys | set(task.required))
    return task.model_copy(update=update) if update else task


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


def references(task: TaskConfig, row: dict[str, Any]) -> list[str]:
    """Every right answer of a row: a multi-reference gold row's ``references``, else its one target."""
    refs = row.get("references")
    if isinstance(refs, list) and refs and task.type in ("generation", "chat"):
        return [str(r) for r in refs]
    return [target_text(task, row)]


def answers_inline(task: TaskConfig) -> bool:
    """Whether a model of ``task`` writes its answers inline (an extractor trained with ``answer: inline``)."""
    return task.type == "extraction" and task.answer == "inline"


def answer_target(task: TaskConfig, row: dict[str, Any]) -> str:
    """What the model is taught to write for ``row``: :func:`target_text`, or for an extractor that answers
    inline, the request with its values marked where they occur."""
    if answers_inline(task) and isinstance(row["output"], dict):
        return mark(input_text(task, row), row["output"])
    return target_text(task, row)


def answer_json(task: TaskConfig, row: dict[str, Any], text: str) -> str:
    """What the model wrote for ``row`` as the answer slmloop reports: an inline answer turned into its JSON
    object; any other answer as written."""
    if not answers_inline(task):
        return text
    return json.dumps(unmark(text, input_text(task, row)), ensure_ascii=False, separators=(", ", ": "))


def resolve_answer(task: TaskConfig, rows: list[dict[str, Any]], style: str) -> tuple[TaskConfig, str]:
    """``task`` with ``answer: auto`` decided for a model trained on ``rows`` in prompt ``style``, and why.

    auto: inline for an extractor asked in the compact style whose training values are mostly spans of
    their request and all strings (:func:`slmloop.predict.inline.inline_fits`); else json. An explicit ``inline``
    is checked for what inline cannot hold (a value that is not a string, a bracket or colon in a field
    name or value).
    """
    if task.type != "extraction":
        return task, ""
    if task.answer == "json":
        return task, "as set in task.answer"
    fits, why = inline_fits([input_text(task, r) for r in rows], [r["output"] for r in rows])
    if task.answer == "inline":
        if not fits and "spans" not in why:
            raise ConfigError(f"task.answer is inline, but {why}", hint="Set task.answer: json (or auto).")
        return task, "as set in task.answer"
    if style != "compact":
        return task.model_copy(update={"answer": "json"}), f"the {style} prompt asks for the JSON object"
    return task.model_copy(update={"answer": "inline" if fits else "json"}), why


def parse_prediction(task: TaskConfig, text: str) -> str:
    """Turn generated text into the task's prediction.

    classification: the label the answer starts with (case-insensitive), else
    the first label mentioned anywhere, else ``""`` (counted as invalid).
    """
    text = text.strip()
    labels = task.label_list
    if task.type != "classification" or not labels:
        return text
    lowered = text.lower()
    by_lower = {lab.lower(): lab for lab in labels}
    if lowered in by_lower:
        return by_lower[lowered]
    # the earliest label mentioned as whole words; at equal positions the longest ("not spam" over "spam")
    best: tuple[int, int, str] | None = None
    for lab in labels:
        m = re.search(r"(?<![\w-])" + re.escape(lab.lower()) + r"(?![\w-])", lowered)
        if m and (best is None or (m.start(), -len(lab)) < (best[0], best[1])):
            best = (m.start(), -len(lab), lab)
    return best[2] if best else ""
