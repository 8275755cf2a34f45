"""The companion index a run ships beside its adapter, and the priors fit after training.

    build_companion()    index the training split (the shortlist's neighbours) and fit the label
                         prior; every split's rows get their hints (training rows: without themselves)
    own_label_probs()    the trained classifier's own label probabilities on the validation split (one pass)
    choose_prior()       weigh the label prior on them (0: dropped)
    choose_abstention()  calibrate a classifier's answered scores and choose its abstention threshold
    choose_spans()       fit the span prior (a CRF tagger) and its judge on the validation split
    companion_summary()  what the hints hold and how often they point the right way

The index is :class:`slmloop.predict.companion.Companion`; evaluation, serving and the parity
check read it back from the adapter folder and ask the model with the same hints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from slmloop.data.versions import DatasetSplits
from slmloop.manifest import EvalConfig, TaskConfig
from slmloop.predict.answers import answer_rows, fuse_prior
from slmloop.predict.companion import Companion, LabelPrior
from slmloop.predict.constrain import decoding_schema
from slmloop.predict.engines import LocalEngine
from slmloop.predict.tasks import Hints
from slmloop.progress import status

__all__ = [
    "PRIOR_VALIDATION_ROWS",
    "build_companion",
    "choose_abstention",
    "choose_prior",
    "choose_spans",
    "companion_summary",
    "own_label_probs",
]

#: validation rows the label prior's weight and the span prior's judge are chosen on (at most)
PRIOR_VALIDATION_ROWS = 1000


def build_companion(
    task: TaskConfig, splits: DatasetSplits, k: int, *, prior: bool, cache_dir: Path
) -> tuple[Companion | None, dict[str, list[Hints]]]:
    """Index the training split and give every split's rows their hints (training rows: without themselves).

    ``k``: shortlist labels (or extraction examples) a row reads; ``prior``: a classifier's index also
    fits the label prior (its weight, 0 until training has ended, is chosen by :func:`choose_prior`).
    Returns the index (None: nothing to index) and the hints by split name.
    """
    prior = prior and task.type == "classification" and len({r["label"] for r in splits.train}) > 1
    if not k and not prior:
        return None, {}
    companion = Companion.build(task, splits.train, k, cache_dir=cache_dir)
    if prior:
        companion.prior = LabelPrior.fit(companion.vectors, companion.labels)
    hints = {
        "train": companion.hints(task, splits.train, leave_out_self=True, cache_dir=cache_dir),
        "validation": companion.hints(task, splits.validation, cache_dir=cache_dir),
        "gold": companion.hints(task, splits.gold, cache_dir=cache_dir),
    }
    return companion, hints


def _own_answers(
    model: Any,
    tok: Any,
    task: TaskConfig,
    prompt: str,
    mode: str,
    rows: list[dict[str, Any]],
    hints: list[Hints] | None,
    cfg: EvalConfig,
) -> list[Any]:
    """The trained model's own answers to ``rows`` (no prior), as evaluation will ask them."""
    model.eval()
    try:
        return answer_rows(
            task,
            prompt,
            mode,
            LocalEngine(model, tok),
            rows,
            hints,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            margin=cfg.rank_margin,
            schema=decoding_schema(task, cfg),
        )
    finally:
        model.train()


def own_label_probs(
    model: Any,
    tok: Any,
    task: TaskConfig,
    prompt: str,
    rows: list[dict[str, Any]],
    hints: list[Hints] | None,
    cfg: EvalConfig,
    *,
    console: Console,
) -> list[dict[str, float]]:
    """The trained classifier's own label probabilities for validation ``rows`` (ranked as evaluation ranks,
    without the prior): the one pass the label prior's weight and the abstention threshold are chosen on."""
    with status(console, f"ranking the labels of {len(rows)} validation rows …"):
        return [a.scores["probs"] for a in _own_answers(model, tok, task, prompt, "rank", rows, hints, cfg)]


def choose_prior(
    companion: Companion | None,
    probs: list[dict[str, float]],
    task: TaskConfig,
    rows: list[dict[str, Any]],
    *,
    cache_dir: Path,
) -> dict[str, Any] | None:
    """Weigh the label prior on validation ``rows`` (``probs``: the model's own label probabilities,
    :func:`own_label_probs`), times the prior's to the power of each of PRIOR_WEIGHTS; the weight right most
    often wins (0: the prior is dropped from ``companion``)."""
    from slmloop.models.embedder import embed
    from slmloop.predict.tasks import input_text

    prior = companion.prior if companion is not None else None
    if companion is None or prior is None or not rows:
        return None
    vectors = embed([input_text(task, r) for r in rows], cache_dir=cache_dir)
    choice = prior.choose_weight(probs, vectors, [str(r["label"]) for r in rows])
    if not prior.weight:
        companion.prior = None
    return choice


def choose_abstention(
    companion: Companion | None,
    probs: list[dict[str, float]],
    task: TaskConfig,
    rows: list[dict[str, Any]],
    *,
    cache_dir: Path,
    console: Console,
) -> tuple[Companion | None, dict[str, Any] | None]:
    """Calibrate the classifier's answered scores and choose its abstention threshold on validation ``rows``
    (:mod:`slmloop.predict.abstain`), after the label prior was weighed: the model's own label probabilities
    (``probs``) times the prior as it ships, as evaluation will answer. Returns the companion that ships (made
    when the run had none) and the choice."""
    from slmloop.predict.abstain import fit_abstention

    if task.abstain is None or task.out_of_scope is None or not rows:
        return companion, None
    companion = companion if companion is not None else Companion.empty()
    companion.abstain = None
    hints = companion.hints(task, rows, cache_dir=cache_dir)
    answered = [fuse_prior(p, h.prior) if h.prior else p for p, h in zip(probs, hints, strict=True)]
    rule, choice = fit_abstention(task, answered, [str(r["label"]) for r in rows])
    companion.abstain = rule
    recall = "" if choice["oos_recall"] is None else f", catches {choice['oos_recall']:.1%} of out-of-scope rows"
    console.print(
        f"abstention: below confidence {rule.threshold:.3f} (temperature {rule.temperature:.2f}) answers "
        f"{task.out_of_scope!r}; on validation in-scope accuracy {choice['in_scope_accuracy']:.3f} "
        f"(closed world {choice['closed_world_accuracy']:.3f}){recall}"
    )
    return companion, choice


def choose_spans(
    companion: Companion | None,
    model: Any,
    tok: Any,
    task: TaskConfig,
    prompt: str,
    train: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    hints: list[Hints] | None,
    cfg: EvalConfig,
    *,
    cache_dir: Path,
    console: Console,
) -> tuple[Companion | None, dict[str, Any] | None]:
    """Fit the span prior (an extractor's CRF tagger, on ``train``) and its judge on validation ``rows``.

    The model answers the validation rows once; the judge (:mod:`slmloop.predict.spans`) is fit on the
    values the model and the tagger give there. When its cross-validated micro-F1 does not beat the model
    alone the tagger is not shipped. Returns the companion that ships (made when the run had none) and
    the choice.
    """
    from slmloop.models.loading import render_prompt
    from slmloop.predict.parsing import parse_json_object
    from slmloop.predict.spans import SpanPrior
    from slmloop.predict.tasks import answers_inline, prompt_messages

    started = time.perf_counter()
    with status(console, "fitting the span prior (a CRF tagger) on the training split …"):
        prior = SpanPrior.fit(task, train, cache_dir=cache_dir)
    if prior is None:
        return companion, {"fields": 0, "note": "no field's values are spans of the input"}
    with status(console, f"weighing the span prior on {len(rows)} validation rows …"):
        answers = _own_answers(model, tok, task, prompt, "generate", rows, hints, cfg)
        marks = None
        if answers_inline(task):  # the judge also reads the model's probability of marking each value
            shown = hints if hints is not None else [None] * len(rows)
            prompts = [
                render_prompt(tok, prompt_messages(task, r, prompt, h)) for r, h in zip(rows, shown, strict=True)
            ]
            marks = LocalEngine(model, tok).mark_scorer(prompts, cfg.batch_size)
        model.eval()
        try:
            choice = prior.choose_judge(task, rows, [parse_json_object(a.raw) for a in answers], marks)
        finally:
            model.train()
    choice.update({"fields": len(prior.tagger.fields), "seconds": round(time.perf_counter() - started, 1)})
    if prior.judge.active:
        companion = companion if companion is not None else Companion.empty()
        companion.spans = prior
    return companion, choice


def companion_summary(
    companion: Companion | None,
    task: TaskConfig,
    splits: DatasetSplits,
    hints: dict[str, list[Hints]],
    prior_choice: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """What the rows' shortlists hold: size, index rows, and how often they point the right way.

    Classification: how often the true label is on the shortlist (``*_recall``). Extraction: how
    often the nearest example's answer has the row's own fields (``*_same_fields``).
    """
    from slmloop.predict.parsing import parse_json_object
    from slmloop.predict.tasks import answer_json

    if companion is None or not companion.labels:  # no index (an empty one carries only a span prior)
        return None

    def recall(rows: list[dict[str, Any]], shown: list[Hints]) -> float | None:
        hits = [str(r["label"]) in h.shortlist for r, h in zip(rows, shown, strict=True)]
        return sum(hits) / len(hits) if hits else None

    def same_fields(rows: list[dict[str, Any]], shown: list[Hints]) -> float | None:
        def fields(obj: Any) -> set[str]:
            return set(obj) if isinstance(obj, dict) else set()

        def example_fields(example: tuple[str, str]) -> set[str]:  # an inline example answer marks its fields
            text, answer = example
            return fields(parse_json_object(answer_json(task, {"text": text}, answer)))

        hits = [
            bool(h.examples) and example_fields(h.examples[0]) == fields(r["output"])
            for r, h in zip(rows, shown, strict=True)
        ]
        return sum(hits) / len(hits) if hits else None

    out: dict[str, Any] = {
        "k": companion.k,
        "prior": prior_choice,
        "prior_classes": len(companion.prior.classes) if companion.prior is not None else 0,
        "kind": "examples" if companion.examples else "labels",
        "index_rows": len(companion.labels),
        "embedder": companion.embedder,
    }
    for split, rows in (("train", splits.train), ("validation", splits.validation)):
        if not companion.k:
            continue
        if companion.examples:
            out[f"{split}_same_fields"] = same_fields(rows, hints[split])
        else:
            out[f"{split}_recall"] = recall(rows, hints[split])
    return out
