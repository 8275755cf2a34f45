"""``slmloop eval``: score one model on the frozen gold set, keep every prediction."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import select

from slmloop.data.leakage import leakage_gate
from slmloop.data.prepare import current_gold, load_dataset
from slmloop.errors import NotFoundError
from slmloop.evaluate.metrics import (
    classification_metrics,
    extraction_metrics,
    generation_metrics,
    parse_json_object,
)
from slmloop.manifest import TaskConfig
from slmloop.models.inference import generate, rank_labels
from slmloop.models.loading import pick_dtype, render_prompt
from slmloop.project import Project
from slmloop.store import Evaluation, Prediction
from slmloop.targets import load_target, resolve_target
from slmloop.tasks import input_text, parse_prediction, prompt_messages, target_text

__all__ = ["HEADLINE", "RowResult", "evaluate", "latest_evaluations", "predict_rows", "score_rows"]

#: the metric each task's comparisons lead with
HEADLINE = {
    "classification": ("accuracy", "macro_f1"),
    "extraction": ("micro_f1", "json_valid_rate"),
    "generation": ("exact_match", "rouge_l"),
    "chat": ("rouge_l", "exact_match"),
}


@dataclass
class RowResult:
    prediction: str
    raw: str
    correct: bool
    scores: dict[str, Any]


def score_rows(task: TaskConfig, rows: list[dict[str, Any]], results: list[RowResult]) -> dict[str, Any]:
    refs = [target_text(task, r) for r in rows]
    preds = [x.prediction for x in results]
    if task.type == "classification":
        return classification_metrics(refs, preds, task.labels or [])
    if task.type == "extraction":
        return extraction_metrics([r["output"] for r in rows], preds, task.fields or [])
    return generation_metrics(refs, preds)


def predict_rows(
    task: TaskConfig,
    mode: str,
    model: Any,
    tok: Any,
    rows: list[dict[str, Any]],
    *,
    batch_size: int,
    max_new_tokens: int,
    progress: Callable[[int], None] | None = None,
) -> list[RowResult]:
    """The model's answer for every row: ranked labels (classification ``rank``) or generated text."""
    prompts = [render_prompt(tok, prompt_messages(task, r)) for r in rows]
    if mode == "rank":
        labels = task.labels or []
        scores = rank_labels(model, tok, prompts, labels, batch_size=batch_size, progress=progress)
        out = []
        for row, s in zip(rows, scores, strict=True):
            top = max(s)
            norm = [math.exp(x - top) for x in s]
            z = sum(norm)
            probs = {lab: p / z for lab, p in zip(labels, norm, strict=True)}
            pred = labels[s.index(top)]
            out.append(RowResult(pred, pred, pred == row["label"], {"probs": probs, "logp": s}))
        return out
    gens = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    results = []
    for row, (text, n_tokens) in zip(rows, gens, strict=True):
        pred = parse_prediction(task, text)
        if task.type == "extraction":
            correct = parse_json_object(text) == row["output"]
        else:
            correct = pred.strip() == target_text(task, row).strip()
        results.append(RowResult(pred, text, correct, {"new_tokens": n_tokens}))
    return results


def _predict(project: Project, model: Any, tok: Any, rows: list[dict[str, Any]], console: Console) -> list[RowResult]:
    m = project.manifest
    with Progress(
        TextColumn(f"[bold]eval[/bold] ({m.eval_mode})"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("eval", total=len(rows))
        return predict_rows(
            m.task,
            m.eval_mode,
            model,
            tok,
            rows,
            batch_size=m.eval.batch_size,
            max_new_tokens=m.eval.max_new_tokens,
            progress=lambda n: progress.update(bar, advance=n),
        )


def evaluate(
    project: Project,
    ref: str = "base",
    *,
    allow_leakage: bool = False,
    console: Console | None = None,
) -> Evaluation:
    """Score ``ref`` on the current gold version and store the evaluation."""
    console = console or Console(stderr=True)
    task = project.manifest.task
    gold_version = current_gold(project)
    if gold_version is None:
        raise NotFoundError(
            "there is no gold set yet", hint="Run `slmloop data import FILE` and `slmloop data prepare`."
        )
    gold = project.objects.read_jsonl(gold_version.object)
    target = resolve_target(project, ref)
    lineage = target.run or target.release
    leakage: dict[str, Any] = {"checked": [], "leaks": 0, "overridden": False}
    if lineage is not None:
        trained_on = load_dataset(project, lineage.dataset_id)
        leakage = leakage_gate(
            project,
            task,
            gold,
            allow=allow_leakage,
            context=f"eval {target.ref}",
            train=trained_on.train,
            validation=trained_on.validation,
        )
    model, tok = load_target(target, pick_dtype(project.manifest.eval.precision))
    started = time.perf_counter()
    results = _predict(project, model, tok, gold, console)
    seconds = time.perf_counter() - started
    metrics = score_rows(task, gold, results)
    metrics["leakage"] = leakage
    metrics["rows_per_s"] = len(gold) / seconds if seconds else 0.0
    evaluation = Evaluation(
        model_ref=target.ref,
        gold_id=gold_version.id,
        mode=project.manifest.eval_mode,
        n_rows=len(gold),
        metrics=metrics,
        seconds=seconds,
    )
    with project.store.session() as s:
        s.add(evaluation)
        s.flush()
        for i, (row, res) in enumerate(zip(gold, results, strict=True)):
            s.add(
                Prediction(
                    evaluation_id=evaluation.id,
                    idx=i,
                    input=input_text(task, row),
                    reference=target_text(task, row),
                    prediction=res.prediction,
                    raw=res.raw,
                    correct=res.correct,
                    scores=res.scores,
                )
            )
        project.store.log_event(
            s,
            "eval",
            f"eval-{evaluation.id}",
            model=target.ref,
            gold=gold_version.id,
            **{k: metrics[k] for k in HEADLINE[task.type] if k in metrics},
        )
    from slmloop.evaluate.report import write_eval_report

    write_eval_report(project, evaluation)
    return evaluation


def latest_evaluations(project: Project, gold_id: str) -> list[Evaluation]:
    """The newest evaluation of each model on ``gold_id``, base first, then by time."""
    with project.store.session() as s:
        rows = s.scalars(select(Evaluation).where(Evaluation.gold_id == gold_id).order_by(Evaluation.id)).all()
    newest: dict[str, Evaluation] = {}
    for e in rows:
        newest[e.model_ref] = e
    return sorted(newest.values(), key=lambda e: (e.model_ref != "base", e.id))
