"""``slmloop data prepare``: imported rows → an immutable, content-addressed dataset version.

The steps, each counted, in order:

    normalise text → PII redact/block → drop empty → drop too long (model tokens)
    → one answer per input: copies, conflicts and corrections (every distinct pair for generation / chat)
    → near duplicates of whole rows (near inputs, MinHash LSH, with the same answer)
    → sample (max_rows)
    → gold: the external gold file (data.gold), or the frozen set, or freeze a split
    → rows that copy a gold row: placed in gold when they are its own rows, else dropped (exact / near;
      semantic too with leakage.semantic: block)
    → train / validation split (group-aware, stratified, stable under edits)
    → labels: auto / fields: auto resolved; contamination (close paraphrases of gold) measured

Which answer a classifier or an extractor learns for an input: the active imports
are ordered as they were made (``Import.seq``); the newest import that holds the
input decides (a *correction*: the older rows are rejected as ``corrected``, naming
the row that replaced them); two answers inside that import are a ``conflict``
(all its rows rejected, naming each line); the same answer again is a
``duplicate_exact``. A generator or a chat model keeps every distinct (input,
answer) pair; a gold input keeps all its answers as references.

Splits are stable under edits: each row (or group) falls on its side of the line
by a hash of its content, so a relabel or a removed row moves no other row.

Every row that goes in comes out in exactly one split or with a reason code —
gold-file rows too — and the counts are checked before anything is written.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from sqlalchemy import select

from slmloop.data.clean import answer_key, dedupe_key, input_key, many_answers, normalize_row, normalize_text
from slmloop.data.dedupe import Signatures, find_near_duplicates
from slmloop.data.diff import DatasetChanges, dataset_changes, where_from
from slmloop.data.gold import GoldFile, merge_references, read_gold_file
from slmloop.data.importer import import_state
from slmloop.data.leakage import contamination, gold_leaks, project_embedder
from slmloop.data.pii import redact
from slmloop.data.versions import (
    DatasetSplits,
    current_dataset,
    current_gold,
    freeze_gold,
    load_dataset,
    row_field,
    set_current_dataset,
)
from slmloop.errors import DataError, StoreError
from slmloop.manifest import DataConfig, SplitConfig, TaskConfig
from slmloop.predict.tasks import input_text, prompt_messages, references, resolve_task, target_text
from slmloop.progress import status
from slmloop.project import Project
from slmloop.store import DatasetVersion, GoldVersion, Import

__all__ = [
    "LEAK_WARNING_SHARE",
    "Prepared",
    "RowTable",
    "example_token_lengths",
    "is_synthetic",
    "prepare_dataset",
    "split_rows",
]

#: dropping more than this share of rows as gold leaks is announced loudly, with the setting that decides
LEAK_WARNING_SHARE = 0.03


@dataclass
class Prepared:
    """What one ``data prepare`` did."""

    splits: DatasetSplits
    #: the rows came out as an existing version (which is the current one again)
    reused: bool
    #: this prepare's accounting: rows_in == train + validation + gold + every rejected row. A reused
    #: version's stored counts describe the prepare that made it, which may have read other imports.
    counts: dict[str, Any]
    #: per import read: id, path, rows, train, validation, gold, rejected {reason: n}
    imports: list[dict[str, Any]]
    #: imports left out: id, path, state (superseded by …, dropped: …)
    left_out: list[dict[str, Any]]
    #: the current version before this prepare, and what changed against it
    previous: str | None = None
    changes: DatasetChanges | None = None


@dataclass
class RowTable:
    """The rows still in play, each with the group it must share a split with (None: no groups) and its
    MinHash signature. Group names come from the rows' content, so a split does not depend on row order."""

    rows: list[dict[str, Any]]
    groups: list[str] | None
    signatures: Signatures

    def take(self, index: Sequence[int]) -> RowTable:
        return RowTable(
            [self.rows[i] for i in index],
            [self.groups[i] for i in index] if self.groups is not None else None,
            self.signatures.subset(index),
        )

    def grouped(self, names: Sequence[str]) -> RowTable:
        """The rows with one more grouping: rows share a split when they share a name here or before."""
        if self.groups is None:
            return RowTable(self.rows, list(names), self.signatures)
        return RowTable(self.rows, [f"{a}|{b}" for a, b in zip(self.groups, names, strict=True)], self.signatures)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class _Ledger:
    """Where every row went. Rejects keep the row's source and a pointer to what it duplicates."""

    task: TaskConfig
    rejects: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: source rows placed in gold: a newly frozen split, or the frozen gold set's own rows read again
    gold_sources: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, row: dict[str, Any], reason: str, detail: str, of: dict[str, Any] | None = None) -> None:
        entry = {**row.get("_src", {}), "reason": reason, "detail": detail, "raw": input_text(self.task, row)[:300]}
        if of is not None:
            entry["of"] = {**of.get("_src", {}), "text": input_text(self.task, of)[:300]}
        self.rejects.append(entry)


# ---------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------
def _active_imports(project: Project) -> tuple[list[Import], list[Import]]:
    """(active imports in the order they were made, the imports left out)."""
    with project.store.session() as s:
        every = list(s.scalars(select(Import).order_by(Import.seq, Import.created_at)).all())
    active = [i for i in every if i.active]
    if not active:
        left = f" ({len(every)} import(s), none active: `slmloop data list`)" if every else ""
        raise DataError(f"no imported data yet{left}", hint="Run `slmloop data import FILE` first.")
    return active, [i for i in every if not i.active]


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


def _answer_shown(task: TaskConfig, row: dict[str, Any]) -> str:
    return target_text(task, row)[:80]


def _one_answer(
    task: TaskConfig, rows: list[dict[str, Any]], order: dict[str, int], drop_copies: bool, ledger: _Ledger
) -> list[dict[str, Any]]:
    """One answer per input (classification, extraction): the newest import that holds the input decides;
    older rows with another answer are ``corrected``, copies ``duplicate_exact``, and an import that gives
    two answers makes every row of that input a ``conflict``. Generation and chat keep each distinct
    (input, answer) pair. With ``drop_copies`` false identical rows stay."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[input_key(task, row)].append(i)
    keep: list[int] = []
    corrected = conflicts = 0
    for members in groups.values():
        if len(members) == 1:
            keep.append(members[0])
            continue
        newest = max(order[rows[i]["_src"]["import"]] for i in members)
        by_answer: dict[str, list[int]] = defaultdict(list)
        for i in members:
            by_answer[answer_key(task, rows[i])].append(i)
        if many_answers(task):
            for same in by_answer.values():
                keep.extend(_copies(rows, same, order, drop_copies, ledger))
            continue
        deciding = [i for i in members if order[rows[i]["_src"]["import"]] == newest]
        answers = {answer_key(task, rows[i]) for i in deciding}
        if len(answers) > 1:
            conflicts += 1
            listing = "; ".join(f"{where_from(rows[i])} {_answer_shown(task, rows[i])!r}" for i in deciding)
            for i in members:
                ledger.reject(
                    rows[i],
                    "conflict",
                    f"{rows[deciding[0]]['_src']['import']} answers this input {len(answers)} ways: {listing}",
                )
            continue
        same = by_answer[next(iter(answers))]
        kept = _copies(rows, same, order, drop_copies, ledger)
        keep.extend(kept)
        for i in sorted(set(members) - set(same)):
            corrected += 1
            ledger.reject(
                rows[i],
                "corrected",
                f"answer {_answer_shown(task, rows[i])!r} replaced by {_answer_shown(task, rows[kept[0]])!r} "
                f"from {where_from(rows[kept[0]])} (a later import)",
                of=rows[kept[0]],
            )
    ledger.stats.update(corrected=corrected, conflicts=conflicts)
    return [rows[i] for i in sorted(keep)]


def _copies(
    rows: list[dict[str, Any]], same: list[int], order: dict[str, int], drop: bool, ledger: _Ledger
) -> list[int]:
    """Of rows that are the same row: the one kept (from the newest import, its first line), the rest
    rejected as ``duplicate_exact`` — or all of them, with ``drop`` false."""
    if not drop or len(same) == 1:
        return list(same)
    kept = max(same, key=lambda i: (order[rows[i]["_src"]["import"]], -i))
    for i in same:
        if i != kept:
            ledger.reject(
                rows[i], "duplicate_exact", f"same input and answer as {where_from(rows[kept])}", of=rows[kept]
            )
    return [kept]


def _dedupe_near(data: DataConfig, task: TaskConfig, table: RowTable, ledger: _Ledger) -> RowTable:
    """Near duplicates of whole rows: near inputs (MinHash LSH, exact Jaccard) with the same answer; keep the first
    of each cluster, or keep them all in one group. Near inputs with other answers are two rows (one value changed
    on both sides), and so are two wordings of one input's answer (generation, chat)."""
    if data.dedupe.near == "off" or not table.rows:
        return table
    answers = [answer_key(task, r) for r in table.rows]
    near = find_near_duplicates(table.signatures, data.dedupe.near_threshold, lambda i, j: answers[i] == answers[j])
    ledger.stats["near_clusters"] = sum(1 for members in near.clusters().values() if len(members) > 1)
    if data.dedupe.near == "group":
        keys = [input_key(task, table.rows[r]) for r in near.representative]
        return table.grouped([f"near:{k}" for k in keys])
    keep = []
    for i, row in enumerate(table.rows):
        rep = near.representative[i]
        if rep != i:
            detail = f"input Jaccard {near.similarity[i]:.2f} to {where_from(table.rows[rep])}, the same answer"
            ledger.reject(row, "duplicate_near", detail, of=table.rows[rep])
        else:
            keep.append(i)
    return table.take(keep)


def _group_by_field(cfg: SplitConfig, table: RowTable) -> RowTable:
    if not cfg.group_by:
        return table
    return table.grouped([f"{cfg.group_by}:{row_field(r, cfg.group_by)}" for r in table.rows])


def _group_by_input(task: TaskConfig, table: RowTable) -> RowTable:
    """Generation / chat: the answers of one input stay together (in training, in validation, or as one gold
    row's references), so no input is both learned and judged."""
    if not many_answers(task):
        return table
    return table.grouped([f"input:{input_key(task, r)}" for r in table.rows])


def _row_key(task: TaskConfig, row: dict[str, Any]) -> str:
    """What makes a row this row, for the stable split: its input, and for generation / chat its answer."""
    return input_key(task, row) + (":" + answer_key(task, row) if many_answers(task) else "")


def _rank(salt: str, key: str) -> str:
    """A row's place in a seeded order that does not depend on the other rows (a content hash)."""
    return hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()


def _sample(cfg: SplitConfig, task: TaskConfig, table: RowTable, ledger: _Ledger) -> RowTable:
    """A seeded sample of ``max_rows``: the rows first in the seeded content order, so re-runs and edits
    elsewhere keep the same rows."""
    if cfg.max_rows is None or len(table) <= cfg.max_rows:
        return table
    order = sorted(range(len(table)), key=lambda i: _rank(f"{cfg.seed}:sample", _row_key(task, table.rows[i])))
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
    keys: Sequence[str],
    fraction: float,
    salt: str,
    strata: Sequence[Any] | None,
    groups: Sequence[Any] | None,
    eligible: Sequence[bool] | None = None,
) -> tuple[list[int], list[int]]:
    """Indices (kept, split off): ``fraction`` of the ``eligible`` rows (default: all) per stratum, whole groups
    at a time (largest remainder). Rows that are not eligible are always kept.

    Within a stratum, units (groups, else rows named by ``keys``) are taken in the order of a seeded hash of
    their name: which side a row falls on depends on its own content, not on the rows around it."""
    pool = [i for i in range(len(keys)) if eligible is None or eligible[i]]
    if fraction <= 0 or not pool:
        return list(range(len(keys))), []
    units: dict[Any, list[int]] = {}
    for i in pool:
        units.setdefault(groups[i] if groups is not None else keys[i], []).append(i)
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
        got = 0
        for key in sorted(by_stratum[s], key=lambda k: _rank(salt, str(k))):
            if got >= take[s]:
                break
            chosen.update(units[key])
            got += len(units[key])
    return [i for i in range(len(keys)) if i not in chosen], sorted(chosen)


@dataclass
class _Gold:
    version: GoldVersion
    rows: list[dict[str, Any]]
    new_rows: int  # source rows taken into a newly frozen gold set (a generation input: one per reference)
    file: GoldFile | None = None


def _gold(project: Project, table: RowTable, ledger: _Ledger, console: Console) -> tuple[_Gold, RowTable]:
    """The gold set, and the rows left for training: an external file, the frozen set, or a new split."""
    m = project.manifest
    cfg, task = m.data.split, m.task
    if m.data.gold is not None:
        gold_file = read_gold_file(project, m.data.gold)
        acc = gold_file.accounting()
        console.print(
            f"gold file {acc['path']}: {acc['rows_read']} rows = {acc['accepted']} gold"
            + (f" ({acc['gold_rows']} inputs)" if acc["gold_rows"] != acc["accepted"] else "")
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
    keys = [_row_key(task, r) for r in table.rows]
    keep, chosen = split_rows(keys, cfg.gold, f"{cfg.seed}:gold", _strata(cfg, task, table.rows), table.groups, real)
    if not chosen:
        raise DataError(
            f"too few real (non-synthetic) rows ({sum(real)}) to set aside a gold set",
            hint="Import more data or raise data.split.gold.",
        )
    sources = [table.rows[i] for i in chosen]
    ledger.gold_sources.extend(sources)
    gold_rows = merge_references(task, sources)
    version = freeze_gold(project, gold_rows, None, "first freeze by data prepare")
    return _Gold(version, gold_rows, len(sources)), table.take(keep)


def _gold_answers(task: TaskConfig, gold: list[dict[str, Any]]) -> dict[str, tuple[int, set[str], set[str]]]:
    """input key → (gold row, the answer keys it accepts: its label / object, or each reference, the source files
    its answers were read from)."""
    out: dict[str, tuple[int, set[str], set[str]]] = {}
    for j, g in enumerate(gold):
        accepted = {dedupe_key(r) for r in references(task, g)} if many_answers(task) else {answer_key(task, g)}
        files = {str(f) for f in [*g.get("_files", []), g.get("_src", {}).get("file")] if f}
        out.setdefault(input_key(task, g), (j, accepted, files))
    return out


def _drop_leaks(project: Project, pool: RowTable, gold: _Gold, ledger: _Ledger, console: Console) -> RowTable:
    """Nothing that copies a gold row may train: exact, near (and semantic with leakage.semantic: block).

    Where the gold set was split from these sources, a source row that *is* a gold row (same input, an
    answer gold holds, read from the file that gold row came from) is placed in gold; a copy from another
    file and a row that gives a gold input another answer are leaks (gold changes only through
    ``slmloop gold …``)."""
    data, task = project.manifest.data, project.manifest.task
    own = data.gold is None  # the gold rows came from the sources
    by_input = _gold_answers(task, gold.rows)
    placed, exact, disagree, found_in_sources = [], {}, 0, set()
    for i, row in enumerate(pool.rows):
        hit = by_input.get(input_key(task, row))
        if hit is None:
            continue
        j, accepted, files = hit
        key = dedupe_key(target_text(task, row)) if many_answers(task) else answer_key(task, row)
        if own and key in accepted and str(row.get("_src", {}).get("file")) in files:
            placed.append(i)
            found_in_sources.add(j)
            continue
        exact[i] = (j, key in accepted)
        disagree += key not in accepted
    ledger.gold_sources.extend(pool.rows[i] for i in placed)
    settled = set(placed) | set(exact)
    rest = [i for i in range(len(pool)) if i not in settled]
    console.print(f"checking {len(rest)} rows against {len(gold.rows)} gold rows for leakage …")
    gold_texts = [input_text(task, r) for r in gold.rows]
    embed = project_embedder(project) if data.leakage.semantic == "block" else None
    sub = pool.take(rest)
    found = gold_leaks(
        [input_text(task, r) for r in sub.rows],
        gold_texts,
        data.leakage,
        embed,
        signatures=(sub.signatures, Signatures(gold_texts, num_perm=data.dedupe.num_perm)),
    )
    kinds: Counter[str] = Counter()
    for i, (j, same) in exact.items():
        kinds["exact"] += 1
        if same:
            detail = f"a copy of gold row {j} of {gold.version.id}"
        else:
            detail = (
                f"the input of gold row {j} of {gold.version.id} with another answer "
                f"({_answer_shown(task, pool.rows[i])!r}; gold: {_answer_shown(task, gold.rows[j])!r}); "
                "gold changes only through `slmloop gold …`"
            )
        ledger.reject(pool.rows[i], "leaks_gold", detail, of=gold.rows[j])
    for local, (j, kind, sim) in found.items():
        kinds[kind] += 1
        detail = f"{kind} match ({sim:.2f}) to gold row {j} of {gold.version.id}"
        ledger.reject(sub.rows[local], "leaks_gold", detail, of=gold.rows[j])
    clean = [i for k, i in enumerate(rest) if k not in found]
    ledger.stats["leakage"] = {"checks": ["exact", "near", *(["semantic"] if embed else [])], **dict(kinds)}
    ledger.stats["in_gold"] = len(placed)
    dropped, checked = sum(kinds.values()), len(pool) - len(placed)
    if checked and dropped / checked > LEAK_WARNING_SHARE:
        bar = data.leakage.near_threshold
        near_sims = [sim for _, kind, sim in found.values() if kind == "near"]
        ladder = [t for t in (0.7, 0.8, 0.9) if t > bar]
        higher = (
            f"; at {' / '.join(f'{t:g}' for t in ladder)} the near check would drop "
            + " / ".join(str(sum(x >= t for x in near_sims)) for t in ladder)
            + " (inputs that share a template, such as forms or meaning representations, are near at a lower bar)"
            if near_sims and ladder
            else ""
        )
        ledger.warnings.append(
            f"{dropped} of {checked} rows ({100 * dropped / checked:.1f} %) were dropped as copies of gold rows "
            f"(leaks_gold: {', '.join(f'{n} {k}' for k, n in kinds.items())}). The bar is "
            f"data.leakage.near_threshold = {bar} (character 5-gram Jaccard of the inputs){higher}"
            + (f"; semantic_threshold = {data.leakage.semantic_threshold} (semantic: block)" if embed else "")
            + ". `slmloop data rejects` lists every pair; docs/leakage.md explains the thresholds."
        )
    gone = len(gold.rows) - len(found_in_sources)
    if own and gold.new_rows == 0 and gone:
        ledger.warnings.append(
            f"{gone} gold row(s) are in no active import as they are (removed or changed at the source); the gold "
            "set stays frozen: `slmloop gold remove` takes a row out, `slmloop gold add` adds its new version."
        )
    if disagree and many_answers(task):
        ledger.warnings.append(
            f"{disagree} row(s) answer a gold input in words its references do not hold (leaks_gold: the input is "
            "gold's, so not trained on). `slmloop gold add FILE` adds such answers to gold as references."
        )
    elif disagree:
        ledger.warnings.append(
            f"{disagree} row(s) give a gold input another answer than the gold set (leaks_gold, not trained on). "
            "If gold is wrong there, fix it with `slmloop gold remove` / `slmloop gold add`."
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
    real = [not is_synthetic(r) for r in pool.rows]
    keys = [_row_key(task, r) for r in pool.rows]
    strata = _strata(cfg, task, pool.rows)
    keep, chosen = split_rows(keys, fraction, f"{cfg.seed}:validation", strata, pool.groups, real)
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
    from slmloop.models.loading import chat_text, load_tokenizer

    tok = load_tokenizer(resolve_model(project.manifest.model.base))
    task = project.manifest.task
    if task.unresolved:
        task = resolve_task(task, rows)
    style = style or project.manifest.train.prompt
    texts = [
        chat_text(
            tok,
            [*prompt_messages(task, r, style), {"role": "assistant", "content": target_text(task, r)}],
            add_generation_prompt=False,
        )
        for r in rows
    ]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def prepare_dataset(project: Project, console: Console | None = None) -> Prepared:
    """Build (or find again) the dataset version of the active imports and make it the current one."""
    console = console or Console(stderr=True, quiet=True)
    m = project.manifest
    task, data = m.task, m.data
    previous = current_dataset(project)
    imports, left_out = _active_imports(project)
    order = {imp.id: k for k, imp in enumerate(imports)}
    rows: list[dict[str, Any]] = [r for imp in imports for r in project.objects.read_jsonl(imp.accepted_object)]
    ledger = _Ledger(task)
    console.print(f"normalising {len(rows)} rows of {len(imports)} import(s) …")
    kept = _drop_too_long(project, _clean(data, task, rows, ledger), ledger)
    unique = _one_answer(task, kept, order, data.dedupe.exact, ledger)
    table = RowTable(unique, None, Signatures([input_text(task, r) for r in unique], num_perm=data.dedupe.num_perm))
    console.print(f"finding near duplicates among {len(table)} rows (MinHash LSH) …")
    table = _dedupe_near(data, task, table, ledger)
    table = _sample(data.split, task, _group_by_field(data.split, _group_by_input(task, table)), ledger)
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
        "gold": len(ledger.gold_sources),
        "gold_new": gold.new_rows,
        "gold_rows_total": gold.version.rows,
        **ledger.stats,
    }
    placed = counts["train"] + counts["validation"] + counts["gold"] + len(ledger.rejects)
    if placed != len(rows):  # pragma: no cover - a bug, not user input
        raise StoreError(f"row accounting broke: {placed} placed of {len(rows)}")
    per_import = _per_import(imports, train, validation, ledger)
    if gold.file is not None:
        counts["gold_file"] = gold.file.accounting()
    if task.type == "classification":
        counts["labels"] = _label_counts(train, validation, gold.rows)
    if data.leakage.semantic != "off":
        with status(console, "measuring how many gold rows have a close paraphrase in training (MiniLM) …"):
            counts["contamination"] = contamination(project, resolved, gold.rows, train + validation)
    if ledger.warnings:
        counts["warnings"] = ledger.warnings
        for w in ledger.warnings:
            console.print(f"[bold yellow]warning:[/bold yellow] {w}")
    splits, reused = _write_version(project, imports, train, validation, gold, ledger, counts, resolved)
    changes = None
    if previous is not None and previous.id != splits.version.id:
        changes = dataset_changes(resolved, load_dataset(project, previous.id), splits)
    return Prepared(
        splits,
        reused,
        counts,
        per_import,
        [{"id": i.id, "path": i.source_path, "rows": i.accepted, "state": import_state(i)} for i in left_out],
        previous.id if previous is not None else None,
        changes,
    )


def _per_import(
    imports: list[Import], train: list[dict[str, Any]], validation: list[dict[str, Any]], ledger: _Ledger
) -> list[dict[str, Any]]:
    """Where each import's rows went; each import's own counts add up to its accepted rows."""
    table: dict[str, dict[str, Any]] = {
        i.id: {
            "id": i.id,
            "path": i.source_path,
            "rows": i.accepted,
            "train": 0,
            "validation": 0,
            "gold": 0,
            "rejected": Counter(),
        }
        for i in imports
    }
    for split, rows in (("train", train), ("validation", validation), ("gold", ledger.gold_sources)):
        for r in rows:
            table[r["_src"]["import"]][split] += 1
    for e in ledger.rejects:
        if e.get("import") in table:
            table[e["import"]]["rejected"][e["reason"]] += 1
    out = []
    for entry in table.values():
        entry["rejected"] = dict(entry["rejected"])
        placed = entry["train"] + entry["validation"] + entry["gold"] + sum(entry["rejected"].values())
        if placed != entry["rows"]:  # pragma: no cover - a bug, not user input
            raise StoreError(f"row accounting of {entry['id']} broke: {placed} placed of {entry['rows']}")
        out.append(entry)
    return out


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
            set_current_dataset(project, s, version_id)
            project.store.log_event(s, "data.prepare", version_id, gold=gold.version.id, reused=True, counts=counts)
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
    with project.store.session() as s:
        s.add(version)
        set_current_dataset(project, s, version_id)
        project.store.log_event(s, "data.prepare", version_id, gold=gold.version.id, reused=False, counts=counts)
    return DatasetSplits(version, train, validation, gold.rows), False
