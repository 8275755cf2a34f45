"""``slmloop eval``: score one model on the frozen gold set, keep every prediction, judge the gates.

resolve the model (base, run, release, alias, or an OpenAI-compatible endpoint)
→ leakage gate (the model's training data against the current gold)
→ predictions (ranked labels, or batched generation, or concurrent HTTP requests)
→ metrics with bootstrap confidence intervals, latency and cost
→ optional LLM-as-judge → gates and the must-beat comparison → stored, with a report
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import select

from slmloop.data.leakage import leakage_gate
from slmloop.data.prepare import current_gold, load_dataset
from slmloop.errors import ConfigError, NotFoundError
from slmloop.evaluate.metrics import (
    classification_metrics,
    extraction_metrics,
    generation_metrics,
    parse_json_object,
)
from slmloop.evaluate.scores import RowScores, score_predictions
from slmloop.evaluate.stats import bootstrap_ci
from slmloop.manifest import EvalConfig, TaskConfig
from slmloop.models.inference import generate, rank_labels
from slmloop.models.loading import pick_dtype, render_prompt
from slmloop.project import Project
from slmloop.store import Evaluation, GoldVersion, Prediction
from slmloop.targets import load_target, resolve_target
from slmloop.tasks import input_text, parse_prediction, prompt_messages, target_text

__all__ = [
    "HEADLINE",
    "ModelAnswer",
    "RowResult",
    "answer_rows",
    "evaluate",
    "failed_gates",
    "gold_rows",
    "latest_evaluations",
    "predict_rows",
    "row_scores",
    "score_rows",
]

#: the metrics each task's comparisons lead with
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
    """Point estimates of every metric of the task (the reference implementations in metrics.py)."""
    refs = [target_text(task, r) for r in rows]
    preds = [x.prediction for x in results]
    if task.type == "classification":
        return classification_metrics(refs, preds, task.labels or [])
    if task.type == "extraction":
        return extraction_metrics([r["output"] for r in rows], [x.raw for x in results], task.fields or [])
    return generation_metrics(refs, preds)


@dataclass
class ModelAnswer:
    prediction: str  # the task-shaped answer (a label, the text)
    raw: str  # what the model said
    scores: dict[str, Any]


def answer_rows(
    task: TaskConfig,
    mode: str,
    model: Any,
    tok: Any,
    rows: list[dict[str, Any]],
    *,
    batch_size: int,
    max_new_tokens: int,
    progress: Callable[[int], None] | None = None,
) -> list[ModelAnswer]:
    """The model's answer for every row (no reference needed): ranked labels or generated text.

    Evaluation and the server's ``/v1/predict`` both answer through here.
    """
    prompts = [render_prompt(tok, prompt_messages(task, r)) for r in rows]
    if mode == "rank":
        labels = task.labels or []
        out = []
        for s in rank_labels(model, tok, prompts, labels, batch_size=batch_size, progress=progress):
            top = max(s)
            norm = [math.exp(x - top) for x in s]
            z = sum(norm)
            probs = {lab: p / z for lab, p in zip(labels, norm, strict=True)}
            pred = labels[s.index(top)]
            out.append(ModelAnswer(pred, pred, {"probs": probs, "logp": s}))
        return out
    gens = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    return [ModelAnswer(parse_prediction(task, text), text, {"new_tokens": n}) for text, n in gens]


def _judged(task: TaskConfig, row: dict[str, Any], a: ModelAnswer) -> RowResult:
    if task.type == "extraction":
        correct = parse_json_object(a.raw) == row["output"]
    else:
        correct = a.prediction.strip() == target_text(task, row).strip()
    return RowResult(a.prediction, a.raw, correct, a.scores)


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
    """Answers for reference rows, each marked right or wrong."""
    answers = answer_rows(
        task, mode, model, tok, rows, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
    )
    return [_judged(task, row, a) for row, a in zip(rows, answers, strict=True)]


def _progress_bar(console: Console, label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]eval[/bold] {label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def gold_rows(project: Project, gold_id: str) -> list[dict[str, Any]]:
    gold = project.store.get(GoldVersion, gold_id, "gold version", "`slmloop gold list`.")
    return project.objects.read_jsonl(gold.object)


def row_scores(project: Project, evaluation: Evaluation, cfg: EvalConfig | None = None) -> RowScores:
    """Per-row scores of a stored evaluation, rebuilt from its predictions."""
    cfg = cfg or project.manifest.eval
    rows = gold_rows(project, evaluation.gold_id)
    preds = project.store.predictions(evaluation.id)
    return score_predictions(
        project.manifest.task,
        rows,
        [p.prediction for p in preds],
        [p.raw for p in preds],
        regex=cfg.checks.regex,
        json_schema=cfg.checks.json_schema,
    )


# ---------------------------------------------------------------------------------------------
def _run_local(
    project: Project, ref: str, gold: list[dict[str, Any]], cfg: EvalConfig, console: Console
) -> tuple[Any, list[RowResult], dict[str, Any]]:
    target = resolve_target(project, ref)
    model, tok = load_target(target, pick_dtype(cfg.precision))
    mode = cfg.mode if cfg.mode != "auto" else project.manifest.eval_mode
    started = time.perf_counter()
    with _progress_bar(console, f"{target.ref} ({mode})") as progress:
        bar = progress.add_task("eval", total=len(gold))
        results = predict_rows(
            project.manifest.task,
            mode,
            model,
            tok,
            gold,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            progress=lambda n: progress.update(bar, advance=n),
        )
    seconds = time.perf_counter() - started
    per_row = seconds / max(len(gold), 1)
    runtime = {
        "seconds": seconds,
        "rows_per_s": len(gold) / seconds if seconds else 0.0,
        "seconds_per_row": per_row,
        "cost_per_1k_requests": per_row * 1000 / 3600 * cfg.local_cost_per_hour,
        "mode": mode,
    }
    return target, results, runtime


def _run_endpoint(
    project: Project, name: str, gold: list[dict[str, Any]], cfg: EvalConfig, console: Console, transport: Any = None
) -> tuple[list[RowResult], dict[str, Any]]:
    from slmloop.models.endpoint import Endpoint

    if name not in cfg.endpoints:
        raise ConfigError(
            f"no endpoint named {name!r}",
            hint=f"Declare it under eval.endpoints (have: {', '.join(cfg.endpoints) or 'none'}).",
        )
    task = project.manifest.task
    endpoint = Endpoint(name, cfg.endpoints[name], transport=transport)
    started = time.perf_counter()
    with _progress_bar(console, f"endpoint:{name}") as progress:
        bar = progress.add_task("eval", total=len(gold))
        answers = endpoint.ask_many(
            [prompt_messages(task, r) for r in gold],
            cfg.max_new_tokens,
            progress=lambda n: progress.update(bar, advance=n),
        )
    endpoint.close()
    seconds = time.perf_counter() - started
    usage = ("latency_s", "prompt_tokens", "completion_tokens", "attempts")
    results = [
        _judged(task, row, ModelAnswer(parse_prediction(task, a.text), a.text, {k: getattr(a, k) for k in usage}))
        for row, a in zip(gold, answers, strict=True)
    ]
    lat = np.array([a.latency_s for a in answers])
    tokens_in = sum(a.prompt_tokens for a in answers)
    tokens_out = sum(a.completion_tokens for a in answers)
    cost = endpoint.cost(tokens_in, tokens_out)
    runtime = {
        "seconds": seconds,
        "rows_per_s": len(gold) / seconds if seconds else 0.0,
        "mode": "generate",
        "latency_p50_s": float(np.median(lat)),
        "latency_p95_s": float(np.quantile(lat, 0.95)),
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "cost": cost,
        "cost_per_1k_requests": cost / max(len(gold), 1) * 1000,
        "retries": sum(a.attempts - 1 for a in answers),
    }
    return results, runtime


def _judge(
    project: Project,
    gold: list[dict[str, Any]],
    results: list[RowResult],
    cfg: EvalConfig,
    console: Console,
    transport: Any = None,
) -> dict[str, Any]:
    """LLM-as-judge: every answer scored 1-5 against the reference under the stored rubric."""
    from slmloop.models.endpoint import Endpoint

    assert cfg.judge is not None
    task = project.manifest.task
    endpoint = Endpoint(cfg.judge.endpoint, cfg.endpoints[cfg.judge.endpoint], transport=transport)
    system = (
        f"You grade answers. Rubric: {cfg.judge.rubric}\nReply with JSON only: "
        '{"score": <integer 1-5>, "reason": "<one sentence>"}'
    )
    convs = [
        [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": json.dumps(
                    {
                        "task": task.instruction,
                        "input": input_text(task, r),
                        "reference": target_text(task, r),
                        "answer": res.raw,
                    },
                    ensure_ascii=False,
                ),
            },
        ]
        for r, res in zip(gold, results, strict=True)
    ]
    with _progress_bar(console, f"judge:{cfg.judge.endpoint}") as progress:
        bar = progress.add_task("judge", total=len(gold))
        answers = endpoint.ask_many(convs, 128, progress=lambda n: progress.update(bar, advance=n))
    endpoint.close()
    scores = []
    for res, a in zip(results, answers, strict=True):
        verdict = parse_json_object(a.text) or {}
        score = verdict.get("score")
        score = float(score) if isinstance(score, int | float) and 1 <= score <= 5 else math.nan
        res.scores["judge"] = {"score": score, "reason": str(verdict.get("reason", ""))[:300]}
        scores.append(score)
    valid = [s for s in scores if not math.isnan(s)]
    return {
        "endpoint": cfg.judge.endpoint,
        "model": cfg.endpoints[cfg.judge.endpoint].model,
        "rubric": cfg.judge.rubric,
        "mean_score": sum(valid) / len(valid) if valid else math.nan,
        "unparseable": len(scores) - len(valid),
        "scores": scores,
    }


def _gates(metrics: dict[str, Any], cfg: EvalConfig) -> list[dict[str, Any]]:
    out = []
    for g in cfg.gates:
        value = metrics.get(g.metric)
        lo, hi = metrics.get("ci", {}).get(g.metric, [math.nan, math.nan])
        judged = (lo if g.op == "gte" else hi) if g.significant else value
        ok = (
            judged is not None
            and not math.isnan(judged)
            and (judged >= g.threshold if g.op == "gte" else judged <= g.threshold)
        )
        out.append({**g.model_dump(), "value": value, "judged_on": judged, "passed": bool(ok)})
    return out


def failed_gates(evaluation: Evaluation) -> list[str]:
    """Required gates (and a required must-beat comparison) this evaluation failed."""
    failed = [
        f"{g['metric']} {'>=' if g['op'] == 'gte' else '<='} {g['threshold']}"
        for g in evaluation.metrics.get("gates", [])
        if g["required"] and not g["passed"]
    ]
    cmp = evaluation.metrics.get("must_beat")
    if cmp and cmp.get("required") and cmp.get("verdict") != "better":
        failed.append(f"must beat {cmp['against']} ({cmp['verdict']})")
    return failed


def _must_beat(project: Project, evaluation: Evaluation, cfg: EvalConfig, console: Console) -> dict[str, Any] | None:
    rule = cfg.compare
    if rule.must_beat == "none":
        return None
    from slmloop.analyze.compare import compare_pair

    if rule.must_beat == "production":
        version = project.store.alias_target("production")
        if version is None:
            return {"against": "production", "verdict": "no production release", "required": False}
        against = f"release-{version}"
    else:
        against = "base"
    if evaluation.model_ref == against:
        return None
    other = next((e for e in latest_evaluations(project, evaluation.gold_id) if e.model_ref == against), None)
    if other is None:
        console.print(f"[dim]must_beat: evaluating {against} on the same gold rows …[/dim]")
        other = evaluate(project, against, pack=cfg.model_copy(update={"compare": type(rule)()}), console=console)
    c = compare_pair(project, other, evaluation, cfg=cfg)
    return {
        "against": against,
        "evaluation": other.name,
        "metric": c.metric,
        "diff": c.test.diff,
        "ci": list(c.test.ci),
        "p_value": c.test.p_value,
        "test": c.test.test,
        "verdict": c.verdict,
        "min_effect": rule.min_effect,
        "alpha": rule.alpha,
        "required": rule.required,
        "sentence": c.sentence,
    }


def evaluate(
    project: Project,
    ref: str = "base",
    *,
    pack: EvalConfig | None = None,
    allow_leakage: bool = False,
    console: Console | None = None,
    transport: Any = None,
) -> Evaluation:
    """Score ``ref`` on the current gold version, store every prediction, judge the gates."""
    console = console or Console(stderr=True)
    cfg = pack or project.manifest.eval
    task = project.manifest.task
    gold_version = current_gold(project)
    if gold_version is None:
        raise NotFoundError(
            "there is no gold set yet", hint="Run `slmloop data import FILE` and `slmloop data prepare`."
        )
    gold = project.objects.read_jsonl(gold_version.object)

    if ref.startswith("endpoint:"):
        model_ref = ref
        results, runtime = _run_endpoint(project, ref.split(":", 1)[1], gold, cfg, console, transport)
        leakage: dict[str, Any] = {"checked": [], "leaks": 0, "overridden": False, "note": "external model"}
    else:
        target = resolve_target(project, ref)
        lineage = target.run or target.release
        leakage = {"checked": [], "leaks": 0, "overridden": False}
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
        target, results, runtime = _run_local(project, ref, gold, cfg, console)
        model_ref = target.ref

    metrics = score_rows(task, gold, results)
    scores = score_predictions(
        task,
        gold,
        [r.prediction for r in results],
        [r.raw for r in results],
        regex=cfg.checks.regex,
        json_schema=cfg.checks.json_schema,
    )
    for name in scores.names:
        metrics.setdefault(name, scores.metric(name))
    if task.type not in ("classification", "extraction"):
        from sacrebleu.metrics import BLEU

        metrics["bleu"] = (
            BLEU().corpus_score([r.prediction for r in results], [[target_text(task, g) for g in gold]]).score / 100
        )
    wanted = list(dict.fromkeys([*HEADLINE[task.type], *cfg.metrics, *(g.metric for g in cfg.gates)]))
    metrics["ci"] = {
        m: list(
            bootstrap_ci(
                lambda idx, m=m: scores.metric(m, idx), len(gold), resamples=cfg.bootstrap, confidence=cfg.confidence
            )
        )
        for m in wanted
        if m in scores.names
    }
    metrics["confidence"] = cfg.confidence
    if cfg.judge is not None:
        judged = _judge(project, gold, results, cfg, console, transport)
        metrics["judge"] = {k: v for k, v in judged.items() if k != "scores"}
        metrics["judge_score"] = judged["mean_score"]
        valid = np.array([s for s in judged["scores"] if not math.isnan(s)])
        if len(valid):
            metrics["ci"]["judge_score"] = list(bootstrap_ci(lambda idx: float(valid[idx].mean()), len(valid)))
    metrics["runtime"] = runtime
    metrics["leakage"] = leakage
    metrics["rows_per_s"] = runtime["rows_per_s"]
    metrics["gates"] = _gates(metrics, cfg)

    evaluation = Evaluation(
        model_ref=model_ref,
        gold_id=gold_version.id,
        mode=runtime["mode"],
        n_rows=len(gold),
        metrics=metrics,
        seconds=runtime["seconds"],
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
            model=model_ref,
            gold=gold_version.id,
            **{k: metrics[k] for k in HEADLINE[task.type] if k in metrics},
        )
    comparison = _must_beat(project, evaluation, cfg, console)
    if comparison is not None:
        with project.store.session() as s:
            row = s.get(Evaluation, evaluation.id)
            row.metrics = {**row.metrics, "must_beat": comparison}
            evaluation = row
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
