"""The one answering path: a model's answers to task rows, ranked labels or generated text.

Evaluation, the training recipe's validation metric, the server's ``/v1/predict``, the export
parity check and label-issue finding all answer through :func:`answer_rows`, so a row is asked
the same way everywhere. What differs is the :class:`Engine` that turns prompts into text
(:mod:`slmloop.predict.engines`): a local transformers model, llama.cpp or an upstream
OpenAI-compatible server.

:func:`resolve_mode` is the one rule for how a task is answered: ``rank`` its labels
(classification) or ``generate`` text (everything else), unless ``eval.mode`` says otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from slmloop.errors import ConfigError, ModelError
from slmloop.manifest import TaskConfig
from slmloop.models.loading import render_prompt
from slmloop.predict.constrain import Spec, close_answer, inline_grammar
from slmloop.predict.parsing import parse_json_object, value_pairs
from slmloop.predict.tasks import (
    Hints,
    answer_json,
    answers_inline,
    input_text,
    parse_prediction,
    prompt_messages,
    target_text,
)

if TYPE_CHECKING:
    from slmloop.predict.companion import Companion
    from slmloop.predict.spans import MarkScorer

__all__ = [
    "MIN_PROB",
    "Engine",
    "ModelAnswer",
    "answer_rows",
    "fuse_prior",
    "generated_answer",
    "is_correct",
    "label_probabilities",
    "resolve_mode",
    "unsupported",
    "within_margin",
]

Progress = Callable[[int], None]
#: one generated answer: (text, new tokens, finish reason: "stop" or "length")
Completion = tuple[str, int, str]


def resolve_mode(task: TaskConfig, mode: str = "auto") -> Literal["rank", "generate"]:
    """How a model answers ``task``: ``eval.mode`` when it names one, else ``rank`` the labels of a
    classifier and ``generate`` the answer of every other task."""
    if mode == "auto":
        return "rank" if task.type == "classification" else "generate"
    if mode == "rank" and task.type != "classification":
        raise ConfigError(f"eval.mode rank needs a classification task, not {task.type}", hint="Use mode: auto.")
    if mode not in ("rank", "generate"):
        raise ConfigError(f"unknown eval.mode {mode!r}", hint="Use auto, rank or generate.")
    return "rank" if mode == "rank" else "generate"


class Engine(Protocol):
    """What turns prompts into answers. ``tokenizer`` is the model's own: it renders every prompt."""

    tokenizer: Any

    @property
    def can_rank(self) -> bool:
        """Whether :meth:`rank` scores labels (an engine without the model's logits generates them)."""
        ...

    def rank(
        self, prompts: list[str], labels: list[str], *, batch_size: int, margin: float | None, progress: Progress | None
    ) -> list[list[float | None]]:
        """log P(label | prompt) of every label, for every rendered prompt (None: pruned)."""
        ...

    def complete(
        self,
        conversations: list[list[dict[str, str]]],
        max_new_tokens: int | list[int],
        *,
        batch_size: int,
        json_object: bool = False,
        temperature: float | list[float] = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        stop: Callable[[int], bool] | None = None,
        grammars: Sequence[Spec] | None = None,
        progress: Progress | None = None,
    ) -> list[Completion]:
        """The answer to every conversation. ``max_new_tokens`` and ``temperature``: one for all, or one per
        conversation. ``json_object``: an extraction's JSON object (opened and stopped when it closes, where
        the engine can). ``stop(i)`` True: conversation ``i`` is no longer wanted (its client left); its work
        ends as soon as the engine can end it. ``grammars``: one per conversation, what its answer must follow
        (a JSON schema or a Lark grammar: constrained decoding, :mod:`slmloop.predict.constrain`)."""
        ...

    def close(self) -> None:
        """Free what the engine holds (a llama.cpp context, an upstream server it started)."""
        ...

    def mark_scorer(self, prompts: list[str], batch_size: int) -> MarkScorer | None:
        """How this engine scores an inline extractor's marks after rendered ``prompts`` (the span prior's
        judge reads them, see :func:`slmloop.predict.spans.mark_scores`); None where it cannot."""
        ...


def unsupported(
    task: TaskConfig, mode: str, companion: Companion | None, *, ranks: bool, scores_marks: bool
) -> list[str]:
    """What answering ``task`` in ``mode`` with ``companion`` asks of an engine that it cannot do, in words
    (empty: it gives the answers evaluation measured). ``ranks``: it scores labels; ``scores_marks``: it
    scores the tokens of a prompt (the span prior's judge reads an inline answer's marks by them)."""
    out = []
    if mode == "rank" and not ranks:
        prior = " times the label prior" if companion is not None and companion.active_prior is not None else ""
        out.append(f"rank the labels (this model answers with the most likely label{prior}, not generated text)")
    spans = companion.active_spans if companion is not None and task.type == "extraction" else None
    if spans is not None and answers_inline(task) and spans.judge.reads_marks and not scores_marks:
        out.append("score the model's marks for the span prior (it needs the log-probability of given text)")
    return out


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


def within_margin(logp: list[float | None], margin: float | None) -> list[float | None]:
    """``logp`` with every label more than ``margin`` nats below the best left unscored (None), whichever
    labels the engine happened to score that far down: every engine then ranks the same labels."""
    scored = [x for x in logp if x is not None]
    if margin is None or not scored:
        return logp
    bar = max(scored) - margin
    return [x if x is not None and x >= bar else None for x in logp]


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
    engine: Engine,
    rows: list[dict[str, Any]],
    hints: list[Hints] | None = None,
    *,
    batch_size: int,
    max_new_tokens: int,
    margin: float | None = 6.0,
    progress: Progress | None = None,
    schema: dict[str, Any] | None = None,
) -> list[ModelAnswer]:
    """The model's answer for every row (no reference needed), each asked with its ``hints``.

    ``mode`` rank: the most likely label (with probabilities, see
    :func:`~slmloop.models.inference.rank_labels` for ``margin``), times the row's label prior
    where it carries one (``scores["model_label"]`` keeps the model's own choice), or the out-of-scope
    label where the row carries an abstention and the model is unsure (``scores["abstained"]``,
    ``scores["confidence"]``, ``scores["answered_label"]``: :mod:`slmloop.predict.abstain`); generate: greedy text,
    parsed to the task's shape. An extraction answer is generated as a JSON object
    (it opens with ``{`` and ends when the object closes), whatever the model; where the row carries a
    span reading (:mod:`slmloop.predict.spans`) it is weighed in (``scores["model_answer"]`` keeps the model's own).
    ``schema`` (constrained decoding on, :mod:`slmloop.predict.constrain`): a JSON answer is decoded under it, and
    an inline answer under its request's grammar (the request's words, marked only with the task's fields).
    Labels more than ``margin`` nats below the best are left out on every engine (:func:`within_margin`).
    An engine that cannot give the answer evaluation measured (rank labels, score the span prior's marks) is
    refused (:class:`~slmloop.errors.ModelError`), never answered another way.
    """
    hints = hints if hints is not None else [Hints() for _ in rows]
    conversations = [prompt_messages(task, r, style, h) for r, h in zip(rows, hints, strict=True)]
    if mode == "rank":
        if not engine.can_rank:
            raise ModelError(
                f"this engine cannot rank labels, and {task.type} answers here are ranked labels",
                hint="Answer with the transformers or llamacpp engine, or set eval.mode: generate and evaluate again.",
            )
        labels = task.label_list
        prompts = [render_prompt(engine.tokenizer, m) for m in conversations]
        out = []
        ranked = engine.rank(prompts, labels, batch_size=batch_size, margin=margin, progress=progress)
        for h, logp in zip(hints, ranked, strict=True):
            probs = label_probabilities(labels, within_margin(logp, margin))
            scores: dict[str, Any] = {"probs": probs}
            if h.prior:
                scores = {"probs": fuse_prior(probs, h.prior), "model_label": next(iter(probs))}
            pred = next(iter(scores["probs"]))
            if h.abstain is not None:  # "none of these" when the answered score is too low
                abstained, scores["confidence"] = h.abstain.decide(scores["probs"])
                if abstained:
                    scores["abstained"], scores["answered_label"] = True, pred
                    pred = h.abstain.label
            out.append(ModelAnswer(pred, pred, scores))
        return out
    as_json = task.type == "extraction" and not answers_inline(task)
    grammars: list[Spec] | None = None
    if schema is not None and as_json:
        grammars = [schema] * len(rows)
    elif schema is not None and answers_inline(task):  # each request's own: its words, marked with the fields
        grammars = [inline_grammar(task.field_list, input_text(task, r)) for r in rows]
    said = engine.complete(
        conversations,
        max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        json_object=as_json,
        grammars=grammars,
    )
    if as_json and schema is not None:  # out of budget inside a value: the answer ends at its last complete field
        said = [
            ((close_answer(engine.tokenizer, schema, t) or t) if finish == "length" else t, n, finish)
            for t, n, finish in said
        ]
    if task.type == "extraction" and any(h.spans for h in hints):
        from slmloop.predict.spans import SpanJudge, mark_rows

        prompts = [render_prompt(engine.tokenizer, m) for m in conversations]
        scorer = engine.mark_scorer(prompts, batch_size)
        if scorer is None and any(
            answers_inline(task) and h.spans and SpanJudge.from_list(h.spans["judge"]).reads_marks for h in hints
        ):
            raise ModelError(
                "this engine cannot score the model's marks, and the span prior weighs them here",
                hint="Answer with the transformers or llamacpp engine.",
            )
        hints = mark_rows(task, rows, hints, [t for t, _, _ in said], scorer)
    return [generated_answer(task, r, t, n, h) for r, h, (t, n, _) in zip(rows, hints, said, strict=True)]


def generated_answer(
    task: TaskConfig, row: dict[str, Any], text: str, new_tokens: int, hints: Hints | None = None
) -> ModelAnswer:
    """A generated ``text`` as the answer to ``row``: parsed to the task's shape, an inline extraction
    answer turned into its JSON object (``scores["model_text"]``: what the model wrote), and an extraction's
    JSON weighed against the row's span reading where it carries one (``scores["model_answer"]``: the
    model's own JSON)."""
    scores: dict[str, Any] = {"new_tokens": new_tokens}
    if answers_inline(task):
        scores["model_text"] = text
        text = answer_json(task, row, text)
    if task.type == "extraction" and hints is not None and hints.spans:
        from slmloop.predict.spans import fuse_spans

        fused = json.dumps(fuse_spans(input_text(task, row), parse_json_object(text), hints.spans), ensure_ascii=False)
        return ModelAnswer(fused, fused, {**scores, "model_answer": text})
    return ModelAnswer(parse_prediction(task, text), text, scores)


def is_correct(task: TaskConfig, row: dict[str, Any], answer: ModelAnswer) -> bool:
    """Right or wrong as a whole: the label, the set of extracted values, the exact text."""
    if task.type == "extraction":
        obj = parse_json_object(answer.raw)
        return obj is not None and value_pairs(obj) == value_pairs(row["output"])
    return answer.prediction.strip() == target_text(task, row).strip()
