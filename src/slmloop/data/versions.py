"""Dataset and gold versions: looking them up, loading their rows, freezing a new gold version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from slmloop.errors import NotFoundError
from slmloop.manifest import TaskConfig
from slmloop.project import Project
from slmloop.store import DatasetVersion, GoldVersion

__all__ = [
    "DatasetSplits",
    "current_dataset",
    "current_gold",
    "current_gold_rows",
    "dataset_task",
    "freeze_gold",
    "load_dataset",
    "previous_dataset",
    "resolve_dataset",
    "row_field",
    "rows_digest",
    "set_current_dataset",
]


@dataclass
class DatasetSplits:
    version: DatasetVersion
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    gold: list[dict[str, Any]]


def row_field(row: dict[str, Any], name: str) -> Any:
    """A task field, or a source column kept in the row's metadata."""
    if name in row:
        return row[name]
    return row.get("_meta", {}).get(name)


def rows_digest(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        clean = {k: v for k, v in r.items() if not k.startswith("_")}
        h.update(json.dumps(clean, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def current_gold(project: Project) -> GoldVersion | None:
    """The gold version evaluations use now (the store keeps an explicit pointer)."""
    head = project.store.get_meta("current_gold")
    if head is not None:
        with project.store.session() as s:
            return s.get(GoldVersion, head)
    return None


def current_gold_rows(project: Project) -> tuple[GoldVersion, list[dict[str, Any]]]:
    """The current gold version and its rows; no gold set yet is a clear error."""
    gold = current_gold(project)
    if gold is None:
        raise NotFoundError(
            "there is no gold set yet",
            hint="Run `slmloop data import FILE` and `slmloop data prepare`, or `slmloop gold freeze FILE`.",
        )
    return gold, project.objects.read_jsonl(gold.object)


def freeze_gold(project: Project, rows: list[dict[str, Any]], parent: str | None, note: str) -> GoldVersion:
    """Make ``rows`` the current gold version: a new hash-locked version, or an identical earlier one."""
    gold_id = "gold-" + rows_digest(rows)[:12]
    with project.store.session() as s:
        gold = s.get(GoldVersion, gold_id)
        if gold is None:
            gold = GoldVersion(
                id=gold_id, parent_id=parent, object=project.objects.put_jsonl(rows), rows=len(rows), note=note
            )
            s.add(gold)
        before = project.store.set_meta(s, "current_gold", gold_id)
        if before != gold_id:  # a new version, or an earlier one made current again
            project.store.log_event(s, "gold.freeze", gold_id, rows=len(rows), parent=parent, note=note)
    return gold


def current_dataset(project: Project) -> DatasetVersion | None:
    """The dataset version training uses by default: the one the newest ``data prepare`` (or distillation)
    made or found again — not always the newest row, since an edit can bring back an earlier version."""
    head = project.store.get_meta("current_dataset")
    if head is not None:
        with project.store.session() as s:
            found = s.get(DatasetVersion, head)
        if found is not None:
            return found
    return project.store.latest(DatasetVersion, DatasetVersion.created_at)


def dataset_task(project: Project, version: DatasetVersion) -> TaskConfig:
    """The project's task with the labels / fields ``version`` resolved (``labels: auto``, ``fields: auto``)."""
    task = project.task
    if "task" not in version.config or not project.manifest.task.unresolved:
        return task
    resolved = TaskConfig.model_validate(version.config["task"])
    return task.model_copy(update={"labels": resolved.labels, "fields": resolved.fields})


def set_current_dataset(project: Project, s: Session, version_id: str) -> None:
    """Make ``version_id`` the current dataset version (inside session ``s``); the one it replaces is kept
    as the previous version (what ``data diff`` compares with by default)."""
    before = project.store.set_meta(s, "current_dataset", version_id)
    if before is not None and before != version_id:
        project.store.set_meta(s, "previous_dataset", before)


def previous_dataset(project: Project) -> str | None:
    """The dataset version that was current before the current one (None: there was none)."""
    return project.store.get_meta("previous_dataset")


def resolve_dataset(project: Project, version_id: str | None = None) -> DatasetVersion:
    if version_id:
        return project.store.get(DatasetVersion, version_id, "dataset version", "`slmloop data list` lists them.")
    current = current_dataset(project)
    if current is None:
        raise NotFoundError(
            "no dataset version yet", hint="Run `slmloop data import FILE` then `slmloop data prepare`."
        )
    return current


def load_dataset(project: Project, version_id: str | None = None) -> DatasetSplits:
    v = resolve_dataset(project, version_id)
    gold = project.store.get(GoldVersion, v.gold_id, "gold version", "`slmloop gold list`.")
    return DatasetSplits(
        v,
        project.objects.read_jsonl(v.train_object),
        project.objects.read_jsonl(v.validation_object),
        project.objects.read_jsonl(gold.object),
    )
