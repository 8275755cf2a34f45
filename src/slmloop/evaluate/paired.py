"""Two evaluations on the same gold rows: better, worse, or not distinguishable at this gold size.

The difference of a metric with its paired-bootstrap CI, a paired test (McNemar
for per-row rates, a paired permutation test otherwise), the smallest effect
this gold size can detect, and one sentence a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from slmloop.errors import ConfigError
from slmloop.evaluate.results import evaluation_task, row_scores
from slmloop.evaluate.stats import PairedTest, mcnemar, min_detectable_effect, paired_bootstrap_diff, paired_permutation
from slmloop.manifest import EvalConfig, TaskConfig
from slmloop.metrics import HEADLINE, METRICS, RowScores
from slmloop.project import Project
from slmloop.store import Evaluation

__all__ = ["Comparison", "compare_pair", "paired_test", "verdict"]


@dataclass
class Comparison:
    a: Evaluation
    b: Evaluation
    metric: str
    a_value: float
    b_value: float
    test: PairedTest
    verdict: str  # better | worse | not distinguishable
    mde: float
    sentence: str


def verdict(test: PairedTest, alpha: float, min_effect: float, higher_is_better: bool = True) -> str:
    gain = test.diff if higher_is_better else -test.diff
    if test.p_value < alpha and gain >= max(min_effect, 1e-12):
        return "better"
    if test.p_value < alpha and gain < 0:
        return "worse"
    return "not distinguishable"


def _cost(e: Evaluation) -> float | None:
    return e.metrics.get("runtime", {}).get("cost_per_1k_requests")


def _sentence(c: Comparison, confidence: float) -> str:
    pts = METRICS[c.metric].points if c.metric in METRICS else 1
    unit = " points" if pts == 100 else ""
    lo, hi = c.test.ci
    ci = f"{100 * confidence:.0f} % CI {pts * lo:+.1f} to {pts * hi:+.1f}"
    p = "p < 0.001" if c.test.p_value < 0.001 else f"p = {c.test.p_value:.3f}"
    who, other = c.b.model_ref, c.a.model_ref
    ca, cb = _cost(c.a), _cost(c.b)
    cost = ""
    if ca and cb and ca > 0 and cb > 0:
        ratio = ca / cb
        cost = (
            f" at {ratio:.0f}× lower cost"
            if ratio >= 1.5
            else (f" at {1 / ratio:.0f}× higher cost" if ratio <= 1 / 1.5 else " at similar cost")
        )
    d = pts * c.test.diff
    if c.verdict == "better":
        return f"{who} beats {other} by {abs(d):.1f}{unit} of {c.metric} ({ci}, {c.test.test} {p}){cost}."
    if c.verdict == "worse":
        return f"{who} is worse than {other} by {abs(d):.1f}{unit} of {c.metric} ({ci}, {c.test.test} {p}){cost}."
    return (
        f"{who} is within {abs(d):.1f}{unit} of {other} on {c.metric} ({ci}, {p}): not distinguishable with "
        f"{c.test.n} gold rows (this size detects differences of about {pts * c.mde:.1f}{unit}){cost}."
    )


def paired_test(sa: RowScores, sb: RowScores, metric: str) -> PairedTest:
    """metric(B) - metric(A) on the same rows, with its CI and p-value."""
    if METRICS[metric].per_row is not None:
        return mcnemar(sa.hits(metric), sb.hits(metric))
    test = paired_permutation(lambda swap: sb.mix(sa, swap).metric(metric) - sa.mix(sb, swap).metric(metric), sa.n)
    test.ci = paired_bootstrap_diff(lambda i: sa.metric(metric, i), lambda i: sb.metric(metric, i), sa.n)
    return test


def _shared_task(project: Project, a: Evaluation, b: Evaluation) -> TaskConfig:
    """One task to rescore both: classification label lists are joined (a label only one model knows)."""
    ta, tb = evaluation_task(project, a), evaluation_task(project, b)
    if ta.type == "classification" and ta.label_list != tb.label_list:
        return ta.model_copy(update={"labels": sorted(set(ta.label_list) | set(tb.label_list))})
    return ta


def compare_pair(
    project: Project, a: Evaluation, b: Evaluation, metric: str | None = None, cfg: EvalConfig | None = None
) -> Comparison:
    """Paired comparison of two evaluations on the same gold version (B against A)."""
    cfg = cfg or project.manifest.eval
    if a.gold_id != b.gold_id:
        raise ConfigError(
            f"{a.name} and {b.name} scored different gold versions ({a.gold_id}, {b.gold_id})",
            hint="Re-run `slmloop eval` for both on the current gold set.",
        )
    task = _shared_task(project, a, b)
    metric = metric or HEADLINE[task.type][0]
    sa, sb = row_scores(project, a, cfg, task), row_scores(project, b, cfg, task)
    if metric not in sa.names or metric not in sb.names:
        raise ConfigError(f"{metric!r} is not a metric of this task", hint=f"Use one of: {', '.join(sa.names)}.")
    test = paired_test(sa, sb, metric)
    va, vb = sa.metric(metric), sb.metric(metric)
    mde = min_detectable_effect(sa.n, (va + vb) / 2 if 0 <= va <= 1 else 0.5, cfg.compare.alpha)
    better = METRICS[metric].higher_is_better
    c = Comparison(
        a, b, metric, va, vb, test, verdict(test, cfg.compare.alpha, cfg.compare.min_effect, better), mde, ""
    )
    c.sentence = _sentence(c, cfg.confidence)
    return c
