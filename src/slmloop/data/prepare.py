"""``slmloop data prepare``: imported rows → an immutable dataset version.

Steps, each counted: normalise → drop empty → exact dedupe → keep the gold set
frozen (or freeze a new one) → seeded, stratified split into train / validation.
Every row that goes in comes out in exactly one split or with a reason code.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from slmloop.data.clean import dedupe_key, normalize_text
from slmloop.errors import DataError, NotFoundError, StoreError
from slmloop.manifest import TaskConfig
from slmloop.project import Project
from slmloop.store import DatasetVersion, GoldVersion, Import
from slmloop.tasks import input_text

__all__ = [
    "DatasetSplits",
    "current_gold",
    "freeze_gold",
    "load_dataset",
    "prepare_dataset",
    "resolve_dataset",
]


@dataclass
class DatasetSplits:
    version: DatasetVersion
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    gold: list[dict[str, Any]]


def _normalize_row(task: TaskConfig, row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if task.type == "generation":
        out["input"] = normalize_text(row["input"])
        out["output"] = normalize_text(row["output"])
    elif task.type in ("classification", "extraction"):
        out["text"] = normalize_text(row["text"])
    elif task.type == "chat":
        out["messages"] = [{**m, "content": normalize_text(m["content"])} for m in row["messages"]]
    return out


def _rows_digest(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        clean = {k: v for k, v in r.items() if not k.startswith("_")}
        h.update(json.dumps(clean, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def current_gold(project: Project) -> GoldVersion | None:
    return project.store.latest(GoldVersion, GoldVersion.created_at)


def freeze_gold(project: Project, rows: list[dict[str, Any]], parent: str | None, note: str) -> GoldVersion:
    """Store ``rows`` as a new hash-locked gold version (or return the identical one)."""
    digest = _rows_digest(rows)
    gold_id = "gold-" + digest[:12]
    with project.store.session() as s:
        existing = s.get(GoldVersion, gold_id)
    if existing is not None:
        return existing
    gold = GoldVersion(id=gold_id, parent_id=parent, object=project.objects.put_jsonl(rows), rows=len(rows), note=note)
    return project.store.add(gold, "gold.freeze", gold_id, rows=len(rows), parent=parent, note=note)


def _split(
    rows: list[dict[str, Any]], fraction: float, rng: random.Random, strata: list[str] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split off ``fraction`` of rows, per stratum when given (largest-remainder rounding)."""
    if fraction <= 0 or not rows:
        return rows, []
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        groups[strata[i] if strata else ""].append(i)
    want_total = round(len(rows) * fraction)
    quotas = {k: len(v) * fraction for k, v in groups.items()}
    take = {k: int(q) for k, q in quotas.items()}
    leftover = want_total - sum(take.values())
    for k in sorted(groups, key=lambda k: (quotas[k] - take[k], k), reverse=True)[: max(leftover, 0)]:
        take[k] += 1
    chosen: set[int] = set()
    for k in sorted(groups):
        idx = list(groups[k])
        rng.shuffle(idx)
        chosen.update(idx[: take[k]])
    rest = [r for i, r in enumerate(rows) if i not in chosen]
    picked = [r for i, r in enumerate(rows) if i in chosen]
    return rest, picked


def prepare_dataset(project: Project, import_ids: list[str] | None = None) -> tuple[DatasetSplits, bool]:
    """Build (or find) the dataset version for the active imports. Returns (splits, reused)."""
    m = project.manifest
    task = m.task
    cfg = m.data.split
    with project.store.session() as s:
        q = select(Import).where(Import.active.is_(True)).order_by(Import.created_at)
        imports = list(s.scalars(q).all())
    if import_ids:
        wanted = set(import_ids)
        imports = [i for i in imports if i.id in wanted]
        missing = wanted - {i.id for i in imports}
        if missing:
            raise NotFoundError(
                f"import(s) {', '.join(sorted(missing))} do not exist",
                hint="`slmloop data imports` lists them.",
            )
    if not imports:
        raise DataError("no imported data yet", hint="Run `slmloop data import FILE` first.")

    rows: list[dict[str, Any]] = []
    for imp in imports:
        rows.extend(project.objects.read_jsonl(imp.accepted_object))
    rows_in = len(rows)
    rejects: list[dict[str, Any]] = []

    def reject(row: dict[str, Any], reason: str, detail: str) -> None:
        rejects.append({**row.get("_src", {}), "reason": reason, "detail": detail, "raw": input_text(task, row)[:300]})

    # 1. normalise, drop rows left empty
    kept: list[dict[str, Any]] = []
    changed = 0
    for row in rows:
        new = _normalize_row(task, row) if m.data.normalize else row
        changed += new != row
        if not input_text(task, new).strip():
            reject(row, "empty_input", "empty after normalisation")
            continue
        kept.append(new)

    # 2. exact dedupe on the normalised, case-folded input; first occurrence wins
    seen: dict[str, dict[str, Any]] = {}
    unique: list[dict[str, Any]] = []
    for row in kept:
        key = dedupe_key(input_text(task, row))
        if key in seen:
            first = seen[key].get("_src", {})
            reject(row, "duplicate_exact", f"same input as line {first.get('line')} of {first.get('import')}")
            continue
        seen[key] = row
        unique.append(row)

    # 3. the gold set: keep the frozen one (and keep its inputs out of training), or freeze one
    # one random stream per decision, so re-running with a frozen gold reproduces the split
    gold_prev = current_gold(project)
    if cfg.max_rows is not None and len(unique) > cfg.max_rows:
        order = list(range(len(unique)))
        random.Random(f"{cfg.seed}:sample").shuffle(order)
        keep = set(order[: cfg.max_rows])
        for i, row in enumerate(unique):
            if i not in keep:
                reject(row, "sampled_out", f"data.split.max_rows = {cfg.max_rows}")
        unique = [r for i, r in enumerate(unique) if i in keep]
    strat = task.type == "classification" and cfg.stratify
    if gold_prev is not None:
        gold_rows = project.objects.read_jsonl(gold_prev.object)
        gold_keys = {dedupe_key(input_text(task, r)) for r in gold_rows}
        pool = []
        for row in unique:
            if dedupe_key(input_text(task, row)) in gold_keys:
                reject(row, "in_gold", f"the input is in frozen gold set {gold_prev.id}")
            else:
                pool.append(row)
        gold = gold_prev
    else:
        labels = [r["label"] for r in unique] if strat else None
        pool, gold_rows = _split(unique, cfg.gold, random.Random(f"{cfg.seed}:gold"), labels)
        if not gold_rows:
            raise DataError(
                f"too few rows ({len(unique)}) to set aside a gold set",
                hint="Import more data or raise data.split.gold.",
            )
        gold = freeze_gold(project, gold_rows, None, "first freeze by data prepare")

    # 4. train / validation: validation is a share of all rows, so of the non-gold pool it is v / (1 - g)
    val_fraction = min(cfg.validation / (1.0 - cfg.gold), 0.9)
    labels = [r["label"] for r in pool] if strat else None
    train, validation = _split(pool, val_fraction, random.Random(f"{cfg.seed}:validation"), labels)
    if not train:
        raise DataError("no rows left for training", hint="Import more data.")

    counts = {
        "rows_in": rows_in,
        "normalized_changed": changed,
        "rejected": dict(Counter(r["reason"] for r in rejects)),
        "train": len(train),
        "validation": len(validation),
        "gold": len(gold_rows) if gold_prev is None else 0,
        "gold_rows_total": gold.rows,
    }
    placed = counts["train"] + counts["validation"] + counts["gold"] + len(rejects)
    if placed != rows_in:  # pragma: no cover - a bug, not user input
        raise StoreError(f"row accounting broke: {placed} placed of {rows_in}")
    if strat:
        counts["labels"] = {
            name: dict(Counter(r["label"] for r in part))
            for name, part in (("train", train), ("validation", validation), ("gold", gold_rows))
        }

    train_obj = project.objects.put_jsonl(train)
    val_obj = project.objects.put_jsonl(validation)
    version_id = "ds-" + hashlib.sha256(f"{train_obj}:{val_obj}:{gold.id}".encode()).hexdigest()[:12]
    with project.store.session() as s:
        existing = s.get(DatasetVersion, version_id)
    if existing is not None:
        return DatasetSplits(existing, train, validation, project.objects.read_jsonl(gold.object)), True
    version = DatasetVersion(
        id=version_id,
        import_ids=[i.id for i in imports],
        train_object=train_obj,
        validation_object=val_obj,
        gold_id=gold.id,
        rejects_object=project.objects.put_jsonl(rejects),
        counts=counts,
        config={"split": cfg.model_dump(), "normalize": m.data.normalize, "task": task.model_dump()},
    )
    project.store.add(version, "data.prepare", version_id, gold=gold.id, counts=counts)
    return DatasetSplits(version, train, validation, project.objects.read_jsonl(gold.object)), False


def resolve_dataset(project: Project, version_id: str | None = None) -> DatasetVersion:
    if version_id:
        return project.store.get(DatasetVersion, version_id, "dataset version", "`slmloop data versions` lists them.")
    latest = project.store.latest(DatasetVersion, DatasetVersion.created_at)
    if latest is None:
        raise NotFoundError(
            "no dataset version yet", hint="Run `slmloop data import FILE` then `slmloop data prepare`."
        )
    return latest


def load_dataset(project: Project, version_id: str | None = None) -> DatasetSplits:
    v = resolve_dataset(project, version_id)
    gold = project.store.get(GoldVersion, v.gold_id, "gold version", "`slmloop gold show`.")
    return DatasetSplits(
        v,
        project.objects.read_jsonl(v.train_object),
        project.objects.read_jsonl(v.validation_object),
        project.objects.read_jsonl(gold.object),
    )
