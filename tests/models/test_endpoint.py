"""An OpenAI-compatible endpoint as a model: retries, rate limits, usage and cost (mock transport)."""

from __future__ import annotations

import json

import httpx
import pytest

from slmloop.errors import ModelError
from slmloop.manifest import EndpointConfig
from slmloop.models.endpoint import Endpoint


def fake_api(fail_first: int = 0, status: int = 429, seen: list | None = None) -> httpx.MockTransport:
    state = {"calls": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        state["calls"] += 1
        body = json.loads(request.content)
        if seen is not None:
            seen.append((request.headers.get("authorization"), body))
        if state["calls"] <= fail_first:
            return httpx.Response(status, headers={"retry-after": "0"}, text="slow down")
        text = body["messages"][-1]["content"]
        answer = "spam" if "win" in text.lower() else "ham"
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 1},
            },
        )

    return httpx.MockTransport(handler)


CFG = EndpointConfig(
    url="https://api.example/v1", model="big-model", price_per_1k_input=1.0, price_per_1k_output=2.0, max_retries=3
)


def test_answers_with_usage_and_cost() -> None:
    seen: list = []
    ep = Endpoint("big", CFG, transport=fake_api(seen=seen), sleep=lambda s: None)
    a = ep.ask([{"role": "user", "content": "win a prize now"}], max_tokens=5)
    assert a.text == "spam" and a.prompt_tokens == 4 and a.completion_tokens == 1 and a.attempts == 1
    assert seen[0][1]["model"] == "big-model" and seen[0][1]["max_tokens"] == 5 and seen[0][1]["temperature"] == 0
    assert ep.cost(1000, 500) == pytest.approx(1.0 + 1.0)


def test_429_is_retried_with_backoff() -> None:
    slept: list[float] = []
    ep = Endpoint("big", CFG, transport=fake_api(fail_first=2), sleep=slept.append)
    a = ep.ask([{"role": "user", "content": "hello"}], 5)
    assert a.text == "ham" and a.attempts == 3 and slept == [1.0, 2.0]


def test_persistent_failure_is_a_clear_error() -> None:
    ep = Endpoint("big", CFG, transport=fake_api(fail_first=99, status=503), sleep=lambda s: None)
    with pytest.raises(ModelError, match="HTTP 503"):
        ep.ask([{"role": "user", "content": "x"}], 5)


def test_client_errors_are_not_retried() -> None:
    ep = Endpoint("big", CFG, transport=fake_api(fail_first=1, status=401), sleep=lambda s: pytest.fail("retried"))
    with pytest.raises(ModelError, match="HTTP 401"):
        ep.ask([{"role": "user", "content": "x"}], 5)


def test_missing_api_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ModelError, match=r"\$NOPE_KEY"):
        Endpoint("big", CFG.model_copy(update={"api_key_env": "NOPE_KEY"}))
    monkeypatch.setenv("NOPE_KEY", "sk-test")
    seen: list = []
    ep = Endpoint("big", CFG.model_copy(update={"api_key_env": "NOPE_KEY"}), transport=fake_api(seen=seen))
    ep.ask([{"role": "user", "content": "x"}], 5)
    assert seen[0][0] == "Bearer sk-test"


def test_many_requests_keep_their_order() -> None:
    ep = Endpoint("big", CFG.model_copy(update={"max_concurrency": 4}), transport=fake_api())
    convs = [[{"role": "user", "content": t}] for t in ["win", "hi", "WIN big", "ok"] * 5]
    answers = ep.ask_many(convs, 5, progress=None)
    assert [a.text for a in answers] == ["spam", "ham", "spam", "ham"] * 5


def test_log_probabilities_are_asked_for_and_kept_only_when_configured() -> None:
    seen: list = []
    lp = [{"token": "spam", "logprob": -0.1, "top_logprobs": [{"token": "spam", "logprob": -0.1}]}]

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        choice = {"message": {"role": "assistant", "content": "spam"}, "finish_reason": "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": lp}
        return httpx.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    plain = Endpoint("big", CFG, transport=httpx.MockTransport(handler)).ask([{"role": "user", "content": "x"}], 5)
    assert "logprobs" not in seen[-1] and plain.logprobs is None
    cfg = CFG.model_copy(update={"logprobs": True})
    asked = Endpoint("big", cfg, transport=httpx.MockTransport(handler)).ask([{"role": "user", "content": "x"}], 5)
    assert seen[-1]["logprobs"] is True and seen[-1]["top_logprobs"] == 5
    assert asked.logprobs == lp
