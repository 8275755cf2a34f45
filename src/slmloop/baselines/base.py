"""Which baselines a task has, and fitting one by name."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmloop.errors import ConfigError, DataError
from slmloop.manifest import TaskConfig
from slmloop.predict.answers import ModelAnswer

__all__ = ["BASELINES", "FittedBaseline", "baselines_for", "fit_baseline"]

Embed = Callable[[list[str]], Any]

#: baseline name -> task types it answers
BASELINES: dict[str, tuple[str, ...]] = {
    "tfidf-lr": ("classification",),
    "minilm-lr": ("classification",),
    "crf": ("extraction",),
    "knn": ("extraction", "generation", "chat"),
}


@dataclass
class FittedBaseline:
    name: str
    fit_seconds: float
    predict: Callable[[list[dict[str, Any]]], list[ModelAnswer]]
    #: what the fit learned, for the evaluation record (e.g. which fields the CRF tags as spans)
    info: dict[str, Any]


def baselines_for(task: TaskConfig) -> list[str]:
    return [name for name, types in BASELINES.items() if task.type in types]


def fit_baseline(
    name: str,
    task: TaskConfig,
    train: list[dict[str, Any]],
    embed: Embed,
    cache_dir: Path | None = None,
    validation: list[dict[str, Any]] | None = None,
) -> FittedBaseline:
    """Fit baseline ``name`` on ``train`` rows. ``embed`` maps texts to unit vectors (MiniLM); ``cache_dir``
    (a project's ``cache/``) keeps fitted CRF taggers (the span prior reuses the one fit on the same rows).

    A classifier with ``task.abstain`` abstains like a fine-tuned one: its probabilities are calibrated and
    thresholded by the same rule on ``validation`` rows (:func:`abstaining`), so comparisons stay fair."""
    if name not in BASELINES:
        raise ConfigError(f"no baseline named {name!r}", hint=f"Baselines: {', '.join(BASELINES)}.")
    if task.type not in BASELINES[name]:
        raise ConfigError(
            f"baseline {name!r} does not answer {task.type} tasks",
            hint=f"For {task.type}: {', '.join(baselines_for(task)) or 'none'}.",
        )
    if not train:
        raise DataError("the dataset version has no training rows", hint="Run `slmloop data prepare`.")
    from slmloop.baselines.crf import fit_crf  # scikit-learn and crfsuite load when a baseline is fit
    from slmloop.baselines.text import fit_embedding_lr, fit_nearest, fit_tfidf_lr

    started = time.perf_counter()
    if name == "tfidf-lr":
        predict, info = fit_tfidf_lr(task, train)
    elif name == "minilm-lr":
        predict, info = fit_embedding_lr(task, train, embed)
    elif name == "crf":
        predict, info = fit_crf(task, train, cache_dir)
    else:
        predict, info = fit_nearest(task, train, embed)
    if task.type == "classification" and task.abstain is not None and name in ("tfidf-lr", "minilm-lr"):
        predict, info["abstain"] = abstaining(task, predict, validation or [])
    return FittedBaseline(name, time.perf_counter() - started, predict, info)


def abstaining(
    task: TaskConfig, predict: Callable[[list[dict[str, Any]]], list[ModelAnswer]], validation: list[dict[str, Any]]
) -> tuple[Callable[[list[dict[str, Any]]], list[ModelAnswer]], dict[str, Any]]:
    """``predict`` (answers with label probabilities) made to abstain: temperature and threshold chosen on
    ``validation`` by the rule a fine-tuned classifier's are (:mod:`slmloop.predict.abstain`)."""
    from slmloop.predict.abstain import fit_abstention

    said = predict(validation) if validation else []
    rule, choice = fit_abstention(task, [a.scores["probs"] for a in said], [str(r["label"]) for r in validation])

    def answer(rows: list[dict[str, Any]]) -> list[ModelAnswer]:
        out = []
        for a in predict(rows):
            abstained, confidence = rule.decide(a.scores["probs"])
            scores = {**a.scores, "confidence": confidence}
            if abstained:
                scores |= {"abstained": True, "answered_label": a.prediction}
                out.append(ModelAnswer(rule.label, rule.label, scores))
            else:
                out.append(ModelAnswer(a.prediction, a.raw, scores))
        return out

    return answer, choice
