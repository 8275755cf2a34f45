"""Drift report: one PNG with the three views a person checks first, JSON, and HTML."""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmloop.project import Project
from slmloop.store import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from slmloop.monitor.drift import DriftResult

__all__ = ["plot_drift", "write_drift_report"]


def plot_drift(result: DriftResult, reference: list[str], live: list[str], emb: Any, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA

    preds = result.tests.get("predictions")
    ncols = 3 if preds else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4), dpi=110)
    ax = axes[0]
    ref_len = [len(t.split()) for t in reference]
    live_len = [len(t.split()) for t in live]
    bins = np.histogram_bin_edges(ref_len + live_len, bins=25)
    ax.hist(ref_len, bins=bins, density=True, alpha=0.55, label="training", color="#3182bd")
    ax.hist(live_len, bins=bins, density=True, alpha=0.55, label="live", color="#e6550d")
    t = result.tests["length"]
    ax.set_title(f"input length (words)\nKS D={t['statistic']:.2f}, p={t['p_value']:.2g}")
    ax.legend()
    ax = axes[1]
    xy = PCA(n_components=2, random_state=0).fit_transform(emb)
    n = len(reference)
    ax.scatter(xy[:n, 0], xy[:n, 1], s=8, alpha=0.45, label="training", color="#3182bd")
    ax.scatter(xy[n:, 0], xy[n:, 1], s=12, alpha=0.8, label="live", color="#e6550d")
    e = result.tests["embedding"]
    ax.set_title(f"MiniLM embeddings (PCA)\nMMD²={e['mmd2']:.3f}, p={e['p_value']:.2g}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend()
    if preds:
        ax = axes[2]
        labels = list(preds["live"])
        total = sum(preds["live"].values()) or 1
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [preds["train_share"][lab] for lab in labels], 0.4, label="training", color="#3182bd")
        ax.bar(
            x + 0.2,
            [preds["live"][lab] / total for lab in labels],
            0.4,
            label="live predictions",
            color="#e6550d",
        )
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_title(f"label mix\nchi² p={preds['p_value']:.2g}")
        ax.legend()
    fig.suptitle(
        f"verdict: {result.verdict.upper()}  ({result.n_live} live vs {result.n_reference} training inputs)",
        color="#a50f15" if result.verdict == "drift" else "#006d2c",
        fontweight="bold",
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_drift_report(
    project: Project, release: int, result: DriftResult, reference: list[str], live: list[str], emb: Any
) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    folder = project.reports_dir / f"drift-v{release}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    plot_drift(result, reference, live, emb, folder / "drift.png")
    atomic_write_json(
        folder / "drift.json",
        {
            "release": release,
            "verdict": result.verdict,
            "n_live": result.n_live,
            "n_reference": result.n_reference,
            "tests": result.tests,
        },
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>drift · v{release}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}</style></head><body>
<h1>Drift report for release v{release}: {html.escape(result.verdict)}</h1>
<p>{result.n_live} live inputs compared with {result.n_reference} training inputs.</p>
<img src="drift.png" alt="drift plots" style="max-width:100%">
<pre>{html.escape(json.dumps(result.tests, indent=2))}</pre></body></html>"""
    atomic_write_text(folder / "index.html", page)
    return folder
