"""``slmloop monitor``: does live traffic still look like what the release was built for?

The requests a release answered (from the server's request log) are cut into
consecutive windows of ``monitor.window`` requests. Each window is compared with
the release's :mod:`reference profile <slmloop.release.profile>` on the signals
of :mod:`slmloop.monitor.signals`: embedding, length, out-of-vocabulary rate and,
from the logged answers, label mix, confidence and invalid-output rate. Every
signal has an effect size, a p-value, warn/drift thresholds from
``monitor.thresholds`` and a verdict ``ok | warn | drift``; a window's verdict
is its worst signal's, the run's its worst window's. Every run is stored (with
an HTML report that plots each signal per window against its thresholds), can
POST its JSON to ``monitor.webhook``, and ``slmloop monitor`` exits 1 on drift.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from slmloop.manifest import MonitorConfig
from slmloop.monitor.signals import (
    Signal,
    confidence_signal,
    embedding_signal,
    invalid_signal,
    judge,
    label_mix_signal,
    length_signal,
    oov_signal,
    overall,
    words,
    worst,
)
from slmloop.predict.targets import resolve_release
from slmloop.progress import status
from slmloop.project import Project
from slmloop.release.profile import ReferenceProfile, load_profile
from slmloop.store import DriftReport, RequestLog

__all__ = ["DriftResult", "Window", "confidence_of", "live_requests", "logged_answer", "monitor", "score_window"]

LIVE_ENDPOINTS = ("/v1/predict", "/v1/chat/completions")


@dataclass
class Window:
    index: int
    first_request: int
    last_request: int
    n: int
    verdict: str
    signals: list[dict[str, Any]]


@dataclass
class DriftResult:
    verdict: str  # ok | warn | drift | insufficient
    release: int
    window_size: int
    n_live: int
    n_reference: int
    windows: list[Window] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "release": self.release,
            "window_size": self.window_size,
            "n_live": self.n_live,
            "n_reference": self.n_reference,
            "windows": [w.__dict__ for w in self.windows],
        }


def logged_answer(output: str) -> dict[str, Any]:
    """The JSON body the server logged for a request (``{}`` when it is not one)."""
    try:
        obj = json.loads(output)
    except (json.JSONDecodeError, TypeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def confidence_of(answer: dict[str, Any]) -> float | None:
    """The top-label probability of a logged classification answer, if it has scores."""
    scores = answer.get("scores")
    return float(max(scores.values())) if isinstance(scores, dict) and scores else None


def score_window(
    profile: ReferenceProfile, texts: list[str], outputs: list[str], emb: np.ndarray, cfg: MonitorConfig
) -> list[Signal]:
    """Every signal of one window of live inputs (``emb``: their embeddings) and logged outputs."""
    t = cfg.thresholds
    signals = [
        embedding_signal(
            profile.embeddings, emb, warn=t.embedding[0], drift=t.embedding[1], permutations=cfg.permutations
        ),
        length_signal(profile.lengths, [len(words(x)) for x in texts], warn=t.length[0], drift=t.length[1]),
        oov_signal(set(profile.vocabulary), profile.oov, texts, warn=t.oov[0], drift=t.oov[1]),
    ]
    answers = [logged_answer(o) for o in outputs]
    labels = [str(a["label"]) for a in answers if a.get("label") is not None]
    if profile.label_counts and labels:
        signals.append(label_mix_signal(profile.label_counts, labels, warn=t.label_mix[0], drift=t.label_mix[1]))
    confidence = [c for c in map(confidence_of, answers) if c is not None]
    if profile.confidence and confidence:
        signals.append(confidence_signal(profile.confidence, confidence, warn=t.confidence[0], drift=t.confidence[1]))
    if profile.invalid[1] and answers:
        bad = sum(
            a.get("valid") is False or ("label" in a and a["label"] is None and not a.get("abstained")) for a in answers
        )
        signals.append(invalid_signal(profile.invalid, bad, len(answers), warn=t.invalid[0], drift=t.invalid[1]))
    if profile.abstained[1] and answers:  # a classifier that abstains: more "none of these" = traffic it was not for
        said = sum(bool(a.get("abstained")) for a in answers)
        signals.append(
            invalid_signal(profile.abstained, said, len(answers), warn=t.invalid[0], drift=t.invalid[1], name="abstain")
        )
    return [judge(s, cfg.alpha) for s in signals]


def live_requests(
    project: Project, release: int, since: dt.datetime | None = None, last: int | None = None
) -> list[RequestLog]:
    rows = [
        r
        for r in project.store.requests(release=release)
        if r.status == 200
        and r.endpoint in LIVE_ENDPOINTS
        and r.input.strip()
        and (since is None or r.ts.replace(tzinfo=dt.UTC) >= since)
    ]
    return rows[-last:] if last else rows


def _post_webhook(url: str, payload: dict[str, Any], console: Console) -> None:
    import httpx

    try:
        httpx.post(url, json=payload, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:  # an unreachable webhook must not hide the verdict
        console.print(f"[yellow]webhook {url} failed: {exc}[/yellow]")


def monitor(
    project: Project,
    release_ref: str | int | None = None,
    *,
    last: int | None = None,
    since: dt.datetime | None = None,
    window: int | None = None,
    console: Console | None = None,
) -> tuple[DriftReport, DriftResult]:
    """Score the logged traffic of a release window by window; store the run and its report."""
    from slmloop.models.embedder import embed
    from slmloop.monitor.report import write_drift_report

    console = console or Console(stderr=True)
    cfg = project.manifest.monitor
    release = resolve_release(project, release_ref)
    with status(console, "reference profile …"):
        profile = load_profile(project, release)
    rows = live_requests(project, release.version, since, last)
    size = window or cfg.window or max(1, len(rows))
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
    if len(chunks) > 1 and len(chunks[-1]) < cfg.min_requests:
        chunks[-2].extend(chunks.pop())  # a short tail joins the window before it
    chunks = [c for c in chunks if len(c) >= cfg.min_requests]
    result = DriftResult("insufficient", release.version, size, len(rows), len(profile.texts))
    if chunks:
        texts = [r.input for c in chunks for r in c]
        with status(console, f"embedding {len(texts)} live inputs …"):
            emb = embed(texts, cfg.embedding_model, project.home / "cache" / "embeddings")
        at = 0
        for i, chunk in enumerate(chunks):
            part = emb[at : at + len(chunk)]
            at += len(chunk)
            signals = score_window(profile, [r.input for r in chunk], [r.output for r in chunk], part, cfg)
            result.windows.append(
                Window(i, chunk[0].id, chunk[-1].id, len(chunk), overall(signals), [s.as_dict() for s in signals])
            )
        result.verdict = worst(w.verdict for w in result.windows)
    report_dir = write_drift_report(project, result) if result.windows else None
    report = DriftReport(
        release_version=release.version,
        verdict=result.verdict,
        n_requests=len(rows),
        stats={**result.as_dict(), "config": cfg.model_dump(mode="json")},
        path=project.relative(report_dir) if report_dir else "",
    )
    project.store.add(report, "monitor.report", f"v{release.version}", verdict=result.verdict, n_requests=len(rows))
    if cfg.webhook and result.verdict in cfg.webhook_on:
        _post_webhook(cfg.webhook, {"report": report.id, **result.as_dict()}, console)
    return report, result
