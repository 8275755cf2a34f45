"""Evaluation reports: metrics with CIs, gates, a confusion-matrix heatmap, per-class F1, failures."""

from __future__ import annotations

import html
import json
import math
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
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="share of the gold label's rows")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_metrics(metrics: dict[str, Any], path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ci = metrics.get("ci", {})
    per_class = metrics.get("per_class")
    if not ci and not per_class:
        return None
    panels = 2 if per_class else 1
    rows = max(len(ci), len(per_class or {}))
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 0.6 * rows + 2), dpi=100, squeeze=False)
    ax = axes[0][0]
    names = [n for n in ci if 0.0 <= metrics.get(n, math.nan) <= 1.0]  # rates on one axis (not the 1-5 judge)
    values = [metrics.get(n, math.nan) for n in names]
    lo = [v - ci[n][0] for n, v in zip(names, values, strict=True)]
    hi = [ci[n][1] - v for n, v in zip(names, values, strict=True)]
    ax.barh(names, values, xerr=[lo, hi], color="#6baed6", capsize=4)
    for i, (v, n) in enumerate(zip(values, names, strict=True)):
        ax.text(max(v, ci[n][1]) + 0.01, i, f"{v:.3f}", va="center")
    for g in metrics.get("gates", []):
        if g["metric"] in names:
            ax.plot(
                [g["threshold"]] * 2,
                [names.index(g["metric"]) - 0.4, names.index(g["metric"]) + 0.4],
                color="#2ca25f" if g["passed"] else "#de2d26",
                linewidth=3,
            )
    ax.set_xlim(0, 1.15)
    ax.set_title(f"metrics ({100 * metrics.get('confidence', 0.95):.0f} % CI; bars = gates)")
    if per_class:
        ax = axes[0][1]
        labels = list(per_class)
        ax.barh(labels, [per_class[lab]["f1"] for lab in labels], color="#fd8d3c")
        for i, lab in enumerate(labels):
            ax.text(
                per_class[lab]["f1"], i, f" {per_class[lab]['f1']:.2f} (n={per_class[lab]['support']})", va="center"
            )
        ax.set_xlim(0, 1.15)
        ax.set_title("F1 per class")
    fig.suptitle(title)
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
    title = f"{evaluation.model_ref} on {evaluation.gold_id}"
    images = ""
    if _plot_metrics(metrics, folder / "metrics.png", title):
        images += '<img src="metrics.png" alt="metrics with confidence intervals">'
    if "confusion" in metrics:
        plot_confusion(metrics["confusion"], folder / "confusion.png", title)
        images += '<img src="confusion.png" alt="confusion matrix">'
    esc = html.escape
    ci = metrics.get("ci", {})
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{v:.4f}</td><td>{'' if k not in ci else f'[{ci[k][0]:.4f}, {ci[k][1]:.4f}]'}"
        f"</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{esc(k)}</td><td>{v}</td><td></td></tr>"
        for k, v in scalars.items()
    )
    gates = "".join(
        f"<tr><td>{esc(g['metric'])} {'≥' if g['op'] == 'gte' else '≤'} {g['threshold']}</td>"
        f"<td>{'PASS' if g['passed'] else 'FAIL'}</td><td>{g['value']:.4f}</td></tr>"
        for g in metrics.get("gates", [])
    )
    beat = metrics.get("must_beat")
    failures = [p for p in project.store.predictions(evaluation.id) if not p.correct][:40]
    fail_rows = "".join(
        f"<tr><td>{p.idx}</td><td>{esc(p.input[:160])}</td><td>{esc(p.reference[:80])}</td>"
        f"<td>{esc(p.raw[:80])}</td></tr>"
        for p in failures
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{evaluation.name} · {esc(evaluation.model_ref)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}
td{{padding:.2em 1em;border-bottom:1px solid #ddd;vertical-align:top}} img{{max-width:100%}}</style></head><body>
<h1>{evaluation.name}: {esc(evaluation.model_ref)}</h1>
<p>gold set {esc(evaluation.gold_id)} · {evaluation.n_rows} rows · mode {evaluation.mode}
 · {evaluation.seconds:.1f} s</p>
<table><tr><th>metric</th><th>value</th><th>CI</th></tr>{rows}</table>
{f"<h2>Gates</h2><table>{gates}</table>" if gates else ""}
{f"<p><b>must beat {esc(beat['against'])}:</b> {esc(beat.get('sentence', beat['verdict']))}</p>" if beat else ""}
{images}
<h2>Failures (first {len(failures)})</h2><table>{fail_rows}</table>
<details><summary>all metrics (JSON)</summary><pre>{esc(json.dumps(metrics, indent=2, default=str))}</pre>
</details></body></html>"""
    atomic_write_text(folder / "index.html", page)
    return folder
