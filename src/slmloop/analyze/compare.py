"""``slmloop compare A B [C …]``: better, worse, or not distinguishable at this gold size.

Every model is scored on the same gold rows (stored evaluations are reused when
they exist). Each model is compared with the first (:mod:`slmloop.evaluate.paired`):
the difference of the headline metric with its paired-bootstrap CI, a paired
test, latency, cost per 1,000 requests, and one sentence a person can act on.
An HTML report puts the metrics with their CIs side by side.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from slmloop.data.versions import current_gold
from slmloop.errors import ConfigError, NotFoundError
from slmloop.evaluate.evaluate import evaluate
from slmloop.evaluate.paired import Comparison, compare_pair
from slmloop.evaluate.results import latest_evaluations
from slmloop.manifest import EvalConfig
from slmloop.metrics import HEADLINE
from slmloop.project import Project
from slmloop.store import Evaluation, atomic_write_json, atomic_write_text

__all__ = ["CompareReport", "compare_models"]


@dataclass
class CompareReport:
    evaluations: list[Evaluation]
    comparisons: list[Comparison] = field(default_factory=list)
    path: Path | None = None


def _evaluation_for(
    project: Project, ref: str, gold_id: str, cfg: EvalConfig, console: Console, fresh: bool, data: str | None
) -> Evaluation:
    from slmloop.predict.targets import resolve_target

    canonical = ref if ref.startswith(("endpoint:", "baseline:")) else resolve_target(project, ref).ref
    if not fresh:
        for e in latest_evaluations(project, gold_id, data):
            if e.model_ref == canonical:
                return e
    plain = cfg.model_copy(update={"gates": [], "compare": type(cfg.compare)()})
    return evaluate(project, ref, pack=plain, console=console, dataset_id=data)


def _baseline_data(project: Project, refs: list[str]) -> str:
    """The data baselines are fit on in a comparison: that of the first trained model compared (a run's or a
    release's dataset version), else the current dataset version."""
    from slmloop.data.versions import resolve_dataset
    from slmloop.predict.targets import resolve_target

    for ref in refs:
        if ref.startswith(("endpoint:", "baseline:", "live:")):
            continue
        target = resolve_target(project, ref)
        lineage = target.run or target.release
        if lineage is not None:
            return lineage.dataset_id
    return resolve_dataset(project).id


def compare_models(
    project: Project,
    refs: list[str],
    *,
    metric: str | None = None,
    fresh: bool = False,
    console: Console | None = None,
    cfg: EvalConfig | None = None,
    report: bool = True,
) -> CompareReport:
    """Stored (or, with ``fresh``, new) evaluations of ``refs`` on the current gold set, each paired against the
    first; ``report=False`` writes no HTML report (a dashboard page that only shows the result)."""
    console = console or Console(stderr=True)
    cfg = cfg or project.manifest.eval
    if len(refs) < 2:
        raise ConfigError("compare needs at least two models", hint="e.g. `slmloop compare base v1`")
    gold = current_gold(project)
    if gold is None:
        raise NotFoundError("there is no gold set yet", hint="Run `slmloop data prepare`.")
    data = _baseline_data(project, refs) if any(r.startswith("baseline:") for r in refs) else None
    evals = [_evaluation_for(project, r, gold.id, cfg, console, fresh, data) for r in refs]
    result = CompareReport(evals)
    for other in evals[1:]:
        result.comparisons.append(compare_pair(project, evals[0], other, metric, cfg))
    if report:
        result.path = _write_report(project, result, cfg)
    return result


def _write_report(project: Project, report: CompareReport, cfg: EvalConfig) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = report.evaluations
    metric = report.comparisons[0].metric
    name = "compare-" + "-".join(e.name for e in evals)
    folder = project.reports_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys([metric, *HEADLINE[project.task.type]]))
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 0.8 * len(evals) + 2), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [e.metrics.get(key, math.nan) for e in evals]
        cis = [e.metrics.get("ci", {}).get(key, [math.nan, math.nan]) for e in evals]
        err = np.array(
            [
                [v - lo for v, (lo, _) in zip(values, cis, strict=True)],
                [hi - v for v, (_, hi) in zip(values, cis, strict=True)],
            ]
        )
        y = np.arange(len(evals))
        ax.barh(y, values, xerr=np.nan_to_num(err), color="#6baed6", capsize=4)
        ax.set_yticks(y, [e.model_ref for e in evals])
        ax.invert_yaxis()
        ax.set_xlim(
            0,
            max(1.0, max(v for v in values if not math.isnan(v)) * 1.05)
            if any(not math.isnan(v) for v in values)
            else 1,
        )
        ax.set_title(f"{key} ({100 * cfg.confidence:.0f} % CI)")
        for yi, v in zip(y, values, strict=True):
            if not math.isnan(v):
                ax.text(v, yi, f" {v:.3f}", va="center")
    fig.tight_layout()
    fig.savefig(folder / "compare.png")
    plt.close(fig)

    def row(e: Evaluation) -> str:
        rt = e.metrics.get("runtime", {})
        lat = rt.get("latency_p50_s", rt.get("seconds_per_row"))
        cells = (
            [e.model_ref, e.name]
            + [f"{e.metrics.get(k, math.nan):.4f}" for k in keys]
            + [f"{1000 * lat:.0f} ms" if lat is not None else "", f"{rt.get('cost_per_1k_requests', math.nan):.4f}"]
        )
        return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["model", "evaluation", *keys, "latency", "cost / 1k"])
    sentences = "".join(f"<li>{html.escape(c.sentence)}</li>" for c in report.comparisons)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:75em}} td,th{{padding:.2em .8em;
border-bottom:1px solid #ddd}}</style></head><body><h1>Comparison on gold {html.escape(evals[0].gold_id)}</h1>
<ul>{sentences}</ul><table><tr>{head}</tr>{"".join(row(e) for e in evals)}</table>
<img src="compare.png" alt="metrics with confidence intervals" style="max-width:100%"></body></html>"""
    atomic_write_text(folder / "index.html", page)
    atomic_write_json(
        folder / "compare.json",
        {
            "gold": evals[0].gold_id,
            "evaluations": [{"model": e.model_ref, "evaluation": e.name} for e in evals],
            "comparisons": [
                {
                    "a": c.a.model_ref,
                    "b": c.b.model_ref,
                    "metric": c.metric,
                    "a_value": c.a_value,
                    "b_value": c.b_value,
                    "diff": c.test.diff,
                    "ci": list(c.test.ci),
                    "test": c.test.test,
                    "p_value": c.test.p_value,
                    "verdict": c.verdict,
                    "mde": c.mde,
                    "sentence": c.sentence,
                }
                for c in report.comparisons
            ],
        },
    )
    return folder
