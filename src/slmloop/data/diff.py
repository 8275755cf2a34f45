"""What changed between two dataset versions, row by row: added, removed, relabelled, moved.

A row is matched across versions by what the task says makes it the same row
(:mod:`slmloop.data.clean`): its input for a classifier or an extractor (another
answer to the same input is a *relabel*), its (input, answer) pair for a
generator or a chat model (a new answer is one more row). Gold rows with
several references count one row per reference.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmloop.data.clean import answer_key, dedupe_key, input_key, many_answers
from slmloop.data.versions import DatasetSplits
from slmloop.manifest import TaskConfig
from slmloop.predict.tasks import input_text, references

__all__ = ["SPLITS", "DatasetChanges", "dataset_changes", "where_from"]

SPLITS = ("train", "validation", "gold")


@dataclass
class DatasetChanges:
    old: str
    new: str
    #: one entry per row: {split, input, answer, source}; relabelled: {split, input, old, new, source};
    #: moved: {input, answer, from, to}
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    relabelled: list[dict[str, Any]] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    #: classification: label counts per split, (before, after)
    labels: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def counts(self, split: str | None = None) -> dict[str, int]:
        """How many rows were added, removed, relabelled (in ``split``, or in any) and moved between splits."""

        def n(items: list[dict[str, Any]]) -> int:
            return sum(1 for x in items if split is None or x["split"] == split)

        out = {"added": n(self.added), "removed": n(self.removed), "relabelled": n(self.relabelled)}
        if split is None:
            out["moved"] = len(self.moved)
        return out

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.relabelled or self.moved)


def where_from(row: dict[str, Any]) -> str:
    """``file:line`` of the source row (``import`` where the file is unknown)."""
    src = row.get("_src") or {}
    if "file" in src:
        return f"{Path(str(src['file'])).name}:{src.get('line', '?')}"
    return str(src.get("import", ""))


def _keyed(task: TaskConfig, splits: DatasetSplits) -> dict[Any, tuple[str, dict[str, Any], str]]:
    """row key → (split, row, answer): by input (one answer each), or by (input, answer) pair."""
    out: dict[Any, tuple[str, dict[str, Any], str]] = {}
    for name, rows in zip(SPLITS, _parts(splits), strict=True):
        for r in rows:
            if many_answers(task):
                for ref in references(task, r):  # a training row: its one answer
                    out[(input_key(task, r), dedupe_key(ref))] = (name, r, ref)
            else:  # the label, or the extraction object as answers are compared
                out[input_key(task, r)] = (name, r, answer_key(task, r))
    return out


def dataset_changes(task: TaskConfig, old: DatasetSplits, new: DatasetSplits) -> DatasetChanges:
    """Every row added, removed, relabelled (same input, another answer) or moved between splits."""
    a, b = _keyed(task, old), _keyed(task, new)
    d = DatasetChanges(old.version.id, new.version.id)
    for key, (split, row, answer) in b.items():
        text = input_text(task, row)[:300]
        if key not in a:
            d.added.append({"split": split, "input": text, "answer": answer, "source": where_from(row)})
            continue
        was_split, _, was = a[key]
        if was != answer:
            d.relabelled.append({"split": split, "input": text, "old": was, "new": answer, "source": where_from(row)})
        if was_split != split:
            d.moved.append({"input": text, "answer": answer, "from": was_split, "to": split})
    for key, (split, row, answer) in a.items():
        if key not in b:
            d.removed.append({"split": split, "input": input_text(task, row)[:300], "answer": answer})
    if task.type == "classification":
        for s, rows_a, rows_b in zip(SPLITS, _parts(old), _parts(new), strict=True):
            before, after = Counter(str(r["label"]) for r in rows_a), Counter(str(r["label"]) for r in rows_b)
            d.labels[s] = {lab: (before.get(lab, 0), after.get(lab, 0)) for lab in sorted(set(before) | set(after))}
    return d


def _parts(splits: DatasetSplits) -> tuple[list[dict[str, Any]], ...]:
    return splits.train, splits.validation, splits.gold
