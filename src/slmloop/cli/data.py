"""``slmloop data …`` and ``slmloop gold …``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmloop.cli.common import ProjectOpt, err, load, out, table
from slmloop.cli.options import config_options, with_overrides
from slmloop.errors import ConfigError
from slmloop.manifest import SourceConfig

app = typer.Typer(help="Import, clean, split and inspect data.", no_args_is_help=True)
gold_app = typer.Typer(help="The frozen gold set.", no_args_is_help=True)

SHOW_REJECTS = 20

MapOpt = Annotated[list[str] | None, typer.Option("--map", help="task_field=column (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Apply a proposed mapping even if unsure.")]
NoteOpt = Annotated[str, typer.Option(help="Why (kept in the audit log).")]


def _parse_map(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--map {pair!r} must look like task_field=source_column", hint="e.g. --map text=message")
        k, v = pair.split("=", 1)
        mapping[k.strip()] = v.strip()
    return mapping


@app.command("import")
@config_options(SourceConfig, skip=("path", "fields"))
def import_(
    overrides: dict[str, Any],
    files: Annotated[list[Path] | None, typer.Argument(help="Files or folders; default: data.sources.")] = None,
    map_: MapOpt = None,
    force: ForceOpt = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Read sources into the project; every row is accepted or rejected with a reason.

    Every key of a data.sources entry is also an option here (--format, --encoding, --no-header …).
    """
    from slmloop.data.importer import import_source, source_for

    proj = load(project)
    if map_:
        overrides["fields"] = _parse_map(map_)
    if files:
        sources = []
        for f in files:
            base = source_for(proj, f).model_dump()
            sources.append(with_overrides(SourceConfig, base, overrides))
    else:
        sources = [with_overrides(SourceConfig, s.model_dump(), overrides) for s in proj.manifest.data.sources]
    if not sources:
        raise ConfigError("nothing to import", hint="Pass a FILE, or list data.sources in slmloop.yaml.")
    for src in sources:
        res = import_source(proj, src, force=force)
        rec = res.record
        verb = "imported"
        if res.reused:
            verb = "active again (these bytes were imported before)" if res.reactivated else "already imported"
        if res.inspection is not None and not res.reused:
            used = ", ".join(f"{p.task_field} ← {p.column} ({p.confidence:.2f})" for p in res.inspection.proposals)
            out.print(f"  mapping inferred ({res.inspection.layout}): {used}")
        out.print(
            f"[bold]{rec.id}[/bold] {verb}: {rec.source_path}\n"
            f"  rows read {rec.rows_read} = accepted {rec.accepted} + rejected {rec.rejected}"
            + (f"  ({res.blank_lines} blank lines skipped)" if res.blank_lines else "")
        )
        if res.superseded:
            out.print(
                f"  replaces {', '.join(res.superseded)} (the same source imported before): rows no longer in the "
                "file leave the data, changed rows carry their new answer at the next `slmloop data prepare`"
            )
        if rec.rejected:
            _reject_table(res.rejects[:SHOW_REJECTS], f"rejected rows ({rec.rejected})")
            if rec.rejected > SHOW_REJECTS:
                out.print(f"  … all {rec.rejected}: `slmloop data rejects {rec.id}`")


@app.command("synth")
def synth(
    teacher: Annotated[
        str, typer.Option(help="endpoint:NAME (eval.endpoints), or a local model: run-N, vN, base, model:PATH_OR_ID.")
    ],
    for_label: Annotated[
        list[str] | None, typer.Option("--for-label", help="A label to write for (repeatable).")
    ] = None,
    thin_below: Annotated[int | None, typer.Option(help="Also every label with fewer training rows than this.")] = None,
    weakest: Annotated[
        int | None, typer.Option(help="Also the K labels with the lowest gold F1 of the newest run's evaluation.")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="New inputs per label.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the examples shown to the teacher.")] = 0,
    project: ProjectOpt = Path("."),
) -> None:
    """Have a teacher write new inputs for thin or failing labels, marked synthetic, and import them.

    `slmloop data prepare` then dedupes them, drops what copies gold and keeps them in training only;
    `slmloop eval` slices gold rows by whether their nearest training row is synthetic.
    """
    from slmloop.data.importer import import_source
    from slmloop.graduate.synth import synthesize, thin_labels, weakest_labels

    proj = load(project)
    picked = [*(for_label or []), *(thin_labels(proj, thin_below) if thin_below else [])]
    picked += weakest_labels(proj, weakest) if weakest else []
    labels = list(dict.fromkeys(picked))
    result = synthesize(proj, teacher, labels, n, seed=seed, console=err)
    res = import_source(proj, SourceConfig(path=str(result.file)))
    rec = res.record
    out.print(
        f"{sum(result.per_label.values())} synthetic inputs for {len(result.per_label)} label(s) from {teacher} "
        f"({result.requests} requests): {result.file}\n[bold]{rec.id}[/bold] imported: rows read {rec.rows_read} = "
        f"accepted {rec.accepted} + rejected {rec.rejected}\nnext: `slmloop data prepare` (synthetic rows train only)"
    )


def _reject_table(rows: list[dict], title: str) -> None:
    t = Table(title=title, title_justify="left")
    t.add_column("file:line", no_wrap=True)
    t.add_column("reason", style="yellow", no_wrap=True)
    t.add_column("detail")
    t.add_column("row", overflow="fold", max_width=50)
    for r in rows:
        t.add_row(
            f"{Path(str(r.get('file', '?'))).name}:{r.get('line', '?')}",
            r["reason"],
            r["detail"],
            r.get("raw", ""),
        )
    out.print(t)


@app.command("inspect")
@config_options(SourceConfig, skip=("path", "fields"))
def inspect(
    overrides: dict[str, Any],
    file: Annotated[Path, typer.Argument(help="File or folder to look at.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Profile a source's columns and propose how they map onto the task's fields."""
    from slmloop.data.importer import source_for, source_path
    from slmloop.data.inspect import inspect_source

    proj = load(project)
    src = with_overrides(SourceConfig, source_for(proj, file).model_dump(), overrides)
    found = inspect_source(proj.manifest.task, source_path(proj, src) or file, src)
    out.print(f"[bold]{file}[/bold]: {found.rows} rows sampled ({found.unreadable} unreadable) · layout {found.layout}")
    t = table("column", "type", "filled", "distinct", "mean chars", "examples", title="columns")
    for c in found.columns.values():
        t.add_row(c.name, c.kind, str(c.non_null), str(len(c.distinct)), f"{c.mean_len:.0f}", " | ".join(c.examples))
    out.print(t)
    threshold = proj.manifest.data.mapping_confidence
    t = table(
        "task field",
        "column",
        "confidence",
        "why",
        title=f"proposed mapping (applied automatically at confidence ≥ {threshold:.2f})",
    )
    for p in found.proposals:
        style = "green" if p.confidence >= threshold else "red"
        t.add_row(p.task_field, p.column or "?", f"[{style}]{p.confidence:.2f}[/{style}]", p.reason)
    out.print(t)
    maps = " ".join(f"--map {p.task_field}={p.column or 'COLUMN'}" for p in found.proposals)
    out.print(f"import with: slmloop data import {file} {maps}")


@app.command("prepare")
def prepare(project: ProjectOpt = Path(".")) -> None:
    """Normalise, dedupe and split the active imports into a dataset version (gold frozen).

    Where imports disagree on an input's answer, the newest import wins (a correction); the summary
    says what changed against the previous version (`slmloop data diff` lists every row)."""
    from slmloop.data.prepare import prepare_dataset

    proj = load(project)
    done = prepare_dataset(proj, console=err)
    v = done.splits.version
    c = done.counts
    if done.reused:
        same = "the current version" if done.previous == v.id else "an earlier version, current again"
        out.print(f"[bold]{v.id}[/bold] (unchanged: the rows come out as {same}) · gold {v.gold_id}")
    else:
        out.print(f"[bold]{v.id}[/bold] created · gold {v.gold_id}")
    t = Table(show_header=True)
    t.add_column("step")
    t.add_column("rows", justify="right")
    t.add_row("rows in", str(c["rows_in"]))
    t.add_row("normalised (text changed)", str(c["normalized_changed"]))
    for reason, n in sorted(c["rejected"].items()):
        t.add_row(f"rejected: {reason}", str(n))
    t.add_row("train", str(c["train"]))
    t.add_row("validation", str(c["validation"]))
    gold_note = "newly frozen" if c.get("gold_new") else "rows of the frozen gold set"
    if "gold_file" in c:
        gold_note = "data.gold is the gold set"
    t.add_row(f"gold ({gold_note}: {c['gold_rows_total']} gold rows)", str(c["gold"]))
    out.print(t)
    _imports_table(done.imports, done.left_out)
    leak = {k: n for k, n in c.get("leakage", {}).items() if k != "checks"}
    checks = "/".join(c.get("leakage", {}).get("checks", []))
    out.print(
        f"leakage check ({checks}) against gold: "
        + (", ".join(f"{n} {k}" for k, n in leak.items()) + " row(s) dropped (leaks_gold)" if leak else "clean")
        + (f" · PII {c['pii']}" if c.get("pii") else "")
    )
    if "gold_file" in c:
        g = c["gold_file"]
        inputs = f" ({g['gold_rows']} inputs)" if g.get("gold_rows", g["accepted"]) != g["accepted"] else ""
        out.print(
            f"gold file {g['path']}: rows read {g['rows_read']} = gold {g['accepted']}{inputs} + rejected "
            f"{sum(g['rejected'].values())} {g['rejected'] or ''}"
        )
    if "contamination" in c:
        k = c["contamination"]
        out.print(
            f"close paraphrases: {k['close']} of {k['gold_rows']} gold rows ({100 * k['rate']:.1f} %) have a training "
            f"input with MiniLM cosine ≥ {k['threshold']} (reported, not dropped: every gold metric is also shown "
            "for rows with and without one)"
        )
    if done.changes is not None:
        n = done.changes.counts()
        out.print(
            f"against {done.previous}: {n['added']} row(s) added, {n['removed']} removed, {n['relabelled']} "
            f"relabelled, {n['moved']} moved between splits · `slmloop data diff` lists them"
        )
    if "labels" in c:
        _label_balance(c["labels"])
    for w in c.get("warnings", []):
        err.print(f"[bold yellow]warning:[/bold yellow] {w}")


def _imports_table(imports: list[dict[str, Any]], left_out: list[dict[str, Any]]) -> None:
    """Where each import's rows went, and the imports left out with why."""
    t = table(
        "import",
        "source",
        "rows",
        "train",
        "validation",
        "gold",
        "rejected",
        title="imports read (newest last: where imports disagree, the newest wins)",
        right=("rows", "train", "validation", "gold"),
    )
    for i in imports:
        rejected = ", ".join(f"{k} {n}" for k, n in sorted(i["rejected"].items()))
        t.add_row(
            i["id"],
            Path(i["path"]).name,
            str(i["rows"]),
            str(i["train"]),
            str(i["validation"]),
            str(i["gold"]),
            rejected,
        )
    out.print(t)
    for i in left_out:
        out.print(f"left out: {i['id']} ({Path(i['path']).name}, {i['rows']} rows): {i['state']}", highlight=False)


def _label_balance(labels: dict[str, dict[str, int]]) -> None:
    """Per-split counts for a few labels; a balance summary (and the rarest labels) for many."""
    names = sorted({lab for part in labels.values() for lab in part})
    if len(names) <= 8:
        lt = Table(title="labels per split", title_justify="left")
        lt.add_column("split")
        for lab in names:
            lt.add_column(lab, justify="right")
        for split, counts in labels.items():
            lt.add_row(split, *(str(counts.get(lab, 0)) for lab in names))
        out.print(lt)
        return
    import statistics

    lt = table(
        "split",
        "rows",
        "labels present",
        "min",
        "median",
        "max",
        "rarest",
        title=f"label balance ({len(names)} labels)",
        right=("rows", "labels present", "min", "median", "max"),
    )
    for split, counts in labels.items():
        values = [counts.get(lab, 0) for lab in names]
        rare = sorted(names, key=lambda lab: counts.get(lab, 0))[:3]
        lt.add_row(
            split,
            str(sum(values)),
            f"{sum(v > 0 for v in values)}/{len(names)}",
            str(min(values)),
            f"{statistics.median(values):.0f}",
            str(max(values)),
            ", ".join(f"{lab} ({counts.get(lab, 0)})" for lab in rare),
        )
    out.print(lt)
    out.print("  full table: `slmloop data report` (HTML)")


@app.command("rejects")
def rejects(
    ref: Annotated[str | None, typer.Argument(help="Import id (imp-…) or dataset version (ds-…).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """List rejected rows with their line numbers and reasons."""
    from slmloop.data.versions import resolve_dataset
    from slmloop.store import Import

    proj = load(project)
    if ref and ref.startswith("imp-"):
        rec = proj.store.get(Import, ref, "import", "`slmloop data list` shows imports.")
        rows = proj.objects.read_jsonl(rec.rejects_object)
    else:
        v = resolve_dataset(proj, ref)
        rows = proj.objects.read_jsonl(v.rejects_object)
    _reject_table(rows, f"{len(rows)} rejected row(s)")


@app.command("list")
def list_(project: ProjectOpt = Path(".")) -> None:
    """Imports (active, superseded or dropped) and dataset versions of the project."""
    from slmloop.data.importer import import_state
    from slmloop.data.versions import current_dataset
    from slmloop.store import DatasetVersion, Import

    proj = load(project)
    t = table("id", "source", "imported", "read", "accepted", "rejected", "state", title="imports (oldest first)")
    for i in proj.store.list(Import, Import.created_at):
        state = import_state(i)
        t.add_row(
            i.id if i.active else f"[dim]{i.id}[/dim]",
            i.source_path,
            f"{i.created_at:%Y-%m-%d %H:%M}",
            str(i.rows_read),
            str(i.accepted),
            str(i.rejected),
            state if i.active else f"[yellow]{state}[/yellow]",
        )
    out.print(t)
    head = current_dataset(proj)
    t = table("", "id", "created", "train", "validation", "gold", "rows from monitor runs", title="dataset versions")
    for v in proj.store.list(DatasetVersion, DatasetVersion.created_at):
        runs = sorted(
            {r for src in v.config.get("sources", []) for r in src.get("mapping", {}).get("monitor_runs", [])}
        )
        t.add_row(
            "→" if head is not None and v.id == head.id else "",
            v.id,
            f"{v.created_at:%Y-%m-%d %H:%M}",
            str(v.counts["train"]),
            str(v.counts["validation"]),
            v.gold_id,
            ", ".join(f"drift-{r}" for r in runs),
        )
    out.print(t)
    out.print("[dim]→ the current version (training's default); `slmloop data prepare` makes it[/dim]")


@app.command("drop")
def drop(
    import_id: Annotated[str, typer.Argument(help="Import id (imp-…), see `slmloop data list`.")],
    note: NoteOpt = "",
    project: ProjectOpt = Path("."),
) -> None:
    """Take an import out of the data (its rows leave at the next prepare); `data restore` brings it back."""
    from slmloop.data.importer import drop_import

    rec = drop_import(load(project), import_id, note)
    out.print(
        f"[bold]{rec.id}[/bold] dropped ({rec.accepted} rows of {rec.source_path}); "
        "next: `slmloop data prepare` makes a version without them"
    )


@app.command("restore")
def restore(
    import_id: Annotated[str, typer.Argument(help="A dropped or superseded import (imp-…).")],
    note: NoteOpt = "",
    project: ProjectOpt = Path("."),
) -> None:
    """Bring a dropped or superseded import back (an active import of the same source steps aside)."""
    from slmloop.data.importer import restore_import

    rec, superseded = restore_import(load(project), import_id, note)
    aside = f"; {', '.join(superseded)} of the same source steps aside" if superseded else ""
    out.print(f"[bold]{rec.id}[/bold] active again ({rec.accepted} rows){aside}; next: `slmloop data prepare`")


@gold_app.command("show")
def gold_show(
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 10,
    project: ProjectOpt = Path("."),
) -> None:
    """The current gold version: its hash, size and first rows."""
    from slmloop.data.versions import current_gold
    from slmloop.errors import NotFoundError
    from slmloop.predict.tasks import input_text, target_text

    proj = load(project)
    gold = current_gold(proj)
    if gold is None:
        raise NotFoundError("no gold set yet", hint="Run `slmloop data prepare`.")
    rows = proj.objects.read_jsonl(gold.object)
    out.print(f"[bold]{gold.id}[/bold] · {gold.rows} rows · frozen {gold.created_at:%Y-%m-%d %H:%M} · {gold.note}")
    t = Table()
    t.add_column("#", justify="right")
    t.add_column("input", overflow="fold")
    t.add_column("expected", overflow="fold")
    task = proj.manifest.task
    for i, r in enumerate(rows[:limit]):
        t.add_row(str(i), input_text(task, r)[:120], target_text(task, r)[:60])
    out.print(t)


@app.command("diff")
def diff(
    old: Annotated[
        str | None, typer.Argument(help="Older dataset version (default: the one before the current).")
    ] = None,
    new: Annotated[str | None, typer.Argument(help="Newer dataset version (default: the current one).")] = None,
    limit: Annotated[int, typer.Option(help="Rows listed per kind of change.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Every change as JSON.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Rows added, removed, relabelled (same input, new answer) and moved between splits, listed."""
    import json
    from dataclasses import asdict

    from slmloop.data.report import diff_datasets

    d = diff_datasets(load(project), old, new)
    if as_json:
        out.print_json(json.dumps(asdict(d), ensure_ascii=False))
        return
    t = table(
        "split", "added", "removed", "relabelled", title=f"{d.old} → {d.new}", right=("added", "removed", "relabelled")
    )
    for s in ("train", "validation", "gold"):
        n = d.counts(s)
        t.add_row(s, str(n["added"]), str(n["removed"]), str(n["relabelled"]))
    out.print(t)
    out.print(f"rows that moved between splits: {len(d.moved)}")
    for title, items, cols in (
        ("relabelled", d.relabelled, ("split", "source", "input", "old", "new")),
        ("added", d.added, ("split", "source", "input", "answer")),
        ("removed", d.removed, ("split", "input", "answer")),
        ("moved", d.moved, ("input", "answer", "from", "to")),
    ):
        if not items:
            continue
        lt = table(
            *cols, title=f"{title} ({len(items)}{', first ' + str(limit) if len(items) > limit else ''})", fold=True
        )
        for x in items[:limit]:
            lt.add_row(*(str(x[c])[:120] for c in cols))
        out.print(lt)
    if d.labels:
        changed = {s: {k: v for k, v in part.items() if v[0] != v[1]} for s, part in d.labels.items()}
        changed = {s: part for s, part in changed.items() if part}
        if changed:
            lt = table(
                "split", "label", "before", "after", title="label counts that changed", right=("before", "after")
            )
            for s, part in changed.items():
                for lab, (a, b) in sorted(part.items(), key=lambda kv: kv[1][0] - kv[1][1])[:limit]:
                    lt.add_row(s, lab, str(a), str(b))
            out.print(lt)


@app.command("report")
def report(
    version: Annotated[str | None, typer.Argument(help="Dataset version (default: newest).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Summary of a dataset version in the terminal, and an HTML page with plots."""
    from slmloop.data.report import write_data_report

    proj = load(project)
    folder, summary = write_data_report(proj, version)
    list_(project)
    ln = summary["lengths"]
    out.print(
        f"lengths ({ln['unit']}): mean "
        + ", ".join(f"{s} {m:.0f}" for s, m in ln["mean"].items())
        + " · max "
        + ", ".join(f"{s} {m}" for s, m in ln["max"].items())
    )
    out.print(
        f"{summary['rejects']} rejected rows · {summary['clusters']} duplicate clusters · "
        f"{summary['leaks']} gold leaks removed"
    )
    out.print(f"report: {folder / 'index.html'}")


def _gold_file(project: Path, file: Path, map_: list[str] | None, force: bool) -> tuple[Any, Any]:
    """The project, and the rows of a gold file with every rejected row listed."""
    from slmloop.data.gold import read_gold_file
    from slmloop.data.importer import source_for

    proj = load(project)
    base = source_for(proj, file).model_dump()
    if map_:
        base["fields"] = _parse_map(map_)
    found = read_gold_file(proj, SourceConfig.model_validate(base), force)
    acc = found.accounting()
    out.print(f"{file}: rows read {acc['rows_read']} = accepted {acc['accepted']} + rejected {len(found.rejects)}")
    if found.rejects:
        _reject_table(found.rejects[:SHOW_REJECTS], f"rejected rows ({len(found.rejects)})")
    return proj, found


@gold_app.command("add")
def gold_add(
    file: Annotated[Path, typer.Argument(help="Rows to add (same formats as data import).")],
    map_: MapOpt = None,
    force: ForceOpt = False,
    note: NoteOpt = "",
    project: ProjectOpt = Path("."),
) -> None:
    """Add rows to the gold set (a new gold version)."""
    from slmloop.data.gold import gold_add as add

    proj, found = _gold_file(project, file, map_, force)
    version, added = add(proj, found.rows, note)
    out.print(
        f"[bold]{version.id}[/bold]: {added} row(s) added, {len(found.rows) - added} already in gold · "
        f"{version.rows} rows"
    )
    out.print("next: `slmloop data prepare` keeps training data clear of the new gold rows")


@gold_app.command("remove")
def gold_remove(
    rows: Annotated[list[int], typer.Argument(help="Row numbers (see `slmloop gold show`).")],
    note: NoteOpt = "",
    project: ProjectOpt = Path("."),
) -> None:
    """Remove rows from the gold set (a new gold version)."""
    from slmloop.data.gold import gold_remove as remove

    version = remove(load(project), rows, note)
    out.print(f"[bold]{version.id}[/bold]: {version.rows} rows (parent {version.parent_id})")


@gold_app.command("freeze")
def gold_freeze(
    file: Annotated[Path, typer.Argument(help="A curated gold file that replaces the gold set.")],
    map_: MapOpt = None,
    force: ForceOpt = False,
    note: NoteOpt = "",
    project: ProjectOpt = Path("."),
) -> None:
    """Freeze a curated file as the new gold version."""
    from slmloop.data.gold import gold_replace

    proj, found = _gold_file(project, file, map_, force)
    version = gold_replace(proj, found.rows, note)
    out.print(f"[bold]{version.id}[/bold] frozen: {version.rows} rows")


@gold_app.command("list")
def gold_list(project: ProjectOpt = Path(".")) -> None:
    """Every gold version, oldest first; the current one is marked."""
    from slmloop.data.gold import gold_history
    from slmloop.data.versions import current_gold

    proj = load(project)
    head = current_gold(proj)
    t = table("", "gold version", "created", "rows", "parent", "note")
    for g in gold_history(proj):
        t.add_row(
            "→" if head and g.id == head.id else "",
            g.id,
            f"{g.created_at:%Y-%m-%d %H:%M}",
            str(g.rows),
            g.parent_id or "",
            g.note,
        )
    out.print(t)
