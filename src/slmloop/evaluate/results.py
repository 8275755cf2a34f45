"""Stored evaluations: the gold rows they scored, the newest one per model, their per-row scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from slmloop.errors import NotFoundError
from slmloop.evaluate.scoring import score_answers
from slmloop.manifest import EvalConfig, TaskConfig
from slmloop.metrics import RowScores
from slmloop.project import Project
from slmloop.store import Evaluation, GoldVersion

__all__ = [
    "evaluation_task",
    "find_evaluation",
    "gold_rows",
    "latest_evaluations",
    "learned_from",
    "newest_evaluation",
    "row_scores",
]


def gold_rows(project: Project, gold_id: str) -> list[dict[str, Any]]:
    gold = project.store.get(GoldVersion, gold_id, "gold version", "`slmloop gold list`.")
    return project.objects.read_jsonl(gold.object)


def find_evaluation(project: Project, ref: str) -> Evaluation:
    """A stored evaluation: ``eval-N`` (or ``N``), or ``latest``: the newest evaluation of a fine-tuned model
    (a run or a release)."""
    if ref == "latest":
        with project.store.session() as s:
            trained = Evaluation.model_ref.like("run-%") | Evaluation.model_ref.like("release-%")
            ev = s.scalars(select(Evaluation).where(trained).order_by(Evaluation.id.desc()).limit(1)).first()
        if ev is None:
            raise NotFoundError(
                "no fine-tuned model has been evaluated yet", hint="Run `slmloop train`, then `slmloop eval`."
            )
        return ev
    try:
        eid = int(ref.removeprefix("eval-"))
    except ValueError:
        raise NotFoundError(
            f"{ref!r} is not an evaluation", hint="Name one as eval-3, or latest; `slmloop eval list` lists them."
        ) from None
    return project.store.get(Evaluation, eid, "evaluation", "`slmloop eval list` lists the evaluations.")


def newest_evaluation(project: Project, refs: Sequence[str], gold_id: str | None = None) -> Evaluation | None:
    """The newest evaluation of the first of ``refs`` that has one (on ``gold_id`` only, if given)."""
    with project.store.session() as s:
        for ref in refs:
            q = select(Evaluation).where(Evaluation.model_ref == ref)
            if gold_id is not None:
                q = q.where(Evaluation.gold_id == gold_id)
            ev = s.scalars(q.order_by(Evaluation.id.desc()).limit(1)).first()
            if ev is not None:
                return ev
    return None


def learned_from(evaluation: Evaluation) -> str | None:
    """The dataset version the evaluated model learned from (a baseline: the one it was fit on); None for the
    base model and endpoints. Evaluations stored before the column existed: read from their metrics."""
    if evaluation.dataset_id:
        return evaluation.dataset_id
    m = evaluation.metrics or {}
    return m.get("runtime", {}).get("fitted_on") or (m.get("subsets") or {}).get("dataset")


def latest_evaluations(project: Project, gold_id: str, dataset_id: str | None = None) -> list[Evaluation]:
    """The newest evaluation of each model on ``gold_id``: base first, baselines next, then by time.

    With ``dataset_id``, only baselines fit on that dataset version count (the bar a model trained on it is
    held to)."""
    with project.store.session() as s:
        rows = s.scalars(select(Evaluation).where(Evaluation.gold_id == gold_id).order_by(Evaluation.id)).all()
    newest: dict[str, Evaluation] = {}
    for e in rows:
        if dataset_id is not None and e.model_ref.startswith("baseline:") and learned_from(e) != dataset_id:
            continue
        newest[e.model_ref] = e
    rank = {"base": 0, "baseline": 1}
    return sorted(newest.values(), key=lambda e: (rank.get(e.model_ref.split(":")[0], 2), e.id))


def evaluation_task(project: Project, evaluation: Evaluation) -> TaskConfig:
    """The task (labels, fields) an evaluation was scored with; older evaluations: the project's."""
    raw = evaluation.metrics.get("task")
    return TaskConfig.model_validate(raw) if raw else project.task


def row_scores(
    project: Project, evaluation: Evaluation, cfg: EvalConfig | None = None, task: TaskConfig | None = None
) -> RowScores:
    """Per-row scores of a stored evaluation, rebuilt from its predictions."""
    cfg = cfg or project.manifest.eval
    rows = gold_rows(project, evaluation.gold_id)
    preds = project.store.predictions(evaluation.id)
    scores = score_answers(
        task or evaluation_task(project, evaluation),
        rows,
        [p.prediction for p in preds],
        [p.raw for p in preds],
        regex=cfg.checks.regex,
        json_schema=cfg.checks.json_schema,
        confidence=[(p.scores or {}).get("confidence") for p in preds],
    )
    judged = [p.scores.get("judge", {}).get("score") for p in preds]
    if any(x is not None for x in judged):
        scores = scores.with_judge([float("nan") if x is None else x for x in judged])
    return scores
