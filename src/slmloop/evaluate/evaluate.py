"""``slmloop eval``: score one model on the frozen gold set, keep every prediction, judge the gates.

answer     the model's answers to every gold row: a local model (base, run, release) in the
           prompt style it was trained with, a cheap baseline fitted on the training split, or
           an OpenAI-compatible endpoint; the leakage gate stands in front of trained models
score      per-row scores → every metric of the task with a bootstrap CI (one registry)
subsets    the headline metrics on gold rows with / without a close training neighbour
judge      optional LLM-as-judge
gates      thresholds, must-beat, and "not significantly worse than the best baseline"
store      the evaluation and every prediction, then the HTML report
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from slmloop.data.leakage import leakage_gate, nearest_neighbours
from slmloop.data.versions import current_gold_rows, dataset_task, load_dataset, resolve_dataset
from slmloop.errors import ConfigError
from slmloop.evaluate.paired import compare_pair
from slmloop.evaluate.results import latest_evaluations
from slmloop.evaluate.scoring import score_answers
from slmloop.evaluate.stats import bootstrap_ci, wilson_ci
from slmloop.manifest import EvalConfig, TaskConfig
from slmloop.metrics import HEADLINE, METRICS, RowScores, summarize
from slmloop.predict.answers import ModelAnswer, answer_rows, is_correct, resolve_mode
from slmloop.predict.constrain import decoding_schema
from slmloop.predict.engines import LocalEngine
from slmloop.predict.parsing import parse_json_object
from slmloop.predict.tasks import Hints, answers_inline, input_text, parse_prediction, prompt_messages, target_text
from slmloop.progress import LineProgress, progress, status
from slmloop.project import Project
from slmloop.store import Evaluation, GoldVersion, Prediction

__all__ = [
    "Answered",
    "answer_gold",
    "evaluate",
    "failed_gates",
    "neighbour_subsets",
    "progress_bar",
    "stored_or_new",
]


@dataclass
class Answered:
    """One model's answers to the gold rows, and what they were asked with."""

    model_ref: str
    task: TaskConfig
    prompt: str  # the prompt style, or "none" (a baseline reads the raw input)
    answers: list[ModelAnswer]
    runtime: dict[str, Any]
    leakage: dict[str, Any] = field(default_factory=dict)
    #: the rows the model learned from (neighbour subsets); None for external models
    train_rows: list[dict[str, Any]] | None = None
    dataset_id: str | None = None
    #: a fine-tuned model against the base on the forgetting pack (eval.forgetting)
    forgetting: dict[str, Any] | None = None


def progress_bar(console: Console, label: str) -> Progress | LineProgress:
    """Progress of answering gold rows: a bar on a terminal, a line every interval in a log."""
    return progress(console, f"eval {label}")


def _timing(seconds: float, n: int, cfg: EvalConfig, mode: str) -> dict[str, Any]:
    per_row = seconds / max(n, 1)
    return {
        "seconds": seconds,
        "rows_per_s": n / seconds if seconds else 0.0,
        "seconds_per_row": per_row,
        "cost_per_1k_requests": per_row * 1000 / 3600 * cfg.local_cost_per_hour,
        "mode": mode,
    }


# ---------------------------------------------------------------------------------------------
# answer: a local model, a baseline, or an endpoint
# ---------------------------------------------------------------------------------------------
def _answer_local(
    project: Project,
    ref: str,
    gold: list[dict[str, Any]],
    cfg: EvalConfig,
    allow_leakage: bool,
    console: Console,
    engine: str = "transformers",
) -> Answered:
    from slmloop.models.loading import pick_dtype
    from slmloop.predict.targets import load_engine, resolve_target

    target = resolve_target(project, ref)
    task = target.answering_task(project)
    lineage = target.run or target.release
    leakage: dict[str, Any] = {"checked": [], "leaks": 0, "overridden": False}
    train_rows, dataset_id = None, None
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
        train_rows, dataset_id = trained_on.train + trained_on.validation, trained_on.version.id
    mode = resolve_mode(task, cfg.mode)
    answering = load_engine(target, engine, pick_dtype(cfg.precision))
    tok = answering.tokenizer
    started = time.perf_counter()
    companion = target.companion()
    hints = None
    if companion is not None:  # the model reads its shortlist after the request: part of the timed work
        hints = companion.hints(task, gold, cache_dir=project.home / "cache" / "embeddings")
    style = target.prompt
    if companion is not None and companion.k:
        style += f" + {companion.k} example(s)" if companion.examples else f" + shortlist of {companion.k}"
    prior = companion.prior if companion is not None and mode == "rank" else None
    if prior is not None:
        style += f" · label prior x{prior.weight:g}"
    spans = companion.active_spans if companion is not None and mode == "generate" else None
    if answers_inline(task):
        style += " · inline answers"
    if spans is not None:
        style += " · span prior"
    abstain = companion.abstain if companion is not None and mode == "rank" else None
    if abstain is not None:
        style += f" · abstains below {abstain.threshold:.2f}"
    model_ref = target.ref if engine == "transformers" else f"{target.ref}@{engine}"
    try:
        with progress_bar(console, f"{model_ref} ({mode}, {style} prompt)") as progress:
            bar = progress.add_task("eval", total=len(gold))
            answers = answer_rows(
                task,
                target.prompt,
                mode,
                answering,
                gold,
                hints,
                batch_size=cfg.batch_size,
                max_new_tokens=cfg.max_new_tokens,
                margin=cfg.rank_margin,
                progress=lambda n: progress.update(bar, advance=n),
                schema=decoding_schema(task, cfg),
            )
    finally:
        answering.close()
    runtime = _timing(time.perf_counter() - started, len(gold), cfg, mode)
    runtime["engine"] = engine
    runtime["prompt_tokens_per_row"] = _prompt_tokens(tok, task, target.prompt, gold, hints)
    if task.type == "extraction":
        runtime["answer"] = "inline" if answers_inline(task) else "json"
    if companion is not None:
        runtime["shortlist"] = companion.k
    if prior is not None:  # how the model would have done on its own, beside the prior's product
        runtime["label_prior"] = prior.weight
        alone = [a.scores.get("model_label", a.prediction) for a in answers]
        runtime["model_alone_accuracy"] = sum(x == str(r["label"]) for x, r in zip(alone, gold, strict=True)) / max(
            len(gold), 1
        )
    if abstain is not None:  # when it says "none of these"
        runtime["abstain"] = {
            "label": abstain.label,
            "temperature": abstain.temperature,
            "threshold": abstain.threshold,
        }
    if spans is not None:  # the model on its own, beside the fused answers
        runtime["span_prior"] = spans.judge.summary()
        alone = [a.scores.get("model_answer", a.raw) for a in answers]
        runtime["model_alone_micro_f1"] = score_answers(task, gold, alone, alone).metric("micro_f1")
    forgetting = None
    if cfg.forgetting is not None and target.adapter is not None and isinstance(answering, LocalEngine):
        from slmloop.evaluate.forgetting import forgetting_check

        forgetting = forgetting_check(project, answering.model, tok, cfg.forgetting, pick_dtype(cfg.precision), console)
    answered = Answered(model_ref, task, target.prompt, answers, runtime, leakage, train_rows, dataset_id)
    answered.forgetting = forgetting
    return answered


def _prompt_tokens(
    tok: Any, task: TaskConfig, style: str, rows: list[dict[str, Any]], hints: list[Hints] | None = None
) -> float:
    from slmloop.models.loading import render_prompt

    sample = rows[:200]
    if not sample:
        return 0.0
    shown = hints[:200] if hints is not None else [None] * len(sample)
    lengths = tok(
        [render_prompt(tok, prompt_messages(task, r, style, h)) for r, h in zip(sample, shown, strict=True)],
        add_special_tokens=False,
    )
    return float(np.mean([len(x) for x in lengths["input_ids"]]))


def _answer_baseline(
    project: Project, name: str, gold: list[dict[str, Any]], cfg: EvalConfig, dataset_id: str | None
) -> Answered:
    """A cheap baseline fit on the training split of ``dataset_id`` (default: the current dataset version)."""
    from slmloop.baselines import fit_baseline
    from slmloop.data.leakage import project_embedder

    data = load_dataset(project, dataset_id)
    task = dataset_task(project, data.version)
    fitted = fit_baseline(
        name, task, data.train, project_embedder(project), project.home / "cache", validation=data.validation
    )
    started = time.perf_counter()
    answers = fitted.predict(gold)
    runtime = _timing(time.perf_counter() - started, len(gold), cfg, "baseline")
    runtime.update({"fit_seconds": fitted.fit_seconds, "fitted_on": data.version.id, "train_rows": len(data.train)})
    runtime["baseline"] = fitted.info
    return Answered(f"baseline:{name}", task, "none", answers, runtime, {}, data.train, data.version.id)


def _answer_endpoint(
    project: Project, name: str, gold: list[dict[str, Any]], cfg: EvalConfig, console: Console, transport: Any
) -> Answered:
    from slmloop.models.endpoint import Endpoint

    task = project.task
    endpoint = Endpoint.declared(cfg.endpoints, name, transport)
    spec = endpoint.cfg
    started = time.perf_counter()
    try:
        with progress_bar(console, f"endpoint:{name}") as progress:
            bar = progress.add_task("eval", total=len(gold))
            replies = endpoint.ask_many(
                [prompt_messages(task, r, spec.prompt) for r in gold],
                cfg.max_new_tokens,
                progress=lambda n: progress.update(bar, advance=n),
            )
    finally:
        endpoint.close()
    seconds = time.perf_counter() - started
    usage = ("latency_s", "prompt_tokens", "completion_tokens", "attempts")
    answers = [
        ModelAnswer(
            parse_prediction(task, a.text),
            a.text,
            {k: getattr(a, k) for k in usage} | ({"logprobs": a.logprobs} if a.logprobs is not None else {}),
        )
        for a in replies
    ]
    lat = np.array([a.latency_s for a in replies])
    tokens_in = sum(a.prompt_tokens for a in replies)
    tokens_out = sum(a.completion_tokens for a in replies)
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
        "retries": sum(a.attempts - 1 for a in replies),
    }
    leakage = {"checked": [], "leaks": 0, "overridden": False, "note": "external model"}
    return Answered(f"endpoint:{name}", task, spec.prompt, answers, runtime, leakage)


def _answer_live(project: Project, url: str, gold: list[dict[str, Any]], console: Console) -> Answered:
    """The gold rows sent to a running ``slmloop serve`` (``/v1/predict``): what live users get now."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    key = os.environ.get(project.manifest.serve.api_keys_env, "").split(",")[0].strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    task = project.task
    started = time.perf_counter()
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120) as http:
        try:
            health = http.get("/health").json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ConfigError(f"no slmloop server answers at {url}: {exc}", hint="Start it: slmloop serve.") from None

        def ask(row: dict[str, Any]) -> ModelAnswer:
            text = row.get("text", row.get("input", ""))
            r = http.post("/v1/predict", json={"text": text})
            if r.status_code != 200:
                return ModelAnswer("", r.text[:500], {"status": r.status_code})
            body = r.json()
            if task.type == "classification":
                return ModelAnswer(body.get("label") or "", body.get("raw") or body.get("label") or "", {})
            raw = body.get("raw") if task.type == "extraction" else body.get("output")
            return ModelAnswer(parse_prediction(task, str(raw or "")), str(raw or ""), {})

        with progress_bar(console, f"live {url}") as progress, ThreadPoolExecutor(max_workers=16) as pool:
            bar = progress.add_task("live", total=len(gold))
            answers = []
            for a in pool.map(ask, gold):
                answers.append(a)
                progress.update(bar, advance=1)
    seconds = time.perf_counter() - started
    runtime = {
        "seconds": seconds,
        "rows_per_s": len(gold) / seconds if seconds else 0.0,
        "mode": "served",
        "served": health,
    }
    leakage = {"checked": [], "leaks": 0, "overridden": False, "note": "a running server"}
    return Answered(f"live:{health.get('model', url)}", task, "served", answers, runtime, leakage)


def answer_gold(
    project: Project,
    ref: str,
    gold: list[dict[str, Any]],
    cfg: EvalConfig,
    *,
    allow_leakage: bool = False,
    console: Console | None = None,
    transport: Any = None,
    dataset_id: str | None = None,
    engine: str = "transformers",
) -> Answered:
    """``ref``'s answers to the gold rows; a baseline is fit on ``dataset_id`` (default: the current version).
    ``engine``: what answers for a run or release (``llamacpp``: a release's GGUF file, as it is served)."""
    if engine != "transformers" and ref.split(":", 1)[0] in ("endpoint", "live", "baseline"):
        raise ConfigError(f"--engine {engine} answers for a release, not {ref}", hint="Name a release: --model vN.")
    console = console or Console(stderr=True)
    if ref.startswith("endpoint:"):
        return _answer_endpoint(project, ref.split(":", 1)[1], gold, cfg, console, transport)
    if ref.startswith("live:"):
        return _answer_live(project, ref.split(":", 1)[1], gold, console)
    if ref.startswith("baseline:"):
        with status(console, f"fitting {ref} on the training split …"):
            return _answer_baseline(project, ref.split(":", 1)[1], gold, cfg, dataset_id)
    return _answer_local(project, ref, gold, cfg, allow_leakage, console, engine)


# ---------------------------------------------------------------------------------------------
# score: metrics with CIs, and the neighbour subsets
# ---------------------------------------------------------------------------------------------
#: a classifier with an out-of-scope label is also reported on these (with their CIs)
OUT_OF_SCOPE_METRICS = ("in_scope_accuracy", "oos_recall", "oos_precision", "oos_auroc")


def _wanted(task: TaskConfig, cfg: EvalConfig, scored: list[str] | None = None) -> list[str]:
    extra = [m for m in OUT_OF_SCOPE_METRICS if scored is not None and m in scored]
    return list(dict.fromkeys([*HEADLINE[task.type], *extra, *cfg.metrics, *(g.metric for g in cfg.gates)]))


def _intervals(scores: RowScores, names: list[str], cfg: EvalConfig, idx: np.ndarray | None = None) -> dict[str, Any]:
    rows = np.arange(scores.n) if idx is None else idx
    out: dict[str, Any] = {}
    for m in names:
        if m not in scores.names or not len(rows):
            continue

        if METRICS[m].per_row is not None:  # a rate: the Wilson interval (never a point at 0 or 1)
            out[m] = list(wilson_ci(int(scores.hits(m)[rows].sum()), len(rows), cfg.confidence))
            continue

        def metric(i: np.ndarray, m: str = m) -> float:
            return scores.metric(m, rows[i])

        out[m] = list(bootstrap_ci(metric, len(rows), resamples=cfg.bootstrap, confidence=cfg.confidence))
    return out


def neighbour_subsets(
    scores: RowScores, sims: np.ndarray, threshold: float, names: list[str], cfg: EvalConfig
) -> dict[str, Any]:
    """``names`` with CIs on gold rows without / with a training input at cosine ≥ ``threshold``."""
    close = sims >= threshold
    out: dict[str, Any] = {"threshold": threshold, "close_share": float(close.mean()) if len(close) else 0.0}
    for key, mask in (("no_close_neighbour", ~close), ("close_neighbour", close)):
        idx = np.flatnonzero(mask)
        out[key] = {"n": len(idx), **{m: scores.metric(m, idx) for m in names if len(idx)}}
        out[key]["ci"] = _intervals(scores, names, cfg, idx)
    return out


def _neighbour_subsets(
    project: Project, answered: Answered, gold: list[dict[str, Any]], scores: RowScores, cfg: EvalConfig
) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """Headline metrics on gold rows with / without a close training neighbour (MiniLM cosine)."""
    leak_cfg = project.manifest.data.leakage
    if leak_cfg.semantic == "off" or not answered.train_rows:
        return None, None
    from slmloop.data.prepare import is_synthetic

    task = answered.task
    sims, nearest = nearest_neighbours(
        project, [input_text(task, r) for r in gold], [input_text(task, r) for r in answered.train_rows]
    )
    names = list(HEADLINE[task.type])
    out = neighbour_subsets(scores, sims, leak_cfg.semantic_threshold, names, cfg)
    out["dataset"] = answered.dataset_id
    synthetic = np.array([is_synthetic(answered.train_rows[j]) for j in nearest], dtype=bool)
    if any(is_synthetic(r) for r in answered.train_rows):  # did generated rows help the gold rows near them?
        out["nearest_synthetic"] = {"share": float(synthetic.mean())}
        for key, mask in (("real_neighbour", ~synthetic), ("synthetic_neighbour", synthetic)):
            idx = np.flatnonzero(mask)
            part = {"n": len(idx), **{m: scores.metric(m, idx) for m in names if len(idx)}}
            out["nearest_synthetic"][key] = {**part, "ci": _intervals(scores, names, cfg, idx)}
    return out, sims


# ---------------------------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------------------------
def _judge(
    project: Project,
    task: TaskConfig,
    gold: list[dict[str, Any]],
    answers: list[ModelAnswer],
    cfg: EvalConfig,
    console: Console,
    transport: Any = None,
) -> dict[str, Any]:
    """LLM-as-judge: every answer scored 1-5 against the reference under the stored rubric."""
    from slmloop.models.endpoint import Endpoint

    assert cfg.judge is not None
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
                        "answer": a.raw,
                    },
                    ensure_ascii=False,
                ),
            },
        ]
        for r, a in zip(gold, answers, strict=True)
    ]
    try:
        with progress_bar(console, f"judge:{cfg.judge.endpoint}") as progress:
            bar = progress.add_task("judge", total=len(gold))
            replies = endpoint.ask_many(convs, 128, progress=lambda n: progress.update(bar, advance=n))
    finally:
        endpoint.close()
    scores = []
    for a, reply in zip(answers, replies, strict=True):
        verdict = parse_json_object(reply.text) or {}
        score = verdict.get("score")
        score = float(score) if isinstance(score, int | float) and 1 <= score <= 5 else math.nan
        a.scores["judge"] = {
            "score": None if math.isnan(score) else score,
            "reason": str(verdict.get("reason", ""))[:300],
        }
        scores.append(score)
    return {
        "endpoint": cfg.judge.endpoint,
        "model": cfg.endpoints[cfg.judge.endpoint].model,
        "rubric": cfg.judge.rubric,
        "unparseable": sum(math.isnan(s) for s in scores),
        "scores": scores,
    }


# ---------------------------------------------------------------------------------------------
# gates and decisions
# ---------------------------------------------------------------------------------------------
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


def failed_gates(evaluation: Evaluation, cfg: EvalConfig | None = None) -> list[str]:
    """Required gates, a required must-beat and a required baseline comparison this evaluation failed.

    With ``cfg`` the threshold gates are judged again under that configuration (the
    gates in slmloop.yaml now, which may be stricter than when the evaluation ran);
    the paired comparisons stay as they were measured.
    """
    m = evaluation.metrics
    gates = _gates(m, cfg) if cfg is not None else m.get("gates", [])
    failed = [
        f"{g['metric']} {'>=' if g['op'] == 'gte' else '<='} {g['threshold']}"
        + (f" (is {g['value']:.4f})" if isinstance(g.get("value"), int | float) else "")
        for g in gates
        if g["required"] and not g["passed"]
    ]
    cmp = m.get("must_beat")
    if cmp and cmp.get("required") and cmp.get("verdict") != "better":
        failed.append(f"must beat {cmp['against']} ({cmp['verdict']})")
    base = m.get("vs_baseline")
    if base and base.get("required") and base.get("verdict") == "worse":
        failed.append(f"significantly worse than {base['against']}")
    forgot = m.get("forgetting")
    if forgot and forgot.get("required") and not forgot.get("passed"):
        failed.append("forgetting: " + "; ".join(forgot["problems"]))
    return failed


def _comparison_record(c: Any, against: str, required: bool, **extra: Any) -> dict[str, Any]:
    return {
        "against": against,
        "evaluation": c.a.name,
        "metric": c.metric,
        "against_value": c.a_value,
        "value": c.b_value,
        "diff": c.test.diff,
        "ci": list(c.test.ci),
        "p_value": c.test.p_value,
        "test": c.test.test,
        "verdict": c.verdict,
        "required": required,
        "sentence": c.sentence,
        **extra,
    }


def stored_or_new(
    project: Project, ref: str, gold_id: str, cfg: EvalConfig, console: Console, dataset_id: str | None = None
) -> Evaluation:
    """The newest stored evaluation of ``ref`` on ``gold_id``, or a new one. A baseline's counts only when it was
    fit on ``dataset_id`` (default: the current dataset version): the data of the model it is compared with."""
    if ref.startswith("baseline:"):
        dataset_id = dataset_id or resolve_dataset(project).id
    found = next((e for e in latest_evaluations(project, gold_id, dataset_id) if e.model_ref == ref), None)
    if found is not None:
        return found
    console.print(f"[dim]evaluating {ref} on the same gold rows …[/dim]")
    plain = cfg.model_copy(update={"gates": [], "judge": None, "compare": type(cfg.compare)(baseline="none")})
    return evaluate(project, ref, pack=plain, console=console, dataset_id=dataset_id)


def _must_beat(project: Project, evaluation: Evaluation, cfg: EvalConfig, console: Console) -> dict[str, Any] | None:
    rule = cfg.compare
    if rule.must_beat == "none":
        return None
    if rule.must_beat == "production":
        version = project.store.alias_target("production")
        if version is None:
            return {"against": "production", "verdict": "no production release", "required": False}
        against = f"release-{version}"
    else:
        against = "base"
    if evaluation.model_ref == against:
        return None
    other = stored_or_new(project, against, evaluation.gold_id, cfg, console)
    c = compare_pair(project, other, evaluation, cfg=cfg)
    return _comparison_record(c, against, rule.required, min_effect=rule.min_effect, alpha=rule.alpha)


def _vs_baseline(project: Project, evaluation: Evaluation, cfg: EvalConfig, console: Console) -> dict[str, Any] | None:
    """The fine-tuned model against the best (or the named) cheap baseline, paired on the same rows."""
    from slmloop.baselines import baselines_for

    rule = cfg.compare
    if rule.baseline == "none" or not evaluation.model_ref.startswith(("run-", "release-")):
        return None
    task = project.task
    names = baselines_for(task) if rule.baseline == "best" else [rule.baseline]
    if not names:
        return None
    headline = HEADLINE[task.type][0]
    data = evaluation.dataset_id  # the baselines learn from the data the model learned from
    candidates = [stored_or_new(project, f"baseline:{n}", evaluation.gold_id, cfg, console, data) for n in names]
    best = max(candidates, key=lambda e: e.metrics.get(headline, -math.inf))
    c = compare_pair(project, best, evaluation, headline, cfg)
    # the gate: not *significantly worse*; beating the baseline is reported, not required
    return _comparison_record(c, best.model_ref, rule.baseline_required, rule=rule.baseline)


# ---------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------
def _store(
    project: Project,
    answered: Answered,
    gold_version: GoldVersion,
    gold: list[dict[str, Any]],
    metrics: dict[str, Any],
    sims: np.ndarray | None,
) -> Evaluation:
    task = answered.task
    evaluation = Evaluation(
        model_ref=answered.model_ref,
        gold_id=gold_version.id,
        mode=answered.runtime["mode"],
        n_rows=len(gold),
        metrics=metrics,
        seconds=answered.runtime["seconds"],
        dataset_id=answered.dataset_id,
    )
    with project.store.session() as s:
        s.add(evaluation)
        s.flush()
        for i, (row, a) in enumerate(zip(gold, answered.answers, strict=True)):
            scores = dict(a.scores)
            if sims is not None:
                scores["neighbour_cos"] = round(float(sims[i]), 4)
            s.add(
                Prediction(
                    evaluation_id=evaluation.id,
                    idx=i,
                    input=input_text(task, row),
                    reference=target_text(task, row),
                    prediction=a.prediction,
                    raw=a.raw,
                    correct=is_correct(task, row, a),
                    scores=scores,
                )
            )
        project.store.log_event(
            s,
            "eval",
            f"eval-{evaluation.id}",
            model=answered.model_ref,
            gold=gold_version.id,
            **{k: metrics[k] for k in HEADLINE[task.type] if k in metrics},
        )
    return evaluation


def _decide(project: Project, evaluation: Evaluation, cfg: EvalConfig, console: Console) -> Evaluation:
    extra = {}
    beat = _must_beat(project, evaluation, cfg, console)
    if beat is not None:
        extra["must_beat"] = beat
    vs = _vs_baseline(project, evaluation, cfg, console)
    if vs is not None:
        extra["vs_baseline"] = vs
    if not extra:
        return evaluation
    with project.store.session() as s:
        row = project.store.one(s, Evaluation, evaluation.id)
        row.metrics = {**row.metrics, **extra}
        return row


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def evaluate(
    project: Project,
    ref: str = "base",
    *,
    pack: EvalConfig | None = None,
    allow_leakage: bool = False,
    console: Console | None = None,
    transport: Any = None,
    dataset_id: str | None = None,
    engine: str = "transformers",
) -> Evaluation:
    """Score ``ref`` on the current gold version, store every prediction, judge the gates. A baseline is fit on
    ``dataset_id`` (default: the current dataset version). ``engine`` ``llamacpp`` scores a release as
    ``slmloop serve --engine llamacpp`` answers (stored as ``release-N@llamacpp``)."""
    console = console or Console(stderr=True)
    cfg = pack or project.manifest.eval
    gold_version, gold = current_gold_rows(project)
    answered = answer_gold(
        project,
        ref,
        gold,
        cfg,
        allow_leakage=allow_leakage,
        console=console,
        transport=transport,
        dataset_id=dataset_id,
        engine=engine,
    )
    task = answered.task
    scores = score_answers(
        task,
        gold,
        [a.prediction for a in answered.answers],
        [a.raw for a in answered.answers],
        regex=cfg.checks.regex,
        json_schema=cfg.checks.json_schema,
        confidence=[a.scores.get("confidence") for a in answered.answers],
    )
    judge = None
    if cfg.judge is not None:
        judge = _judge(project, task, gold, answered.answers, cfg, console, transport)
        scores = scores.with_judge(judge.pop("scores"))
    metrics = summarize(scores)
    metrics["ci"] = _intervals(scores, _wanted(task, cfg, scores.names), cfg)
    subsets, sims = _neighbour_subsets(project, answered, gold, scores, cfg)
    if subsets is not None:
        metrics["subsets"] = subsets
    if judge is not None:
        metrics["judge"] = judge
    if answered.forgetting is not None:
        metrics["forgetting"] = answered.forgetting
    metrics.update(
        {
            "confidence": cfg.confidence,
            "task": task.model_dump(),
            "prompt": answered.prompt,
            "runtime": answered.runtime,
            "leakage": answered.leakage,
            "rows_per_s": answered.runtime["rows_per_s"],
        }
    )
    metrics["gates"] = _gates(metrics, cfg)
    evaluation = _store(project, answered, gold_version, gold, metrics, sims)
    evaluation = _decide(project, evaluation, cfg, console)
    from slmloop.evaluate.report import write_eval_report

    write_eval_report(project, evaluation)
    return evaluation
