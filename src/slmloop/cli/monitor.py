"""``slmloop monitor``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmloop.cli.common import ProjectOpt, err, load, out
from slmloop.cli.options import config_options, with_overrides
from slmloop.manifest import MonitorConfig


@config_options(MonitorConfig)
def monitor(
    overrides: dict[str, Any],
    release: Annotated[str | None, typer.Option(help="N, vN or alias (default: production, else newest).")] = None,
    last: Annotated[int | None, typer.Option(help="Only the newest N logged requests.")] = None,
    project: ProjectOpt = Path("."),
) -> int:
    """Compare live request inputs with the training inputs; write a drift report.

    Every key of the manifest's monitor: section is also an option here (--alpha, --min-requests …).
    """
    from slmloop.monitor.drift import monitor as run_monitor

    proj = load(project)
    proj.manifest.monitor = with_overrides(MonitorConfig, proj.manifest.monitor.model_dump(), overrides)
    report, result = run_monitor(proj, release, last=last, console=err)
    colour = {"drift": "red", "stable": "green"}.get(result.verdict, "yellow")
    out.print(
        f"[bold {colour}]{result.verdict.upper()}[/bold {colour}] · release v{report.release_version} · "
        f"{result.n_live} live vs {result.n_reference} training inputs"
    )
    if "length" in result.tests:
        ln, em = result.tests["length"], result.tests["embedding"]
        out.print(
            f"  length: KS D={ln['statistic']:.3f} p={ln['p_value']:.3g} "
            f"(mean words {ln['reference_mean_words']:.1f} → {ln['live_mean_words']:.1f})"
        )
        out.print(
            f"  embedding: MMD²={em['mmd2']:.4f} p={em['p_value']:.3g} "
            f"centroid cosine distance {em['centroid_cosine_distance']:.3f}"
        )
        if "predictions" in result.tests:
            pr = result.tests["predictions"]
            out.print(f"  predictions: {pr['live']} (chi² p={pr['p_value']:.3g})")
        out.print(f"  report: {report.path}/index.html")
    else:
        out.print(f"  need at least {proj.manifest.monitor.min_requests} logged requests")
    return 0
