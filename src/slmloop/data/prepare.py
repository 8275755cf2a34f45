"""``slmloop data prepare``: imported rows → an immutable, content-addressed dataset version.

The steps, each counted, in order:

    normalise text → PII redact/block → drop empty → drop too long (model tokens)
    → exact dedupe → near dedupe (MinHash LSH) → sample (max_rows)
    → gold: the external gold file (data.gold), or the frozen set, or freeze a split
    → drop rows that copy a gold row (exact / near; semantic too with leakage.semantic: block)
    → train / validation split (group-aware, stratified)
    → labels: auto / fields: auto resolved; contamination (close paraphrases of gold) measured

Every row that goes in comes out in exactly one split or with a reason code —
gold-file rows too — and the counts are checked before anything is written.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from sqlalchemy import select

from slmloop.data.clean import dedupe_key, normalize_row, normalize_text
from slmloop.data.dedupe import Signatures, find_near_duplicates
from slmloop.data.gold import GoldFile, read_gold_file
from slmloop.data.leakage import contamination, gold_leaks, project_embedder
from slmloop.data.pii import redact
from slmloop.data.versions import DatasetSplits, current_gold, freeze_gold, row_field
from slmloop.errors import DataError, NotFoundError, StoreError
from slmloop.manifest import DataConfig, SplitConfig, TaskConfig
from slmloop.project import Project
from slmloop.store import DatasetVersion, GoldVersion, Import
from slmloop.tasks import input_text, prompt_messages, resolve_task, target_text

__all__ = ["LEAK_WARNING_SHARE", "RowTable", "example_token_lengths", "is_synthetic", "prepare_dataset"]

#: dropping more than this share of rows as gold leaks is announced loudly, with the setting that decides
LEAK_WARNING_SHARE = 0.03


@dataclass
class RowTable:
    """The rows still in play, each with its dedupe group and its MinHash signature."""

    rows: list[dict[str, Any]]
    groups: list[str] | None
    signatures: Signatures

    def take(self, index: Sequence[int]) -> RowTable:
        return RowTable(
            [self.rows[i] for i in index],
            [self.groups[i] for i in index] if self.groups is not None else None,
            self.signatures.subset(index),
        )

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class _Ledger:
    """Where every row went. Rejects keep the row's source and a pointer to what it duplicates."""

    task: TaskConfig
    rejects: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def reject(self, row: dict[str, Any], reason: str, detail: str, of: dict[str, Any] | None = None) -> None:
        entry = {**row.get("_src", {}), "reason": reason, "detail": detail, "raw": input_text(self.task, row)[:300]}
        if of is not None:
            entry["of"] = {**of.get("_src", {}), "text": input_text(self.task, of)[:300]}
        self.rejects.append(entry)


# ---------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------
def _active_imports(project: Project, import_ids: list[str] | None) -> list[Import]:
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
    return imports


def _clean(data: DataConfig, task: TaskConfig, rows: list[dict[str, Any]], ledger: _Ledger) -> list[dict[str, Any]]:
    """Normalise text, redact or block PII, drop rows left empty."""
    kept: list[dict[str, Any]] = []
    changed = 0
    pii: Counter[str] = Counter()
    kinds = tuple(data.pii.types)
    for row in rows:
        new = normalize_row(task, row, normalize_text) if data.normalize else row
        changed += new != row
        if data.pii.mode != "off":
            found: Counter[str] = Counter()

            def scrub(text: str, found: Counter[str] = found) -> str:
                out, counts = redact(text, kinds)
                found.update(counts)
                return out

            redacted = normalize_row(task, new, scrub)
            pii.update(found)
            if found and data.pii.mode == "block":
                ledger.reject(row, "pii_blocked", "contains " + ", ".join(f"{n} {k}" for k, n in found.items()))
                continue
            new = redacted
        if not input_text(task, new).strip():
            ledger.reject(row, "empty_input", "empty after normalisation")
            continue
        kept.append(new)
    ledger.stats.update(normalized_changed=changed, pii=dict(pii))
    return kept


def _drop_too_long(project: Project, rows: list[dict[str, Any]], ledger: _Ledger) -> list[dict[str, Any]]:
    limit = project.manifest.data.max_tokens
    if limit is None or not rows:
        return rows
    lengths = example_token_lengths(project, rows)
    ledger.stats["token_lengths"] = {"max": max(lengths), "mean": sum(lengths) / len(lengths)}
    fits = []
    for row, n in zip(rows, lengths, strict=True):
        if n > limit:
            ledger.reject(row, "too_long", f"{n} tokens > data.max_tokens = {limit}")
        else:
            fits.append(row)
    return fits


def _dedupe_exact(task: TaskConfig, rows: list[dict[str, Any]], ledger: _Ledger) -> list[dict[str, Any]]:
    """Same normalised, case-folded input as an earlier row: the first occurrence wins."""
    seen: dict[str, dict[str, Any]] = {}
    unique = []
    for row in rows:
        key = dedupe_key(input_text(task, row))
        if key in seen:
            ledger.reject(row, "duplicate_exact", "same input as an earlier row", of=seen[key])
            continue
        seen[key] = row
        unique.append(row)
    return unique


def _dedupe_near(data: DataConfig, task: TaskConfig, table: RowTable, ledger: _Ledger) -> RowTable:
    """Near duplicates (MinHash LSH): keep the first of each cluster, or keep them all in one group."""
    if data.dedupe.near == "off" or not table.rows:
        return table
    near = find_near_duplicates(table.signatures, data.dedupe.near_threshold)
    ledger.stats["near_clusters"] = sum(1 for members in near.clusters().values() if len(members) > 1)
    if data.dedupe.near == "group":
        return RowTable(table.rows, [f"near:{r}" for r in near.representative], table.signatures)
    keep = []
    for i, row in enumerate(table.rows):
        rep = near.representative[i]
        if rep != i:
            detail = f"Jaccard {near.similarity[i]:.2f} to an earlier row"
            ledger.reject(row, "duplicate_near", detail, of=table.rows[rep])
        else:
            keep.append(i)
    return table.take(keep)


def _group_by_field(cfg: SplitConfig, table: RowTable) -> RowTable:
    if not cfg.group_by:
        return table
    by_field = [f"{cfg.group_by}:{row_field(r, cfg.group_by)}" for r in table.rows]
    groups = by_field if table.groups is None else [f"{a}|{b}" for a, b in zip(table.groups, by_field, strict=True)]
    return RowTable(table.rows, groups, table.signatures)


def _sample(cfg: SplitConfig, table: RowTable, ledger: _Ledger) -> RowTable:
    """A seeded sample of ``max_rows`` (one random stream per decision: re-runs reproduce the split)."""
    if cfg.max_rows is None or len(table) <= cfg.max_rows:
        return table
    order = list(range(len(table)))
    random.Random(f"{cfg.seed}:sample").shuffle(order)
    keep = set(order[: cfg.max_rows])
    for i, row in enumerate(table.rows):
        if i not in keep:
            ledger.reject(row, "sampled_out", f"data.split.max_rows = {cfg.max_rows}")
    return table.take(sorted(keep))


def _strata(cfg: SplitConfig, task: TaskConfig, rows: Sequence[dict[str, Any]]) -> list[Any] | None:
    if cfg.stratify is False:
        return None
    if cfg.stratify is True:
        return [r["label"] for r in rows] if task.type == "classification" else None
    return [row_field(r, str(cfg.stratify)) for r in rows]


def split_rows(
    rows: Sequence[dict[str, Any]],
    fraction: float,
    rng: random.Random,
    strata: Sequence[Any] | None,
    groups: Sequence[Any] | None,
    eligible: Sequence[bool] | None = None,
) -> tuple[list[int], list[int]]:
    """Indices (kept, split off): ``fraction`` of the ``eligible`` rows (default: all) per stratum, whole groups
    at a time (largest remainder). Rows that are not eligible are always kept."""
    pool = [i for i in range(len(rows)) if eligible is None or eligible[i]]
    if fraction <= 0 or not pool:
        return list(range(len(rows))), []
    units: dict[Any, list[int]] = {}
    for i in pool:
        units.setdefault(groups[i] if groups is not None else i, []).append(i)
    by_stratum: dict[Any, list[Any]] = defaultdict(list)
    sizes: Counter[Any] = Counter()
    for key, members in units.items():
        s = strata[members[0]] if strata is not None else ""
        by_stratum[s].append(key)
        sizes[s] += len(members)
    quotas = {s: n * fraction for s, n in sizes.items()}
    take = {s: int(q) for s, q in quotas.items()}
    leftover = round(len(pool) * fraction) - sum(take.values())
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
    return [i for i in range(len(rows)) if i not in chosen], sorted(chosen)


@dataclass
class _Gold:
    version: GoldVersion
    rows: list[dict[str, Any]]
    new_rows: int  # rows taken from the sources into a newly frozen gold set
    file: GoldFile | None = None


def _gold(project: Project, table: RowTable, ledger: _Ledger, console: Console) -> tuple[_Gold, RowTable]:
    """The gold set, and the rows left for training: an external file, the frozen set, or a new split."""
    m = project.manifest
    cfg = m.data.split
    if m.data.gold is not None:
        gold_file = read_gold_file(project, m.data.gold)
        acc = gold_file.accounting()
        console.print(
            f"gold file {acc['path']}: {acc['rows_read']} rows = {acc['accepted']} gold"
            + (f" + {len(gold_file.rejects)} rejected ({acc['rejected']})" if gold_file.rejects else "")
        )
        head = current_gold(project)
        note = f"from the gold file {m.data.gold.path} (data.gold)"
        version = freeze_gold(project, gold_file.rows, head.id if head else None, note)
        return _Gold(version, gold_file.rows, 0, gold_file), table
    head = current_gold(project)
    if head is not None:
        return _Gold(head, project.objects.read_jsonl(head.object), 0), table
    real = [not is_synthetic(r) for r in table.rows]  # generated rows never judge
    keep, chosen = split_rows(
        table.rows, cfg.gold, random.Random(f"{cfg.seed}:gold"), _strata(cfg, m.task, table.rows), table.groups, real
    )
    if not chosen:
        raise DataError(
            f"too few real (non-synthetic) rows ({sum(real)}) to set aside a gold set",
            hint="Import more data or raise data.split.gold.",
        )
    gold_rows = [table.rows[i] for i in chosen]
    version = freeze_gold(project, gold_rows, None, "first freeze by data prepare")
    return _Gold(version, gold_rows, len(gold_rows)), table.take(keep)


def _drop_leaks(project: Project, pool: RowTable, gold: _Gold, ledger: _Ledger, console: Console) -> RowTable:
    """Nothing that copies a gold row may train: exact, near (and semantic with leakage.semantic: block)."""
    data, task = project.manifest.data, project.manifest.task
    console.print(f"checking {len(pool)} rows against {len(gold.rows)} gold rows for leakage …")
    gold_texts = [input_text(task, r) for r in gold.rows]
    embed = project_embedder(project) if data.leakage.semantic == "block" else None
    leaks = gold_leaks(
        [input_text(task, r) for r in pool.rows],
        gold_texts,
        data.leakage,
        embed,
        signatures=(pool.signatures, Signatures(gold_texts, num_perm=data.dedupe.num_perm)),
    )
    kinds: Counter[str] = Counter()
    clean = []
    for i, row in enumerate(pool.rows):
        if i in leaks:
            j, kind, sim = leaks[i]
            kinds[kind] += 1
            detail = f"{kind} match ({sim:.2f}) to gold row {j} of {gold.version.id}"
            ledger.reject(row, "leaks_gold", detail, of=gold.rows[j])
        else:
            clean.append(i)
    ledger.stats["leakage"] = {"checks": ["exact", "near", *(["semantic"] if embed else [])], **dict(kinds)}
    dropped = len(pool) - len(clean)
    if pool.rows and dropped / len(pool) > LEAK_WARNING_SHARE:
        ledger.warnings.append(
            f"{dropped} of {len(pool)} rows ({100 * dropped / len(pool):.1f} %) were dropped as copies of gold rows "
            f"({', '.join(f'{n} {k}' for k, n in kinds.items())}). The bar is data.leakage.near_threshold = "
            f"{data.leakage.near_threshold} (character 5-gram Jaccard)"
            + (f" and semantic_threshold = {data.leakage.semantic_threshold} (semantic: block)" if embed else "")
            + ". `slmloop data rejects` lists every pair; docs/leakage.md explains the thresholds."
        )
    return pool.take(clean)


def is_synthetic(row: dict[str, Any]) -> bool:
    """A generated row (a true ``synthetic`` column): it may train, never validate or judge."""
    value = row.get("_meta", {}).get("synthetic")
    if isinstance(value, str):  # CSV/TSV columns arrive as text
        return value.strip().casefold() in ("true", "1", "yes", "y")
    return bool(value)


def _split_validation(cfg: SplitConfig, task: TaskConfig, pool: RowTable, outside_gold: bool) -> tuple[list, list]:
    """Validation is a share of all rows: of a pool without gold it is v / (1 - g); with an external gold, v.
    Synthetic rows are training rows only."""
    fraction = cfg.validation if outside_gold else min(cfg.validation / (1.0 - cfg.gold), 0.9)
    rng = random.Random(f"{cfg.seed}:validation")
    real = [not is_synthetic(r) for r in pool.rows]
    keep, chosen = split_rows(pool.rows, fraction, rng, _strata(cfg, task, pool.rows), pool.groups, real)
    return [pool.rows[i] for i in keep], [pool.rows[i] for i in chosen]


def _announce_task(task: TaskConfig, resolved: TaskConfig, console: Console) -> None:
    if task.labels == "auto":
        names = resolved.label_list
        console.print(f"labels: auto → {len(names)} labels: {', '.join(names[:12])}{' …' if len(names) > 12 else ''}")
    if task.fields == "auto":
        names = resolved.field_list
        console.print(f"fields: auto → {len(names)} fields: {', '.join(names[:12])}{' …' if len(names) > 12 else ''}")


def _label_counts(train: list, validation: list, gold: list) -> dict[str, dict[str, int]]:
    return {
        name: dict(Counter(r["label"] for r in part))
        for name, part in (("train", train), ("validation", validation), ("gold", gold))
    }


def example_token_lengths(project: Project, rows: list[dict[str, Any]], style: str | None = None) -> list[int]:
    """Tokens of each row as the model sees it: the whole chat-formatted example, in ``style``
    (default: the prompt style training uses)."""
    from slmloop.models.catalog import resolve_model
    from slmloop.models.loading import load_tokenizer

    tok = load_tokenizer(resolve_model(project.manifest.model.base))
    task = project.manifest.task
    if task.unresolved:
        task = resolve_task(task, rows)
    style = style or project.manifest.train.prompt
    texts = [
        str(
            tok.apply_chat_template(
                [*prompt_messages(task, r, style), {"role": "assistant", "content": target_text(task, r)}],
                tokenize=False,
            )
        )
        for r in rows
    ]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def prepare_dataset(
    project: Project, import_ids: list[str] | None = None, console: Console | None = None
) -> tuple[DatasetSplits, bool]:
    """Build (or find) the dataset version for the active imports. Returns (splits, reused)."""
    console = console or Console(stderr=True, quiet=True)
    m = project.manifest
    task, data = m.task, m.data
    imports = _active_imports(project, import_ids)
    rows: list[dict[str, Any]] = [r for imp in imports for r in project.objects.read_jsonl(imp.accepted_object)]
    ledger = _Ledger(task)
    console.print(f"normalising {len(rows)} rows …")
    kept = _drop_too_long(project, _clean(data, task, rows, ledger), ledger)
    unique = _dedupe_exact(task, kept, ledger) if data.dedupe.exact else kept
    table = RowTable(unique, None, Signatures([input_text(task, r) for r in unique], num_perm=data.dedupe.num_perm))
    console.print(f"finding near duplicates among {len(table)} rows (MinHash LSH) …")
    table = _sample(data.split, _group_by_field(data.split, _dedupe_near(data, task, table, ledger)), ledger)
    gold, pool = _gold(project, table, ledger, console)
    pool = _drop_leaks(project, pool, gold, ledger, console)
    train, validation = _split_validation(data.split, task, pool, outside_gold=data.gold is not None)
    if not train:
        raise DataError("no rows left for training", hint="Import more data, or see `slmloop data rejects`.")
    resolved = resolve_task(task, train + validation + gold.rows)
    _announce_task(task, resolved, console)

    counts: dict[str, Any] = {
        "rows_in": len(rows),
        "rejected": dict(Counter(r["reason"] for r in ledger.rejects)),
        "train": len(train),
        "validation": len(validation),
        "gold": gold.new_rows,
        "gold_rows_total": gold.version.rows,
        **ledger.stats,
    }
    placed = counts["train"] + counts["validation"] + counts["gold"] + len(ledger.rejects)
    if placed != len(rows):  # pragma: no cover - a bug, not user input
        raise StoreError(f"row accounting broke: {placed} placed of {len(rows)}")
    if gold.file is not None:
        counts["gold_file"] = gold.file.accounting()
    if task.type == "classification":
        counts["labels"] = _label_counts(train, validation, gold.rows)
    if data.leakage.semantic != "off":
        with console.status("measuring how many gold rows have a close paraphrase in training (MiniLM) …"):
            counts["contamination"] = contamination(project, resolved, gold.rows, train + validation)
    if ledger.warnings:
        counts["warnings"] = ledger.warnings
        for w in ledger.warnings:
            console.print(f"[bold yellow]warning:[/bold yellow] {w}")
    return _write_version(project, imports, train, validation, gold, ledger, counts, resolved)


def _write_version(
    project: Project,
    imports: list[Import],
    train: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    gold: _Gold,
    ledger: _Ledger,
    counts: dict[str, Any],
    resolved: TaskConfig,
) -> tuple[DatasetSplits, bool]:
    data = project.manifest.data
    train_obj = project.objects.put_jsonl(train)
    val_obj = project.objects.put_jsonl(validation)
    task_key = hashlib.sha256(resolved.model_dump_json().encode()).hexdigest()[:8]
    version_id = "ds-" + hashlib.sha256(f"{train_obj}:{val_obj}:{gold.version.id}:{task_key}".encode()).hexdigest()[:12]
    with project.store.session() as s:
        existing = s.get(DatasetVersion, version_id)
    if existing is not None:
        return DatasetSplits(existing, train, validation, gold.rows), True
    rejects = ledger.rejects + [{**r, "split": "gold file"} for r in (gold.file.rejects if gold.file else [])]
    version = DatasetVersion(
        id=version_id,
        import_ids=[i.id for i in imports],
        train_object=train_obj,
        validation_object=val_obj,
        gold_id=gold.version.id,
        rejects_object=project.objects.put_jsonl(rejects),
        counts=counts,
        config={
            "data": data.model_dump(mode="json", exclude={"sources"}),
            "task": resolved.model_dump(),
            "sources": [
                {"import": i.id, "path": i.source_path, "sha256": i.source_sha256, "mapping": i.mapping}
                for i in imports
            ],
        },
    )
    project.store.add(version, "data.prepare", version_id, gold=gold.version.id, counts=counts)
    return DatasetSplits(version, train, validation, gold.rows), False
