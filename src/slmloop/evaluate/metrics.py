"""Task-aware metrics, computed from references and predictions.

Each function returns plain floats/dicts so results store as JSON. Classification
uses scikit-learn; ROUGE-L uses Google's ``rouge-score``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "classification_metrics",
    "extraction_metrics",
    "generation_metrics",
    "parse_json_object",
]


def classification_metrics(
    references: Sequence[str], predictions: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro/micro F1, per-class precision/recall/F1, confusion matrix.

    A prediction outside ``labels`` (unparseable answer) counts as wrong for
    accuracy and as a miss for the true class; ``invalid_rate`` reports how often.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n = len(references)
    if n == 0:
        return {"n": 0}
    known = list(labels)
    invalid = sum(p not in known for p in predictions)
    correct = sum(r == p for r, p in zip(references, predictions, strict=True))
    p, r, f, support = precision_recall_fscore_support(references, predictions, labels=known, zero_division=0)
    _, _, micro_f1, _ = precision_recall_fscore_support(
        references, predictions, labels=known, average="micro", zero_division=0
    )
    # an invalid prediction is its own column so the matrix keeps every row
    columns = [*known, "<invalid>"] if invalid else known
    preds = [x if x in known else "<invalid>" for x in predictions]
    cm = confusion_matrix(references, preds, labels=columns)
    return {
        "n": n,
        "accuracy": correct / n,
        "macro_f1": float(sum(f) / len(known)),
        "micro_f1": float(micro_f1),
        "invalid_rate": invalid / n,
        "per_class": {
            lab: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(known)
        },
        "confusion": {"labels": known, "columns": columns, "matrix": cm[: len(known)].tolist()},
    }


def generation_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """Exact match (after trimming) and mean ROUGE-L F1."""
    from rouge_score import rouge_scorer

    n = len(references)
    if n == 0:
        return {"n": 0}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    exact = sum(r.strip() == p.strip() for r, p in zip(references, predictions, strict=True))
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions, strict=True)]
    return {"n": n, "exact_match": exact / n, "rouge_l": float(sum(rouge) / n)}


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (models sometimes wrap it in prose or fences)."""
    text = text.strip()
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def _norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False) if not isinstance(v, str) else v.strip()


def extraction_metrics(
    references: Sequence[dict[str, Any]], predictions: Sequence[str], fields: Sequence[str]
) -> dict[str, Any]:
    """Valid-JSON rate, schema pass rate (exactly the task's fields), per-field exact match and F1,
    micro P/R/F1 over (field, value) pairs."""
    n = len(references)
    if n == 0:
        return {"n": 0}
    parsed = [parse_json_object(p) for p in predictions]
    tp = fp = fn = 0
    per_field = {f: 0 for f in fields}
    field_counts = {f: [0, 0, 0] for f in fields}  # tp, fp, fn of each field's (value) pairs
    exact = 0
    for ref, pred in zip(references, parsed, strict=True):
        pred = pred or {}
        ref_pairs = {(k, _norm(v)) for k, v in ref.items() if v is not None}
        pred_pairs = {(k, _norm(v)) for k, v in pred.items() if v is not None}
        tp += len(ref_pairs & pred_pairs)
        fp += len(pred_pairs - ref_pairs)
        fn += len(ref_pairs - pred_pairs)
        exact += ref_pairs == pred_pairs
        for f in fields:
            per_field[f] += _norm(ref.get(f)) == _norm(pred.get(f))
            has_ref, has_pred = ref.get(f) is not None, pred.get(f) is not None
            hit = has_ref and has_pred and _norm(ref[f]) == _norm(pred[f])
            field_counts[f][0] += hit
            field_counts[f][1] += has_pred and not hit
            field_counts[f][2] += has_ref and not hit
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "json_valid_rate": sum(p is not None for p in parsed) / n,
        "exact_match": exact / n,
        "micro_precision": precision,
        "micro_recall": recall,
        "micro_f1": f1,
        "field_accuracy": {f: c / n for f, c in per_field.items()},
        "field_f1": {
            f: (2 * c[0] / (2 * c[0] + c[1] + c[2]) if c[0] + c[1] + c[2] else 1.0) for f, c in field_counts.items()
        },
        "schema_pass_rate": sum(p is not None and set(p) == set(fields) for p in parsed) / n,
    }
