"""Back to data: the live inputs most worth labelling, as a file ``slmloop data import`` accepts.

Two kinds of rows: the inputs furthest from the training data (lowest cosine
similarity of their MiniLM embedding to the nearest reference input) and those
the model was least sure of (lowest top-label probability). Each row carries the
model's answer as a suggestion to correct, the request it came from and the
monitor run (``monitor_run``); the import records that run, so the dataset version
prepared from it shows where its new rows came from (``slmloop data list``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from slmloop.data.importer import refuse_active_source
from slmloop.errors import NotFoundError
from slmloop.models.embedder import embed
from slmloop.monitor.drift import confidence_of, live_requests, logged_answer
from slmloop.predict.targets import resolve_release
from slmloop.project import Project
from slmloop.release.profile import load_profile
from slmloop.store import DriftReport, atomic_write_text

__all__ = ["export_for_labelling", "labelling_candidates"]


def _suggestion(task_type: str, answer: dict[str, Any]) -> dict[str, Any]:
    if task_type == "classification":
        return {"label": answer.get("label") or ""}
    if task_type == "extraction":
        return {"output": answer.get("output") or {}}
    return {"output": answer.get("output") or ""}


def labelling_candidates(
    project: Project,
    release_ref: str | int | None = None,
    *,
    most_drifted: int = 50,
    least_confident: int = 50,
) -> tuple[list[dict[str, Any]], int]:
    """The live inputs most worth labelling, furthest from the training data first; and the monitor run's id."""
    import numpy as np

    release = resolve_release(project, release_ref)
    with project.store.session() as s:
        runs = s.scalars(
            select(DriftReport).where(DriftReport.release_version == release.version).order_by(DriftReport.id.desc())
        )
        run = next((r for r in runs if r.stats.get("windows")), None)  # a run over too few requests has none
    if run is None:
        raise NotFoundError(
            f"no monitor run with scored windows for v{release.version}",
            hint="Run `slmloop monitor` first; the export takes its rows from the newest run that scored any.",
        )
    first = min(w["first_request"] for w in run.stats["windows"])
    last = max(w["last_request"] for w in run.stats["windows"])
    rows = [r for r in live_requests(project, release.version) if first <= r.id <= last]
    seen: dict[str, Any] = {}
    for r in rows:  # one row per distinct input: labelling a repeat twice helps no one
        seen.setdefault(r.input, r)
    unique = list(seen.values())
    profile = load_profile(project, release)
    cfg = project.manifest.monitor
    emb = embed([r.input for r in unique], cfg.embedding_model, project.home / "cache" / "embeddings")
    nearest = (emb @ profile.embeddings.T).max(axis=1) if len(unique) else np.zeros(0)
    answers = [logged_answer(r.output) for r in unique]
    confidence = [confidence_of(a) for a in answers]
    chosen: dict[int, str] = {}
    for i in np.argsort(nearest)[:most_drifted]:
        chosen[int(i)] = "far from training data"
    by_conf = sorted((c, i) for i, c in enumerate(confidence) if c is not None)
    for _, i in by_conf[:least_confident]:
        chosen.setdefault(i, "low confidence")
    task = project.task
    text_field = "input" if task.type == "generation" else "text"
    candidates = [
        {
            text_field: unique[i].input,
            **_suggestion(task.type, answers[i]),
            "why": why,
            "nearest_training_similarity": round(float(nearest[i]), 4),
            "confidence": confidence[i],
            "request": unique[i].id,
            "monitor_run": run.id,
        }
        for i, why in sorted(chosen.items(), key=lambda kv: float(nearest[kv[0]]))
    ]
    return candidates, run.id


def export_for_labelling(
    project: Project,
    file: Path,
    release_ref: str | int | None = None,
    *,
    most_drifted: int = 50,
    least_confident: int = 50,
) -> tuple[int, int]:
    """Write the chosen rows to ``file`` (JSONL; never over the source of an active import, which the next import
    would replace); returns (rows written, monitor run id)."""
    refuse_active_source(project, file)
    rows, run_id = labelling_candidates(
        project, release_ref, most_drifted=most_drifted, least_confident=least_confident
    )
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, "".join(line + "\n" for line in lines))
    with project.store.session() as s:
        project.store.log_event(s, "monitor.export", f"drift-{run_id}", file=str(file), rows=len(lines))
    return len(lines), run_id
