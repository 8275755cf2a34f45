"""Changing the gold set — only ever by making a new, hash-locked gold version.

Each change (add rows, remove rows, replace all rows, an external gold file named
in ``data.gold``) writes a new gold version whose parent is the current one, and an
audit event. Training data is not touched: the leakage gate blocks training until
``slmloop data prepare`` has made a dataset version that keeps clear of the new
gold rows.

A gold file is read like an import: every row is accepted, or rejected with its
line and a reason (``duplicate_exact`` for a second copy of an input, with the
line it repeats) — the counts always add up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmloop.data.clean import dedupe_key, normalize_row
from slmloop.data.importer import read_rows, resolve_mapping, source_path
from slmloop.data.versions import current_gold, current_gold_rows, freeze_gold
from slmloop.errors import DataError, StoreError
from slmloop.manifest import SourceConfig
from slmloop.project import Project
from slmloop.store import GoldVersion
from slmloop.tasks import input_text

__all__ = ["GoldFile", "gold_add", "gold_history", "gold_remove", "gold_replace", "read_gold_file"]


@dataclass
class GoldFile:
    path: str
    rows: list[dict[str, Any]]  # accepted: mapped, normalised, first copy of each input
    rejects: list[dict[str, Any]]  # file, line, reason, detail, raw
    rows_read: int

    def accounting(self) -> dict[str, Any]:
        from collections import Counter

        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "accepted": len(self.rows),
            "rejected": dict(Counter(r["reason"] for r in self.rejects)),
        }


def read_gold_file(project: Project, src: SourceConfig, force: bool = False) -> GoldFile:
    """Every row of a gold file: accepted (normalised, first copy of its input) or rejected with a reason."""
    task = project.manifest.task
    path = source_path(project, src)
    src, _ = resolve_mapping(task, path, src, project.manifest.data.mapping_confidence, force)
    res = read_rows(task, path, src, "gold-file")
    rows: list[dict[str, Any]] = []
    rejects = list(res.rejects)
    first_line: dict[str, Any] = {}
    for raw in res.accepted:
        row = normalize_row(task, raw)
        where = {k: raw["_src"][k] for k in ("file", "line")}
        text = input_text(task, row)
        if not text.strip():
            rejects.append({**where, "reason": "empty_input", "detail": "empty after normalisation", "raw": ""})
            continue
        key = dedupe_key(text)
        if key in first_line:
            detail = f"same input as line {first_line[key]} (kept there)"
            rejects.append({**where, "reason": "duplicate_exact", "detail": detail, "raw": text[:300]})
            continue
        first_line[key] = where["line"]
        rows.append(row)
    if len(rows) + len(rejects) != res.rows_read:  # pragma: no cover - a bug, not user input
        raise StoreError(f"gold file accounting broke: {len(rows)} + {len(rejects)} != {res.rows_read}")
    if not rows:
        raise DataError(
            f"{src.path} yields no usable rows ({len(rejects)} rejected)",
            hint="`slmloop data inspect FILE` shows how its columns map.",
        )
    return GoldFile(str(path or src.path), rows, rejects, res.rows_read)


def gold_add(project: Project, rows: list[dict[str, Any]], note: str = "") -> tuple[GoldVersion, int]:
    """New gold version = current + ``rows`` (inputs already in gold are skipped). Returns (version, added)."""
    task = project.manifest.task
    gold, current = current_gold_rows(project)
    keys = {dedupe_key(input_text(task, r)) for r in current}
    fresh = []
    for r in rows:
        k = dedupe_key(input_text(task, r))
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
    keys = [dedupe_key(input_text(project.manifest.task, r)) for r in rows]
    if len(set(keys)) != len(keys):
        raise DataError("gold rows repeat an input", hint="Read the file with read_gold_file, which rejects copies.")
    return freeze_gold(project, rows, gold.id if gold else None, note or "replaced from a curated file")


def gold_history(project: Project) -> list[GoldVersion]:
    return list(project.store.list(GoldVersion, GoldVersion.created_at))
