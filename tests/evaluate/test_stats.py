"""Statistics on hand-computed cases, checked against scipy where it computes the same thing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from slmloop.evaluate.stats import (
    bootstrap_ci,
    mcnemar,
    mean_metric,
    min_detectable_effect,
    paired_bootstrap_diff,
    paired_permutation,
)


def test_mcnemar_exact_by_hand() -> None:
    # A right & B wrong on 10 rows, A wrong & B right on 2, both right on 8
    a = [True] * 10 + [False] * 2 + [True] * 8
    b = [False] * 10 + [True] * 2 + [True] * 8
    t = mcnemar(a, b)
    assert t.test == "mcnemar-exact" and t.details == {"only_a": 10, "only_b": 2}
    # two-sided exact binomial: P(X<=2 or X>=10 | n=12, p=.5) = 2 * (1 + 12 + 66) / 4096
    assert t.p_value == pytest.approx(2 * 79 / 4096)
    assert t.p_value == pytest.approx(stats.binomtest(2, 12, 0.5).pvalue)
    assert t.diff == pytest.approx((10 - 18) / 20)


def test_mcnemar_chi2_by_hand() -> None:
    a = [True] * 30 + [False] * 10 + [True] * 60
    b = [False] * 30 + [True] * 10 + [True] * 60
    t = mcnemar(a, b)
    assert t.test == "mcnemar-chi2"
    assert t.statistic == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)  # 9.025
    assert t.p_value == pytest.approx(stats.chi2.sf(9.025, 1))
    lo, hi = t.ci
    assert lo < t.diff < hi < 0


def test_identical_models_are_not_distinguishable() -> None:
    t = mcnemar([True, False, True], [True, False, True])
    assert t.p_value == 1.0 and t.diff == 0.0


def test_bootstrap_ci_agrees_with_scipy() -> None:
    rng = np.random.default_rng(1)
    x = rng.random(300) < 0.8
    lo, hi = bootstrap_ci(mean_metric(x), len(x), resamples=4000, seed=2)
    ref = stats.bootstrap((x.astype(float),), np.mean, n_resamples=4000, method="percentile", random_state=3)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.01)
    assert lo < x.mean() < hi


def test_bootstrap_ci_narrows_with_more_rows() -> None:
    small = np.array([1.0, 0.0] * 25)
    large = np.array([1.0, 0.0] * 500)
    w_small = np.subtract(*bootstrap_ci(mean_metric(small), len(small))[::-1])
    w_large = np.subtract(*bootstrap_ci(mean_metric(large), len(large))[::-1])
    assert w_large < w_small / 3


def test_paired_permutation_agrees_with_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(80)
    b = a + rng.normal(0.05, 0.1, 80)

    def score(swap: np.ndarray) -> float:
        return float(np.where(swap, a, b).mean() - np.where(swap, b, a).mean())

    ours = paired_permutation(score, 80, permutations=4000)
    ref = stats.permutation_test(
        (a, b), lambda x, y: np.mean(y) - np.mean(x), permutation_type="samples", n_resamples=4000, random_state=0
    )
    assert ours.diff == pytest.approx(b.mean() - a.mean())
    assert ours.p_value == pytest.approx(ref.pvalue, abs=0.01)


def test_paired_bootstrap_diff_contains_the_difference() -> None:
    a = np.array([0.0, 1.0] * 50)
    b = np.ones(100)
    lo, hi = paired_bootstrap_diff(mean_metric(a), mean_metric(b), 100)
    assert lo < 0.5 < hi and lo > 0.3


def test_min_detectable_effect_by_hand() -> None:
    # (z_.975 + z_.8) * sqrt(2 * .25 / 200) = (1.95996 + 0.84162) * 0.05
    assert min_detectable_effect(200, 0.5) == pytest.approx(2.80158 * 0.05, rel=1e-4)
    assert min_detectable_effect(800, 0.5) == pytest.approx(min_detectable_effect(200, 0.5) / 2)


def test_wilson_interval_by_hand() -> None:
    from slmloop.evaluate.stats import wilson_ci

    z2 = 1.959963984540054**2
    lo, hi = wilson_ci(40, 40)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(40 / (40 + z2))  # all right: not a point at 1
    lo, hi = wilson_ci(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(z2 / (10 + z2))
    # 7 of 10: centre (k + z²/2) / (n + z²), half-width z·sqrt(p(1-p)n + z²/4) / (n + z²)
    p, n = 0.7, 10
    centre = (7 + z2 / 2) / (n + z2)
    half = math.sqrt(z2) * math.sqrt(p * (1 - p) * n + z2 / 4) / (n + z2)
    assert wilson_ci(7, 10) == pytest.approx((centre - half, centre + half))
