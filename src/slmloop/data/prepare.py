"""``slmloop data prepare``: imported rows → an immutable, content-addressed dataset version.

The steps, each counted, in order:

    normalise text → PII redact/block → drop empty → drop too long (model tokens)
    → exact dedupe → near dedupe (MinHash LSH) → sample (max_rows)
    → gold: keep the frozen set, or freeze one (group-aware, stratified)
    → drop rows that leak gold (exact / near / semantic)
    → train / validation split (group-aware, stratified)

Every row that goes in comes out in exactly one split or with a reason code;
the function checks that the counts add up before writing anything.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from sqlalchemy import select

from slmloop.data.clean import dedupe_key, normalize_text
from slmloop.data.dedupe import Signatures, find_near_duplicates
from slmloop.data.leakage import gold_leaks, project_embedder
from slmloop.data.pii import redact
from slmloop.errors import DataError, NotFoundError, StoreError
from slmloop.manifest import TaskConfig
from slmloop.project import Project
from slmloop.store import DatasetVersion, GoldVersion, Import
from slmloop.tasks import input_text, prompt_messages, target_text

__all__ = [
    "DatasetSplits",
    "current_gold",
    "example_token_lengths",
    "freeze_gold",
    "load_dataset",
    "prepare_dataset",
    "resolve_dataset",
    "row_field",
]


@dataclass
class DatasetSplits:
    version: DatasetVersion
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    gold: list[dict[str, Any]]


@dataclass
class _Ledger:
    """Where every row went. Rejects keep the row's source and a pointer to what it duplicates."""

    task: TaskConfig
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, row: dict[str, Any], reason: str, detail: str, of: dict[str, Any] | None = None) -> None:
        entry = {**row.get("_src", {}), "reason": reason, "detail": detail, "raw": input_text(self.task, row)[:300]}
        if of is not None:
            entry["of"] = {**of.get("_src", {}), "text": input_text(self.task, of)[:300]}
        self.rejects.append(entry)


def row_field(row: dict[str, Any], name: str) -> Any:
    """A task field, or a source column kept in the row's metadata."""
    if name in row:
        return row[name]
    return row.get("_meta", {}).get(name)


def _normalize_row(task: TaskConfig, row: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    out = dict(row)
    if task.type == "generation":
        out["input"] = fn(row["input"])
        out["output"] = fn(row["output"])
    elif task.type in ("classification", "extraction"):
        out["text"] = fn(row["text"])
    elif task.type == "chat":
        out["messages"] = [{**m, "content": fn(m["content"])} for m in row["messages"]]
    return out


def _rows_digest(rows: list[dict[str, Any]]) -> str:
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


def freeze_gold(project: Project, rows: list[dict[str, Any]], parent: str | None, note: str) -> GoldVersion:
    """Make ``rows`` the current gold version: a new hash-locked version, or an identical earlier one."""
    gold_id = "gold-" + _rows_digest(rows)[:12]
    with project.store.session() as s:
        gold = s.get(GoldVersion, gold_id)
        if gold is None:
            gold = GoldVersion(
                id=gold_id, parent_id=parent, object=project.objects.put_jsonl(rows), rows=len(rows), note=note
            )
            s.add(gold)
        project.store.set_meta(s, "current_gold", gold_id)
        project.store.log_event(s, "gold.freeze", gold_id, rows=len(rows), parent=parent, note=note)
    return gold


def _split(
    rows: Sequence[dict[str, Any]],
    fraction: float,
    rng: random.Random,
    strata: Sequence[Any] | None,
    groups: Sequence[Any] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split off ``fraction`` of rows per stratum, moving whole groups (largest-remainder quotas)."""
    if fraction <= 0 or not rows:
        return list(rows), []
    units: dict[Any, list[int]] = {}
    for i in range(len(rows)):
        units.setdefault(groups[i] if groups is not None else i, []).append(i)
    by_stratum: dict[Any, list[Any]] = defaultdict(list)
    sizes: Counter[Any] = Counter()
    for key, members in units.items():
        s = strata[members[0]] if strata is not None else ""
        by_stratum[s].append(key)
        sizes[s] += len(members)
    quotas = {s: n * fraction for s, n in sizes.items()}
    take = {s: int(q) for s, q in quotas.items()}
    leftover = round(len(rows) * fraction) - sum(take.values())
    for s in sorted(take, key=lambda s: (quotas[s] - take[s], str(s)), reverse=True)[: max(leftover, 0)]:
        take[s] += 1
    chosen: set[int] = set()
    for s in sorted(by_stratum, key=str):
        keys = list(by_stratum[s])
        rng.shuffle(keys)
        got = 0
        for key in keys:
            if got >= take[s]:
                break
            chosen.update(units[key])
            got += len(units[key])
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


def example_token_lengths(project: Project, rows: list[dict[str, Any]]) -> list[int]:
    """Tokens of each row as the model sees it: the whole chat-formatted example."""
    from slmloop.models.catalog import resolve_model
    from slmloop.models.loading import load_tokenizer

    tok = load_tokenizer(resolve_model(project.manifest.model.base))
    task = project.manifest.task
    texts = [
        str(
            tok.apply_chat_template(
                [*prompt_messages(task, r), {"role": "assistant", "content": target_text(task, r)}], tokenize=False
            )
        )
        for r in rows
    ]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def prepare_dataset(
    project: Project, import_ids: list[str] | None = None, console: Console | None = None
) -> tuple[DatasetSplits, bool]:
    """Build (or find) the dataset version for the active imports. Returns (splits, reused)."""
    console = console or Console(stderr=True, quiet=True)
    m = project.manifest
    task, cfg, data = m.task, m.data.split, m.data
    with project.store.session() as s:
        imports = list(s.scalars(select(Import).where(Import.active.is_(True)).order_by(Import.created_at)).all())
    if import_ids:
        wanted = set(import_ids)
        imports = [i for i in imports if i.id in wanted]
        missing = wanted - {i.id for i in imports}
        if missing:
            raise NotFoundError(f"import(s) {', '.join(sorted(missing))} do not exist", hint="`slmloop data list`.")
    if not imports:
        raise DataError("no imported data yet", hint="Run `slmloop data import FILE` first.")
    rows: list[dict[str, Any]] = []
    for imp in imports:
        rows.extend(project.objects.read_jsonl(imp.accepted_object))
    rows_in = len(rows)
    ledger = _Ledger(task)
    stats: dict[str, Any] = {}

    # 1. normalise, PII, empty, too long
    console.print(f"normalising {rows_in} rows …")
    kept: list[dict[str, Any]] = []
    changed = 0
    pii: Counter[str] = Counter()
    kinds = tuple(data.pii.types)
    for row in rows:
        new = _normalize_row(task, row, normalize_text) if data.normalize else row
        changed += new != row
        if data.pii.mode != "off":
            found: Counter[str] = Counter()

            def scrub(text: str, found: Counter[str] = found) -> str:
                out, counts = redact(text, kinds)
                found.update(counts)
                return out

            redacted = _normalize_row(task, new, scrub)
            pii.update(found)
            if found and data.pii.mode == "block":
                ledger.reject(row, "pii_blocked", "contains " + ", ".join(f"{n} {k}" for k, n in found.items()))
                continue
            new = redacted
        if not input_text(task, new).strip():
            ledger.reject(row, "empty_input", "empty after normalisation")
            continue
        kept.append(new)
    if data.max_tokens is not None and kept:
        console.print("counting tokens …")
        lengths = example_token_lengths(project, kept)
        stats["token_lengths"] = {"max": max(lengths), "mean": sum(lengths) / len(lengths)}
        fits = []
        for row, n in zip(kept, lengths, strict=True):
            if n > data.max_tokens:
                ledger.reject(row, "too_long", f"{n} tokens > data.max_tokens = {data.max_tokens}")
            else:
                fits.append(row)
        kept = fits

    # 2. exact dedupe on the normalised, case-folded input; first occurrence wins
    unique: list[dict[str, Any]] = []
    if data.dedupe.exact:
        seen: dict[str, dict[str, Any]] = {}
        for row in kept:
            key = dedupe_key(input_text(task, row))
            if key in seen:
                ledger.reject(row, "duplicate_exact", "same input as an earlier row", of=seen[key])
                continue
            seen[key] = row
            unique.append(row)
    else:
        unique = kept

    # 3. near dedupe: drop all but the first of each cluster, or keep them grouped
    groups: list[Any] | None = None
    signatures = Signatures([input_text(task, r) for r in unique], num_perm=data.dedupe.num_perm)
    if data.dedupe.near != "off" and unique:
        console.print(f"finding near duplicates among {len(unique)} rows (MinHash LSH) …")
        near = find_near_duplicates(signatures, data.dedupe.near_threshold)
        stats["near_clusters"] = sum(1 for members in near.clusters().values() if len(members) > 1)
        if data.dedupe.near == "drop":
            keep_idx = []
            for i, row in enumerate(unique):
                rep = near.representative[i]
                if rep != i:
                    ledger.reject(
                        row, "duplicate_near", f"Jaccard {near.similarity[i]:.2f} to an earlier row", of=unique[rep]
                    )
                else:
                    keep_idx.append(i)
            unique = [unique[i] for i in keep_idx]
            signatures = signatures.subset(keep_idx)
        else:
            groups = [f"near:{r}" for r in near.representative]
    if cfg.group_by:
        by_field = [f"{cfg.group_by}:{row_field(r, cfg.group_by)}" for r in unique]
        groups = by_field if groups is None else [f"{a}|{b}" for a, b in zip(groups, by_field, strict=True)]

    # 4. seeded sample (one random stream per decision: re-runs reproduce the split)
    if cfg.max_rows is not None and len(unique) > cfg.max_rows:
        order = list(range(len(unique)))
        random.Random(f"{cfg.seed}:sample").shuffle(order)
        keep_set = set(order[: cfg.max_rows])
        for i, row in enumerate(unique):
            if i not in keep_set:
                ledger.reject(row, "sampled_out", f"data.split.max_rows = {cfg.max_rows}")
        keep_idx = [i for i in range(len(unique)) if i in keep_set]
        unique = [unique[i] for i in keep_idx]
        signatures = signatures.subset(keep_idx)
        groups = [groups[i] for i in keep_idx] if groups is not None else None

    def strata_of(part: Sequence[dict[str, Any]]) -> list[Any] | None:
        if cfg.stratify is False:
            return None
        if cfg.stratify is True:
            return [r["label"] for r in part] if task.type == "classification" else None
        return [row_field(r, str(cfg.stratify)) for r in part]

    # 5. gold: keep the frozen one, or freeze one from these rows
    gold_prev = current_gold(project)
    if gold_prev is not None:
        gold_rows = project.objects.read_jsonl(gold_prev.object)
        pool, pool_groups, pool_sig = unique, groups, signatures
        gold = gold_prev
        new_gold = 0
    else:
        labelled = [dict(r, _i=i) for i, r in enumerate(unique)]
        pool_l, gold_l = _split(labelled, cfg.gold, random.Random(f"{cfg.seed}:gold"), strata_of(unique), groups)
        if not gold_l:
            raise DataError(
                f"too few rows ({len(unique)}) to set aside a gold set",
                hint="Import more data or raise data.split.gold.",
            )
        pool_idx = [r.pop("_i") for r in pool_l]
        for r in gold_l:
            r.pop("_i")
        pool, gold_rows = pool_l, gold_l
        pool_groups = [groups[i] for i in pool_idx] if groups is not None else None
        pool_sig = signatures.subset(pool_idx)
        gold = freeze_gold(project, gold_rows, None, "first freeze by data prepare")
        new_gold = len(gold_rows)

    # 6. nothing that copies a gold row may train: exact, near or semantic
    console.print(f"checking {len(pool)} rows against {len(gold_rows)} gold rows for leakage …")
    gold_texts = [input_text(task, r) for r in gold_rows]
    embed = project_embedder(project) if data.leakage.semantic else None
    leaks = gold_leaks(
        [input_text(task, r) for r in pool],
        gold_texts,
        data.leakage,
        embed,
        signatures=(pool_sig, Signatures(gold_texts, num_perm=data.dedupe.num_perm)),
    )
    leak_kinds: Counter[str] = Counter()
    clean_idx = []
    for i, row in enumerate(pool):
        if i in leaks:
            j, kind, sim = leaks[i]
            leak_kinds[kind] += 1
            ledger.reject(row, "leaks_gold", f"{kind} match ({sim:.2f}) to gold row {j} of {gold.id}", of=gold_rows[j])
        else:
            clean_idx.append(i)
    pool = [pool[i] for i in clean_idx]
    pool_groups = [pool_groups[i] for i in clean_idx] if pool_groups is not None else None

    # 7. train / validation: validation is a share of all rows, so of the non-gold pool it is v / (1 - g)
    val_fraction = min(cfg.validation / (1.0 - cfg.gold), 0.9)
    train, validation = _split(
        pool, val_fraction, random.Random(f"{cfg.seed}:validation"), strata_of(pool), pool_groups
    )
    if not train:
        raise DataError("no rows left for training", hint="Import more data, or see `slmloop data rejects`.")

    rejects = ledger.rejects
    counts: dict[str, Any] = {
        "rows_in": rows_in,
        "normalized_changed": changed,
        "rejected": dict(Counter(r["reason"] for r in rejects)),
        "train": len(train),
        "validation": len(validation),
        "gold": new_gold,
        "gold_rows_total": gold.rows,
        "pii": dict(pii),
        "leakage": {"checks": ["exact", "near", *(["semantic"] if embed else [])], **dict(leak_kinds)},
        **stats,
    }
    placed = counts["train"] + counts["validation"] + counts["gold"] + len(rejects)
    if placed != rows_in:  # pragma: no cover - a bug, not user input
        raise StoreError(f"row accounting broke: {placed} placed of {rows_in}")
    if task.type == "classification":
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
        return DatasetSplits(existing, train, validation, gold_rows), True
    version = DatasetVersion(
        id=version_id,
        import_ids=[i.id for i in imports],
        train_object=train_obj,
        validation_object=val_obj,
        gold_id=gold.id,
        rejects_object=project.objects.put_jsonl(rejects),
        counts=counts,
        config={
            "data": data.model_dump(mode="json", exclude={"sources"}),
            "task": task.model_dump(),
            "sources": [
                {"import": i.id, "path": i.source_path, "sha256": i.source_sha256, "mapping": i.mapping}
                for i in imports
            ],
        },
    )
    project.store.add(version, "data.prepare", version_id, gold=gold.id, counts=counts)
    return DatasetSplits(version, train, validation, gold_rows), False


def resolve_dataset(project: Project, version_id: str | None = None) -> DatasetVersion:
    if version_id:
        return project.store.get(DatasetVersion, version_id, "dataset version", "`slmloop data list` lists them.")
    latest = project.store.latest(DatasetVersion, DatasetVersion.created_at)
    if latest is None:
        raise NotFoundError(
            "no dataset version yet", hint="Run `slmloop data import FILE` then `slmloop data prepare`."
        )
    return latest


def load_dataset(project: Project, version_id: str | None = None) -> DatasetSplits:
    v = resolve_dataset(project, version_id)
    gold = project.store.get(GoldVersion, v.gold_id, "gold version", "`slmloop gold list`.")
    return DatasetSplits(
        v,
        project.objects.read_jsonl(v.train_object),
        project.objects.read_jsonl(v.validation_object),
        project.objects.read_jsonl(gold.object),
    )
