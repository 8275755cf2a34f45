"""The loop at a glance: each stage's newest state, open warnings and the next step to take.

``slmloop status`` prints it (``--json`` for scripts) and the dashboard's overview
shows it; both read :func:`loop_status`. The next step is the first of these that
applies: import data → prepare (also when the imports changed since the current
dataset version) → train on the current data → evaluate the newest run on the
current gold set → fix the data where it fails its gates → export → promote →
act on drift → watch live traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from slmloop.data.importer import import_state
from slmloop.data.versions import current_dataset, current_gold
from slmloop.evaluate.evaluate import failed_gates
from slmloop.evaluate.results import latest_evaluations
from slmloop.metrics import HEADLINE
from slmloop.project import Project
from slmloop.release.registry import alias_history, aliases
from slmloop.store import DriftReport, Evaluation, Import, Release, Run

__all__ = ["LoopStatus", "StageState", "loop_status", "newest_tuned_evaluation"]


@dataclass
class StageState:
    """One stage: ok | warn | fail | todo, a one-line detail, what it is about and its facts (for --json)."""

    name: str
    status: str
    detail: str
    ref: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopStatus:
    project: str
    task: str
    stages: list[StageState]
    #: (text, the stage it concerns)
    warnings: list[tuple[str, str]]
    #: the command to run next, and why
    next_step: str
    why: str
    gold: dict[str, Any] | None = None
    aliases: dict[str, int] = field(default_factory=dict)

    def stage(self, name: str) -> StageState:
        return next(s for s in self.stages if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_tuned_evaluation(project: Project, gold_id: str) -> Evaluation | None:
    """The newest evaluation of a fine-tuned model (a run or a release) on ``gold_id``."""
    tuned = [e for e in latest_evaluations(project, gold_id) if e.model_ref.startswith(("run-", "release-"))]
    return max(tuned, key=lambda e: e.id) if tuned else None


def _headline(metrics: dict[str, Any], task_type: str) -> tuple[str, float | None, list[float] | None]:
    name = HEADLINE[task_type][0]
    value = metrics.get(name)
    if not isinstance(value, int | float) or math.isnan(value):
        return name, None, None
    return name, float(value), metrics.get("ci", {}).get(name)


def _data(project: Project, warnings: list[tuple[str, str]]) -> tuple[StageState, bool]:
    """The data stage, and whether the imports changed since the current dataset version was made."""
    imports = project.store.list(Import, Import.created_at)
    active = sorted(i.id for i in imports if i.active)
    version = current_dataset(project)
    facts: dict[str, Any] = {
        "imports": {i.id: import_state(i) for i in imports},
        "active_imports": len(active),
    }
    if version is None:
        what = "imported, not prepared yet" if active else "nothing imported yet"
        return StageState("data", "todo", what, None, facts), bool(active)
    c = version.counts
    stale = bool(active) and sorted(version.import_ids) != active and "distill" not in version.config
    rejected = sum(c.get("rejected", {}).values())
    facts.update(
        dataset=version.id,
        created=f"{version.created_at:%Y-%m-%d %H:%M}",
        train=c.get("train"),
        validation=c.get("validation"),
        gold_rows=c.get("gold_rows_total"),
        rejected=c.get("rejected", {}),
        imports_changed=stale,
    )
    detail = (
        f"{version.id}: train {c.get('train')}, validation {c.get('validation')}, gold {c.get('gold_rows_total')} "
        f"rows ({rejected} rejected; {len(active)} active import(s))"
    )
    if stale:
        warnings.append(("the imports changed since the current dataset version: `slmloop data prepare`", "data"))
    rate = c.get("contamination", {}).get("rate")
    if rate is not None and rate > 0.05:
        warnings.append((f"{rate:.0%} of gold rows have a close training paraphrase", "data"))
    return StageState("data", "warn" if stale else "ok", detail, version.id, facts), stale


def _train(project: Project, warnings: list[tuple[str, str]]) -> tuple[StageState, Run | None]:
    runs = project.store.list(Run, Run.id)
    if not runs:
        return StageState("train", "todo", "no run yet"), None
    run = runs[-1]
    current = current_dataset(project)
    status = {"completed": "ok", "running": "warn", "paused": "warn"}.get(run.status, "fail")
    loss = run.metrics.get("val_loss")
    on_current = current is not None and run.dataset_id == current.id
    detail = (
        f"{run.name} {run.status} on {run.dataset_id}"
        + ("" if on_current else " (not the current dataset version)")
        + (f", validation loss {loss:.4f}" if isinstance(loss, float) else "")
    )
    if run.status == "failed":
        warnings.append((f"{run.name} failed", "train"))
    facts = {"run": run.name, "status": run.status, "dataset": run.dataset_id, "on_current_data": on_current}
    if isinstance(loss, float):
        facts["val_loss"] = loss
    completed = [r for r in runs if r.status == "completed"]
    return StageState("train", status, detail, run.name, facts), completed[-1] if completed else None


def _evaluate(
    project: Project, gold_id: str | None, warnings: list[tuple[str, str]]
) -> tuple[StageState, Evaluation | None, list[str]]:
    ev = newest_tuned_evaluation(project, gold_id) if gold_id else None
    if ev is None:
        return StageState("evaluate", "todo", "no fine-tuned model evaluated on the current gold set"), None, []
    task_type = ev.metrics.get("task", {}).get("type", project.manifest.task.type)
    name, value, ci = _headline(ev.metrics, task_type)
    failed = failed_gates(ev, project.manifest.eval)  # today's gates, as a promotion judges them
    shown = f"{value:.4f}" if value is not None else "–"
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    vs = ev.metrics.get("vs_baseline")
    against = f"; vs {vs['against']}: {vs['verdict']}" if vs else ""
    detail = f"{ev.name} ({ev.model_ref}): {name} {shown}{ci_text}{against}"
    for f in failed:
        warnings.append((f"{ev.model_ref} fails the gate: {f}", "evaluate"))
    facts = {
        "evaluation": ev.name,
        "model": ev.model_ref,
        "metric": name,
        "value": value,
        "ci": ci,
        "gates_failed": failed,
        "vs_baseline": {k: vs.get(k) for k in ("against", "verdict", "diff", "p_value")} if vs else None,
    }
    return StageState("evaluate", "fail" if failed else "ok", detail, ev.name, facts), ev, failed


def loop_status(project: Project) -> LoopStatus:
    """Every stage's newest state, the open warnings and the next step."""
    warnings: list[tuple[str, str]] = []
    data, stale = _data(project, warnings)
    gold = current_gold(project)
    train, run = _train(project, warnings)
    evaluate, ev, failed = _evaluate(project, gold.id if gold else None, warnings)
    stages = [data, train, evaluate]

    releases = project.store.list(Release, Release.version)
    live = {a.alias: a.version for a in aliases(project)}
    if not releases:
        stages.append(StageState("release", "todo", "nothing exported yet"))
    else:
        where = ", ".join(f"{a} → v{v}" for a, v in live.items()) or "no alias points at a release yet"
        stages.append(
            StageState(
                "release",
                "ok" if live else "warn",
                f"v{releases[-1].version} newest; {where}",
                f"v{releases[-1].version}",
                {"newest": releases[-1].version, "aliases": live},
            )
        )
    for m in [m for m in alias_history(project)[:20] if m.forced][:3]:
        warnings.append((f"{m.alias} was forced to v{m.version} past failed gates ({m.ts:%Y-%m-%d %H:%M})", "release"))
    report = project.store.latest(DriftReport, DriftReport.id)
    if report is None:
        stages.append(StageState("monitor", "todo", "no monitor run yet"))
    else:
        status = {"ok": "ok", "warn": "warn", "drift": "fail"}.get(report.verdict, "warn")
        detail = f"drift-{report.id} on v{report.release_version}: {report.verdict} over {report.n_requests} request(s)"
        facts = {"verdict": report.verdict, "release": report.release_version, "requests": report.n_requests}
        stages.append(StageState("monitor", status, detail, f"drift-{report.id}", facts))
        if report.verdict in ("warn", "drift"):
            warnings.append((f"monitor run drift-{report.id}: {report.verdict}", "monitor"))

    step, why = _next_step(project, data, stale, run, ev, failed, releases, live, report)
    return LoopStatus(
        project=project.manifest.project.name,
        task=project.manifest.task.type,
        stages=stages,
        warnings=warnings,
        next_step=step,
        why=why,
        gold={"id": gold.id, "rows": gold.rows, "frozen": f"{gold.created_at:%Y-%m-%d %H:%M}"} if gold else None,
        aliases=live,
    )


def _next_step(
    project: Project,
    data: StageState,
    stale: bool,
    run: Run | None,
    ev: Evaluation | None,
    failed: list[str],
    releases: Sequence[Release],
    live: dict[str, int],
    report: DriftReport | None,
) -> tuple[str, str]:
    if not data.facts.get("active_imports"):
        return "slmloop data import FILE", "no active data"
    if data.ref is None or stale:
        return "slmloop data prepare", "the active imports are not in a dataset version yet"
    if run is None or run.dataset_id != data.ref:
        return "slmloop train", f"no completed run on the current data ({data.ref})"
    if ev is None or ev.model_ref not in {run.name, *(f"release-{r.version}" for r in releases if r.run_id == run.id)}:
        return f"slmloop eval --model {run.name}", f"{run.name} is not evaluated on the current gold set"
    if failed:
        return (
            f"slmloop analyze {ev.name} --train --export to_label.jsonl",
            f"{ev.model_ref} fails {'; '.join(failed)}: look at where it fails, fix or add data, prepare, retrain",
        )
    exported = [r for r in releases if r.run_id == run.id]
    if not exported:
        return f"slmloop export {run.name}", f"{run.name} passes its gates and has no release"
    newest = exported[-1].version
    if live.get("production") != newest:
        return (
            f"slmloop promote v{newest} --to production --reason '…'",
            f"v{newest} is the newest passing release and production does not point at it",
        )
    if report is None or report.release_version != newest:
        return "slmloop serve, then slmloop monitor", f"no drift report on v{newest} yet"
    if report.verdict in ("warn", "drift"):
        return (
            f"slmloop monitor export drifted.jsonl --release v{report.release_version}",
            f"live traffic drifted ({report.verdict}): label the drifted requests and import them",
        )
    return "slmloop monitor", "every stage is ok; keep watching live traffic"
