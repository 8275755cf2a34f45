"""``slmloop monitor``: does live traffic still look like the training data?

Reference: a seeded sample of the training inputs of the release being served.
Live: the inputs the server logged for that release. Tests:

- **length** — two-sample Kolmogorov–Smirnov on word counts;
- **embedding** — MMD² between MiniLM sentence embeddings (RBF kernel, median
  bandwidth) with a permutation p-value, plus the cosine distance of centroids;
- **predictions** (classification) — chi-square of the live label mix against
  the training label mix; reported as a prediction shift.

Verdict: ``drift`` when an input test is significant at ``alpha`` after a
Bonferroni correction, ``stable`` otherwise, ``insufficient`` below
``monitor.min_requests`` live requests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from slmloop.data.versions import load_dataset
from slmloop.models.embedder import embed
from slmloop.project import Project
from slmloop.store import DriftReport, RequestLog
from slmloop.targets import resolve_release
from slmloop.tasks import input_text

__all__ = ["DriftResult", "embedding_test", "length_test", "mmd2", "monitor"]

LIVE_ENDPOINTS = ("/v1/predict", "/v1/chat/completions")


@dataclass
class DriftResult:
    verdict: str
    n_live: int
    n_reference: int
    tests: dict[str, Any] = field(default_factory=dict)


def length_test(reference: list[str], live: list[str]) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    ref = [len(t.split()) for t in reference]
    cur = [len(t.split()) for t in live]
    res = ks_2samp(ref, cur)
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "reference_mean_words": sum(ref) / len(ref),
        "live_mean_words": sum(cur) / len(cur),
    }


def mmd2(k: Any, n_x: int) -> float:
    """Biased MMD² from a kernel matrix whose first ``n_x`` rows are sample X."""
    kxx = k[:n_x, :n_x].mean()
    kyy = k[n_x:, n_x:].mean()
    kxy = k[:n_x, n_x:].mean()
    return float(kxx + kyy - 2 * kxy)


def embedding_test(ref_emb: Any, live_emb: Any, permutations: int, seed: int = 0) -> dict[str, Any]:
    """MMD² with an RBF kernel (median heuristic) and a permutation p-value."""
    import numpy as np

    x = np.concatenate([ref_emb, live_emb]).astype(np.float64)
    n_x, n = len(ref_emb), len(x)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    bandwidth = float(np.median(d2[np.triu_indices(n, 1)])) or 1.0
    k = np.exp(-d2 / bandwidth)
    observed = mmd2(k, n_x)
    rng = np.random.default_rng(seed)
    # all permutations at once: z[p, i] = 1 when point i is in group X under permutation p
    z = np.zeros((permutations, n))
    for p in range(permutations):
        z[p, rng.permutation(n)[:n_x]] = 1.0
    kz = z @ k
    sxx = (kz * z).sum(1)
    total = k.sum()
    row = k.sum(1)
    sxy = z @ row - sxx
    syy = total - sxx - 2 * sxy
    n_y = n - n_x
    null = sxx / n_x**2 + syy / n_y**2 - 2 * sxy / (n_x * n_y)
    p_value = (1 + int((null >= observed).sum())) / (permutations + 1)
    c_ref, c_live = ref_emb.mean(0), live_emb.mean(0)
    cos = float(c_ref @ c_live / (np.linalg.norm(c_ref) * np.linalg.norm(c_live) + 1e-12))
    return {
        "mmd2": observed,
        "p_value": p_value,
        "null_mean": float(null.mean()),
        "centroid_cosine_distance": 1.0 - cos,
        "permutations": permutations,
    }


def _prediction_test(train_labels: list[str], live_labels: list[str], labels: list[str]) -> dict[str, Any]:
    from scipy.stats import chisquare

    counts = [sum(x == lab for x in live_labels) for lab in labels]
    ref = [sum(x == lab for x in train_labels) + 0.5 for lab in labels]  # +0.5: no zero expectations
    total = sum(counts)
    expected = [r / sum(ref) * total for r in ref]
    res = chisquare(counts, expected)
    return {
        "p_value": float(res.pvalue),
        "live": dict(zip(labels, counts, strict=True)),
        "train_share": {lab: r / sum(ref) for lab, r in zip(labels, ref, strict=True)},
    }


def _live_rows(project: Project, release: int, last: int | None) -> list[RequestLog]:
    rows = [
        r
        for r in project.store.requests(release=release)
        if r.status == 200 and r.endpoint in LIVE_ENDPOINTS and r.input.strip()
    ]
    return rows[-last:] if last else rows


def monitor(
    project: Project,
    release_ref: str | int | None = None,
    *,
    last: int | None = None,
    console: Console | None = None,
) -> tuple[DriftReport, DriftResult]:
    """Compare the live inputs of a release with its training inputs; store a drift report."""
    console = console or Console(stderr=True)
    cfg = project.manifest.monitor
    task = project.task
    release = resolve_release(project, release_ref)
    splits = load_dataset(project, release.dataset_id)
    rng = random.Random(0)
    train = list(splits.train)
    rng.shuffle(train)
    reference_rows = train[: cfg.reference_size]
    reference = [input_text(task, r) for r in reference_rows]
    live_rows = _live_rows(project, release.version, last)
    live = [r.input for r in live_rows]
    result = DriftResult("insufficient", len(live), len(reference))
    if len(live) >= cfg.min_requests:
        with console.status(f"embedding {len(reference)} reference and {len(live)} live inputs …"):
            emb = embed(reference + live, cfg.embedding_model, project.home / "cache" / "embeddings")
        result.tests["length"] = length_test(reference, live)
        result.tests["embedding"] = embedding_test(emb[: len(reference)], emb[len(reference) :], cfg.permutations)
        input_tests = ("length", "embedding")
        threshold = cfg.alpha / len(input_tests)
        drifted = [t for t in input_tests if result.tests[t]["p_value"] < threshold]
        result.verdict = "drift" if drifted else "stable"
        result.tests["drifted"] = drifted
        result.tests["threshold"] = threshold
        if task.type == "classification":
            live_labels = []
            for r in live_rows:
                try:
                    live_labels.append(json.loads(r.output).get("label"))
                except (json.JSONDecodeError, AttributeError):
                    continue
            if live_labels:
                result.tests["predictions"] = _prediction_test(
                    [r["label"] for r in splits.train], live_labels, task.label_list
                )
                result.tests["predictions"]["shift"] = result.tests["predictions"]["p_value"] < cfg.alpha
        from slmloop.monitor.report import write_drift_report

        report_dir = write_drift_report(project, release.version, result, reference, live, emb)
    else:
        report_dir = None
    report = DriftReport(
        release_version=release.version,
        verdict=result.verdict,
        n_requests=len(live),
        stats={
            "tests": result.tests,
            "n_reference": len(reference),
            "window": {
                "last": last,
                "first_request": live_rows[0].id if live_rows else None,
                "last_request": live_rows[-1].id if live_rows else None,
            },
        },
        path=project.relative(report_dir) if report_dir else "",
    )
    project.store.add(report, "monitor.report", f"v{release.version}", verdict=result.verdict, n_requests=len(live))
    return report, result
