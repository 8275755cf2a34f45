"""``slmloop init``, ``slmloop models``, ``slmloop validate``, ``slmloop status`` and ``slmloop log``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmloop.cli.common import ProjectOpt, err, load, out, table
from slmloop.errors import ConfigError
from slmloop.manifest import MANIFEST_NAME, load_manifest
from slmloop.project import EXAMPLES, init_project


def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    task: Annotated[str, typer.Option(help="classification | extraction | generation")] = "classification",
    example: Annotated[str | None, typer.Option(help=f"Start from bundled data: {', '.join(EXAMPLES)}.")] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Base model: a catalog name (`slmloop models`), a Hugging Face id or a local folder."),
    ] = None,
) -> None:
    """Create a project: a commented slmloop.yaml (and the example's data)."""
    made = init_project(directory, task=task, example=example, base=base)
    out.print(f"Wrote [bold]{made.manifest}[/bold] (base model {made.base})", highlight=False)
    if made.hub and not made.pinned:
        err.print(
            "[yellow]note:[/yellow] the hub could not be reached, so model.base is not pinned to a commit: "
            "the newest weights are downloaded when it is first used. Pin one with NAME@COMMIT.",
            highlight=False,
        )
    if example:
        out.print(f"Next: cd {directory} && slmloop data import data/sms_spam.tsv && slmloop data prepare")
    else:
        out.print(f"Next: edit {made.manifest.name}, then `slmloop validate`.")


def models() -> None:
    """The catalog: base models slmloop has been checked on, by family, with what each supports."""
    from slmloop.models.catalog import CATALOG

    t = table("name", "family", "from", "GGUF", "chat template", fold=True)
    t.columns[0].no_wrap = True  # a name is copied into --base whole
    for e in CATALOG.values():
        if e.kind != "causal-lm":
            continue
        source = f"bundled ({e.install})" if e.hub_id is None else e.hub_id
        t.add_row(e.name, e.family or "", source, "yes" if e.gguf else "no", e.quirks or "ChatML")
    out.print(t)
    out.print(
        "Any other Hugging Face id or local folder works too; NAME@COMMIT pins a hub model "
        "(`slmloop init --base NAME` pins the current commit).",
        highlight=False,
    )


def validate(project: ProjectOpt = Path(".")) -> int:
    """Check slmloop.yaml and report every problem at once (exit code 2 if any)."""
    try:
        manifest = load_manifest(project / MANIFEST_NAME if project.is_dir() else project)
    except ConfigError as exc:
        if not exc.problems:
            raise
        err.print(f"[bold red]Error:[/bold red] {MANIFEST_NAME} has {len(exc.problems)} problem(s):")
        for key, msg in exc.problems:
            err.print(f"  [bold]{key or '<root>'}[/bold]: {msg}", highlight=False)
        err.print("[yellow]hint:[/yellow] fix the keys above and run `slmloop validate` again.")
        return 2
    out.print(
        f"[green]OK[/green] {manifest.project.name}: {manifest.task.type} task, "
        f"{len(manifest.data.sources)} source(s), base model {manifest.model.base}"
    )
    return 0


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (for scripts).")]

_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red", "todo": "dim"}


def status(as_json: JsonOpt = False, project: ProjectOpt = Path(".")) -> None:
    """The loop at a glance: data, run, evaluation (CI, gates), releases and aliases, drift, and the next step."""
    import json

    from slmloop.status import loop_status

    now = loop_status(load(project))
    if as_json:
        out.print_json(json.dumps(now.as_dict(), default=str))
        return
    out.print(
        f"[bold]{now.project}[/bold] · {now.task}"
        + (f" · gold {now.gold['id']} ({now.gold['rows']} rows)" if now.gold else "")
    )
    t = table("stage", "state", "newest", fold=True)
    for s in now.stages:
        colour = _COLOURS.get(s.status, "")
        t.add_row(s.name, f"[{colour}]{s.status}[/{colour}]", s.detail)
    out.print(t)
    for text, stage in now.warnings:
        out.print(f"[yellow]warning[/yellow] ({stage}): {text}", highlight=False)
    out.print(f"[bold]next:[/bold] {now.next_step}  [dim]({now.why})[/dim]", highlight=False)


def log(
    kind: Annotated[
        str | None,
        typer.Option(help="Only events of this kind: data.import, eval, alias.promote … (data: every data.*)."),
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="Only events about this object (imp-…, ds-…, run-3, v2 …).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Newest events to show.")] = 30,
    as_json: JsonOpt = False,
    project: ProjectOpt = Path("."),
) -> None:
    """The audit log, newest first: every import, prepare, drop, gold change, run, evaluation, promotion, override."""
    import json

    events = load(project).store.events(kind, limit, subject)
    if as_json:
        rows = [
            {"id": e.id, "ts": e.ts.isoformat(), "kind": e.kind, "subject": e.subject, "payload": e.payload}
            for e in events
        ]
        out.print_json(json.dumps(rows, default=str))
        return
    t = table("#", "when", "kind", "subject", "what", title=f"audit log ({len(events)} newest)", fold=True)
    for e in events:
        t.add_row(str(e.id), f"{e.ts:%Y-%m-%d %H:%M:%S}", e.kind, e.subject, _summary(e.payload))
    out.print(t)


def _summary(payload: dict) -> str:
    """An event's payload in one short line: scalars as key=value, nested values by their size."""
    parts = []
    for k, v in payload.items():
        if v in (None, "", [], {}):
            continue
        if isinstance(v, dict):
            v = f"{{{len(v)} keys}}"
        elif isinstance(v, list):
            v = f"[{len(v)}]" if len(v) > 3 or any(isinstance(x, dict | list) for x in v) else ", ".join(map(str, v))
        parts.append(f"{k}={v}")
    return " ".join(parts)[:200]
