"""Text baselines: TF-IDF or sentence embeddings + logistic regression, and nearest neighbour."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from slmloop.manifest import TaskConfig
from slmloop.predict.answers import MIN_PROB, ModelAnswer
from slmloop.predict.tasks import input_text, target_text

__all__ = ["fit_embedding_lr", "fit_nearest", "fit_tfidf_lr", "logistic_regression", "tfidf_features"]

Predict = Callable[[list[dict[str, Any]]], list[ModelAnswer]]


def tfidf_features() -> Any:
    """Word 1-2-grams and character 2-5-grams inside word boundaries (robust to typos and inflections)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
        ]
    )


def logistic_regression(c: float = 20.0) -> Any:
    """The classifier of the text baselines (and of a fine-tuned classifier's label prior)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000)


def _label_answers(model: Any, probs: np.ndarray) -> list[ModelAnswer]:
    classes = [str(c) for c in model.classes_]
    out = []
    for row in probs:
        order = np.argsort(-row)
        kept = {classes[j]: float(row[j]) for j in order if row[j] >= MIN_PROB}
        top = classes[int(order[0])]
        out.append(ModelAnswer(top, top, {"probs": kept}))
    return out


def fit_tfidf_lr(task: TaskConfig, train: list[dict[str, Any]]) -> tuple[Predict, dict[str, Any]]:
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(tfidf_features(), logistic_regression(20.0))
    model.fit([input_text(task, r) for r in train], [r["label"] for r in train])
    clf = model[-1]

    def predict(rows: list[dict[str, Any]]) -> list[ModelAnswer]:
        return _label_answers(clf, model.predict_proba([input_text(task, r) for r in rows]))

    return predict, {"features": len(model[0].get_feature_names_out()), "classes": len(clf.classes_)}


def fit_embedding_lr(
    task: TaskConfig, train: list[dict[str, Any]], embed: Callable[[list[str]], np.ndarray]
) -> tuple[Predict, dict[str, Any]]:
    clf = logistic_regression(20.0)
    clf.fit(embed([input_text(task, r) for r in train]), [r["label"] for r in train])

    def predict(rows: list[dict[str, Any]]) -> list[ModelAnswer]:
        return _label_answers(clf, clf.predict_proba(embed([input_text(task, r) for r in rows])))

    return predict, {"classes": len(clf.classes_)}


def fit_nearest(
    task: TaskConfig, train: list[dict[str, Any]], embed: Callable[[list[str]], np.ndarray]
) -> tuple[Predict, dict[str, Any]]:
    """The answer of the most similar training input (cosine of sentence embeddings)."""
    vectors = embed([input_text(task, r) for r in train])

    def predict(rows: list[dict[str, Any]]) -> list[ModelAnswer]:
        out = []
        query = embed([input_text(task, r) for r in rows])
        for start in range(0, len(rows), 1024):
            sims = query[start : start + 1024] @ vectors.T
            for i in sims.argmax(axis=1):
                neighbour = train[int(i)]
                text = target_text(task, neighbour)
                if task.type == "extraction":
                    text = json.dumps(neighbour["output"], ensure_ascii=False)
                out.append(ModelAnswer(text.strip(), text, {"neighbour": input_text(task, neighbour)[:200]}))
        return out

    return predict, {"neighbours": len(train)}
