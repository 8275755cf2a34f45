"""A model's answers to task rows: ranked labels or generated text, in the prompt style it was trained with.

Evaluation, the training recipe's validation metric and the server's
``/v1/predict`` all answer through :func:`answer_rows`, so a row is asked the
same way everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slmloop.evaluate.metrics import parse_json_object, value_pairs
from slmloop.manifest import TaskConfig
from slmloop.models.inference import continuation_logprobs, generate, rank_labels
from slmloop.models.loading import render_prompt
from slmloop.tasks import (
    PRIOR_KEY,
    SPANS_KEY,
    answer_json,
    answers_inline,
    input_text,
    parse_prediction,
    prompt_messages,
    target_text,
)

if TYPE_CHECKING:
    from slmloop.spans import MarkScorer

__all__ = [
    "MIN_PROB",
    "ModelAnswer",
    "answer_rows",
    "fuse_prior",
    "generated_answer",
    "is_correct",
    "label_probabilities",
    "mark_scorer",
]

#: label probabilities below this are not kept with an answer (a 150-label table per row says little)
MIN_PROB = 1e-4


@dataclass
class ModelAnswer:
    prediction: str  # the task-shaped answer: a label, or the text
    raw: str  # what the model said
    scores: dict[str, Any] = field(default_factory=dict)


def label_probabilities(labels: list[str], logp: list[float | None]) -> dict[str, float]:
    """Softmax over the labels' log-probabilities (unscored labels count as 0), largest first."""
    scored = [(lab, x) for lab, x in zip(labels, logp, strict=True) if x is not None]
    top = max(x for _, x in scored)
    z = sum(math.exp(x - top) for _, x in scored)
    probs = {lab: math.exp(x - top) / z for lab, x in scored}
    return {lab: p for lab, p in sorted(probs.items(), key=lambda kv: -kv[1]) if p >= MIN_PROB}


def fuse_prior(probs: dict[str, float], prior: dict[str, float]) -> dict[str, float]:
    """The model's label probabilities times a prior's (``prior``: weighted log-probabilities), renormalised.

    Only the labels the model scored (``probs``) compete; one the prior does not know gets the prior's
    lowest value. Largest first, like :func:`label_probabilities`.
    """
    floor = min(prior.values()) if prior else 0.0
    scored = {lab: math.log(max(p, 1e-300)) + prior.get(lab, floor) for lab, p in probs.items()}
    top = max(scored.values())
    z = sum(math.exp(x - top) for x in scored.values())
    fused = {lab: math.exp(x - top) / z for lab, x in scored.items()}
    return dict(sorted(fused.items(), key=lambda kv: -kv[1]))


def answer_rows(
    task: TaskConfig,
    style: str,
    mode: str,
    model: Any,
    tok: Any,
    rows: list[dict[str, Any]],
    *,
    batch_size: int,
    max_new_tokens: int,
    margin: float | None = 6.0,
    progress: Callable[[int], None] | None = None,
) -> list[ModelAnswer]:
    """The model's answer for every row (no reference needed).

    ``mode`` rank: the most likely label (with probabilities, see
    :func:`~slmloop.models.inference.rank_labels` for ``margin``), times the row's label prior
    where it carries one (``scores["model_label"]`` keeps the model's own choice); generate: greedy text,
    parsed to the task's shape. An extraction answer is generated as a JSON object
    (it opens with ``{`` and ends when the object closes), whatever the model; where the row carries a
    span reading (:mod:`slmloop.spans`) it is weighed in (``scores["model_answer"]`` keeps the model's own).
    """
    prompts = [render_prompt(tok, prompt_messages(task, r, style)) for r in rows]
    if mode == "rank":
        labels = task.label_list
        out = []
        ranked = rank_labels(model, tok, prompts, labels, batch_size=batch_size, margin=margin, progress=progress)
        for row, logp in zip(rows, ranked, strict=True):
            probs = label_probabilities(labels, logp)
            scores: dict[str, Any] = {"probs": probs}
            if row.get(PRIOR_KEY):
                scores = {"probs": fuse_prior(probs, row[PRIOR_KEY]), "model_label": next(iter(probs))}
            pred = next(iter(scores["probs"]))
            out.append(ModelAnswer(pred, pred, scores))
        return out
    gens = generate(
        model,
        tok,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        json_object=task.type == "extraction" and not answers_inline(task),
    )
    if task.type == "extraction" and any(r.get(SPANS_KEY) for r in rows):
        from slmloop.spans import mark_rows

        rows = mark_rows(task, rows, [t for t, _ in gens], mark_scorer(model, tok, prompts, batch_size))
    return [generated_answer(task, row, text, n) for row, (text, n) in zip(rows, gens, strict=True)]


def mark_scorer(model: Any, tok: Any, prompts: list[str], batch_size: int) -> MarkScorer:
    """The model's scorer of marks (:func:`slmloop.spans.mark_scores`) for rows asked with ``prompts``."""

    def score(rows: list[int], prefixes: list[str], marks: list[str]) -> list[float]:
        heads = [prompts[i] + prefix for i, prefix in zip(rows, prefixes, strict=True)]
        return [lp for lp, _ in continuation_logprobs(model, tok, heads, marks, batch_size=batch_size)]

    return score


def generated_answer(task: TaskConfig, row: dict[str, Any], text: str, new_tokens: int) -> ModelAnswer:
    """A generated ``text`` as the answer to ``row``: parsed to the task's shape, an inline extraction
    answer turned into its JSON object (``scores["model_text"]``: what the model wrote), and an extraction's
    JSON weighed against the row's span reading where it carries one (``scores["model_answer"]``: the
    model's own JSON)."""
    scores: dict[str, Any] = {"new_tokens": new_tokens}
    if answers_inline(task):
        scores["model_text"] = text
        text = answer_json(task, row, text)
    if task.type == "extraction" and row.get(SPANS_KEY):
        from slmloop.spans import fuse_spans

        fused = json.dumps(
            fuse_spans(input_text(task, row), parse_json_object(text), row[SPANS_KEY]), ensure_ascii=False
        )
        return ModelAnswer(fused, fused, {**scores, "model_answer": text})
    return ModelAnswer(parse_prediction(task, text), text, scores)


def is_correct(task: TaskConfig, row: dict[str, Any], answer: ModelAnswer) -> bool:
    """Right or wrong as a whole: the label, the set of extracted values, the exact text."""
    if task.type == "extraction":
        obj = parse_json_object(answer.raw)
        return obj is not None and value_pairs(obj) == value_pairs(row["output"])
    return answer.prediction.strip() == target_text(task, row).strip()
