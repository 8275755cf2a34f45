"""Evaluation reports: metrics with CIs, gates, per-class / per-field F1, a confusion heatmap, failures.

Plots scale with the task: a 2-label confusion matrix is annotated cell by cell; a
150-label one is a heatmap with small ticks beside a chart of the most frequent
confusions, and per-class bars are sorted worst first.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from slmloop.predict.parsing import field_diff, parse_json_object, reference_object
from slmloop.project import Project
from slmloop.store import Evaluation, atomic_write_json, atomic_write_text

__all__ = ["plot_confusion", "top_confusions", "write_eval_report"]

ANNOTATE_UP_TO = 20  # labels: above this the heatmap has no numbers in its cells


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def top_confusions(confusion: dict[str, Any], n: int = 15) -> list[tuple[str, str, int]]:
    """(gold label, predicted, rows) of the most frequent mistakes."""
    pairs = [
        (confusion["labels"][i], confusion["columns"][j], int(c))
        for i, row in enumerate(confusion["matrix"])
        for j, c in enumerate(row)
        if c and confusion["labels"][i] != confusion["columns"][j]
    ]
    return sorted(pairs, key=lambda x: -x[2])[:n]


def plot_confusion(confusion: dict[str, Any], path: Path, title: str) -> Path:
    import numpy as np

    plt = _plt()
    labels, columns = confusion["labels"], confusion["columns"]
    m = np.array(confusion["matrix"], dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(labels)
    if k <= ANNOTATE_UP_TO:
        size = max(3.5, 0.7 * len(columns) + 2)
        fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
        axes = [ax]
    else:
        size = min(22.0, 0.16 * k + 3)
        fig, axes = plt.subplots(1, 2, figsize=(size + 8, size), dpi=100, gridspec_kw={"width_ratios": [size, 7]})
        ax = axes[0]
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    font = 8 if k <= ANNOTATE_UP_TO else max(4, 9 - k // 25)
    ax.set_xticks(range(len(columns)), columns, rotation=90 if k > ANNOTATE_UP_TO else 45, ha="right", fontsize=font)
    ax.set_yticks(range(k), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold label")
    if k <= ANNOTATE_UP_TO:
        for i in range(k):
            for j in range(len(columns)):
                ax.text(
                    j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black"
                )
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="share of the gold label's rows", fraction=0.04)
    if k > ANNOTATE_UP_TO:
        top = top_confusions(confusion)
        bar = axes[1]
        names = [f"{g} → {p}" for g, p, _ in top][::-1]
        bar.barh(names, [n for _, _, n in top][::-1], color="#de2d26")
        bar.tick_params(axis="y", labelsize=8)
        bar.set_title("most frequent confusions (rows)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_metrics(metrics: dict[str, Any], path: Path, title: str) -> Path | None:
    plt = _plt()
    ci = metrics.get("ci", {})
    names = [n for n in ci if 0.0 <= metrics.get(n, math.nan) <= 1.0]  # rates on one axis (not the 1-5 judge)
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.6), dpi=100)
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
    ax.set_title(f"{title}\nmetrics ({100 * metrics.get('confidence', 0.95):.0f} % CI; bars = gates)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_f1(table: dict[str, dict[str, Any]], path: Path, what: str) -> Path | None:
    """F1 per class / field, worst first, with the gold support: readable at 150 bars."""
    if len(table) < 2:
        return None
    plt = _plt()
    items = sorted(table.items(), key=lambda kv: kv[1]["f1"])
    fig, ax = plt.subplots(figsize=(8, 0.2 * len(items) + 1.5), dpi=100)
    names = [k for k, _ in items]
    ax.barh(names, [v["f1"] for _, v in items], color="#fd8d3c")
    font = 9 if len(items) <= 30 else 6
    ax.tick_params(axis="y", labelsize=font)
    for i, (_, v) in enumerate(items):
        ax.text(v["f1"], i, f" {v['f1']:.2f} (n={v['support']})", va="center", fontsize=font)
    ax.set_xlim(0, 1.2)
    ax.set_ylim(-0.6, len(items) - 0.4)
    ax.set_title(f"F1 per {what}, worst first")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(head: list[str], rows: list[list[Any]]) -> str:
    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _subsets_html(metrics: dict[str, Any]) -> str:
    sub = metrics.get("subsets")
    if not sub:
        return ""
    rows = []
    for key, label in (("no_close_neighbour", "no close training paraphrase"), ("close_neighbour", "has one")):
        part = sub.get(key, {})
        for m, v in part.items():
            if m in ("n", "ci"):
                continue
            lo, hi = part.get("ci", {}).get(m, [math.nan, math.nan])
            rows.append([label, part["n"], m, f"{v:.4f}", f"[{lo:.4f}, {hi:.4f}]"])
    return (
        f"<h2>Scores with and without a close training paraphrase</h2><p>{100 * sub['close_share']:.1f} % of gold "
        f"rows have a training input with MiniLM cosine ≥ {sub['threshold']}.</p>"
        + _table(["gold rows", "n", "metric", "value", "CI"], rows)
    )


def _failures_html(project: Project, evaluation: Evaluation) -> str:
    esc = html.escape
    failures = [p for p in project.store.predictions(evaluation.id) if not p.correct][:60]
    extraction = evaluation.metrics.get("task", {}).get("type") == "extraction"
    rows = []
    for p in failures:
        if extraction:
            diff = field_diff(reference_object(p.reference), parse_json_object(p.raw))
            what = "; ".join(f"{d['kind']} {d['field']}: {d['expected']} → {d['got']}" for d in diff) or p.raw[:120]
            rows.append(f"<tr><td>{p.idx}</td><td>{esc(p.input[:160])}</td><td>{esc(what)}</td></tr>")
        else:
            rows.append(
                f"<tr><td>{p.idx}</td><td>{esc(p.input[:160])}</td><td>{esc(p.reference[:80])}</td>"
                f"<td>{esc(p.raw[:80])}</td></tr>"
            )
    head = (
        "<tr><th>#</th><th>input</th><th>field-by-field</th></tr>"
        if extraction
        else ("<tr><th>#</th><th>input</th><th>expected</th><th>answer</th></tr>")
    )
    return f"<h2>Failures (first {len(failures)})</h2><table>{head}{''.join(rows)}</table>"


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
    for key, what in (("per_class", "label"), ("per_field", "field")):
        if metrics.get(key) and _plot_f1(metrics[key], folder / f"{key}.png", what):
            images += f'<img src="{key}.png" alt="F1 per {what}">'
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
    decisions = "".join(
        f"<p><b>{esc(label)} {esc(rec['against'])}:</b> {esc(rec.get('sentence', rec['verdict']))}</p>"
        for label, rec in (("must beat", metrics.get("must_beat")), ("not worse than", metrics.get("vs_baseline")))
        if rec
    )
    tables = ""
    for key, what in (("per_class", "label"), ("per_field", "field")):
        table = metrics.get(key)
        if table:
            items = sorted(table.items(), key=lambda kv: kv[1]["f1"])
            cols = [c for c in ("f1", "precision", "recall", "tp", "fp", "fn", "support") if c in items[0][1]]
            body = [[name, *(f"{v[c]:.3f}" if isinstance(v[c], float) else v[c] for c in cols)] for name, v in items]
            tables += f"<h2>Every {what}, worst first</h2>" + _table([what, *cols], body)
    if "confusion" in metrics:
        tables += "<h2>Most frequent confusions</h2>" + _table(
            ["gold label", "predicted", "rows"], [list(x) for x in top_confusions(metrics["confusion"], 30)]
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{evaluation.name} · {esc(evaluation.model_ref)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:80em}}
td,th{{padding:.2em 1em;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}} img{{max-width:100%}}
</style></head><body>
<h1>{evaluation.name}: {esc(evaluation.model_ref)}</h1>
<p>gold set {esc(evaluation.gold_id)} · {evaluation.n_rows} rows · mode {evaluation.mode}
 · prompt {esc(str(metrics.get("prompt", "full")))} · {evaluation.seconds:.1f} s</p>
<table><tr><th>metric</th><th>value</th><th>CI</th></tr>{rows}</table>
{f"<h2>Gates</h2><table>{gates}</table>" if gates else ""}
{decisions}
{_subsets_html(metrics)}
{images}
{tables}
{_failures_html(project, evaluation)}
<details><summary>all metrics (JSON)</summary><pre>{esc(json.dumps(metrics, indent=2, default=str))}</pre>
</details></body></html>"""
    atomic_write_text(folder / "index.html", page)
    return folder
