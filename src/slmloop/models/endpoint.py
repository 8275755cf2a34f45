"""Any OpenAI-compatible chat-completions endpoint as a model (a frontier API, vLLM, or `slmloop serve`).

Requests run concurrently (``max_concurrency``) under an optional client-side
rate limit; 429, 5xx and network errors are retried with exponential backoff
(honouring ``Retry-After``). Every answer keeps its latency and token usage, so
evaluations can report latency percentiles and cost. The HTTP transport is
injectable (``httpx.MockTransport`` in tests).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from slmloop.errors import ConfigError, ModelError
from slmloop.manifest import EndpointConfig

__all__ = ["Answer", "Endpoint"]

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class Answer:
    text: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    #: per answer token: {token, logprob, top_logprobs: [{token, logprob}]} when asked for and returned
    logprobs: list[dict[str, Any]] | None = None


class _RateLimit:
    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        time.sleep(max(0.0, start - now))


class Endpoint:
    def __init__(
        self,
        name: str,
        cfg: EndpointConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name, self.cfg, self.sleep = name, cfg, sleep
        headers = {"content-type": "application/json"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ModelError(
                    f"endpoint {name!r} needs an API key in ${cfg.api_key_env}, which is not set",
                    hint=f"export {cfg.api_key_env}=… (or remove api_key_env for endpoints without auth)",
                )
            headers["authorization"] = f"Bearer {key}"
        self.client = httpx.Client(
            base_url=cfg.url.rstrip("/"), headers=headers, timeout=cfg.timeout, transport=transport
        )
        self.limit = _RateLimit(cfg.requests_per_second)

    @classmethod
    def declared(
        cls, endpoints: Mapping[str, EndpointConfig], name: str, transport: httpx.BaseTransport | None = None
    ) -> Endpoint:
        """The endpoint ``name`` of ``eval.endpoints``; an undeclared name is a clear error."""
        if name not in endpoints:
            raise ConfigError(
                f"no endpoint named {name!r}",
                hint=f"Declare it under eval.endpoints (have: {', '.join(endpoints) or 'none'}).",
            )
        return cls(name, endpoints[name], transport=transport)

    def ask(self, messages: list[dict[str, str]], max_tokens: int) -> Answer:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if self.cfg.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        delay, last_error = 1.0, ""
        for attempt in range(1, self.cfg.max_retries + 2):
            self.limit.wait()
            t0 = time.perf_counter()
            try:
                r = self.client.post("/chat/completions", json=body)
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code == 200:
                    data = r.json()
                    usage = data.get("usage") or {}
                    logprobs = (data["choices"][0].get("logprobs") or {}).get("content")
                    return Answer(
                        text=(data["choices"][0]["message"].get("content") or "").strip(),
                        latency_s=time.perf_counter() - t0,
                        prompt_tokens=int(usage.get("prompt_tokens", 0)),
                        completion_tokens=int(usage.get("completion_tokens", 0)),
                        attempts=attempt,
                        logprobs=logprobs if isinstance(logprobs, list) else None,
                    )
                last_error = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in RETRY_STATUS:
                    break
                retry_after = r.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            if attempt <= self.cfg.max_retries:
                self.sleep(delay)
                delay = min(delay * 2, 60.0)
        raise ModelError(
            f"endpoint {self.name!r} ({self.cfg.url}) failed: {last_error}",
            hint="Check the URL, model name and API key; raise eval.endpoints.<name>.max_retries for flaky APIs.",
        )

    def ask_many(
        self, conversations: Sequence[list[dict[str, str]]], max_tokens: int, progress: Callable[[int], None] | None
    ) -> list[Answer]:
        def one(messages: list[dict[str, str]]) -> Answer:
            answer = self.ask(messages, max_tokens)
            if progress:
                progress(1)
            return answer

        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            return list(pool.map(one, conversations))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.cfg.price_per_1k_input + completion_tokens * self.cfg.price_per_1k_output) / 1000

    def close(self) -> None:
        self.client.close()
