"""``slmloop export``, ``verify``, ``promote``, ``rollback`` and ``releases``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmloop.cli.common import ProjectOpt, err, load, out, table
from slmloop.cli.options import config_options, with_overrides
from slmloop.errors import ConfigError
from slmloop.manifest import ExportConfig


@config_options(ExportConfig)
def export(
    overrides: dict[str, Any],
    run: Annotated[str | None, typer.Argument(help="run-N (default: newest completed run).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Export a run as the next numbered release (adapter, merged weights, model card, checksums, lineage).

    Every key of the manifest's export: section is also an option here (--gguf q8_0,f16 …).
    """
    from slmloop.release.export import export_release

    proj = load(project)
    proj.manifest.export = with_overrides(ExportConfig, proj.manifest.export.model_dump(), overrides)
    rel = export_release(proj, run, console=err)
    from slmloop.metrics import HEADLINE

    m = rel.metrics
    score = ", ".join(f"{k} {m[k]:.4f}" for k in HEADLINE[proj.task.type] if isinstance(m.get(k), int | float))
    out.print(
        f"[bold green]release v{rel.version}[/bold green] from run-{rel.run_id}: {proj.locate(rel.path)}"
        + (f"\n  gold metrics: {score}" if score else "")
    )


def verify(
    release: Annotated[str, typer.Argument(help="N, vN or an alias.")],
    project: ProjectOpt = Path("."),
) -> None:
    """Re-check every file of a release against its checksums; names each file that changed (exit 1)."""
    from slmloop.errors import StoreError
    from slmloop.predict.targets import resolve_release
    from slmloop.release.export import verify_release

    proj = load(project)
    rel = resolve_release(proj, release)
    problems = verify_release(proj, rel)
    if problems:
        raise StoreError(
            f"v{rel.version} does not match its manifest: " + "; ".join(problems),
            hint="Export the run again (`slmloop export run-N`); never edit a release folder by hand.",
        )
    out.print(f"[green]v{rel.version} intact[/green]: every file matches manifest.json ({proj.locate(rel.path)})")


FROM_HELP = "Move only if the alias points at this version now (N or vN); refused if it moved meanwhile."


def _version(ref: str | None) -> int | None:
    if ref is None:
        return None
    try:
        return int(ref.removeprefix("v"))
    except ValueError:
        raise ConfigError(f"--from {ref!r} is not a version", hint="Use N or vN, e.g. --from v2.") from None


def promote(
    release: Annotated[str, typer.Argument(help="N or vN.")],
    to: Annotated[str, typer.Option("--to", help="Alias to move (production, staging, any name).")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the alias history.")],
    force: Annotated[bool, typer.Option(help="Promote despite failed gates (recorded in the audit log).")] = False,
    expect: Annotated[str | None, typer.Option("--from", help=FROM_HELP)] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Point an alias at a release, if its gold evaluation passes every required gate."""
    from slmloop.release.registry import promote as do_promote

    proj = load(project)
    row = do_promote(proj, release, to, reason=reason, force=force, expect=_version(expect))
    before = f"v{row.previous}" if row.previous is not None else "nothing"
    note = " [bold red](forced past failed gates)[/bold red]" if row.forced else ""
    out.print(f"[bold green]{row.alias}[/bold green] → v{row.version} (was {before}){note}")


def rollback(
    alias: Annotated[str, typer.Argument(help="The alias to move back.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the alias history.")] = "",
    expect: Annotated[str | None, typer.Option("--from", help=FROM_HELP)] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Point an alias back at the version it was promoted from (rollbacks walk back: v3 → v2 → v1)."""
    from slmloop.release.registry import rollback as do_rollback

    proj = load(project)
    row = do_rollback(proj, alias, reason=reason, expect=_version(expect))
    out.print(f"[bold yellow]{row.alias}[/bold yellow] → v{row.version} (rolled back from v{row.previous})")


def releases(
    history: Annotated[int, typer.Option(help="Alias moves to show, newest first.")] = 10,
    project: ProjectOpt = Path("."),
) -> None:
    """Releases, the aliases that point at them, and the history of alias moves."""
    from slmloop.release.registry import alias_history, aliases
    from slmloop.store import Release

    proj = load(project)
    pointing: dict[int, list[str]] = {}
    for a in aliases(proj):
        pointing.setdefault(a.version, []).append(a.alias)
    from slmloop.metrics import HEADLINE

    keys = HEADLINE[proj.manifest.task.type]
    t = table("version", "aliases", "created", "run", "gold", "headline", title="Releases")
    for r in proj.store.list(Release, Release.version):
        head = next((f"{k} {r.metrics[k]:.4f}" for k in keys if isinstance(r.metrics.get(k), int | float)), "")
        t.add_row(
            f"v{r.version}",
            ", ".join(pointing.get(r.version, [])),
            f"{r.created_at:%m-%d %H:%M}",
            f"run-{r.run_id}",
            r.gold_id.removeprefix("gold-"),
            head,
        )
    out.print(t)
    moves = alias_history(proj)[:history]
    if moves:
        h = table("when", "alias", "from", "to", "action", "who", "reason", title="Alias history (newest first)")
        for m in moves:
            h.add_row(
                f"{m.ts:%m-%d %H:%M:%S}",
                m.alias,
                f"v{m.previous}" if m.previous is not None else "",
                f"v{m.version}",
                m.action + (" (forced)" if m.forced else ""),
                m.who,
                m.reason,
            )
        out.print(h)
