"""Statistics that keep comparisons honest on small gold sets.

- :func:`bootstrap_ci` — percentile bootstrap confidence interval of any metric,
  resampling gold rows;
- :func:`wilson_ci` — the interval of a rate (accuracy, exact match): unlike the
  bootstrap it never collapses to a point at 0 % or 100 %;
- :func:`mcnemar` — paired test for accuracy-type metrics (per-row right/wrong of
  two models on the same rows): exact binomial below 25 discordant pairs,
  continuity-corrected chi-square above;
- :func:`paired_permutation` — paired test for any other metric: randomly swap
  the two models' outputs row by row;
- :func:`paired_bootstrap_diff` — CI of the difference between two models;
- :func:`min_detectable_effect` — the smallest accuracy difference a gold set of
  this size can detect (two-sided alpha, power 0.8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PairedTest",
    "bootstrap_ci",
    "mcnemar",
    "min_detectable_effect",
    "paired_bootstrap_diff",
    "paired_permutation",
    "wilson_ci",
]

Metric = Callable[[np.ndarray], float]  # metric of the rows at these indices


def bootstrap_ci(
    metric: Metric, n: int, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over ``n`` rows resampled with replacement."""
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = np.array([metric(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def wilson_ci(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n``: 40 of 40 right gives about [0.91, 1.0], not [1, 1]."""
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(hits), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mean_metric(per_row: Sequence[float] | np.ndarray) -> Metric:
    arr = np.asarray(per_row, dtype=float)
    return lambda idx: float(arr[idx].mean())


@dataclass
class PairedTest:
    test: str
    statistic: float
    p_value: float
    diff: float  # metric(B) - metric(A)
    ci: tuple[float, float]
    n: int
    details: dict[str, float]


def mcnemar(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray, exact_below: int = 25
) -> PairedTest:
    """McNemar's test on the rows where exactly one of the two models is right."""
    from scipy.stats import binomtest, chi2

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int((a & ~b).sum())  # A right, B wrong
    only_b = int((~a & b).sum())
    discordant = only_a + only_b
    if discordant == 0:
        p, stat, kind = 1.0, 0.0, "mcnemar-exact"
    elif discordant < exact_below:
        p = float(binomtest(only_b, discordant, 0.5).pvalue)
        stat, kind = float(only_b), "mcnemar-exact"
    else:
        stat = (abs(only_a - only_b) - 1) ** 2 / discordant
        p, kind = float(chi2.sf(stat, 1)), "mcnemar-chi2"
    diff = float(b.mean() - a.mean())
    ci = paired_bootstrap_diff(mean_metric(a), mean_metric(b), len(a))
    return PairedTest(kind, float(stat), p, diff, ci, len(a), {"only_a": only_a, "only_b": only_b})


def paired_bootstrap_diff(
    metric_a: Metric, metric_b: Metric, n: int, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """CI of metric_b - metric_a, resampling the same rows for both models."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        diffs.append(metric_b(idx) - metric_a(idx))
    tail = (1 - confidence) / 2
    return float(np.quantile(diffs, tail)), float(np.quantile(diffs, 1 - tail))


def paired_permutation(
    score: Callable[[np.ndarray], float],
    n: int,
    *,
    permutations: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Two-sided paired permutation test.

    ``score(swap)`` returns metric(B) - metric(A) after swapping the two models'
    outputs on the rows where ``swap`` is True (all False = the observed
    difference). Works for metrics that do not decompose over rows (macro F1).
    """
    rng = np.random.default_rng(seed)
    observed = score(np.zeros(n, dtype=bool))
    null = np.array([score(rng.random(n) < 0.5) for _ in range(permutations)])
    p = (1 + int((np.abs(null) >= abs(observed) - 1e-12).sum())) / (permutations + 1)
    return PairedTest(
        "paired-permutation", observed, p, observed, (math.nan, math.nan), n, {"permutations": permutations}
    )


def min_detectable_effect(n: int, p: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference of two accuracies near ``p`` that ``n`` rows detect (normal approximation)."""
    from scipy.stats import norm

    if n == 0:
        return math.nan
    p = min(max(p, 1e-3), 1 - 1e-3)
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(z * math.sqrt(2 * p * (1 - p) / n))
