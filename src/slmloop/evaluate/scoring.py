"""A model's answers on gold rows as per-row scores (:class:`slmloop.metrics.RowScores`).

Generation and chat answers are compared with every reference of their gold row (a
data-to-text input has several right sentences): chrF and ROUGE-L take the best-matching
reference, BLEU clips n-gram counts by all of them (sacrebleu's multi-reference BLEU), exact
match accepts any.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from slmloop.metrics import RowScores
from slmloop.predict.parsing import parse_json_object, value_pairs
from slmloop.predict.tasks import references

__all__ = ["score_answers"]


def _schema_ok(obj: dict[str, Any] | None, fields: list[str], required: list[str], validator: Any) -> bool:
    if obj is None:
        return False
    keys = {k for k, v in obj.items() if v is not None}
    if fields and not keys <= set(fields):
        return False
    if not set(required) <= keys:
        return False
    return validator is None or bool(validator.is_valid(obj))


def _validator(json_schema: dict[str, Any] | None) -> Any:
    if not json_schema:
        return None
    import jsonschema

    return jsonschema.Draft202012Validator(json_schema)


def score_answers(
    task: Any,
    rows: Sequence[dict[str, Any]],
    predictions: Sequence[str],
    raws: Sequence[str] | None = None,
    *,
    regex: str | None = None,
    json_schema: dict[str, Any] | None = None,
    confidence: Sequence[float | None] | None = None,
) -> RowScores:
    """Per-row scores of ``predictions`` (the task-shaped answers) against gold ``rows``.

    ``raws`` are the models' full answers (extraction parses its JSON from them). A classifier with
    ``task.out_of_scope`` is also scored on its out-of-scope rows (``oos``) and answers (``said_oos``);
    ``confidence`` (the calibrated score an abstaining classifier thresholds, per answer) adds the detection
    AUROC where every answer has one.
    """
    n = len(rows)
    raws = list(raws) if raws is not None else list(predictions)
    if task.type == "classification":
        labels = list(task.label_list)
        index = {lab: i for i, lab in enumerate(labels)}
        true = np.array([index[r["label"]] for r in rows], dtype=np.int64)
        pred = np.array([index.get(p, len(labels)) for p in predictions], dtype=np.int64)  # K = invalid
        arrays = {"true": true, "pred": pred, "correct": true == pred, "invalid": pred == len(labels)}
        arrays["k"] = np.array([len(labels)])
        oos = getattr(task, "out_of_scope", None)
        if oos is not None and oos in index:
            arrays["oos"], arrays["said_oos"] = true == index[oos], pred == index[oos]
            if confidence is not None and len(confidence) == n and all(c is not None for c in confidence):
                arrays["confidence"] = np.asarray(confidence, dtype=float)
        return RowScores("classification", n, arrays, labels)
    if task.type == "extraction":
        fields = list(task.fields or [])
        required = list(getattr(task, "required", None) or [])
        col = {f: i for i, f in enumerate(fields)}
        other = len(fields)  # keys outside the schema
        tp, fp, fn = (np.zeros((n, other + 1)) for _ in range(3))
        valid, exact, schema = (np.zeros(n, bool) for _ in range(3))
        validator = _validator(json_schema)
        for i, (row, raw) in enumerate(zip(rows, raws, strict=True)):
            obj = parse_json_object(raw)
            valid[i] = obj is not None
            schema[i] = _schema_ok(obj, fields, required, validator)
            ref, got = value_pairs(row["output"]), value_pairs(obj)
            exact[i] = obj is not None and ref == got  # "nothing to extract" still needs an answer: {}
            for k, v in ref | got:
                j = col.get(k, other)
                hit = min(ref[(k, v)], got[(k, v)])
                tp[i, j] += hit
                fp[i, j] += got[(k, v)] - hit
                fn[i, j] += ref[(k, v)] - hit
        arrays = {"tp": tp, "fp": fp, "fn": fn, "valid": valid, "exact": exact, "schema_pass": schema}
        return RowScores("extraction", n, arrays, fields)
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    chrf, bleu = CHRF(), BLEU()
    pairs = list(zip([references(task, r) for r in rows], predictions, strict=True))
    stats = []
    for refs, p in pairs:  # summed over rows, these are sacrebleu's corpus statistics
        b = bleu.corpus_score([p], [[r] for r in refs])
        stats.append([b.sys_len, b.ref_len, *b.counts, *b.totals])
    arrays = {
        "exact": np.array([any(r.strip() == p.strip() for r in refs) for refs, p in pairs], bool),
        "rouge_l": np.array([scorer.score_multi(refs, p)["rougeL"].fmeasure for refs, p in pairs], float),
        "chrf": np.array([chrf.sentence_score(p, refs).score / 100 for refs, p in pairs], float),
        "bleu_stats": np.array(stats, float).reshape(n, 10),
    }
    if regex:
        pattern = re.compile(regex)
        arrays["regex_pass"] = np.array([bool(pattern.fullmatch(p.strip())) for p in predictions], bool)
    if json_schema:
        validator = _validator(json_schema)
        arrays["schema_pass"] = np.array([_schema_ok(parse_json_object(p), [], [], validator) for p in predictions])
    return RowScores(task.type, n, arrays)
