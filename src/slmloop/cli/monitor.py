"""``slmloop monitor`` and ``slmloop monitor export``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from slmloop.cli.common import ProjectOpt, err, load, out, table
from slmloop.cli.options import config_options, with_overrides
from slmloop.errors import ConfigError
from slmloop.manifest import MonitorConfig

app = typer.Typer(no_args_is_help=False, help="Drift of live traffic against the release's reference profile.")

_COLOURS = {"drift": "red", "warn": "yellow", "ok": "green"}


def _since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {value!r} is neither a duration nor a date", hint="Use 30m, 6h, 7d or 2026-11-25T08:00."
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@app.callback(invoke_without_command=True)
@config_options(MonitorConfig, skip=("thresholds", "webhook_on"))
def monitor(
    ctx: typer.Context,
    overrides: dict[str, Any],
    release: Annotated[str | None, typer.Option("--release", "--alias", help="N, vN or an alias.")] = None,
    since: Annotated[str | None, typer.Option(help="Only requests since: 30m, 6h, 7d or an ISO date.")] = None,
    last: Annotated[int | None, typer.Option(help="Only the newest N logged requests.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
    project: ProjectOpt = Path("."),
) -> int:
    """Score logged traffic window by window against the release's reference profile (exit 1 on drift).

    Every key of the manifest's monitor: section is also an option here (--window, --alpha …).
    """
    if ctx.invoked_subcommand is not None:
        return 0
    from slmloop.monitor.drift import monitor as run_monitor

    proj = load(project)
    proj.manifest.monitor = with_overrides(MonitorConfig, proj.manifest.monitor.model_dump(), overrides)
    report, result = run_monitor(proj, release, last=last, since=_since(since), console=err)
    if as_json:
        out.print_json(json.dumps({"report": report.id, "path": report.path, **result.as_dict()}))
    else:
        colour = _COLOURS.get(result.verdict, "yellow")
        out.print(
            f"[bold {colour}]{result.verdict.upper()}[/bold {colour}] · release v{result.release} · "
            f"{result.n_live} live requests in {len(result.windows)} window(s) of {result.window_size} · "
            f"reference {result.n_reference} training inputs"
        )
        if result.windows:
            names = list(dict.fromkeys(s["name"] for w in result.windows for s in w.signals))
            t = table("window", "requests", "verdict", *names, right=names)
            for w in result.windows:
                by = {s["name"]: s for s in w.signals}
                t.add_row(
                    str(w.index),
                    f"{w.first_request}–{w.last_request}",
                    f"[{_COLOURS[w.verdict]}]{w.verdict}[/]",
                    *(f"[{_COLOURS[by[n]['verdict']]}]{by[n]['effect']:.3f}[/]" if n in by else "" for n in names),
                )
            out.print(t)
            out.print(
                f"  effect sizes; a cell is red when it reaches its drift line with p < {proj.manifest.monitor.alpha}"
            )
            out.print(f"  report: {report.path}/index.html")
        else:
            out.print(f"  need at least {proj.manifest.monitor.min_requests} logged requests in a window")
    return 1 if result.verdict == "drift" else 0


@app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="JSONL to write (label it, then `slmloop data import FILE`).")],
    most_drifted: Annotated[int, typer.Option(help="Live inputs furthest from the training data.")] = 50,
    least_confident: Annotated[int, typer.Option(help="Live inputs the model was least sure of.")] = 50,
    release: Annotated[str | None, typer.Option("--release", "--alias", help="N, vN or an alias.")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Write the live inputs most worth labelling, with the model's answer as a suggestion."""
    from slmloop.monitor.feedback import export_for_labelling

    proj = load(project)
    n, run = export_for_labelling(proj, file, release, most_drifted=most_drifted, least_confident=least_confident)
    out.print(
        f"wrote {n} rows to {file} (from monitor run drift-{run}); correct the suggested answers, then "
        f"`slmloop data import {file}` and `slmloop data prepare`"
    )


@app.command("gold")
def gold(
    url: Annotated[str, typer.Option(help="The running server, e.g. http://127.0.0.1:8000.")],
    release: Annotated[str | None, typer.Option("--release", "--alias", help="N, vN or an alias.")] = None,
    sample: Annotated[int | None, typer.Option(help="Send a seeded sample of N gold rows (default: all).")] = None,
    project: ProjectOpt = Path("."),
) -> int:
    """Send the gold rows to the running server and compare its score with the release's (exit 1 if worse)."""
    from slmloop.monitor.live import live_quality

    proj = load(project)
    check = live_quality(proj, url, release, sample=sample, console=err)
    colour = {"worse": "red", "better": "green"}.get(check.verdict, "green")
    out.print(
        f"[bold {colour}]{check.verdict.upper()}[/bold {colour}] · {check.metric}: live {check.live_value:.4f} "
        f"({check.live}) vs recorded {check.recorded_value:.4f} ({check.recorded}) on {check.rows} gold rows"
    )
    out.print(f"  {check.sentence}")
    return 1 if check.verdict == "worse" else 0
