"""``slmloop export`` and ``slmloop releases``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmloop.cli.common import ProjectOpt, err, load, out, table


def export(
    run: Annotated[str | None, typer.Argument(help="run-N (default: newest completed run).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Export a run as the next numbered release (adapter, merged weights, checksums, lineage)."""
    from slmloop.release.export import export_release

    proj = load(project)
    rel = export_release(proj, run, console=err)
    m = rel.metrics
    score = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k in ("accuracy", "macro_f1", "exact_match", "micro_f1"))
    out.print(
        f"[bold green]release v{rel.version}[/bold green] from run-{rel.run_id}: {proj.locate(rel.path)}"
        + (f"\n  gold metrics: {score}" if score else "")
    )


def releases(project: ProjectOpt = Path(".")) -> None:
    """Releases and the aliases that point at them."""
    from slmloop.store import Release

    proj = load(project)
    t = table("version", "created", "run", "dataset", "gold", "accuracy/headline", "path")
    for r in proj.store.list(Release, Release.version):
        head = next((f"{r.metrics[k]:.4f}" for k in ("accuracy", "micro_f1", "exact_match") if k in r.metrics), "")
        t.add_row(
            f"v{r.version}",
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"run-{r.run_id}",
            r.dataset_id,
            r.gold_id,
            head,
            r.path,
        )
    out.print(t)
