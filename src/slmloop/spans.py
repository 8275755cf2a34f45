"""The span prior: a CRF tagger's reading of a request, weighed against a fine-tuned extractor's answer.

The extraction analogue of the label prior (:class:`slmloop.shortlist.LabelPrior`). A fine-tuned
extractor and a CRF tagger (the ``crf`` baseline's, fit on the same training split) make different
mistakes: on HWU64 slots, 94 % of the values both give are right, and one or the other gives 79 %
of the gold values. The tagger's marginals say how sure it is of each span, so after the model
answers, every value is weighed:

- a value of the model's that the tagger gives less than ``keep`` (the probability that exactly
  those tokens form a value of that field, from the tagger's marginals: the first token begins it,
  the others continue it, the next one does not) is dropped; one the tagger gives too always stays;
- a value only the tagger gives, with a probability of at least ``add``, is added, unless it
  overlaps values of the model's, which it replaces only when its probability exceeds theirs by
  more than ``prefer``.

A value that is not a span of the request (a normalised date, an intent) is the model's alone.
The rule is chosen on the validation split after training (:meth:`SpanPrior.choose_rule`), among
a grid whose first point is the model alone (``keep`` 0, ``add`` above 1): the tagger changes
answers only where that measured better, and is not shipped otherwise.

Whoever asks the model annotates the row with the tagger's reading (:data:`SPANS_KEY`, see
:meth:`SpanPrior.annotate`); the answering code (:func:`slmloop.evaluate.answers.answer_rows`)
fuses it with the generated answer. Evaluation, serving and the export parity check do the same,
and every answer keeps the model's own (``scores["model_answer"]``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmloop.baselines.crf import SPAN_SHARE, SpanTagger, decode_spans, find_span, span_fields
from slmloop.evaluate.metrics import norm_value, value_pairs
from slmloop.manifest import TaskConfig
from slmloop.tasks import SPANS_KEY, input_text

__all__ = ["ADD_GRID", "KEEP_GRID", "PREFER_GRID", "SpanPrior", "SpanRule", "fuse_spans"]

#: a model value the tagger gives less than this is dropped (0: none is)
KEEP_GRID = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
#: a value only the tagger gives is added from this probability (above 1: never)
ADD_GRID = (1.01, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
#: a tagger's value replaces overlapping model values when its probability exceeds theirs by more than this
PREFER_GRID = (1.0, 0.5, 0.25, 0.0)
#: marginals below this are not kept in a reading (they count as 0)
MIN_MARGINAL = 1e-3


@dataclass(frozen=True)
class SpanRule:
    keep: float = 0.0
    add: float = 1.01
    prefer: float = 1.0

    @property
    def active(self) -> bool:
        """Whether the rule can change an answer (the first grid point leaves the model alone)."""
        return self.keep > 0 or self.add <= 1.0

    def as_list(self) -> list[float]:
        return [self.keep, self.add, self.prefer]


@dataclass
class SpanPrior:
    tagger: SpanTagger
    rule: SpanRule = SpanRule()

    @classmethod
    def fit(cls, task: TaskConfig, train: list[dict[str, Any]], cache_dir: Path | None = None) -> SpanPrior | None:
        """The tagger over ``train``'s span fields (None: no field's values are spans of the input); the
        ``crf`` baseline's, read from ``cache_dir`` when it was fit on the same rows."""
        fields = {f for f, share in span_fields(task, train).items() if share >= SPAN_SHARE}
        return cls(SpanTagger.fit(task, train, fields, cache_dir)) if fields else None

    def reading(self, text: str) -> dict[str, Any]:
        """What :func:`fuse_spans` needs of ``text``: tokens, tags, marginals, the span fields and the rule."""
        toks, tags, marginals = self.tagger.read(text, MIN_MARGINAL)
        return {
            "rule": self.rule.as_list(),
            "fields": self.tagger.fields,
            "tokens": [[a, b] for _, a, b in toks],
            "tags": tags,
            "marginals": marginals,
        }

    def annotate(self, task: TaskConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` (copied where needed) carrying their reading, when the rule is in use."""
        if not self.rule.active:
            return rows
        return [{**r, SPANS_KEY: self.reading(input_text(task, r))} for r in rows]

    def choose_rule(
        self, task: TaskConfig, rows: list[dict[str, Any]], answers: list[dict[str, Any] | None]
    ) -> dict[str, Any]:
        """The rule whose fused answers have the best micro-F1 on ``rows`` (the model's own ``answers``).

        The first best wins (the grid runs from the model alone towards more of the tagger). Sets
        :attr:`rule` and returns what was tried.
        """
        texts = [input_text(task, r) for r in rows]
        cands = [_candidates(t, a, self.reading(t)) for t, a in zip(texts, answers, strict=True)]
        truth = [value_pairs(r["output"]) for r in rows]
        tried: list[tuple[float, SpanRule]] = []
        for keep, add, prefer in itertools.product(KEEP_GRID, ADD_GRID, PREFER_GRID):
            rule = SpanRule(keep, add, prefer)
            if not rule.active and tried:
                continue
            tp = fp = fn = 0
            for c, want in zip(cands, truth, strict=True):
                got = Counter((f, n) for f, n, _ in _select(c, rule))
                tp += sum((got & want).values())
                fp += sum((got - want).values())
                fn += sum((want - got).values())
            tried.append((2 * tp / max(2 * tp + fp + fn, 1), rule))
        best = max(tried, key=lambda t: t[0])  # max keeps the first of equals
        self.rule = best[1]
        return {
            "rule": asdict(self.rule),
            "micro_f1": best[0],
            "model_alone_micro_f1": tried[0][0],
            "rules_tried": len(tried),
            "rows": len(rows),
        }


# one value of an answer: its field, normalised value, the value as given, who gives it, its span and the
# tagger's probability of that span (None: not a span of the request, or not a span field)
_Cand = dict[str, Any]


def _candidates(text: str, answer: dict[str, Any] | None, reading: dict[str, Any]) -> list[_Cand]:
    toks = [(text[a:b], a, b) for a, b in reading["tokens"]]
    fields = set(reading["fields"])
    marginals = reading["marginals"]
    out: dict[tuple[str, str], _Cand] = {}

    def add(f: str, value: Any, source: str) -> None:
        key = (f, norm_value(value))
        c = out.setdefault(key, {"field": f, "norm": key[1], "value": value, "model": False, "tagger": False})
        c[source] = True

    for f, v in (answer or {}).items():
        for item in v if isinstance(v, list) else [v]:
            if item is not None and item != "":
                add(f, item, "model")
    for f, values in decode_spans(text, toks, list(reading["tags"])).items():
        for v in values:
            add(f, v, "tagger")
    for c in out.values():
        span = find_span(toks, c["norm"], set()) if c["field"] in fields and isinstance(c["value"], str) else None
        c["span"], c["p"] = span, None
        if span is not None:
            a, b = span
            p = marginals[a].get(f"B-{c['field']}", 0.0)
            for i in range(a + 1, b):
                p *= marginals[i].get(f"I-{c['field']}", 0.0)
            if b < len(marginals):  # and the value ends there
                p *= 1.0 - marginals[b].get(f"I-{c['field']}", 0.0)
            c["p"] = p
    return list(out.values())


def _select(cands: list[_Cand], rule: SpanRule) -> list[tuple[str, str, Any]]:
    """``(field, normalised value, value)`` of the fused answer, the model's values first."""
    kept = [c for c in cands if c["model"] and (c["p"] is None or c["tagger"] or c["p"] >= rule.keep)]
    offered = sorted(
        (c for c in cands if not c["model"] and c["p"] is not None and c["p"] >= rule.add), key=lambda c: -c["p"]
    )
    for c in offered:
        a, b = c["span"]
        rivals = [k for k in kept if k["span"] is not None and k["span"][0] < b and a < k["span"][1]]
        if rivals and c["p"] <= max(k["p"] for k in rivals) + rule.prefer:
            continue
        kept = [k for k in kept if all(k is not r for r in rivals)] + [c]
    return [(c["field"], c["norm"], c["value"]) for c in kept]


def fuse_spans(text: str, answer: dict[str, Any] | None, reading: dict[str, Any]) -> dict[str, Any]:
    """The model's ``answer`` with the tagger's ``reading`` of ``text`` weighed in (see the module)."""
    rule = SpanRule(*reading["rule"])
    out: dict[str, Any] = {}
    for f, _, value in _select(_candidates(text, answer, reading), rule):
        if f in out:
            out[f] = [*out[f], value] if isinstance(out[f], list) else [out[f], value]
        else:
            out[f] = value
    # fields the model gave that hold no value (None, "", []) stay as given
    for f, v in (answer or {}).items():
        if f not in out and not [x for x in (v if isinstance(v, list) else [v]) if x is not None and x != ""]:
            out[f] = v
    return out
