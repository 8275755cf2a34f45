"""Monitor report: each signal per window against its thresholds (PNG), the run's JSON, and HTML."""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from slmloop.project import Project
from slmloop.store import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from slmloop.monitor.drift import DriftResult

__all__ = ["plot_history", "plot_windows", "write_drift_report"]

_COLOURS = {"ok": "#31a354", "warn": "#fd8d3c", "drift": "#de2d26"}


def plot_windows(result: DriftResult, path: Path) -> Path:
    """One panel per signal: its effect size in every window, the warn and drift lines, verdict colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(s["name"] for w in result.windows for s in w.signals))
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), dpi=110, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = [(w.index, s) for w in result.windows for s in w.signals if s["name"] == name]
        xs = [i for i, _ in points]
        ax.plot(xs, [s["effect"] for _, s in points], color="#636363", lw=1, zorder=1)
        ax.scatter(xs, [s["effect"] for _, s in points], c=[_COLOURS[s["verdict"]] for _, s in points], s=28, zorder=2)
        warn, drift = points[0][1]["warn"], points[0][1]["drift"]
        ax.axhline(warn, color=_COLOURS["warn"], ls="--", lw=1, label=f"warn {warn:g}")
        ax.axhline(drift, color=_COLOURS["drift"], ls="--", lw=1, label=f"drift {drift:g}")
        ax.set_title(name)
        ax.set_xlabel(f"window ({result.window_size} requests)")
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(
        f"release v{result.release}: {result.verdict.upper()} over {len(result.windows)} window(s)",
        color=_COLOURS.get(result.verdict, "#000000"),
        fontweight="bold",
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_history(runs: list[dict[str, Any]], out: Path | BinaryIO) -> None:
    """Each signal over time: its effect size in every window of every stored monitor run, oldest first,
    against its warn and drift lines (``runs`` are the runs' stored JSON, each with ``id`` and ``windows``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    points: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    starts: list[tuple[int, int]] = []  # (x of a run's first window, run id)
    x = 0
    for run in runs:
        if run.get("windows"):
            starts.append((x, run["id"]))
        for w in run.get("windows", []):
            for sig in w["signals"]:
                points.setdefault(sig["name"], []).append((x, sig))
            x += 1
    names = list(points) or ["no scored window yet"]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3 * rows), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        pts = points.get(name, [])
        ax.set_title(name)
        if not pts:
            continue
        xs = [i for i, _ in pts]
        ax.plot(xs, [s["effect"] for _, s in pts], color="#636363", lw=1, zorder=1)
        ax.scatter(xs, [s["effect"] for _, s in pts], c=[_COLOURS[s["verdict"]] for _, s in pts], s=18, zorder=2)
        ax.axhline(pts[-1][1]["warn"], color=_COLOURS["warn"], ls="--", lw=1, label=f"warn {pts[-1][1]['warn']:g}")
        ax.axhline(pts[-1][1]["drift"], color=_COLOURS["drift"], ls="--", lw=1, label=f"drift {pts[-1][1]['drift']:g}")
        for start, _ in starts[1:]:
            ax.axvline(start - 0.5, color="#bdbdbd", lw=0.8)
        ax.set_xlabel("window (grey lines: a new monitor run)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)


def write_drift_report(project: Project, result: DriftResult) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    folder = project.reports_dir / f"drift-v{result.release}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    plot_windows(result, folder / "drift.png")
    atomic_write_json(folder / "drift.json", result.as_dict())
    rows = "".join(
        f"<tr><td>{w.index}</td><td>{w.first_request}–{w.last_request}</td><td>{w.n}</td>"
        f"<td style='color:{_COLOURS[w.verdict]}'><b>{w.verdict}</b></td><td>"
        + ", ".join(
            f"{s['name']} {s['effect']:.3f} (p={s['p_value']:.2g}, <span style='color:{_COLOURS[s['verdict']]}'>"
            f"{s['verdict']}</span>)"
            for s in w.signals
        )
        + "</td></tr>"
        for w in result.windows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>drift · v{result.release}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:80em}}
td,th{{padding:2px 8px;text-align:left}}</style>
</head><body>
<h1>Monitor report for release v{result.release}: {html.escape(result.verdict)}</h1>
<p>{result.n_live} live requests in {len(result.windows)} window(s) of {result.window_size}, against
{result.n_reference} training inputs.
A signal drifts when its effect reaches the drift line <i>and</i> p &lt; alpha.</p>
<img src="drift.png" alt="signals per window" style="max-width:100%">
<table><tr><th>window</th><th>requests</th><th>n</th><th>verdict</th><th>signals</th></tr>{rows}</table>
<pre>{html.escape(json.dumps(result.as_dict(), indent=1)[:200000])}</pre></body></html>"""
    atomic_write_text(folder / "index.html", page)
    return folder
