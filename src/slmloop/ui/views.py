"""What each dashboard page shows, gathered from the store with the same library calls the CLI makes.

Every function takes the project and returns plain data (dicts, lists, dataclasses
of the library) for a template; none of them renders HTML, so each can be tested
against the CLI's numbers without a browser.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmloop.data.versions import current_gold
from slmloop.errors import NotFoundError
from slmloop.evaluate.results import evaluation_task, latest_evaluations, newest_evaluation
from slmloop.metrics import HEADLINE
from slmloop.predict.parsing import field_diff, parse_json_object, reference_object
from slmloop.project import Project
from slmloop.release.registry import alias_history, aliases, promotion_problems
from slmloop.status import StageState, loop_status
from slmloop.store import DatasetVersion, DriftReport, Evaluation, Import, Release, Run
from slmloop.train.tracking import read_trace

__all__ = [
    "Stage",
    "compare_view",
    "data_view",
    "eval_rows",
    "eval_view",
    "evaluations_view",
    "headline",
    "monitor_view",
    "overview",
    "rejects_view",
    "releases_view",
    "run_view",
    "runs_view",
]

ROWS_PER_PAGE = 50
_NOT_METRICS = ("n", "rows_per_s", "confidence")  # confidence: the CIs' level, not a score


@dataclass
class Stage:
    """One stage of the loop on the overview: its newest state, a one-line detail and where to look."""

    name: str
    status: str  # ok | warn | fail | todo
    detail: str
    link: str


def headline(project: Project, metrics: dict[str, Any]) -> tuple[str, float | None, list[float] | None]:
    """The task's headline metric of an evaluation: name, value and 95 % CI."""
    task_type = metrics.get("task", {}).get("type", project.task.type)
    name = HEADLINE[task_type][0]
    value = metrics.get(name)
    if not isinstance(value, int | float) or math.isnan(value):
        return name, None, None
    return name, float(value), metrics.get("ci", {}).get(name)


def _evaluation(project: Project, evaluation_id: int) -> Evaluation:
    return project.store.get(Evaluation, evaluation_id, "evaluation", "The evaluations page lists them.")


_LINKS = {"data": "/data", "train": "/runs", "evaluate": "/evals", "release": "/releases", "monitor": "/monitor"}


def _link(project: Project, stage: StageState) -> str:
    """Where the overview's stage points: the object it is about, or the stage's page."""
    if stage.name == "train" and stage.ref:
        return f"/runs/{stage.ref.removeprefix('run-')}"
    if stage.name == "evaluate" and stage.ref:
        return f"/evals/{stage.ref.removeprefix('eval-')}"
    return _LINKS[stage.name]


def overview(project: Project) -> dict[str, Any]:
    """Each stage's newest state, the live release, the open warnings and the next step (:func:`loop_status`)."""
    now = loop_status(project)
    stages = [Stage(s.name, s.status, s.detail, _link(project, s)) for s in now.stages]
    warnings = [(text, _LINKS[stage]) for text, stage in now.warnings]
    live = aliases(project)
    production = next((a for a in live if a.alias == "production"), live[0] if live else None)
    return {
        "stages": stages,
        "warnings": warnings,
        "live": production,
        "gold": current_gold(project),
        "next_step": now.next_step,
        "why": now.why,
    }


def data_view(project: Project) -> dict[str, Any]:
    """Imports, dataset versions with rejects by reason, label balance and gold contamination."""
    imports = project.store.list(Import, Import.created_at)
    versions = list(reversed(project.store.list(DatasetVersion, DatasetVersion.created_at)))
    balance: list[dict[str, Any]] = []
    if versions:
        labels = versions[0].counts.get("labels", {})
        names = sorted({n for part in labels.values() for n in part}, key=lambda n: -labels.get("train", {}).get(n, 0))
        splits = ("train", "validation", "gold")
        balance = [{"label": n, **{s: labels.get(s, {}).get(n, 0) for s in splits}} for n in names]
    linked = {
        v.id: sorted({r for s in v.config.get("sources", []) for r in s.get("mapping", {}).get("monitor_runs", [])})
        for v in versions
    }
    return {
        "imports": imports,
        "versions": versions,
        "balance": balance,
        "balance_max": max((b["train"] for b in balance), default=0),
        "gold": current_gold(project),
        "monitor_runs": linked,
        "report": _data_report(project, versions[0].id) if versions else None,
    }


def _data_report(project: Project, version_id: str) -> Path | None:
    folder = project.reports_dir / f"data-{version_id}"
    return folder if (folder / "index.html").exists() else None


def rejects_view(project: Project, ref: str, reason: str | None = None) -> dict[str, Any]:
    """The rejected rows of an import (imp-…) or a dataset version (ds-…), optionally of one reason."""
    if ref.startswith("imp-"):
        rec: Import | DatasetVersion = project.store.get(Import, ref, "import", "The data page lists imports.")
        rows = project.objects.read_jsonl(rec.rejects_object)
    else:
        rec = project.store.get(DatasetVersion, ref, "dataset version", "The data page lists dataset versions.")
        rows = project.objects.read_jsonl(rec.rejects_object)
    reasons = Counter(str(r.get("reason", "")) for r in rows)
    shown = [r for r in rows if reason is None or r.get("reason") == reason]
    return {"ref": ref, "reasons": reasons.most_common(), "rows": shown, "reason": reason}


def bakeoffs_view(project: Project) -> list[dict[str, Any]]:
    """Every bake-off, newest first: its trials (best first), the plot, and the winner against the incumbent."""
    from slmloop.graduate.bakeoff import list_bakeoffs
    from slmloop.graduate.report import bakeoff_rows

    out = []
    for bo in reversed(list_bakeoffs(project)):
        plot = project.bakeoffs_dir / bo.id / "trials.png"
        out.append(
            {
                "bo": bo,
                "rows": bakeoff_rows(bo),
                "plot": str(plot.relative_to(project.home)) if plot.exists() else None,
                "gold": bo.gold or {},
            }
        )
    return out


def runs_view(project: Project) -> list[Run]:
    return list(reversed(project.store.list(Run, Run.id)))


def run_view(project: Project, run_id: int) -> dict[str, Any]:
    """A run's config, curves, throughput and its preflight forecast next to what it measured."""
    run = project.store.get(Run, run_id, "run", "The runs page lists them.")
    folder = project.locate(run.path) if run.path else project.runs_dir / run.name
    trace = read_trace(folder)
    m = run.metrics
    forecast = run.config.get("forecast", {})
    ev = newest_evaluation(project, [run.name])
    pairs = [
        ("training time (s)", m.get("forecast_seconds"), m.get("train_seconds")),
        ("peak memory (GiB)", m.get("forecast_peak_gib"), m.get("peak_gib")),
        ("gold eval (s)", forecast.get("eval_seconds"), ev.seconds if ev else None),
    ]
    forecast_rows = [
        {"what": w, "forecast": f, "measured": a, "error": (f - a) / a if f is not None and a else None}
        for w, f, a in pairs
    ]
    return {
        "run": run,
        "config": json.dumps({k: v for k, v in run.config.items() if k != "forecast"}, indent=2, default=str),
        "validation": [s for s in trace if s.get("val_loss") is not None],
        "tokens_per_s": [s["tokens_per_s"] for s in trace if "tokens_per_s" in s],
        "forecast_rows": forecast_rows,
        "loss_curve": (folder / "loss_curve.png") if (folder / "loss_curve.png").exists() else None,
        "evaluation": ev,
    }


def evaluations_view(project: Project) -> dict[str, Any]:
    """Every evaluation, newest first, with its headline metric; the comparison on the current gold set."""
    evals = list(reversed(project.store.list(Evaluation, Evaluation.id)))
    gold = current_gold(project)
    return {
        "evaluations": [(e, headline(project, e.metrics)) for e in evals],
        "current": [(e, headline(project, e.metrics)) for e in latest_evaluations(project, gold.id)] if gold else [],
        "gold": gold,
    }


@dataclass
class EvalPage:
    evaluation: Evaluation
    task_type: str
    metrics: list[tuple[str, float, list[float] | None]] = field(default_factory=list)
    peers: list[tuple[Evaluation, tuple[str, float | None, list[float] | None]]] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    per_class: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    per_field: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    clusters: list[Any] = field(default_factory=list)
    subsets: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None


def eval_view(project: Project, evaluation_id: int) -> EvalPage:
    """Metrics with CIs, its peers on the same gold rows, gates, weakest classes or fields, failure clusters."""
    from slmloop.analyze.failures import analyze
    from slmloop.evaluate.report import top_confusions

    ev = _evaluation(project, evaluation_id)
    task = evaluation_task(project, ev)
    m = ev.metrics
    page = EvalPage(ev, task.type)
    ci = m.get("ci", {})
    for name, value in m.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and name not in _NOT_METRICS:
            page.metrics.append((name, float(value), ci.get(name)))
    page.peers = [(e, headline(project, e.metrics)) for e in latest_evaluations(project, ev.gold_id)]
    page.gates = _gates(m)
    page.per_class = sorted(m.get("per_class", {}).items(), key=lambda kv: (kv[1]["f1"], -kv[1]["support"]))
    page.per_field = sorted(m.get("per_field", {}).items(), key=lambda kv: (kv[1]["f1"], -kv[1]["support"]))
    if m.get("confusion"):
        page.confusions = top_confusions(m["confusion"], 15)
    page.subsets = m.get("subsets") or {}
    if ev.n_rows:
        page.clusters = analyze(project, ev.name, report=False).clusters[:10]
    folder = project.reports_dir / ev.name
    page.report = folder if (folder / "index.html").exists() else None
    return page


def _gates(m: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for g in m.get("gates", []):
        op = "≥" if g["op"] == "gte" else "≤"
        rows.append(
            {
                "gate": f"{g['metric']} {op} {g['threshold']}",
                "value": f"{g['value']:.4f}",
                "passed": g["passed"],
                "required": g["required"],
            }
        )
    for label, key, passes in (
        ("must beat", "must_beat", lambda r: r["verdict"] == "better"),
        ("not worse than", "vs_baseline", lambda r: r["verdict"] != "worse"),
    ):
        rec = m.get(key)
        if rec:
            rows.append(
                {
                    "gate": f"{label} {rec['against']}",
                    "value": f"{rec.get('diff', math.nan):+.4f} (p = {rec.get('p_value', 1):.3g}): {rec['verdict']}",
                    "passed": passes(rec),
                    "required": rec.get("required", False),
                    "sentence": rec.get("sentence", ""),
                }
            )
    return rows


def eval_rows(
    project: Project,
    evaluation_id: int,
    *,
    query: str = "",
    only: str = "all",
    label: str = "",
    page: int = 1,
) -> dict[str, Any]:
    """One page of an evaluation's rows: text search over input/expected/answer, right/wrong, gold label."""
    ev = _evaluation(project, evaluation_id)
    task = evaluation_task(project, ev)
    q = query.strip().lower()
    rows = []
    for p in project.store.predictions(ev.id):
        if (only == "failures" and p.correct) or (only == "correct" and not p.correct):
            continue
        if label and p.reference != label:
            continue
        if q and q not in p.input.lower() and q not in p.reference.lower() and q not in p.raw.lower():
            continue
        rows.append(p)
    pages = max(1, math.ceil(len(rows) / ROWS_PER_PAGE))
    page = min(max(1, page), pages)
    shown = rows[(page - 1) * ROWS_PER_PAGE : page * ROWS_PER_PAGE]
    diffs: dict[int, list[dict[str, Any]] | None] = {}
    if task.type == "extraction":
        for p in shown:
            got = parse_json_object(p.raw)
            diffs[p.idx] = None if got is None else field_diff(reference_object(p.reference), got)
    return {
        "evaluation": ev,
        "task_type": task.type,
        "rows": shown,
        "diffs": diffs,
        "matched": len(rows),
        "page": page,
        "pages": pages,
        "query": query,
        "only": only,
        "label": label,
    }


def compare_view(project: Project, a: str, b: str) -> dict[str, Any]:
    """Two evaluated models on the same gold rows: the paired test and the rows where they disagree."""
    from slmloop.analyze.compare import compare_models

    report = compare_models(project, [a, b], report=False)
    first, second = report.evaluations
    left = {p.idx: p for p in project.store.predictions(first.id)}
    right = project.store.predictions(second.id)
    disagree = [(left[p.idx], p) for p in right if p.idx in left and left[p.idx].correct != p.correct]
    return {
        "a": first,
        "b": second,
        "heads": (headline(project, first.metrics), headline(project, second.metrics)),
        "comparison": report.comparisons[0],
        "disagree": disagree,
    }


def releases_view(project: Project) -> dict[str, Any]:
    """Releases with their gate status today, the aliases pointing at them, and every alias move."""
    releases = list(reversed(project.store.list(Release, Release.version)))
    pointing: dict[int, list[str]] = {}
    for a in aliases(project):
        pointing.setdefault(a.version, []).append(a.alias)
    rows = []
    for r in releases:
        ev, problems = promotion_problems(project, r, check_files=False)
        rows.append(
            {
                "release": r,
                "aliases": pointing.get(r.version, []),
                "evaluation": ev,
                "headline": headline(project, ev.metrics if ev else r.metrics),
                "problems": problems,
            }
        )
    return {"releases": rows, "aliases": aliases(project), "history": alias_history(project)}


def monitor_view(project: Project) -> dict[str, Any]:
    """Every stored monitor run, the newest one's windows and the live inputs most worth labelling."""
    from slmloop.monitor.feedback import labelling_candidates

    reports = list(reversed(project.store.list(DriftReport, DriftReport.id)))
    newest = next((r for r in reports if r.stats.get("windows")), None)
    candidates: list[dict[str, Any]] = []
    if newest is not None and newest.release_version is not None:
        try:
            candidates, _ = labelling_candidates(project, newest.release_version, most_drifted=20, least_confident=10)
        except NotFoundError:
            candidates = []
    return {"reports": reports, "newest": newest, "candidates": candidates}
