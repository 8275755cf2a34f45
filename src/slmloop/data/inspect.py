"""``slmloop data inspect``: propose how a source's columns map onto the task's fields.

Each proposal carries a confidence in [0, 1] and the reason for it, from two kinds
of evidence: the column's *name* (``message`` for text, ``category`` for a label …)
and its *values* (a label column has few distinct values that match
``task.labels``; an input column holds the longest free text). Known layouts are
recognised first: OpenAI chat JSONL (``messages``) and Alpaca
(``instruction``/``input``/``output``). A mapping below
``data.mapping_confidence`` is never applied without ``--force``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmloop.data.sources import read_records
from slmloop.manifest import SourceConfig, TaskConfig
from slmloop.predict.tasks import TASK_FIELDS

__all__ = ["ColumnProfile", "Inspection", "Proposal", "inspect_records", "inspect_source"]

SAMPLE = 2000

_NAMES: dict[str, tuple[set[str], set[str]]] = {
    # task field: (exact names, strong synonyms)
    "text": (
        {"text"},
        {
            "sentence",
            "message",
            "content",
            "body",
            "review",
            "query",
            "question",
            "utterance",
            "sms",
            "email",
            "document",
            "input",
            "prompt",
            "tweet",
            "comment",
            "description",
        },
    ),
    "label": (
        {"label"},
        {
            "labels",
            "class",
            "category",
            "target",
            "intent",
            "sentiment",
            "tag",
            "y",
            "topic",
            "classification",
            "answer",
            "output",
        },
    ),
    "input": ({"input"}, {"prompt", "question", "instruction", "query", "source", "text", "context", "problem"}),
    "output": (
        {"output"},
        {
            "response",
            "answer",
            "completion",
            "target",
            "summary",
            "solution",
            "reply",
            "label",
            "result",
            "json",
            "fields",
        },
    ),
    "messages": ({"messages"}, {"conversation", "conversations", "dialog", "dialogue", "chat"}),
}


@dataclass
class ColumnProfile:
    name: str
    kinds: Counter[str] = field(default_factory=Counter)
    non_null: int = 0
    distinct: set[str] = field(default_factory=set)
    total_len: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, value: Any) -> None:
        if value is None:
            return
        self.non_null += 1
        self.kinds[type(value).__name__] += 1
        text = value if isinstance(value, str) else repr(value)
        self.total_len += len(text)
        if len(self.distinct) < 1000:
            self.distinct.add(text.strip())
        if len(self.examples) < 3 and text.strip():
            self.examples.append(text[:80])

    @property
    def mean_len(self) -> float:
        return self.total_len / self.non_null if self.non_null else 0.0

    @property
    def kind(self) -> str:
        return self.kinds.most_common(1)[0][0] if self.kinds else "null"


@dataclass
class Proposal:
    task_field: str
    column: str | None
    confidence: float
    reason: str


@dataclass
class Inspection:
    rows: int
    unreadable: int
    layout: str
    columns: dict[str, ColumnProfile]
    proposals: list[Proposal]

    @property
    def confidence(self) -> float:
        return min((p.confidence for p in self.proposals), default=0.0)

    @property
    def mapping(self) -> dict[str, str]:
        return {p.task_field: p.column for p in self.proposals if p.column is not None}


def _name_score(task_field: str, column: str) -> tuple[float, str]:
    exact, synonyms = _NAMES[task_field]
    low = column.lower().strip()
    if low in exact:
        return 0.95, f"column is named {column!r}"
    if low in synonyms:
        return 0.8, f"{column!r} is a usual name for {task_field}"
    if any(s in low for s in exact | synonyms):
        return 0.6, f"{column!r} contains a usual name for {task_field}"
    return 0.0, ""


def _label_score(task: TaskConfig, prof: ColumnProfile, rows: int) -> tuple[float, str]:
    if prof.kind not in ("str", "int", "bool") or not prof.non_null:
        return 0.0, ""
    if task.label_list:
        allowed = {lab.casefold() for lab in task.label_list}
        matching = sum(v.casefold() in allowed for v in prof.distinct)
        share = matching / max(len(prof.distinct), 1)
        if share == 0:
            return 0.0, f"none of its values are in task.labels ({', '.join(task.label_list)})"
        return 0.5 + 0.45 * share, f"{matching} of its {len(prof.distinct)} distinct values are task labels"
    few = len(prof.distinct) <= max(200, rows // 20)  # labels: auto takes up to hundreds of classes
    return (0.6, f"few distinct values ({len(prof.distinct)})") if few else (0.0, "")


def _propose_columns(task: TaskConfig, cols: dict[str, ColumnProfile], rows: int) -> list[Proposal]:
    wanted = TASK_FIELDS[task.type]
    text_cols = sorted((c for c in cols.values() if c.kind == "str"), key=lambda c: -c.mean_len)
    longest = text_cols[0].name if text_cols else None
    candidates: dict[str, list[tuple[float, str, str]]] = {}
    for f in wanted:
        options = []
        for name, prof in cols.items():
            score, why = _name_score(f, name)
            if f == "label":
                v_score, v_why = _label_score(task, prof, rows)
                if v_why.startswith("none of its values"):
                    score, why = min(score, 0.3), (why + "; " if why else "") + v_why
                elif v_score > score:
                    score, why = v_score, v_why if not why else f"{why}; {v_why}"
            elif f in ("text", "input") and name == longest and prof.mean_len > 20:
                bonus = 0.7 if score == 0 else min(score + 0.1, 0.97)
                why = (why + "; " if why else "") + f"longest free text (mean {prof.mean_len:.0f} chars)"
                score = bonus
            elif f == "output" and task.type == "extraction" and prof.kind == "dict":
                score, why = max(score, 0.85), (why + "; " if why else "") + "holds JSON objects"
            elif f == "messages" and prof.kind == "list":
                score, why = max(score, 0.7), (why + "; " if why else "") + "holds lists"
            if score > 0:
                options.append((score, name, why))
        candidates[f] = sorted(options, reverse=True)
    # assign greedily, best score first, one column per field
    proposals: dict[str, Proposal] = {}
    used: set[str] = set()
    pairs = sorted(((s, f, n, w) for f, opts in candidates.items() for s, n, w in opts), reverse=True)
    for score, f, name, why in pairs:
        if f in proposals or name in used:
            continue
        proposals[f] = Proposal(f, name, round(score, 2), why)
        used.add(name)
    for f in wanted:
        proposals.setdefault(f, Proposal(f, None, 0.0, "no column looks like it"))
    return [proposals[f] for f in wanted]


def inspect_records(task: TaskConfig, records: list[dict[str, Any]], unreadable: int = 0) -> Inspection:
    cols: dict[str, ColumnProfile] = {}
    for rec in records:
        for k, v in rec.items():
            cols.setdefault(k, ColumnProfile(k)).add(v)
    rows = len(records)
    wanted = TASK_FIELDS[task.type]
    # known layouts first
    if "messages" in cols and cols["messages"].kind == "list":
        layout = "openai-chat"
        layouts: dict[str, dict[str, str | None]] = {
            "chat": {"messages": "messages"},
            "classification": {"text": "messages.user", "label": "messages.assistant"},
            "extraction": {"text": "messages.user", "output": "messages.assistant"},
            "generation": {"input": "messages.user", "output": "messages.assistant"},
        }
        table = layouts[task.type]
        proposals = [
            Proposal(f, c, 0.9, "OpenAI chat layout: messages with user/assistant turns") for f, c in table.items()
        ]
    elif {"instruction", "output"} <= set(cols):
        layout = "alpaca"
        table = {
            "input": "alpaca.prompt",
            "output": "output",
            "text": "alpaca.prompt",
            "label": "output",
            "messages": None,
        }
        proposals = [
            Proposal(
                f,
                table.get(f),
                0.9 if table.get(f) else 0.0,
                "Alpaca layout: instruction (+ input) → prompt, output → answer",
            )
            for f in wanted
        ]
    elif all(f in cols for f in wanted):
        layout = "columns"
        proposals = [Proposal(f, f, 1.0, f"column is named {f!r}") for f in wanted]
        if task.type == "classification" and task.label_list:
            # the names match; only values that mostly miss task.labels cast doubt on the mapping
            score, why = _label_score(task, cols["label"], rows)
            if score < 0.5 + 0.45 * 0.5:
                proposals[-1] = Proposal("label", "label", round(score, 2), why)
    else:
        layout = "columns"
        proposals = _propose_columns(task, cols, rows)
    return Inspection(rows, unreadable, layout, cols, proposals)


def inspect_source(task: TaskConfig, path: Path, src: SourceConfig, sample: int = SAMPLE) -> Inspection:
    records, unreadable = [], 0
    for rec in itertools.islice(read_records(path, src), sample):
        if rec.fields is None:
            unreadable += 1
        else:
            records.append(rec.fields)
    return inspect_records(task, records, unreadable)
