"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slmloop_requests", "Requests answered, by endpoint and HTTP status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "slmloop_request_latency_seconds",
            "Time from request to response, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("slmloop_tokens", "Tokens read (prompt) and written (completion).", ["kind"], registry=r)
        self.errors = Counter("slmloop_errors", "Error responses, by error code.", ["code"], registry=r)
        self.batch_size = Histogram(
            "slmloop_batch_size", "Requests answered by one forward pass.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.release = Gauge("slmloop_release_version", "The release version answering now.", registry=r)
        self.log_dropped = Gauge(
            "slmloop_request_log_dropped",
            "Request log rows lost (the writer fell behind, or the database failed).",
            registry=r,
        )
        self.abandoned = Counter(
            "slmloop_abandoned",
            "Requests nobody waited for any more (client gone, deadline passed): dropped while queued, or "
            "stopped while running.",
            ["when"],
            registry=r,
        )
        self.reload_failures = Gauge(
            "slmloop_reload_failures", "Releases that failed to load since the server started.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
