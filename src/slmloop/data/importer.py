"""``slmloop data import``: read a source, map its columns to the task's fields.

Every row read ends up accepted (a task-shaped row) or rejected with a stable
reason code, its file and line number; ``accepted + rejected == rows_read``
always holds and is checked before anything is written.

An import is what a source file holds *now*: importing a path that was imported
before supersedes the earlier import (rows removed from the file leave the
dataset, changed rows carry their new answer), and importing bytes seen before
makes that earlier import the active one again. ``data drop`` / ``data restore``
take an import out of the data or bring it back; every change is audited.
Which answer wins where imports disagree is decided by ``data prepare`` from the
imports' order (``Import.seq``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from slmloop.data.inspect import Inspection, inspect_source
from slmloop.data.sources import MAX_JSON_DEPTH, Record, SourceStats, json_depth, read_records
from slmloop.errors import DataError, StoreError
from slmloop.manifest import SourceConfig, TaskConfig
from slmloop.predict.tasks import TASK_FIELDS
from slmloop.project import Project
from slmloop.store import Import, sha256_file

__all__ = [
    "REASONS",
    "ImportResult",
    "ReadResult",
    "drop_import",
    "import_source",
    "import_state",
    "map_record",
    "read_rows",
    "refuse_active_source",
    "resolve_mapping",
    "restore_import",
    "source_for",
    "source_path",
]

#: reason codes a row can be rejected with at import time, and what they mean
REASONS = {
    "decode_error": "bytes are not valid in the declared encoding",
    "bad_json": "the line is not valid JSON",
    "not_an_object": "the JSON value is not an object",
    "bad_csv": "the CSV/TSV record is malformed (quoting)",
    "wrong_field_count": "the row has more or fewer fields than the header",
    "missing_field": "a field the task needs is absent or null",
    "empty_input": "the input text is empty",
    "empty_output": "the expected output is empty",
    "label_not_in_schema": "the label is not one of task.labels",
    "bad_output": "extraction output is not a JSON object",
    "bad_messages": "chat messages are not a list of {role, content} ending with the assistant",
}


@dataclass
class ImportResult:
    record: Import
    reused: bool
    rejects: list[dict[str, Any]]
    blank_lines: int
    inspection: Inspection | None = None
    #: earlier imports of the same source path this import replaced
    superseded: list[str] = field(default_factory=list)
    #: an earlier import of the same bytes, inactive until now, that is the active one again
    reactivated: bool = False


def _lookup(fields: dict[str, Any], column: str) -> Any:
    if column in fields:
        return fields[column]
    if column.startswith("messages.") and isinstance(fields.get("messages"), list):
        role = column.split(".", 1)[1]  # the last turn of that role (OpenAI chat JSONL)
        turns = [m.get("content") for m in fields["messages"] if isinstance(m, dict) and m.get("role") == role]
        return turns[-1] if turns else None
    if column == "alpaca.prompt" and isinstance(fields.get("instruction"), str):
        extra = fields.get("input")
        return fields["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    value: Any = fields
    for part in column.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def map_record(task: TaskConfig, mapping: dict[str, str], rec: Record) -> tuple[dict[str, Any] | None, str, str]:
    """Return ``(row, "", "")`` or ``(None, reason, detail)``."""
    assert rec.fields is not None
    row: dict[str, Any] = {}
    used: set[str] = set()
    for task_field in TASK_FIELDS[task.type]:
        column = mapping.get(task_field, task_field)
        used.add(column.split(".")[0])
        value = _lookup(rec.fields, column)
        if value is None:
            have = ", ".join(list(rec.fields)[:10])
            return None, "missing_field", f"no value for {task_field!r} (column {column!r}); row has: {have}"
        row[task_field] = value
    if task.type in ("classification", "extraction", "generation"):
        key = "input" if task.type == "generation" else "text"
        if isinstance(row[key], int | float) and not isinstance(row[key], bool):
            row[key] = str(row[key])
        if not isinstance(row[key], str):
            return None, "missing_field", f"{key!r} must be text, found {type(row[key]).__name__}"
        if not row[key].strip():
            return None, "empty_input", f"{key!r} is empty"
    if task.type == "classification":
        label = row["label"]
        if isinstance(label, bool) or not isinstance(label, str | int | float):
            return None, "label_not_in_schema", f"label must be text, found {type(label).__name__}"
        label = str(label).strip()
        if not label:
            return None, "missing_field", "the label is empty"
        if task.labels == "auto":  # the label set is read from the data by `data prepare`
            row["label"] = label
        else:
            canonical = {lab.casefold(): lab for lab in task.label_list}
            if label.casefold() not in canonical:
                allowed = ", ".join(task.label_list)
                return None, "label_not_in_schema", f"label {label!r} is not one of: {allowed}"
            row["label"] = canonical[label.casefold()]
    elif task.type == "extraction":
        out = row["output"]
        if isinstance(out, str):
            try:
                out = json.loads(out)
            except json.JSONDecodeError:
                return None, "bad_output", "output is text but not JSON"
            except RecursionError:
                return None, "bad_output", "output is JSON nested too deeply"
        if not isinstance(out, dict):
            return None, "bad_output", f"output must be a JSON object, found {type(out).__name__}"
        if json_depth(out) > MAX_JSON_DEPTH:
            return None, "bad_output", f"output nests more than {MAX_JSON_DEPTH} levels deep"
        row["output"] = out
    elif task.type == "generation":
        if not isinstance(row["output"], str) or not row["output"].strip():
            return None, "empty_output", "output is empty or not text"
    elif task.type == "chat":
        msgs = row["messages"]
        ok = (
            isinstance(msgs, list)
            and len(msgs) >= 2
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
            and all(m.get("role") in ("system", "user", "assistant") for m in msgs)
            and msgs[-1].get("role") == "assistant"
        )
        if not ok:
            return None, "bad_messages", "need [{role, content}, ...] ending with an assistant turn"
        row["messages"] = [{"role": m["role"], "content": m["content"]} for m in msgs]
    # other scalar columns ride along as metadata: tags for slices, fields to stratify or group by
    meta = {k: v for k, v in rec.fields.items() if k not in used and isinstance(v, str | int | float | bool)}
    if meta:
        row["_meta"] = meta
    return row, "", ""


def source_for(project: Project, path: str | Path) -> SourceConfig:
    """The manifest's source config for ``path``, or defaults if it is not listed."""
    target = project.manifest.resolve(path).resolve()
    for src in project.manifest.data.sources:
        if project.manifest.resolve(src.path).resolve() == target:
            return src
    return SourceConfig(path=str(target))


def _source_digest(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
        return h.hexdigest()
    return sha256_file(path)


@dataclass
class ReadResult:
    accepted: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    rows_read: int
    blank_lines: int


def read_rows(task: TaskConfig, path: Path | None, src: SourceConfig, tag: str) -> ReadResult:
    """Every row of the source, mapped to the task, or rejected with its reason and line."""
    stats = SourceStats()
    accepted: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    rows_read = 0
    for rec in read_records(path if path is not None else Path(src.path), src, stats):
        rows_read += 1
        if rec.reason is None:
            row, reason, detail = map_record(task, src.fields, rec)
        else:
            row, reason, detail = None, rec.reason, rec.detail
        where = {"file": rec.file, "line": rec.line}
        if row is not None:
            row["_src"] = {"import": tag, **where}
            run = (rec.fields or {}).get("monitor_run") if isinstance(rec.fields, dict) else None
            if isinstance(run, int):  # a row from `slmloop monitor export`: keep where it came from
                row["_src"]["monitor_run"] = run
            accepted.append(row)
        else:
            raw = rec.raw or (json.dumps(rec.fields, ensure_ascii=False, default=str)[:300] if rec.fields else "")
            rejects.append({**where, "reason": reason, "detail": detail, "raw": raw})
    if len(accepted) + len(rejects) != rows_read:  # pragma: no cover - a bug, not user input
        raise StoreError(f"row accounting broke: {len(accepted)} + {len(rejects)} != {rows_read}")
    return ReadResult(accepted, rejects, rows_read, stats.blank_lines)


def resolve_mapping(
    task: TaskConfig, path: Path | None, src: SourceConfig, threshold: float, force: bool
) -> tuple[SourceConfig, Inspection | None]:
    """The source with its field mapping: as declared, or as inspection proposes it.

    A proposal below ``threshold`` is refused (DataError listing it) unless ``force``.
    """
    if src.fields:
        return src, None
    found = inspect_source(task, path if path is not None else Path(src.path), src)
    if found.rows == 0:
        return src, found
    if (
        found.layout == "columns"
        and all(p.column == p.task_field for p in found.proposals)
        and (found.confidence >= threshold)
    ):
        return src, found
    listing = "\n".join(
        f"  {p.task_field} ← {p.column or '?'} (confidence {p.confidence:.2f}: {p.reason})" for p in found.proposals
    )
    if found.confidence < threshold and not force:
        maps = " ".join(f"--map {p.task_field}={p.column or 'COLUMN'}" for p in found.proposals)
        raise DataError(
            f"no confident mapping of {src.path} onto the {task.type} fields "
            f"(lowest confidence {found.confidence:.2f} < {threshold:.2f}):\n{listing}",
            hint=f"Name the columns: `{maps}` (or `fields:` in slmloop.yaml), or accept the proposal with --force.",
        )
    if any(p.column is None for p in found.proposals):
        raise DataError(f"cannot map {src.path}:\n{listing}", hint="Name the columns with --map field=column.")
    return src.model_copy(update={"fields": found.mapping}), found


def source_path(project: Project, src: SourceConfig) -> Path | None:
    """Local path of a source; None for a Hugging Face hub id (format: hf, no such folder)."""
    path = project.manifest.resolve(src.path)
    if path.exists():
        return path
    if src.format == "hf" and "/" in src.path and not src.path.startswith((".", "/", "~")):
        return None
    raise DataError(
        f"source {path} does not exist",
        hint="Check the path (relative paths start at the folder of slmloop.yaml).",
    )


def import_source(project: Project, src: SourceConfig, *, force: bool = False) -> ImportResult:
    """Read one source into the project; idempotent for the same bytes and mapping."""
    task = project.manifest.task
    path = source_path(project, src)
    src, inspection = resolve_mapping(task, path, src, project.manifest.data.mapping_confidence, force)
    digest = _source_digest(path) if path is not None else hashlib.sha256(f"hf:{src.path}".encode()).hexdigest()
    config = src.model_dump(mode="json")
    config["path"] = str(path) if path is not None else src.path
    mapping_key = json.dumps(
        {"source": {k: v for k, v in config.items() if k != "path"}, "task": task.model_dump(mode="json")},
        sort_keys=True,
    )
    import_id = "imp-" + hashlib.sha256((digest + mapping_key).encode()).hexdigest()[:12]
    with project.store.session() as s:
        existing = s.get(Import, import_id)
        if existing is not None:
            reactivated = not existing.active
            superseded = _activate(project, s, existing, "data.reimport") if reactivated else []
    if existing is not None:
        rejects = project.objects.read_jsonl(existing.rejects_object)
        return ImportResult(
            existing,
            reused=True,
            rejects=rejects,
            blank_lines=0,
            inspection=inspection,
            superseded=superseded,
            reactivated=reactivated,
        )

    res = read_rows(task, path, src, import_id)
    if res.rows_read == 0:
        raise DataError(f"{config['path']} holds no rows", hint="Check that the file is not empty.")
    reasons = dict(Counter(r["reason"] for r in res.rejects))
    monitor_runs = sorted({r["_src"]["monitor_run"] for r in res.accepted if "monitor_run" in r["_src"]})
    if monitor_runs:
        config["monitor_runs"] = monitor_runs
    if inspection is not None:
        config["inferred_mapping"] = {
            p.task_field: {"column": p.column, "confidence": p.confidence, "reason": p.reason}
            for p in inspection.proposals
        }
    record = Import(
        id=import_id,
        source_path=config["path"],
        source_sha256=digest,
        format=src.format,
        rows_read=res.rows_read,
        accepted=len(res.accepted),
        rejected=len(res.rejects),
        accepted_object=project.objects.put_jsonl(res.accepted),
        rejects_object=project.objects.put_jsonl(res.rejects),
        reasons=reasons,
        mapping=config,
    )
    with project.store.session() as s:
        s.add(record)
        s.flush()
        superseded = _activate(project, s, record, "data.import")
        project.store.log_event(
            s,
            "data.import",
            import_id,
            path=config["path"],
            rows_read=res.rows_read,
            accepted=len(res.accepted),
            rejected=len(res.rejects),
            reasons=reasons,
            superseded=superseded,
            forced_mapping=bool(
                force and inspection is not None and inspection.confidence < project.manifest.data.mapping_confidence
            ),
        )
    return ImportResult(
        record,
        reused=False,
        rejects=res.rejects,
        blank_lines=res.blank_lines,
        inspection=inspection,
        superseded=superseded,
    )


def _same_source(a: str, b: str) -> bool:
    """Two imports read the same source: the same file or folder (a hub id: the same id)."""
    return a == b or (Path(a).is_absolute() and Path(b).is_absolute() and Path(a).resolve() == Path(b).resolve())


def _activate(project: Project, s: Session, record: Import, event: str) -> list[str]:
    """Make ``record`` the active import of its source path, newest in the order; returns what it superseded.

    Every other active import of the same path stops counting (``superseded by …``)."""
    record.active = True
    record.state_note = ""
    record.seq = (s.scalar(select(func.max(Import.seq))) or 0) + 1
    superseded = []
    for other in s.scalars(select(Import).where(Import.active.is_(True), Import.id != record.id)).all():
        if _same_source(other.source_path, record.source_path):
            other.active = False
            other.state_note = f"superseded by {record.id}"
            superseded.append(other.id)
            project.store.log_event(s, "data.supersede", other.id, by=record.id, path=record.source_path)
    if event == "data.reimport":
        project.store.log_event(s, event, record.id, path=record.source_path, superseded=superseded)
    return superseded


def refuse_active_source(project: Project, path: Path) -> None:
    """Refuse to write a file for labelling over the source of an active import: importing it again would
    *replace* that import, and the rows it holds (earlier corrections, labelled batches) would leave the data."""
    with project.store.session() as s:
        imports = s.scalars(select(Import).where(Import.active.is_(True))).all()
    for imp in imports:
        if _same_source(imp.source_path, str(path.resolve())):
            raise DataError(
                f"{path} is the source of the active import {imp.id}: importing a new file there would replace "
                "that import and the rows it holds",
                hint="Write to a new file name (one per round of fixes or batch of labels).",
            )


def import_state(record: Import) -> str:
    """``active``, or why the import does not count (``superseded by imp-…``, ``dropped: …``)."""
    return "active" if record.active else (record.state_note or "inactive")


def _find_import(s: Session, import_id: str) -> Import:
    from slmloop.errors import NotFoundError

    record = s.get(Import, import_id)
    if record is None:
        raise NotFoundError(f"import {import_id!r} does not exist", hint="`slmloop data list` lists the imports.")
    return record


def drop_import(project: Project, import_id: str, note: str = "") -> Import:
    """Take an import out of the data: ``data prepare`` leaves its rows out until it is restored (audited)."""
    with project.store.session() as s:
        record = _find_import(s, import_id)
        if not record.active:
            raise DataError(
                f"{import_id} is not active ({import_state(record)})",
                hint=f"`slmloop data restore {import_id}` brings it back.",
            )
        record.active = False
        record.state_note = "dropped" + (f": {note}" if note else "")
        project.store.log_event(s, "data.drop", import_id, path=record.source_path, note=note)
    return record


def restore_import(project: Project, import_id: str, note: str = "") -> tuple[Import, list[str]]:
    """Bring a dropped or superseded import back; an active import of the same path is superseded by it.

    It keeps its place in the order of imports (a correction made after it still wins)."""
    with project.store.session() as s:
        record = _find_import(s, import_id)
        if record.active:
            raise DataError(f"{import_id} is already active", hint="`slmloop data list` shows every import's state.")
        seq = record.seq
        superseded = _activate(project, s, record, "data.restore")
        record.seq = seq
        project.store.log_event(s, "data.restore", import_id, path=record.source_path, note=note, superseded=superseded)
    return record, superseded
