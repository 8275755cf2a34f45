"""Evaluation reports: metrics JSON, a confusion-matrix heatmap, an HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from slmloop.project import Project
from slmloop.store import Evaluation, atomic_write_json, atomic_write_text

__all__ = ["plot_confusion", "write_eval_report"]


def plot_confusion(confusion: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels, columns = confusion["labels"], confusion["columns"]
    m = np.array(confusion["matrix"], dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = max(3.5, 0.7 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold label")
    for i in range(len(labels)):
        for j in range(len(columns)):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="share of the gold label's rows")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_eval_report(project: Project, evaluation: Evaluation) -> Path:
    folder = project.reports_dir / evaluation.name
    folder.mkdir(parents=True, exist_ok=True)
    metrics = evaluation.metrics
    atomic_write_json(
        folder / "metrics.json",
        {
            "evaluation": evaluation.name,
            "model": evaluation.model_ref,
            "gold": evaluation.gold_id,
            "mode": evaluation.mode,
            "rows": evaluation.n_rows,
            "metrics": metrics,
        },
    )
    images = ""
    if "confusion" in metrics:
        plot_confusion(
            metrics["confusion"], folder / "confusion.png", f"{evaluation.model_ref} on {evaluation.gold_id}"
        )
        images = '<img src="confusion.png" alt="confusion matrix">'
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
        for k, v in scalars.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{evaluation.name} · {html.escape(evaluation.model_ref)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}
td{{padding:.2em 1em;border-bottom:1px solid #ddd}}</style></head><body>
<h1>{evaluation.name}: {html.escape(evaluation.model_ref)}</h1>
<p>gold set {html.escape(evaluation.gold_id)} · {evaluation.n_rows} rows · mode {evaluation.mode}
 · {evaluation.seconds:.1f} s</p>
<table>{rows}</table>{images}
<details><summary>all metrics (JSON)</summary><pre>{html.escape(json.dumps(metrics, indent=2))}</pre>
</details></body></html>"""
    atomic_write_text(folder / "index.html", page)
    return folder
