"""Per-row scores from which every metric can be recomputed on any subset of gold rows.

:class:`RowScores` keeps, for one model's predictions on the gold set, one numpy
array per row-level quantity (the predicted class, per-row ROUGE-L, per-row
true/false positives of extracted fields …). Every metric is a function of those
arrays restricted to row indices, which makes bootstrap resampling cheap, and
two models' scores can be mixed row by row (:meth:`RowScores.mix`) for paired
permutation tests — also for metrics that do not decompose over rows, such as
macro F1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slmloop.evaluate.metrics import parse_json_object
from slmloop.manifest import TaskConfig
from slmloop.tasks import target_text

__all__ = ["ACCURACY_TYPE", "RowScores", "score_predictions"]

#: metrics that are a mean of per-row right/wrong: compared with McNemar's test
ACCURACY_TYPE = {"accuracy", "exact_match", "json_valid_rate", "regex_pass_rate", "schema_pass_rate"}


def _norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False) if not isinstance(v, str) else v.strip()


@dataclass
class RowScores:
    task: str
    n: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)

    def mix(self, other: RowScores, swap: np.ndarray) -> RowScores:
        """These scores, with ``other``'s on the rows where ``swap`` is True."""
        return RowScores(
            self.task, self.n, {k: np.where(swap, other.arrays[k], v) for k, v in self.arrays.items()}, self.labels
        )

    @property
    def names(self) -> list[str]:
        if self.task == "classification":
            return ["accuracy", "macro_f1", "micro_f1"]
        if self.task == "extraction":
            return ["micro_f1", "json_valid_rate", "exact_match", "micro_precision", "micro_recall", "schema_pass_rate"]
        names = ["exact_match", "rouge_l", "chrf"]
        return names + [k.removesuffix("_pass") + "_pass_rate" for k in self.arrays if k.endswith("_pass")]

    def metric(self, name: str, idx: np.ndarray | None = None) -> float:
        a = self.arrays if idx is None else {k: v[idx] for k, v in self.arrays.items()}
        if name.endswith("_pass_rate"):
            return float(a[name.removesuffix("_rate")].mean())
        if self.task == "classification":
            true, pred = a["true"], a["pred"]
            if name == "accuracy":
                return float((true == pred).mean())
            k = len(self.labels)
            cm = np.bincount(true * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)
            tp = np.diag(cm[:, :k]).astype(float)
            fp = cm[:, :k].sum(0) - tp
            fn = cm.sum(1) - tp
            if name == "micro_f1":
                d = 2 * tp.sum() + fp.sum() + fn.sum()
                return float(2 * tp.sum() / d) if d else 0.0
            if name == "macro_f1":
                d = 2 * tp + fp + fn
                f1 = np.divide(2 * tp, d, out=np.zeros_like(tp), where=d > 0)
                return float(f1.mean())
        if self.task == "extraction":
            tp, fp, fn = a["tp"].sum(), a["fp"].sum(), a["fn"].sum()
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            if name == "micro_precision":
                return float(precision)
            if name == "micro_recall":
                return float(recall)
            if name == "micro_f1":
                return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0
            if name == "json_valid_rate":
                return float(a["valid"].mean())
            if name == "exact_match":
                return float(a["exact"].mean())
        if name in ("exact_match", "rouge_l", "chrf"):
            return float(a[name].mean())
        raise KeyError(f"no metric {name!r} for a {self.task} task")

    def correct(self) -> np.ndarray:
        """Per-row right/wrong of the task's main accuracy-type metric."""
        if self.task == "classification":
            return self.arrays["true"] == self.arrays["pred"]
        return self.arrays["exact"] if self.task == "extraction" else self.arrays["exact_match"].astype(bool)

    def hits(self, metric: str) -> np.ndarray:
        """Per-row right/wrong behind an accuracy-type metric (its mean is the metric)."""
        if metric in ("accuracy", "exact_match"):
            return self.correct()
        if metric == "json_valid_rate":
            return self.arrays["valid"].astype(bool)
        return self.arrays[metric.removesuffix("_rate")].astype(bool)


def score_predictions(
    task: TaskConfig,
    rows: Sequence[dict[str, Any]],
    predictions: Sequence[str],
    raws: Sequence[str] | None = None,
    *,
    regex: str | None = None,
    json_schema: dict[str, Any] | None = None,
) -> RowScores:
    n = len(rows)
    raws = list(raws) if raws is not None else list(predictions)
    if task.type == "classification":
        labels = list(task.labels or [])
        index = {lab: i for i, lab in enumerate(labels)}
        true = np.array([index[r["label"]] for r in rows], dtype=np.int64)
        pred = np.array([index.get(p, len(labels)) for p in predictions], dtype=np.int64)  # K = invalid
        return RowScores("classification", n, {"true": true, "pred": pred}, labels)
    if task.type == "extraction":
        tp, fp, fn, valid, exact, schema = (np.zeros(n) for _ in range(6))
        validator = None
        if json_schema:
            import jsonschema

            validator = jsonschema.Draft202012Validator(json_schema)
        for i, (row, raw) in enumerate(zip(rows, raws, strict=True)):
            obj = parse_json_object(raw)
            valid[i] = obj is not None
            # schema: exactly the task's fields, and the declared JSON schema when there is one
            schema[i] = (
                obj is not None
                and set(obj) == set(task.fields or obj)
                and (validator is None or validator.is_valid(obj))
            )
            ref = {(k, _norm(v)) for k, v in row["output"].items() if v is not None}
            got = {(k, _norm(v)) for k, v in (obj or {}).items() if v is not None}
            tp[i], fp[i], fn[i] = len(ref & got), len(got - ref), len(ref - got)
            exact[i] = ref == got
        arrays = {"tp": tp, "fp": fp, "fn": fn, "valid": valid, "exact": exact.astype(bool), "schema_pass": schema}
        return RowScores("extraction", n, arrays)
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import CHRF

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    chrf = CHRF()
    refs = [target_text(task, r) for r in rows]
    arrays = {
        "exact_match": np.array([r.strip() == p.strip() for r, p in zip(refs, predictions, strict=True)], float),
        "rouge_l": np.array([scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(refs, predictions, strict=True)]),
        "chrf": np.array([chrf.sentence_score(p, [r]).score / 100 for r, p in zip(refs, predictions, strict=True)]),
    }
    if regex:
        pattern = re.compile(regex)
        arrays["regex_pass"] = np.array([bool(pattern.fullmatch(p.strip())) for p in predictions], float)
    if json_schema:
        import jsonschema

        validator = jsonschema.Draft202012Validator(json_schema)
        arrays["schema_pass"] = np.array(
            [(obj := parse_json_object(p)) is not None and validator.is_valid(obj) for p in predictions], float
        )
    return RowScores(task.type, n, arrays)
