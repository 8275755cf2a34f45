"""Changing the gold set — only ever by making a new, hash-locked gold version.

Each change (add rows, remove rows, replace all rows, an external gold file named
in ``data.gold``) writes a new gold version whose parent is the current one, and an
audit event. Training data is not touched: the leakage gate blocks training until
``slmloop data prepare`` has made a dataset version that keeps clear of the new
gold rows.

A gold file is read like an import: every row is accepted, or rejected with its
line and a reason — the counts always add up. For a classifier or an extractor an
input has one right answer: a second copy of a row is ``duplicate_exact`` (with
the line it repeats), two lines that answer one input differently are both
``conflict`` (which one is right is for a person to say). For a generator or a
chat model every distinct answer of an input is one more reference of one gold
row (:func:`merge_references`), scored against all of them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from slmloop.data.clean import answer_key, dedupe_key, input_key, many_answers, normalize_row
from slmloop.data.importer import read_rows, resolve_mapping, source_path
from slmloop.data.versions import current_gold, current_gold_rows, freeze_gold
from slmloop.errors import DataError, StoreError
from slmloop.manifest import SourceConfig, TaskConfig
from slmloop.predict.tasks import input_text, references, target_text
from slmloop.project import Project
from slmloop.store import GoldVersion

__all__ = [
    "GoldFile",
    "gold_add",
    "gold_history",
    "gold_remove",
    "gold_replace",
    "merge_references",
    "read_gold_file",
]


@dataclass
class GoldFile:
    path: str
    rows: list[dict[str, Any]]  # the gold rows: mapped, normalised, one per input (with its references)
    rejects: list[dict[str, Any]]  # file, line, reason, detail, raw
    rows_read: int
    placed: int  # lines that became a gold row or one more reference of one

    def accounting(self) -> dict[str, Any]:
        from collections import Counter

        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "accepted": self.placed,
            "gold_rows": len(self.rows),
            "rejected": dict(Counter(r["reason"] for r in self.rejects)),
        }


def merge_references(task: TaskConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gold rows of a generation or chat task: rows sharing an input become one row whose ``references``
    hold each distinct answer (first spelling kept, in order; a row's own references count too); the first
    row's answer leads. Other tasks: the rows as they are."""
    if not many_answers(task):
        return rows
    merged: dict[str, dict[str, Any]] = {}
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        key = input_key(task, row)
        if key not in merged:
            merged[key] = {**row, "references": [], "_files": []}
        files = merged[key]["_files"]
        for file in [*row.get("_files", []), row.get("_src", {}).get("file")]:
            if file and file not in files:
                files.append(file)  # where its references came from (not part of the row's content)
        for ref in references(task, row):
            if dedupe_key(ref) not in seen[key]:
                seen[key].add(dedupe_key(ref))
                merged[key]["references"].append(ref)
    return list(merged.values())


def read_gold_file(project: Project, src: SourceConfig, force: bool = False) -> GoldFile:
    """Every row of a gold file: accepted (normalised, first copy of its input) or rejected with a reason."""
    task = project.manifest.task
    path = source_path(project, src)
    src, _ = resolve_mapping(task, path, src, project.manifest.data.mapping_confidence, force)
    res = read_rows(task, path, src, "gold-file")
    rejects = list(res.rejects)
    by_input: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for raw in res.accepted:
        row = normalize_row(task, raw)
        where = {k: raw["_src"][k] for k in ("file", "line")}
        if not input_text(task, row).strip():
            rejects.append({**where, "reason": "empty_input", "detail": "empty after normalisation", "raw": ""})
            continue
        by_input[input_key(task, row)].append((where, row))
    kept: list[dict[str, Any]] = []
    for group in by_input.values():
        answers = {answer_key(task, row) for _, row in group}
        if len(answers) > 1 and not many_answers(task):
            listing = "; ".join(f"line {w['line']}: {target_text(task, r)[:60]!r}" for w, r in group)
            for where, row in group:
                detail = f"the file answers this input differently: {listing}"
                rejects.append({**where, "reason": "conflict", "detail": detail, "raw": input_text(task, row)[:300]})
            continue
        first_line: dict[str, Any] = {}
        for where, row in group:
            answer = answer_key(task, row)
            if answer in first_line:
                detail = f"same input and answer as line {first_line[answer]} (kept there)"
                shown = input_text(task, row)[:300]
                rejects.append({**where, "reason": "duplicate_exact", "detail": detail, "raw": shown})
                continue
            first_line[answer] = where["line"]
            kept.append(row)
    placed = len(kept)
    rows = merge_references(task, kept)
    if placed + len(rejects) != res.rows_read:  # pragma: no cover - a bug, not user input
        raise StoreError(f"gold file accounting broke: {placed} + {len(rejects)} != {res.rows_read}")
    if not rows:
        raise DataError(
            f"{src.path} yields no usable rows ({len(rejects)} rejected)",
            hint="`slmloop data inspect FILE` shows how its columns map.",
        )
    return GoldFile(str(path or src.path), rows, rejects, res.rows_read, placed)


def gold_add(project: Project, rows: list[dict[str, Any]], note: str = "") -> tuple[GoldVersion, int]:
    """New gold version = current + ``rows``. Returns (version, added).

    An input already in gold is skipped; for a generation or chat task its new answers are added to
    that gold row's references instead (counted as added)."""
    task = project.manifest.task
    gold, current = current_gold_rows(project)
    merged = merge_references(task, [*current, *rows]) if many_answers(task) else None
    if merged is not None:
        before = sum(len(r.get("references") or [r]) for r in current)
        added = sum(len(r["references"]) for r in merged) - before
        if not added:
            return gold, 0
        return freeze_gold(project, merged, gold.id, note or f"added {added} row(s) or reference(s)"), added
    keys = {input_key(task, r) for r in current}
    fresh = []
    for r in rows:
        k = input_key(task, r)
        if k not in keys:
            keys.add(k)
            fresh.append(r)
    if not fresh:
        return gold, 0
    return freeze_gold(project, current + fresh, gold.id, note or f"added {len(fresh)} row(s)"), len(fresh)


def gold_remove(project: Project, indices: list[int], note: str = "") -> GoldVersion:
    gold, current = current_gold_rows(project)
    bad = [i for i in indices if not 0 <= i < len(current)]
    if bad:
        raise DataError(
            f"gold row(s) {bad} do not exist (gold has rows 0-{len(current) - 1})",
            hint="`slmloop gold show --limit N` prints the row numbers.",
        )
    drop = set(indices)
    rest = [r for i, r in enumerate(current) if i not in drop]
    if not rest:
        raise DataError("that would leave the gold set empty", hint="Keep at least one row.")
    return freeze_gold(project, rest, gold.id, note or f"removed row(s) {sorted(drop)}")


def gold_replace(project: Project, rows: list[dict[str, Any]], note: str = "") -> GoldVersion:
    """Freeze ``rows`` (already free of duplicate inputs, see :func:`read_gold_file`) as the gold set."""
    gold = current_gold(project)
    keys = [input_key(project.manifest.task, r) for r in rows]
    if len(set(keys)) != len(keys):
        raise DataError("gold rows repeat an input", hint="Read the file with read_gold_file, which rejects copies.")
    return freeze_gold(project, rows, gold.id if gold else None, note or "replaced from a curated file")


def gold_history(project: Project) -> list[GoldVersion]:
    return list(project.store.list(GoldVersion, GoldVersion.created_at))
