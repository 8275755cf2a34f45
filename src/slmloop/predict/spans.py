"""The span prior: a CRF tagger's reading of a request, weighed against a fine-tuned extractor's answer.

The extraction analogue of the label prior (:class:`slmloop.predict.companion.LabelPrior`). A fine-tuned
extractor and a CRF tagger (the ``crf`` baseline's, fit on the same training split) make different
mistakes: the values both give are mostly right, and together they give more of the gold values than
either alone (measured on HWU64 slots: docs/training.md, "The span prior"). After the model answers,
every value either of them gives is weighed by a **judge**, a logistic regression over what is known of
the value (:data:`FEATURES`): who gives it (the model, the tagger, both), the tagger's probability that
exactly those tokens form a value of that field (from its marginals: the first token begins it, the
others continue it, the next one does not), the probability of the most likely value overlapping it, its
length in words, and for an extractor that answers inline, the model's own probability of marking it
there. The tagger's other likely readings (a span whose probability is at least :data:`ALTERNATIVE_P`, a
field or boundaries its best reading did not choose) are weighed as well. The answer is the values the
judge rates at ``threshold`` or more, the likeliest first, leaving out any that overlaps one already
taken.

A value of a field that is not a span field (an intent, a normalised value) is the model's alone.
The judge is fit after training on the validation split, where the model answers once
(:meth:`SpanPrior.choose_judge`): its threshold and its estimated micro-F1 come from 5-fold
cross-validation over those rows (repeated :data:`CV_REPEATS` times), and it is used only when that
estimate beats the model alone;
otherwise the tagger is not shipped.

Whoever asks the model gives each row the tagger's reading (``Hints.spans``, see
:meth:`slmloop.predict.companion.Companion.hints`); the answering code
(:func:`slmloop.predict.answers.answer_rows`) fuses it with the generated answer. Evaluation,
serving and the export parity check all answer through it, and every answer keeps the model's
own (``scores["model_answer"]``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from slmloop.manifest import TaskConfig
from slmloop.predict.inline import find_span
from slmloop.predict.parsing import norm_value, parse_json_object, value_pairs
from slmloop.predict.tagger import SPAN_SHARE, SpanTagger, decode_spans, span_fields
from slmloop.predict.tasks import Hints, answer_json, answers_inline, input_text

__all__ = ["FEATURES", "THRESHOLDS", "MarkScorer", "SpanJudge", "SpanPrior", "fuse_spans", "mark_rows", "mark_scores"]

#: what the judge knows of a value (see :func:`_features`)
FEATURES = (
    "model",  # the model gives it
    "tagger",  # the tagger gives it
    "both",
    "p",  # the tagger's probability of the value's span (0 where it is no span of the request)
    "log_p",
    "is_span",  # the value is a span of the request
    "rival_p",  # the highest such probability of another value overlapping it
    "model_p",
    "tagger_p",
    "model_rival_p",
    "words",  # its length in words, up to 5, over 5
    # an extractor that answers inline: the model's own probability of marking the value where it occurs
    # ("[field: value]" written at that place of the request; see mark_scores)
    "mark_p",
    "mark_log_p",
    "unmarked",  # 1 where the model's probability is not known (a JSON answer, a value that is no span)
)
#: the judge's thresholds tried (on cross-validated probabilities)
THRESHOLDS = tuple(round(0.1 + 0.05 * i, 2) for i in range(13))
#: validation rows the judge needs at least (fewer: the model alone)
MIN_JUDGE_ROWS = 20
#: the judge's bias where every value it learns from is right (or wrong): keep them all (or none)
CERTAIN = 10.0
#: marginals below this are not kept in a reading (they count as 0)
MIN_MARGINAL = 1e-3
#: a mark's log-probability is read down to this (a value the model would never mark)
MARK_FLOOR = -20.0
#: the tagger's other readings are weighed too where their span's probability is at least this
ALTERNATIVE_P = 0.1
#: repeats of the judge's 5-fold cross-validation (other folds each time), averaged to choose its threshold
CV_REPEATS = 3

#: the model's scorer of marks: (row indices, the request's text before each mark, the marks) -> summed
#: log-probabilities of each mark after its row's prompt and text (see :func:`mark_scores`)
MarkScorer = Callable[[list[int], list[str], list[str]], list[float]]


@dataclass(frozen=True)
class SpanJudge:
    """P(a value is right) = sigmoid(weights . features + bias); values at ``threshold`` or more are kept.

    No weights: the model alone (the tagger changes nothing).
    """

    weights: tuple[float, ...] = ()
    bias: float = 0.0
    threshold: float = 0.5
    #: the tagger's other readings it weighs: spans of at least this probability (0: none, a judge fit
    #: before they were weighed)
    alternative_p: float = 0.0

    @property
    def active(self) -> bool:
        """Whether the judge can change an answer."""
        return bool(self.weights)

    def as_list(self) -> list[float]:
        return [self.bias, self.threshold, *self.weights]

    @classmethod
    def from_list(cls, values: list[float]) -> SpanJudge:
        return cls(tuple(float(v) for v in values[2:]), float(values[0]), float(values[1]))

    @property
    def reads_marks(self) -> bool:
        """Whether the judge weighs the model's probability of each value's mark (:func:`mark_scores`)."""
        i = FEATURES.index("mark_p")
        return any(w != 0.0 for w in self.weights[i : i + 2])

    def summary(self) -> dict[str, Any]:
        """For records: the threshold and each feature's weight."""
        return {
            "threshold": self.threshold,
            "bias": round(self.bias, 4),
            "weights": {n: round(w, 4) for n, w in zip(FEATURES, self.weights, strict=False)},
            "alternative_p": self.alternative_p,
        }

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        # a judge saved before later features existed reads the ones it knows
        weights = np.asarray(self.weights)
        return 1.0 / (1.0 + np.exp(-(features[:, : len(weights)] @ weights + self.bias)))


@dataclass
class SpanPrior:
    tagger: SpanTagger
    judge: SpanJudge = SpanJudge()

    @classmethod
    def fit(cls, task: TaskConfig, train: list[dict[str, Any]], cache_dir: Path | None = None) -> SpanPrior | None:
        """The tagger over ``train``'s span fields (None: no field's values are spans of the input); the
        ``crf`` baseline's, read from ``cache_dir`` (a project's ``cache/``) when it was fit on the same rows."""
        fields = {f for f, share in span_fields(task, train).items() if share >= SPAN_SHARE}
        return cls(SpanTagger.fit(task, train, fields, cache_dir)) if fields else None

    def readings(self, texts: list[str]) -> list[dict[str, Any]]:
        """What :func:`fuse_spans` needs of each text: tokens, tags, marginals, the span fields and the judge."""
        return [
            {
                "judge": self.judge.as_list(),
                "alternative_p": self.judge.alternative_p,
                "fields": self.tagger.fields,
                "tokens": [[a, b] for _, a, b in toks],
                "tags": tags,
                "marginals": marginals,
            }
            for toks, tags, marginals in self.tagger.read(texts, MIN_MARGINAL)
        ]

    def choose_judge(
        self,
        task: TaskConfig,
        rows: list[dict[str, Any]],
        answers: list[dict[str, Any] | None],
        marks: MarkScorer | None = None,
    ) -> dict[str, Any]:
        """Fit the judge on ``rows`` (validation rows, the model's own ``answers``); keep it when its
        cross-validated micro-F1 beats the model alone's. Sets :attr:`judge` and returns what was measured.

        ``marks``: the model's scorer of marks (an extractor that answers inline), see :func:`mark_scores`."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import KFold

        texts = [input_text(task, r) for r in rows]
        readings = self.readings(texts)
        if marks is not None:
            readings = mark_scores(texts, answers, readings, marks, ALTERNATIVE_P)
        cands = [
            _candidates(t, a, reading, ALTERNATIVE_P) for t, a, reading in zip(texts, answers, readings, strict=True)
        ]
        truth = [value_pairs(r["output"]) for r in rows]
        alone = _micro_f1([_select(c, SpanJudge()) for c in cands], truth)
        judged = [[c for c in cs if c["judged"]] for cs in cands]
        x = [_matrix(cs) for cs in judged]
        y = [np.array([(c["field"], c["norm"]) in want for c in cs]) for cs, want in zip(judged, truth, strict=True)]
        record: dict[str, Any] = {"model_alone_micro_f1": alone, "rows": len(rows), "values": sum(map(len, y))}
        self.judge = SpanJudge()
        if len(rows) < MIN_JUDGE_ROWS:
            return record | {"judge": None, "micro_f1": alone, "note": f"fewer than {MIN_JUDGE_ROWS} validation rows"}

        def fit(index: list[int] | np.ndarray) -> SpanJudge:
            xs, ys = np.concatenate([x[i] for i in index]), np.concatenate([y[i] for i in index])
            if ys.all() or not ys.any():  # one kind of value only: keep all, or none
                return SpanJudge((0.0,) * len(FEATURES), CERTAIN if ys.all() else -CERTAIN)
            lr = LogisticRegression(C=1.0, max_iter=2000).fit(xs, ys)
            return SpanJudge(tuple(float(w) for w in lr.coef_[0]), float(lr.intercept_[0]))

        # micro-F1 at each threshold, each row judged by a judge fit without it; averaged over repeats with
        # other folds, and the threshold chosen on that curve smoothed over its neighbours: one split's luck
        # moves the chosen threshold more than the judge's quality (docs/training.md, "The span prior")
        curves = []
        for repeat in range(CV_REPEATS):
            held_out: list[np.ndarray] = [np.zeros(0)] * len(rows)
            for inside, outside in KFold(5, shuffle=True, random_state=repeat).split(np.arange(len(rows))):
                judge = fit(inside)
                for i in outside:
                    held_out[i] = judge.probabilities(x[i])
            curves.append(
                [_micro_f1([_pick(c, p, t) for c, p in zip(cands, held_out, strict=True)], truth) for t in THRESHOLDS]
            )
        scores = np.mean(curves, axis=0)
        smooth = np.convolve(np.pad(scores, 1, mode="edge"), np.full(3, 1 / 3), mode="valid")
        best = int(np.argmax(smooth))  # argmax keeps the first of equals
        if scores[best] <= alone:
            return record | {"judge": None, "micro_f1": alone, "cross_validated_micro_f1": float(scores[best])}
        judge = fit(np.arange(len(rows)))
        self.judge = SpanJudge(judge.weights, judge.bias, THRESHOLDS[best], ALTERNATIVE_P)
        return record | {"judge": self.judge.summary(), "micro_f1": float(scores[best])}


def _micro_f1(answers: list[list[tuple[str, str, Any]]], truth: list[Counter[tuple[str, str]]]) -> float:
    tp = fp = fn = 0
    for answer, want in zip(answers, truth, strict=True):
        got = Counter((f, n) for f, n, _ in answer)
        tp += sum((got & want).values())
        fp += sum((got - want).values())
        fn += sum((want - got).values())
    return 2 * tp / max(2 * tp + fp + fn, 1)


# one value of an answer: its field, normalised value, the value as given, who gives it, its span, the
# tagger's probability of that span (None: not a span of the request), whether the judge weighs it (the
# fields the tagger tags) and what the judge knows of it
_Cand = dict[str, Any]


def _candidates(
    text: str, answer: dict[str, Any] | None, reading: dict[str, Any], alternative_p: float | None = None
) -> list[_Cand]:
    """Every value the model or the tagger gives, and the tagger's other readings of at least
    ``alternative_p`` (None: the reading's), with what the judge knows of each."""
    toks = [(text[a:b], a, b) for a, b in reading["tokens"]]
    fields = set(reading["fields"])
    marginals = reading["marginals"]
    marks = reading.get("marks") or {}
    if alternative_p is None:
        alternative_p = reading.get("alternative_p", 0.0)
    out: dict[tuple[str, str], _Cand] = {}

    def add(f: str, value: Any, source: str | None) -> None:
        key = (f, norm_value(value))
        c = out.setdefault(key, {"field": f, "norm": key[1], "value": value, "model": False, "tagger": False})
        if source is not None:
            c[source] = True

    for f, v in (answer or {}).items():
        for item in v if isinstance(v, list) else [v]:
            if item is not None and item != "":
                add(f, item, "model")
    for f, values in decode_spans(text, toks, list(reading["tags"])).items():
        for v in values:
            add(f, v, "tagger")
    if alternative_p:
        for f, v in _alternatives(text, reading, alternative_p):
            add(f, v, None)
    for c in out.values():
        c["judged"] = c["field"] in fields
        span = find_span(toks, c["norm"], set()) if c["judged"] and isinstance(c["value"], str) else None
        c["span"], c["p"] = span, None
        if span is not None:
            a, b = span
            p = marginals[a].get(f"B-{c['field']}", 0.0)
            for i in range(a + 1, b):
                p *= marginals[i].get(f"I-{c['field']}", 0.0)
            if b < len(marginals):  # and the value ends there
                p *= 1.0 - marginals[b].get(f"I-{c['field']}", 0.0)
            c["p"] = p
        c["mark"] = marks.get(_mark_key(c)) if c["span"] is not None else None
    cands = list(out.values())
    for c in cands:
        c["x"] = _features(c, cands)
    return cands


def _alternatives(text: str, reading: dict[str, Any], p_min: float) -> list[tuple[str, str]]:
    """``(field, value)`` of every span of ``text`` whose probability under the tagger's marginals (it
    begins there, continues, and ends) is at least ``p_min``, most likely or not."""
    spans, marginals = reading["tokens"], reading["marginals"]
    out = []
    for f in reading["fields"]:
        begin, inside = f"B-{f}", f"I-{f}"
        for a in range(len(spans)):
            p = marginals[a].get(begin, 0.0)
            for b in range(a + 1, len(spans) + 1):  # the span [a, b)
                if p < p_min:
                    break
                goes_on = marginals[b].get(inside, 0.0) if b < len(spans) else 0.0
                if p * (1.0 - goes_on) >= p_min:
                    out.append((f, text[spans[a][0] : spans[b - 1][1]]))
                p *= goes_on
    return out


def _mark_key(c: _Cand) -> str:
    return f"{c['field']}\t{c['norm']}"


def _features(c: _Cand, cands: list[_Cand]) -> list[float]:
    """:data:`FEATURES` of candidate ``c`` among ``cands``."""
    p = c["p"] or 0.0
    rival = 0.0
    if c["span"] is not None:
        a, b = c["span"]
        rival = max(
            (
                k["p"] or 0.0
                for k in cands
                if k is not c and k["span"] is not None and k["span"][0] < b and a < k["span"][1]
            ),
            default=0.0,
        )
    m, t = float(c["model"]), float(c["tagger"])
    words = min(len(str(c["norm"]).split()), 5) / 5
    seen = [m, t, m * t, p, math.log(p + 1e-4), float(c["span"] is not None), rival, m * p, t * p, m * rival, words]
    mark = c.get("mark")
    marked = [0.0, 0.0, 1.0] if mark is None else [math.exp(mark), max(mark, MARK_FLOOR) / -MARK_FLOOR, 0.0]
    return [*seen, *marked]


def _select(cands: list[_Cand], judge: SpanJudge) -> list[tuple[str, str, Any]]:
    """``(field, normalised value, value)`` of the fused answer, in the order the candidates came (the
    model's values first)."""
    if not judge.active:
        return [(c["field"], c["norm"], c["value"]) for c in cands if c["model"]]
    judged = [c for c in cands if c["judged"]]
    return _pick(cands, judge.probabilities(_matrix(judged)), judge.threshold)


def _matrix(cands: list[_Cand]) -> np.ndarray:
    return np.array([c["x"] for c in cands], dtype=float).reshape(len(cands), len(FEATURES))


def _pick(cands: list[_Cand], probs: np.ndarray, threshold: float) -> list[tuple[str, str, Any]]:
    """The judged candidates whose probability (``probs``, in their order) is at least ``threshold``, the
    likeliest first, leaving out one that overlaps a value already taken; and the model's other values."""
    judged = [c for c in cands if c["judged"]]
    taken: list[_Cand] = []
    for i in sorted(range(len(judged)), key=lambda i: -probs[i]):  # sorted is stable: ties keep their order
        c = judged[i]
        if probs[i] < threshold:
            break
        if c["span"] is not None and any(
            k["span"] is not None and k["span"][0] < c["span"][1] and c["span"][0] < k["span"][1] for k in taken
        ):
            continue
        taken.append(c)
    kept = {id(c) for c in taken}
    return [(c["field"], c["norm"], c["value"]) for c in cands if id(c) in kept or (c["model"] and not c["judged"])]


def mark_scores(
    texts: list[str],
    answers: list[dict[str, Any] | None],
    readings: list[dict[str, Any]],
    score: MarkScorer,
    alternative_p: float | None = None,
) -> list[dict[str, Any]]:
    """``readings`` with the model's log-probability of marking each value the model or the tagger gives
    where it occurs (``reading["marks"]``), for an extractor that answers inline (:mod:`slmloop.predict.inline`).

    A value at characters ``[a, b)`` of the request is scored as the continuation ``" [field: value]"``
    of the request's text up to ``a`` (its trailing space moved into the continuation, so the tokens are
    those of the marked answer), one pass for every value of every row: ``score(index, prefix, mark)``
    gets the row's index, the text before the mark and the mark, and returns the summed log-probabilities.
    The model is asked about a value the tagger alone gives as much as about its own, which is what
    tells the judge whether to believe the tagger; and about the tagger's other likely readings where
    they are weighed (``alternative_p``, see :func:`_candidates`).
    """
    where: list[tuple[int, str]] = []
    rows: list[int] = []
    prefixes: list[str] = []
    continuations: list[str] = []
    for i, (text, answer, reading) in enumerate(zip(texts, answers, readings, strict=True)):
        for c in _candidates(text, answer, reading, alternative_p):
            if not c["judged"] or c["span"] is None:
                continue
            a = reading["tokens"][c["span"][0]][0]
            before = text[:a].rstrip()
            rows.append(i)
            prefixes.append(before)
            continuations.append(f"{text[len(before) : a]}[{c['field']}: {c['value']}]")
            where.append((i, _mark_key(c)))
    scores = score(rows, prefixes, continuations) if rows else []
    out = [{**reading, "marks": {}} for reading in readings]
    for (i, key), logp in zip(where, scores, strict=True):
        out[i]["marks"][key] = float(logp)
    return out


def mark_rows(
    task: TaskConfig, rows: list[dict[str, Any]], hints: list[Hints], said: list[str], score: MarkScorer | None
) -> list[Hints]:
    """``hints`` whose span reading's judge weighs marks, with the model's marks scored (:func:`mark_scores`)
    for what it ``said`` (its own text per row); the others as they are. ``score`` None: the engine cannot
    score marks, and the judge reads them as unknown."""
    todo = [
        i
        for i, h in enumerate(hints)
        if answers_inline(task) and h.spans and SpanJudge.from_list(h.spans["judge"]).reads_marks
    ]
    if not todo or score is None:
        return hints

    def scored(index: list[int], prefixes: list[str], marks: list[str]) -> list[float]:
        return score([todo[i] for i in index], prefixes, marks)

    texts = [input_text(task, rows[i]) for i in todo]
    answers = [parse_json_object(answer_json(task, rows[i], said[i])) for i in todo]
    readings = mark_scores(texts, answers, [hints[i].spans or {} for i in todo], scored)
    out = list(hints)
    for i, reading in zip(todo, readings, strict=True):
        out[i] = replace(hints[i], spans=reading)
    return out


def fuse_spans(text: str, answer: dict[str, Any] | None, reading: dict[str, Any]) -> dict[str, Any]:
    """The model's ``answer`` with the tagger's ``reading`` of ``text`` weighed in (see the module)."""
    judge = SpanJudge.from_list(reading["judge"])
    out: dict[str, Any] = {}
    for f, _, value in _select(_candidates(text, answer, reading), judge):
        if f in out:
            out[f] = [*out[f], value] if isinstance(out[f], list) else [out[f], value]
        else:
            out[f] = value
    # fields the model gave that hold no value (None, "", []) stay as given
    for f, v in (answer or {}).items():
        if f not in out and not [x for x in (v if isinstance(v, list) else [v]) if x is not None and x != ""]:
            out[f] = v
    return out
