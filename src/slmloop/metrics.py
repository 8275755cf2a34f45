"""Every metric, once: the metric registry.

A model's answers on the gold rows become :class:`RowScores` — one numpy array
per row-level quantity (predicted class, per-field true/false positives,
per-row ROUGE-L, BLEU n-gram counts …). Every metric is a function of those
arrays restricted to row indices, so

- the point estimate, its bootstrap CI and the gates all read the same number;
- two models' scores can be mixed row by row (:meth:`RowScores.mix`) for paired
  permutation tests, also for metrics that do not decompose over rows (macro F1,
  micro F1, corpus BLEU);
- the manifest, the CLI and comparisons list the metrics of a task from
  :data:`METRICS` instead of spelling them out.

scikit-learn stays in the tests, as the reference this registry is checked against.

Extraction answers are compared as multisets of ``(field, value)`` pairs: a
field whose value is ``null`` (or an empty list) is absent, a list value counts
each element, strings are compared with surrounding whitespace trimmed and
inner whitespace collapsed.

Generation and chat answers are compared with every reference of their gold row
(a data-to-text input has several right sentences): chrF and ROUGE-L take the
best-matching reference, BLEU clips n-gram counts by all of them (sacrebleu's
multi-reference BLEU), exact match accepts any. The headline is chrF, a
similarity: exact match says little where several wordings are right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["HEADLINE", "METRICS", "Metric", "RowScores", "metric_names", "summarize"]

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Metric:
    name: str
    tasks: frozenset[str]
    description: str
    compute: Callable[[Arrays], float]
    #: the per-row 0/1 array whose mean *is* the metric (McNemar applies), or None
    per_row: str | None = None
    higher_is_better: bool = True
    #: the arrays it needs; a metric is available only when they were scored (a regex check, a judge)
    needs: tuple[str, ...] = ()
    #: 100 for metrics in [0, 1] reported as points, 1 for metrics on another scale
    points: int = 100


def _rate(key: str) -> Callable[[Arrays], float]:
    return lambda a: float(a[key].mean()) if len(a[key]) else math.nan


def _confusion(a: Arrays) -> np.ndarray:
    """(K, K+1) counts: true class × predicted class, the last column = invalid answer."""
    k = int(a["k"][0]) if len(a["k"]) else 0
    return np.bincount(a["true"] * (k + 1) + a["pred"], minlength=k * (k + 1)).reshape(k, k + 1)


def _f1(tp: Any, fp: Any, fn: Any) -> Any:
    """F1 from counts: arrays give an array, scalars a scalar."""
    d = 2 * tp + fp + fn
    return np.divide(2 * tp, d, out=np.zeros_like(d, dtype=float), where=d > 0)


def _class_f1(a: Arrays, average: str) -> float:
    cm = _confusion(a)
    k = cm.shape[0]
    tp = np.diag(cm[:, :k]).astype(float)
    fp = cm[:, :k].sum(0) - tp
    fn = cm.sum(1) - tp
    if average == "micro":
        return float(_f1(tp.sum(), fp.sum(), fn.sum()))
    return float(_f1(tp, fp, fn).mean()) if k else math.nan


def _pairs(a: Arrays) -> tuple[float, float, float]:
    return float(a["tp"].sum()), float(a["fp"].sum()), float(a["fn"].sum())


def _micro(which: str) -> Callable[[Arrays], float]:
    def compute(a: Arrays) -> float:
        if "tp" not in a:  # classification: over the labels
            return _class_f1(a, "micro")
        tp, fp, fn = _pairs(a)
        if which == "precision":
            return tp / (tp + fp) if tp + fp else 0.0
        if which == "recall":
            return tp / (tp + fn) if tp + fn else 0.0
        return float(_f1(np.float64(tp), np.float64(fp), np.float64(fn)))

    return compute


def _bleu(a: Arrays) -> float:
    from sacrebleu.metrics import BLEU

    s = a["bleu_stats"].sum(0)  # sys_len, ref_len, correct 1-4, total 1-4
    if not len(a["bleu_stats"]):
        return math.nan
    return BLEU.compute_bleu(s[2:6].tolist(), s[6:10].tolist(), int(s[0]), int(s[1])).score / 100


def _within(key: str, where: str, negate: bool = False) -> Callable[[Arrays], float]:
    """The mean of ``a[key]`` over the rows where ``a[where]`` is True (False with ``negate``)."""

    def compute(a: Arrays) -> float:
        rows = ~a[where] if negate else a[where].astype(bool)
        return float(a[key][rows].mean()) if rows.any() else math.nan

    return compute


def _oos_auroc(a: Arrays) -> float:
    """How well low confidence finds the out-of-scope rows: the area under the ROC curve (0.5: chance)."""
    oos = a["oos"].astype(bool)
    if oos.all() or not oos.any():
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(oos, -a["confidence"]))


def _judge(a: Arrays) -> float:
    valid = a["judge"][~np.isnan(a["judge"])]
    return float(valid.mean()) if len(valid) else math.nan


_CLS = frozenset({"classification"})
_EXT = frozenset({"extraction"})
_GEN = frozenset({"generation", "chat"})
_ALL = _CLS | _EXT | _GEN

METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", _CLS, "share of rows with the right label", _rate("correct"), per_row="correct"),
        Metric("macro_f1", _CLS, "F1 of each label, averaged (every label counts alike)", lambda a: _class_f1(a, "")),
        Metric("micro_f1", _CLS | _EXT, "F1 over all labels or all (field, value) pairs", _micro("f1")),
        Metric(
            "invalid_rate",
            _CLS,
            "share of answers that are not a label",
            _rate("invalid"),
            per_row="invalid",
            higher_is_better=False,
        ),
        Metric("micro_precision", _EXT, "share of extracted (field, value) pairs that are right", _micro("precision")),
        Metric("micro_recall", _EXT, "share of expected (field, value) pairs that were extracted", _micro("recall")),
        Metric("json_valid_rate", _EXT, "share of answers that hold a JSON object", _rate("valid"), per_row="valid"),
        Metric(
            "schema_pass_rate",
            _EXT | _GEN,
            "share of answers whose keys are allowed fields, required fields present, valid under the JSON schema",
            _rate("schema_pass"),
            per_row="schema_pass",
            needs=("schema_pass",),
        ),
        Metric(
            "exact_match",
            _EXT | _GEN,
            "share of answers equal to the reference (any one)",
            _rate("exact"),
            per_row="exact",
        ),
        Metric(
            "rouge_l",
            _GEN,
            "ROUGE-L F1 (longest common subsequence of words) with the best reference, averaged",
            _rate("rouge_l"),
        ),
        Metric("chrf", _GEN, "chrF (character n-gram F-score) with the best reference, averaged", _rate("chrf")),
        Metric("bleu", _GEN, "corpus BLEU (sacrebleu) against all references, 0-1", _bleu, needs=("bleu_stats",)),
        Metric(
            "regex_pass_rate",
            _GEN,
            "share of answers that fully match eval.checks.regex",
            _rate("regex_pass"),
            per_row="regex_pass",
            needs=("regex_pass",),
        ),
        Metric("judge_score", _ALL, "mean LLM-judge score, 1-5", _judge, needs=("judge",), points=1),
        Metric(
            "in_scope_accuracy",
            _CLS,
            "share of in-scope rows with the right label (an abstention there is wrong)",
            _within("correct", "oos", negate=True),
            needs=("oos",),
        ),
        Metric(
            "oos_recall",
            _CLS,
            "share of out-of-scope rows answered out of scope (abstained)",
            _within("said_oos", "oos"),
            needs=("oos",),
        ),
        Metric(
            "oos_precision",
            _CLS,
            "share of out-of-scope answers (abstentions) on out-of-scope rows",
            _within("oos", "said_oos"),
            needs=("oos",),
        ),
        Metric(
            "oos_auroc",
            _CLS,
            "how well low confidence separates out-of-scope from in-scope rows (AUROC; 0.5 is chance)",
            _oos_auroc,
            needs=("oos", "confidence"),
        ),
    ]
}

#: the metrics each task's tables and comparisons lead with (the first decides)
HEADLINE: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "extraction": ("micro_f1", "exact_match", "json_valid_rate"),
    "generation": ("chrf", "bleu", "rouge_l", "exact_match"),
    "chat": ("chrf", "rouge_l", "bleu"),
}


def metric_names(task_type: str, *, configured: bool = True) -> list[str]:
    """Metrics a task can report. ``configured=True`` includes those that need a check or a judge."""
    return [m.name for m in METRICS.values() if task_type in m.tasks and (configured or not m.needs)]


# ---------------------------------------------------------------------------------------------
# per-row scores
# ---------------------------------------------------------------------------------------------
@dataclass
class RowScores:
    task: str
    n: int
    arrays: Arrays = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # classification: the classes; extraction: the fields

    def mix(self, other: RowScores, swap: np.ndarray) -> RowScores:
        """These scores, with ``other``'s on the rows where ``swap`` is True."""
        mixed = {}
        for k, v in self.arrays.items():
            if k == "k":
                mixed[k] = v
                continue
            mask = swap.reshape((-1,) + (1,) * (v.ndim - 1))
            mixed[k] = np.where(mask, other.arrays[k], v)
        return RowScores(self.task, self.n, mixed, self.labels)

    def subset(self, idx: np.ndarray) -> Arrays:
        return {k: (v if k == "k" else v[idx]) for k, v in self.arrays.items()}

    @property
    def names(self) -> list[str]:
        return [m.name for m in METRICS.values() if self.task in m.tasks and all(k in self.arrays for k in m.needs)]

    def metric(self, name: str, idx: np.ndarray | None = None) -> float:
        if name not in self.names:
            from slmloop.errors import ConfigError

            raise ConfigError(
                f"{name!r} is not a metric of this {self.task} evaluation",
                hint=f"Use one of: {', '.join(self.names)}.",
            )
        return METRICS[name].compute(self.arrays if idx is None else self.subset(idx))

    def hits(self, name: str) -> np.ndarray:
        """Per-row right/wrong behind a rate metric (its mean is the metric)."""
        key = METRICS[name].per_row
        if key is None:
            from slmloop.errors import ConfigError

            raise ConfigError(
                f"{name} is not a per-row rate", hint="McNemar's test needs one; use a paired permutation."
            )
        return self.arrays[key].astype(bool)

    def correct(self) -> np.ndarray:
        """Per-row right/wrong of the task's headline notion of a correct answer."""
        return self.arrays["correct" if self.task == "classification" else "exact"].astype(bool)

    def with_judge(self, scores: Sequence[float]) -> RowScores:
        return RowScores(self.task, self.n, {**self.arrays, "judge": np.asarray(scores, float)}, self.labels)


# ---------------------------------------------------------------------------------------------
# summaries: every metric plus the tables behind them, all from the same arrays
# ---------------------------------------------------------------------------------------------
def _classification_details(s: RowScores) -> dict[str, Any]:
    cm = _confusion(s.arrays)
    k = len(s.labels)
    tp = np.diag(cm[:, :k]).astype(float)
    predicted = cm[:, :k].sum(0)
    support = cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = _f1(tp, predicted - tp, support - tp)
    invalid = bool(cm[:, k].sum())
    return {
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(s.labels)
        },
        "confusion": {
            "labels": s.labels,
            "columns": [*s.labels, "<invalid>"] if invalid else list(s.labels),
            "matrix": (cm if invalid else cm[:, :k]).tolist(),
        },
    }


def _extraction_details(s: RowScores) -> dict[str, Any]:
    names = [*s.labels, "<other keys>"]
    tp, fp, fn = (s.arrays[k].sum(0) for k in ("tp", "fp", "fn"))
    f1 = _f1(tp, fp, fn)
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        if i == len(s.labels) and not (tp[i] + fp[i] + fn[i]):
            continue
        out[name] = {
            "f1": float(f1[i]),
            "tp": int(tp[i]),
            "fp": int(fp[i]),
            "fn": int(fn[i]),
            "support": int(tp[i] + fn[i]),
        }
    return {"per_field": out}


def summarize(s: RowScores) -> dict[str, Any]:
    """Every available metric's value, plus per-class / per-field tables."""
    out: dict[str, Any] = {"n": s.n}
    if s.n == 0:
        return out
    for name in s.names:
        out[name] = s.metric(name)
    if s.task == "classification":
        out.update(_classification_details(s))
    elif s.task == "extraction":
        out.update(_extraction_details(s))
    return out
