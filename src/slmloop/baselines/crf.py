"""Extraction baseline: the CRF tagger for span fields, TF-IDF + logistic regression for the rest.

Span fields (most training values occur verbatim in the input) are tagged by the CRF tagger
(:mod:`slmloop.predict.tagger`); every other field (an intent, a normalised value) gets its
own classifier that predicts its value, or its absence, from the whole input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmloop.manifest import TaskConfig
from slmloop.predict.answers import ModelAnswer
from slmloop.predict.tagger import SPAN_SHARE, SpanTagger, decode_spans, span_fields
from slmloop.predict.tasks import input_text

__all__ = ["fit_crf"]

Predict = Callable[[list[dict[str, Any]]], list[ModelAnswer]]
ABSENT = "\x00absent"


def fit_crf(
    task: TaskConfig, train: list[dict[str, Any]], cache_dir: Path | None = None
) -> tuple[Predict, dict[str, Any]]:
    from sklearn.pipeline import make_pipeline

    from slmloop.baselines.text import tfidf_features

    shares = span_fields(task, train)
    spans = {f for f, share in shares.items() if share >= SPAN_SHARE}
    others = sorted(set(shares) - spans)
    texts = [input_text(task, r) for r in train]
    crf = SpanTagger.fit(task, train, spans, cache_dir) if spans else None
    classifiers: dict[str, Any] = {}
    for f in others:
        labels = [json.dumps(r["output"][f], sort_keys=True) if f in r["output"] else ABSENT for r in train]
        if len(set(labels)) == 1:
            classifiers[f] = labels[0]
            continue
        from sklearn.linear_model import LogisticRegression

        model = make_pipeline(tfidf_features(), LogisticRegression(C=20.0, max_iter=2000))
        model.fit(texts, labels)
        classifiers[f] = model

    def predict(rows: list[dict[str, Any]]) -> list[ModelAnswer]:
        inputs = [input_text(task, r) for r in rows]
        objs: list[dict[str, Any]] = [{} for _ in rows]
        if crf is not None:
            for obj, text, (toks, tags) in zip(objs, inputs, crf.tag(inputs), strict=True):
                for f, values in decode_spans(text, toks, tags).items():
                    obj[f] = values[0] if len(values) == 1 else values
        for f, model in classifiers.items():
            guesses = [model] * len(rows) if isinstance(model, str) else model.predict(inputs)
            for obj, g in zip(objs, guesses, strict=True):
                if g != ABSENT:
                    obj[f] = json.loads(g)
        return [ModelAnswer(json.dumps(o, ensure_ascii=False), json.dumps(o, ensure_ascii=False)) for o in objs]

    info = {"span_fields": sorted(spans), "other_fields": others, "span_share": shares}
    return predict, info
