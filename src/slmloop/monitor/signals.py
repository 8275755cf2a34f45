"""Drift signals of one window of live traffic against a reference profile.

Each signal has an **effect size** (how different, in units that do not shrink
or grow with traffic volume) and a **p-value** (whether the difference could be
sampling noise). A signal says ``drift`` only when both agree: p below alpha
*and* the effect at or above its drift threshold; ``warn`` for an effect at or
above the warn threshold; ``ok`` otherwise. So a large window of harmless
traffic, whose tiny differences are all "significant", does not alarm, and a
small window needs a large effect to be believed.

=============  ===========================================  ===================================
signal         effect size                                   test
=============  ===========================================  ===================================
embedding      unbiased MMD² of MiniLM embeddings (RBF)      permutation test
length         Kolmogorov–Smirnov D of word counts           two-sample KS
oov            live minus reference share of unseen words    one-sided two-proportion z-test
label_mix      bias-corrected Cramér's V (live vs gold)      permutation test of chi²
confidence     drop of the mean top-label probability        one-sided Mann–Whitney U
invalid        rise of the invalid-output rate               one-sided Fisher exact test
=============  ===========================================  ===================================
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from slmloop.release.profile import words

__all__ = [
    "LEVELS",
    "Signal",
    "confidence_signal",
    "embedding_signal",
    "invalid_signal",
    "judge",
    "label_mix_signal",
    "length_signal",
    "mmd2_unbiased",
    "oov_signal",
    "overall",
    "words",
    "worst",
]

LEVELS = ("ok", "warn", "drift")


@dataclass
class Signal:
    name: str
    effect: float
    p_value: float
    warn: float
    drift: float
    verdict: str = "ok"
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(signal: Signal, alpha: float) -> Signal:
    """Set the verdict: significant *and* large enough."""
    significant = signal.p_value < alpha
    if significant and signal.effect >= signal.drift:
        signal.verdict = "drift"
    elif significant and signal.effect >= signal.warn:
        signal.verdict = "warn"
    else:
        signal.verdict = "ok"
    return signal


def worst(verdicts: Iterable[str]) -> str:
    return max(verdicts, key=LEVELS.index, default="ok")


def overall(signals: list[Signal]) -> str:
    return worst(s.verdict for s in signals)


def _rbf(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    n = len(x)
    bandwidth = float(np.median(d2[np.triu_indices(n, 1)])) or 1.0
    return np.exp(-d2 / bandwidth)


def mmd2_unbiased(k: np.ndarray, n_x: int) -> float:
    """Unbiased MMD² from a kernel matrix whose first ``n_x`` rows are sample X (0 in expectation under H0)."""
    n_y = len(k) - n_x
    kxx, kyy, kxy = k[:n_x, :n_x], k[n_x:, n_x:], k[:n_x, n_x:]
    sxx = (kxx.sum() - np.trace(kxx)) / (n_x * (n_x - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n_y * (n_y - 1))
    return float(sxx + syy - 2 * kxy.mean())


def embedding_signal(
    ref: np.ndarray,
    live: np.ndarray,
    *,
    warn: float,
    drift: float,
    permutations: int,
    max_live: int = 1000,
    seed: int = 0,
) -> Signal:
    """Unbiased MMD² (RBF kernel, median bandwidth) with a permutation p-value.

    Windows larger than ``max_live`` are subsampled for the test (MMD² is a mean:
    its estimate does not need every row, only enough of them).
    """
    rng = np.random.default_rng(seed)
    if len(live) > max_live:
        live = live[rng.choice(len(live), max_live, replace=False)]
    x = np.concatenate([ref, live]).astype(np.float64)
    n_x, n = len(ref), len(x)
    k = _rbf(x)
    observed = mmd2_unbiased(k, n_x)
    # every permutation at once: z[p, i] = 1 when point i falls in X under permutation p (k's diagonal is 1)
    n_y = n - n_x
    z = np.zeros((permutations, n))
    for i in range(permutations):
        z[i, rng.permutation(n)[:n_x]] = 1.0
    sxx = ((z @ k) * z).sum(1)
    sxy = z @ k.sum(1) - sxx
    syy = k.sum() - sxx - 2 * sxy
    null = (sxx - n_x) / (n_x * (n_x - 1)) + (syy - n_y) / (n_y * (n_y - 1)) - 2 * sxy / (n_x * n_y)
    p = (1 + int((null >= observed).sum())) / (permutations + 1)
    c_ref, c_live = ref.mean(0), live.mean(0)
    cos = float(c_ref @ c_live / (np.linalg.norm(c_ref) * np.linalg.norm(c_live) + 1e-12))
    return Signal(
        "embedding", observed, p, warn, drift, detail={"centroid_cosine_distance": 1.0 - cos, "n_live": len(live)}
    )


def length_signal(ref_lengths: list[int], live_lengths: list[int], *, warn: float, drift: float) -> Signal:
    from scipy.stats import ks_2samp

    res = ks_2samp(ref_lengths, live_lengths)
    return Signal(
        "length",
        float(res.statistic),
        float(res.pvalue),
        warn,
        drift,
        detail={"reference_mean_words": float(np.mean(ref_lengths)), "live_mean_words": float(np.mean(live_lengths))},
    )


def _two_proportions(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value that proportion 2 exceeds proportion 1 (pooled z-test)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if p2 <= p1 else 0.0
    return float(0.5 * math.erfc((p2 - p1) / se / math.sqrt(2)))


def oov_signal(
    vocabulary: set[str], ref_oov: tuple[int, int], live_texts: list[str], *, warn: float, drift: float
) -> Signal:
    """Share of live words the training data never used, against the same share for held-out training text."""
    live_words = [w for t in live_texts for w in words(t)]
    unseen = sum(w not in vocabulary for w in live_words)
    k_ref, n_ref = ref_oov
    live_rate = unseen / max(1, len(live_words))
    ref_rate = k_ref / max(1, n_ref)
    p = _two_proportions(k_ref, n_ref, unseen, len(live_words))
    top = Counter(w for w in live_words if w not in vocabulary).most_common(10)
    return Signal(
        "oov",
        live_rate - ref_rate,
        p,
        warn,
        drift,
        detail={"live_rate": live_rate, "reference_rate": ref_rate, "top_unseen": top},
    )


def cramers_v(table: np.ndarray) -> float:
    """Bias-corrected Cramér's V of a contingency table (Bergsma 2013): about 0 for samples of one distribution."""
    from scipy.stats import chi2_contingency

    n = table.sum()
    r, k = table.shape
    chi2 = chi2_contingency(table, correction=False)[0]
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
    r_c, k_c = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    return float(math.sqrt(phi2 / max(1e-12, min(k_c - 1, r_c - 1))))


def _chi2(table: np.ndarray) -> np.ndarray:
    """Pearson chi² of 2 × K tables stacked on the first axis (columns with no counts add nothing)."""
    n = table.sum(axis=(1, 2), keepdims=True)
    expected = table.sum(axis=2, keepdims=True) * table.sum(axis=1, keepdims=True) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    return np.asarray(terms.sum(axis=(1, 2)))


def label_mix_signal(
    ref_counts: dict[str, int],
    live_labels: list[str],
    *,
    warn: float,
    drift: float,
    permutations: int = 1000,
    seed: int = 0,
) -> Signal:
    """Do the answers' labels come in other proportions than on held-out in-distribution rows?

    Both samples are finite: the effect is the bias-corrected Cramér's V of the 2 × labels
    table (with many labels, the total variation distance of two samples of one
    distribution is far from 0; V is not), the p-value a permutation test of its chi²
    (the chi² distribution is wrong for the sparse tables of small windows and many labels).
    """
    counts = Counter(live_labels)
    labels = sorted(x for x in set(ref_counts) | set(counts) if ref_counts.get(x, 0) + counts.get(x, 0) > 0)
    n_ref, n = sum(ref_counts.values()), len(live_labels)
    if n == 0 or n_ref == 0 or len(labels) < 2:
        return Signal("label_mix", 0.0, 1.0, warn, drift)
    table = np.array([[ref_counts.get(x, 0) for x in labels], [counts.get(x, 0) for x in labels]], dtype=float)
    observed = float(_chi2(table[None])[0])
    pooled = np.repeat(np.arange(len(labels)), table.sum(axis=0).astype(int))
    rng = np.random.default_rng(seed)
    tables = np.empty((permutations, 2, len(labels)))
    for i in range(permutations):
        live = rng.permutation(pooled)[:n]
        tables[i, 1] = np.bincount(live, minlength=len(labels))
        tables[i, 0] = table.sum(axis=0) - tables[i, 1]
    p = (1 + int((_chi2(tables) >= observed - 1e-9).sum())) / (permutations + 1)
    share = {x: (ref_counts.get(x, 0) / n_ref, counts.get(x, 0) / n) for x in labels}
    moved = sorted(labels, key=lambda x: -abs(share[x][1] - share[x][0]))[:5]
    tv = 0.5 * sum(abs(b - a) for a, b in share.values())
    return Signal(
        "label_mix",
        cramers_v(table),
        p,
        warn,
        drift,
        detail={"total_variation": tv, "moved": {x: list(share[x]) for x in moved}},
    )


def confidence_signal(ref_conf: list[float], live_conf: list[float], *, warn: float, drift: float) -> Signal:
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(ref_conf, live_conf, alternative="greater").pvalue) if ref_conf and live_conf else 1.0
    drop = float(np.mean(ref_conf) - np.mean(live_conf)) if ref_conf and live_conf else 0.0
    return Signal(
        "confidence",
        drop,
        p,
        warn,
        drift,
        detail={
            "reference_mean": float(np.mean(ref_conf)) if ref_conf else None,
            "live_mean": float(np.mean(live_conf)),
        },
    )


def invalid_signal(
    ref: tuple[int, int], live_invalid: int, live_n: int, *, warn: float, drift: float, name: str = "invalid"
) -> Signal:
    """A rise of a rate (invalid answers; ``name`` abstain: abstentions) over its reference, by Fisher's exact test."""
    from scipy.stats import fisher_exact

    k_ref, n_ref = ref
    rise = live_invalid / max(1, live_n) - k_ref / max(1, n_ref)
    p = 1.0
    if n_ref and live_n:  # exact: the counts are small (a z-test calls one bad answer in 10 certain drift)
        table = [[live_invalid, live_n - live_invalid], [k_ref, n_ref - k_ref]]
        p = float(fisher_exact(table, alternative="greater").pvalue)
    return Signal(
        name,
        rise,
        p,
        warn,
        drift,
        detail={"reference_rate": k_ref / max(1, n_ref), "live_rate": live_invalid / max(1, live_n)},
    )
