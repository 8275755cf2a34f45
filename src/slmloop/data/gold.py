"""Changing the gold set — only ever by making a new, hash-locked gold version.

Each change (add rows, remove rows, replace all rows) writes a new gold version
whose parent is the current one, and an audit event. Training data is not touched:
the leakage gate blocks training until ``slmloop data prepare`` has made a dataset
version that keeps clear of the new gold rows.
"""

from __future__ import annotations

from typing import Any

from slmloop.data.clean import dedupe_key, normalize_text
from slmloop.data.importer import read_rows, resolve_mapping, source_path
from slmloop.data.prepare import _normalize_row, current_gold, freeze_gold
from slmloop.errors import DataError, NotFoundError
from slmloop.manifest import SourceConfig
from slmloop.project import Project
from slmloop.store import GoldVersion
from slmloop.tasks import input_text

__all__ = ["gold_add", "gold_history", "gold_remove", "gold_replace", "read_gold_file"]


def _require_gold(project: Project) -> tuple[GoldVersion, list[dict[str, Any]]]:
    gold = current_gold(project)
    if gold is None:
        raise NotFoundError(
            "there is no gold set yet", hint="Run `slmloop data prepare`, or `slmloop gold freeze FILE`."
        )
    return gold, project.objects.read_jsonl(gold.object)


def read_gold_file(project: Project, src: SourceConfig, force: bool = False) -> tuple[list[dict], list[dict]]:
    """Rows of a file as task rows (normalised), and the rows it had to reject."""
    task = project.manifest.task
    path = source_path(project, src)
    src, _ = resolve_mapping(task, path, src, project.manifest.data.mapping_confidence, force)
    res = read_rows(task, path, src, "gold-file")
    rows = [_normalize_row(task, r, normalize_text) for r in res.accepted]
    if not rows:
        raise DataError(
            f"{src.path} yields no usable rows ({len(res.rejects)} rejected)",
            hint="`slmloop data inspect FILE` shows how its columns map.",
        )
    return rows, res.rejects


def gold_add(project: Project, rows: list[dict[str, Any]], note: str = "") -> tuple[GoldVersion, int]:
    """New gold version = current + ``rows`` (inputs already in gold are skipped). Returns (version, added)."""
    task = project.manifest.task
    gold, current = _require_gold(project)
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
    gold, current = _require_gold(project)
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
    gold = current_gold(project)
    seen, unique = set(), []
    for r in rows:
        k = dedupe_key(input_text(project.manifest.task, r))
        if k not in seen:
            seen.add(k)
            unique.append(r)
    return freeze_gold(project, unique, gold.id if gold else None, note or "replaced from a curated file")


def gold_history(project: Project) -> list[GoldVersion]:
    return list(project.store.list(GoldVersion, GoldVersion.created_at))
