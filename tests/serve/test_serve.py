from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from slmloop.manifest import ServeConfig
from slmloop.project import open_project
from slmloop.serve.server import build_app

pytestmark = pytest.mark.integration  # trains the tiny model


@pytest.fixture(scope="module")
def served(trained_project: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve") / "proj"
    shutil.copytree(trained_project, root)
    project = open_project(root)
    app, _ = build_app(project, None)
    with TestClient(app) as client:
        yield client, project
    project.close()


def test_health_and_models(served) -> None:
    client, _ = served
    health = {"status": "ok", "model": "toy-v1", "release": 1, "task": "classification", "queued": 0}
    assert client.get("/health").json() == health
    assert client.get("/v1/models").json()["data"][0]["id"] == "toy-v1"


def test_predict_returns_a_label_with_scores(served) -> None:
    client, _ = served
    r = client.post("/v1/predict", json={"text": "WINNER you won a free prize call 12345 now"})
    assert r.status_code == 200
    body = r.json()
    assert body["label"] in ("ham", "spam")
    assert set(body["scores"]) == {"ham", "spam"} and abs(sum(body["scores"].values()) - 1) < 1e-6


def test_chat_completions_is_openai_shaped(served) -> None:
    client, _ = served
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "anything",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 5,
            "top_p": 1,
            "presence_penalty": 0,  # knobs OpenAI clients send are accepted
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("path", "payload", "status", "needle"),
    [
        ("/v1/predict", b'{"text": ', 422, "JSON"),
        ("/v1/predict", b'{"txt": "hi"}', 422, "txt"),
        ("/v1/predict", b'{"text": "   "}', 422, "non-empty"),
        ("/v1/chat/completions", b'{"messages": []}', 422, "messages"),
        ("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "x"}]}', 422, "role"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            422,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}',
            422,
            "max_tokens_limit",
        ),
        ("/v1/predict", b'{"text": "\\ud800"}', 422, "not valid Unicode"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\udfffb"}]}', 422, "Unicode"),
        ("/v1/predict", b'{"text": "caf\xe9 \xff"}', 400, "UTF-8"),
    ],
)
def test_bad_requests_get_a_4xx_json_error(served, path: str, payload: bytes, status: int, needle: str) -> None:
    client, _ = served
    r = client.post(path, content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"


def test_every_request_is_logged(served) -> None:
    client, project = served
    assert client.app.state.server.log.flush()  # earlier tests' rows are stored first, so they are not counted as ours
    before = len(project.store.requests())
    client.post("/v1/predict", json={"text": "logged text"})
    client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    assert client.app.state.server.log.flush()  # rows are stored by a writer thread, off the response path
    rows = project.store.requests()[before:]
    assert [(r.endpoint, r.status) for r in rows] == [("/v1/predict", 200), ("/v1/predict", 422)]
    assert rows[0].input == "logged text" and '"label"' in rows[0].output and rows[0].release_version == 1


def test_an_oversized_input_is_refused_before_the_model_sees_it(served) -> None:
    client, _ = served
    r = client.post("/v1/predict", json={"text": "spam " * 80_000})  # 400,000 characters
    assert r.status_code == 413
    assert "400,000 characters" in r.json()["error"]["message"] and r.json()["error"]["code"] == "input_too_long"
    big = b'{"text": "' + b"a" * 1_100_000 + b'"}'
    r = client.post("/v1/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]["message"]


def test_streaming_sends_the_same_answer_as_one_response(served) -> None:
    client, _ = served
    ask = {"messages": [{"role": "user", "content": "free prize"}], "max_tokens": 8}
    whole = client.post("/v1/chat/completions", json=ask).json()
    with client.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip() == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_metrics_count_requests_errors_tokens_and_batches(served) -> None:
    client, _ = served
    client.post("/v1/predict", json={"text": "count me"})
    client.post("/v1/predict", json={"txt": "bad"})
    body = client.get("/metrics").text
    assert re.search(r'slmloop_requests_total\{endpoint="/v1/predict",status="200"\} [1-9]', body)
    assert re.search(r'slmloop_errors_total\{code="invalid_request"\} [1-9]', body)
    assert re.search(r'slmloop_tokens_total\{kind="prompt"\} [1-9]', body)
    assert re.search(r"slmloop_batch_size_count [1-9]", body)
    assert "slmloop_request_latency_seconds_bucket" in body and "slmloop_release_version 1.0" in body


def test_api_keys_are_required_when_set(trained_copy) -> None:
    from slmloop.manifest import ServeConfig
    from slmloop.serve.app import create_app
    from slmloop.serve.server import load_predictor

    app = create_app(load_predictor(trained_copy, None), trained_copy.store, ServeConfig(), keys={"k-123"})
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200  # liveness stays open
        r = client.post("/v1/predict", json={"text": "hi"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert (
            client.post("/v1/predict", json={"text": "hi"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        )
        assert (
            client.post("/v1/predict", json={"text": "hi"}, headers={"Authorization": "Bearer k-123"}).status_code
            == 200
        )
        assert client.get("/v1/models", headers={"X-API-Key": "k-123"}).status_code == 200


def test_an_engine_that_cannot_give_the_evaluated_answers_refuses_the_release(trained_copy) -> None:
    # the toy classifier answers with ranked labels and a label prior: vLLM here only generates text, so the
    # release is refused before a GPU server is started for it, naming what it cannot do
    from slmloop.errors import ServeError
    from slmloop.serve.server import load_predictor

    trained_copy.manifest.serve.engine = "vllm"
    with pytest.raises(ServeError, match=r"cannot be served with vLLM.*rank the labels") as caught:
        load_predictor(trained_copy, None)
    assert "--engine transformers" in (caught.value.hint or "")


def test_batched_answers_equal_one_at_a_time_answers(trained_copy) -> None:
    from slmloop.serve.engine import Batcher, Job, ModelSlot
    from slmloop.serve.server import load_predictor

    predictor = load_predictor(trained_copy, None)
    texts = ["free prize now", "see you at lunch", "URGENT claim your cash", "ok", "call me later please"]
    sizes: list[int] = []
    batcher = Batcher(ModelSlot(predictor), max_batch=8, wait_ms=500, observe=sizes.append)
    futures = [batcher.submit(Job("predict", ("predict",), t)) for t in texts]
    batched = [f.result(timeout=60)[1] for f in futures]
    batcher.close()
    assert sum(sizes) == 5 and max(sizes) > 1  # requests shared a forward pass
    # padding changes the kernels' summation order: within float32 rounding, or bf16's (2^-8) where it runs so
    # (a CPU with AMX gave 0.0017); a masking bug moves a probability by far more
    tol = 1e-3 if str(predictor.engine.model.dtype) == "torch.float32" else 2**-8
    for text, got in zip(texts, batched, strict=True):
        alone = predictor.predict(text)
        assert got["label"] == alone["label"]
        for label, p in alone["scores"].items():
            assert abs(got["scores"][label] - p) < tol


def test_the_request_log_can_redact_pii(trained_copy) -> None:
    from slmloop.manifest import ServeConfig
    from slmloop.serve.app import create_app
    from slmloop.serve.server import load_predictor

    app = create_app(load_predictor(trained_copy, None), trained_copy.store, ServeConfig(redact_pii=True))
    with TestClient(app) as client:
        assert client.post("/v1/predict", json={"text": "mail jane.doe@example.com now"}).status_code == 200
    (row,) = trained_copy.store.requests()
    assert "jane.doe@example.com" not in row.input and "mail" in row.input and row.release_version == 1


def test_a_forming_group_waits_for_each_next_request_under_load_and_not_when_idle() -> None:
    """Idle: a lone request is answered without waiting. Under load: each next request that comes within
    wait_ms of the last joins the forming group; a stream that never pauses is cut at WAIT_CAP x wait_ms.
    The batcher's clock is driven by hand (and wait_ms is 10 minutes of it): no assertion depends on how fast
    this machine is."""
    import threading
    from concurrent.futures import Future

    from slmloop.serve.engine import WAIT_CAP, Batcher, Job, ModelSlot

    wait = 600.0  # seconds, on the batcher's clock

    class Echo:  # the grouping policy is under test here, not a model
        def __init__(self) -> None:
            self.gate = threading.Event()
            self.gate.set()

        def predict_many(self, payloads: list[str]) -> list[str]:
            self.gate.wait(30)
            return list(payloads)

    def settle(batcher: Batcher) -> None:
        """Until the worker has taken every queued request (it is then forming a group, or answering)."""
        for _ in range(10_000):
            if batcher._queue.empty():
                return
            time.sleep(0.001)
        raise AssertionError("the batcher never took the queued requests")

    def loaded(sizes: list[int], now: list[float]) -> Batcher:
        """A batcher under load: it answered one request while two more queued up, and grouped those two."""
        echo = Echo()
        batcher = Batcher(
            ModelSlot(echo), max_batch=64, wait_ms=wait * 1000, observe=sizes.append, clock=lambda: now[0]
        )
        echo.gate.clear()
        first = batcher.submit(Job("predict", ("predict",), "a"))
        settle(batcher)
        queued = [batcher.submit(Job("predict", ("predict",), x)) for x in "bc"]
        echo.gate.set()
        assert [f.result(timeout=10)[1] for f in [first, *queued]] == ["a", "b", "c"]
        assert sizes == [1, 2]
        sizes.clear()
        return batcher

    def stream(batcher: Batcher, now: list[float], n: int, gap: float) -> list[Future[Any]]:
        futures = []
        for i in range(n):
            futures.append(batcher.submit(Job("predict", ("predict",), str(i))))
            settle(batcher)
            now[0] += gap
        return futures

    sizes: list[int] = []
    batcher = Batcher(ModelSlot(Echo()), max_batch=64, wait_ms=wait * 1000, observe=sizes.append)
    # an idle server does not wait its 10-minute wait_ms for company (the result would time out)
    assert batcher.submit(Job("predict", ("predict",), "alone")).result(timeout=30)[1] == "alone"
    batcher.close()

    # requests half a wait apart join one group; a pause longer than a wait closes it
    sizes.clear()
    now = [0.0]
    batcher = loaded(sizes, now)
    futures = stream(batcher, now, 6, wait / 2)
    now[0] += 2 * wait
    late = batcher.submit(Job("predict", ("predict",), "late"))
    assert [f.result(timeout=10)[1] for f in futures] == [str(i) for i in range(6)]
    assert sizes == [6]  # one group: a fixed wait from the first request would have cut it after 2-3
    batcher.close()
    assert late.result(timeout=10)[1] == "late" and sizes == [6, 1]

    # a stream that never pauses is cut WAIT_CAP waits after the group's first request: 2 x WAIT_CAP requests
    # half a wait apart, one more when the cap falls between taking a request and reading the clock
    sizes.clear()
    now = [0.0]
    batcher = loaded(sizes, now)
    futures = stream(batcher, now, 3 * WAIT_CAP, wait / 2)
    batcher.close()
    assert all(f.result(timeout=10)[1] for f in futures)
    assert sum(sizes) == len(futures) and 2 * WAIT_CAP <= sizes[0] <= 2 * WAIT_CAP + 1


def test_a_request_that_fails_its_batch_fails_alone() -> None:
    """A group fails (a request the model cannot take): each of its requests is answered alone, so only the
    bad one hears of it; a stream that already sent tokens cannot start again and hears the group's error."""
    import threading

    from slmloop.serve.engine import Batcher, Job, ModelSlot

    class Picky:
        def __init__(self) -> None:
            self.gate, self.calls = threading.Event(), []

        def predict_many(self, payloads: list[str]) -> list[str]:
            self.gate.wait(30)
            self.calls.append(list(payloads))
            if "boom" in payloads:
                raise RuntimeError("the chat template refused it")
            return [p.upper() for p in payloads]

    picky = Picky()
    sizes: list[int] = []
    batcher = Batcher(ModelSlot(picky), max_batch=8, wait_ms=0, observe=sizes.append)
    first = batcher.submit(Job("predict", ("predict",), "first"))  # holds the worker while the group queues up
    for _ in range(3000):
        if batcher._queue.empty():
            break
        time.sleep(0.001)
    group = [batcher.submit(Job("predict", ("predict",), x)) for x in ("a", "boom", "b")]
    picky.gate.set()
    assert first.result(timeout=10)[1] == "FIRST"
    assert group[0].result(timeout=10)[1] == "A" and group[2].result(timeout=10)[1] == "B"
    with pytest.raises(RuntimeError, match="refused"):
        group[1].result(timeout=10)
    batcher.close()
    assert sizes == [1, 3] and picky.calls[1:] == [["a", "boom", "b"], ["a"], ["boom"], ["b"]]


def test_an_unexpected_failure_is_a_json_500_that_is_logged_and_counted(trained_copy, monkeypatch) -> None:
    from slmloop.serve.app import create_app
    from slmloop.serve.server import load_predictor

    predictor = load_predictor(trained_copy, None)

    def broken(texts: list[str]) -> list[dict]:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(predictor, "predict_many", broken)
    with TestClient(create_app(predictor, trained_copy.store), raise_server_exceptions=False) as client:
        r = client.post("/v1/predict", json={"text": "hello"})
        assert r.status_code == 500
        assert r.json()["error"] == {
            "message": "the server failed to answer: RuntimeError: out of memory",
            "type": "server_error",
            "code": "internal_error",
        }
        metrics = client.get("/metrics").text
    assert 'slmloop_errors_total{code="internal_error"} 1.0' in metrics
    assert 'slmloop_requests_total{endpoint="/v1/predict",status="500"} 1.0' in metrics
    (row,) = trained_copy.store.requests()
    assert row.status == 500 and row.input == "hello"


class _Gated:
    """A stand-in predictor that answers only when its gate opens (a model busy on a long batch)."""

    def __init__(self, task: Any) -> None:
        import threading

        self.gate, self.seen = threading.Event(), []
        self.task, self.name, self.release, self.max_new_tokens = task, "gated-v1", 1, 8

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def predict_many(self, texts: list[str]) -> list[dict]:
        self.gate.wait(60)
        self.seen.extend(texts)
        return [{"label": "ham", "scores": {"ham": 1.0}} for _ in texts]


def _until(check: Any, what: str) -> Any:
    for _ in range(2000):
        if value := check():
            return value
        time.sleep(0.005)
    raise AssertionError(f"never: {what}")


def test_a_full_queue_answers_429_with_retry_after_and_a_late_request_503(trained_copy) -> None:
    import threading

    from slmloop.serve.app import create_app

    gated = _Gated(trained_copy.task)
    cfg = ServeConfig(max_queue=2, max_batch=1, request_timeout_s=0.5, batching=False)
    app = create_app(gated, trained_copy.store, cfg)
    with TestClient(app) as client:
        answers: dict[str, Any] = {}

        def ask(text: str) -> None:
            answers[text] = client.post("/v1/predict", json={"text": text})

        first = threading.Thread(target=ask, args=("first",))
        first.start()  # the worker takes it and waits at the gate
        _until(lambda: client.get("/health").json()["queued"] == 0 and "first" not in answers, "first taken")
        waiting = [threading.Thread(target=ask, args=(t,)) for t in ("second", "third")]
        for w in waiting:
            w.start()
        _until(lambda: client.get("/health").json()["queued"] == 2, "two queued")
        full = client.post("/v1/predict", json={"text": "fourth"})
        assert full.status_code == 429 and full.json()["error"]["code"] == "overloaded"
        assert int(full.headers["retry-after"]) >= 1
        for t in (first, *waiting):
            t.join(30)
        # the three waited past serve.request_timeout_s: 503, and the two never started are dropped
        assert {t: r.status_code for t, r in answers.items()} == {"first": 503, "second": 503, "third": 503}
        assert all(r.json()["error"]["code"] == "timeout" for r in answers.values())
        gated.gate.set()
        assert client.post("/v1/predict", json={"text": "after"}).status_code == 200
        assert gated.seen == ["first", "after"]  # "second" and "third" were cancelled before they ran
        metrics = client.get("/metrics").text
        assert 'slmloop_errors_total{code="overloaded"} 1.0' in metrics
        assert 'slmloop_errors_total{code="timeout"} 3.0' in metrics


def test_health_says_when_the_worker_is_stuck_or_dead(trained_copy) -> None:
    import threading

    from slmloop.serve.app import create_app

    gated = _Gated(trained_copy.task)
    app = create_app(gated, trained_copy.store, ServeConfig(request_timeout_s=0.1))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        asking = threading.Thread(target=lambda: client.post("/v1/predict", json={"text": "slow"}))
        asking.start()
        stuck = _until(lambda: (r := client.get("/health")).status_code == 503 and r.json(), "stuck reported")
        assert stuck["status"] == "stuck" and stuck["busy_s"] > 0.2
        gated.gate.set()
        asking.join(30)
        _until(lambda: client.get("/health").status_code == 200, "healthy again")
        app.state.server.batcher.close()  # the worker ends (as if it had crashed)
        dead = client.get("/health")
        assert dead.status_code == 503 and dead.json()["status"] == "dead"


def test_the_request_log_is_written_off_the_response_path_and_counts_what_it_drops(trained_copy) -> None:
    """A slow database delays no answer: rows queue for the writer thread; past the bound they are dropped
    and counted, and a failing database loses its rows (counted) without stopping the writer."""
    import threading
    from contextlib import contextmanager

    from slmloop.serve.requestlog import RequestLogWriter
    from slmloop.store import RequestLog

    store = trained_copy.store
    real, slow = store.session, threading.Event()
    fail = {"on": False}

    @contextmanager
    def stalled():  # a database that takes its time, then maybe fails
        slow.wait(30)
        if fail["on"]:
            raise RuntimeError("database is locked")
        with real() as s:
            yield s

    store.session = stalled  # type: ignore[method-assign]
    writer = RequestLogWriter(store, max_queued=3)
    rows = [RequestLog(endpoint="/v1/predict", status=200, input=f"r{i}", output="") for i in range(8)]
    writer.write(rows[0])
    _until(lambda: writer._queue.empty(), "the writer took the first row")
    for row in rows[1:]:
        writer.write(row)  # returns at once: the writer is stuck on the first
    assert writer.dropped == 4  # 3 queued behind the first, 4 over the bound
    slow.set()
    writer.close()
    store.session = real  # type: ignore[method-assign]
    assert sorted(r.input for r in store.requests()) == ["r0", "r1", "r2", "r3"]
    fail["on"] = True
    store.session = stalled  # type: ignore[method-assign]
    broken = RequestLogWriter(store)
    broken.write(RequestLog(endpoint="/v1/predict", status=200, input="lost", output=""))
    broken.close()
    store.session = real  # type: ignore[method-assign]
    assert broken.failed == 1 and all(r.input != "lost" for r in store.requests())


def test_the_request_log_keeps_its_retention(trained_copy) -> None:
    import datetime as dt

    from slmloop.serve.requestlog import RequestLogWriter
    from slmloop.store import RequestLog, utcnow

    store = trained_copy.store
    old = utcnow() - dt.timedelta(days=100)
    for i, ts in enumerate([old, old, utcnow()]):
        store.add(RequestLog(endpoint="/v1/predict", status=200, input=f"r{i}", output="", ts=ts))
    keep_all = RequestLogWriter(store, retention_days=None)
    keep_all.close()
    assert len(store.requests()) == 3 and keep_all.pruned == 0
    writer = RequestLogWriter(store, retention_days=90)  # prunes as it starts
    writer.write(RequestLog(endpoint="/v1/predict", status=200, input="new", output=""))
    writer.close()
    assert [r.input for r in store.requests()] == ["r2", "new"] and writer.pruned == 2


def test_chats_of_different_budgets_share_a_batch_and_a_request_nobody_waits_for_stops(trained_copy) -> None:
    # a client varying max_tokens / temperature no longer forces batches of one; each row leaves the batch at
    # its own budget, and a row whose client left stops at its next token while its batch mates go on
    import threading

    from slmloop.serve.engine import Batcher, Job, ModelSlot
    from slmloop.serve.server import load_predictor

    predictor = load_predictor(trained_copy, None)
    texts = ["free prize call now", "see you at lunch", "WINNER claim cash"]
    asks = [
        ([{"role": "user", "content": t}], n, temp)
        for t, n, temp in zip(texts, (3, 12, 7), (0.0, 0.0, 2.0), strict=True)
    ]
    alone = [predictor.chat_many([m], n, temp)[0] for m, n, temp in asks]
    sizes: list[int] = []
    gate = threading.Event()

    class Held:  # the first group waits at the gate so that the others queue up behind it
        def __getattr__(self, name: str) -> Any:
            return getattr(predictor, name)

        def chat_many(self, *args: Any, **kw: Any) -> Any:
            gate.wait(30)
            return predictor.chat_many(*args, **kw)

    batcher = Batcher(ModelSlot(Held()), max_batch=8, wait_ms=0.0, observe=sizes.append)  # type: ignore[arg-type]
    first = batcher.submit(Job("chat", ("chat",), asks[0][0], max_tokens=2))
    for _ in range(1000):
        if batcher._queue.empty():
            break
        time.sleep(0.001)
    jobs = [Job("chat", ("chat",), m, max_tokens=n, temperature=temp) for m, n, temp in asks]
    left = Job("chat", ("chat",), asks[1][0], max_tokens=50)
    left.on_token = lambda _t: left.abandon()  # its client leaves once the first token is out
    futures = [batcher.submit(j) for j in [*jobs, left]]
    gate.set()
    answers = [f.result(timeout=60)[1] for f in futures]
    first.result(timeout=60)
    batcher.close()
    assert sizes == [1, 4]  # the three budgets and temperatures, and the leaving one, in one batch
    for (_, n, temp), got, want in zip(asks, answers[:3], alone, strict=True):
        assert got.completion_tokens <= n
        if temp == 0:
            assert got.text == want.text and got.completion_tokens == want.completion_tokens
    assert answers[3].completion_tokens == 1 and left.abandoned  # stopped at its first token, not its 50


def test_an_exclusive_swap_closes_the_old_release_before_the_new_one_loads() -> None:
    """vLLM holds the GPU's memory: the old server stops before the new one starts, no group runs meanwhile, and a
    new release that fails to load brings the old one back (reported, then tried again after a back-off)."""
    from slmloop.serve.engine import ModelSlot

    events: list[str] = []

    class Loaded:  # the swap order is under test here, not a model
        def __init__(self, release: int) -> None:
            self.release, self.name = release, f"v{release}"
            events.append(f"load v{release}")

        def close(self) -> None:
            events.append(f"close v{self.release}")

    def load(version: int) -> Loaded:
        if version == 3:
            events.append("load v3 failed")
            raise RuntimeError("CUDA out of memory")
        return Loaded(version)

    slot = ModelSlot(Loaded(1))  # type: ignore[arg-type]
    alias = [2]
    slot.watch(lambda: alias[0], load, 0.01, exclusive=True)  # type: ignore[arg-type]
    for _ in range(500):
        if slot.current.release == 2:
            break
        time.sleep(0.01)
    assert events == ["load v1", "close v1", "load v2"]
    alias[0] = 3
    for _ in range(500):
        if slot.reload_error is not None:
            break
        time.sleep(0.01)
    slot.stop()
    assert events[3:6] == ["close v2", "load v3 failed", "load v2"]  # the old one back, never both at once
    assert slot.current.release == 2 and "out of memory" in slot.reload_error["error"]


def test_a_child_server_dies_with_the_slmloop_that_started_it(tmp_path) -> None:
    """However slmloop dies (kill -9 here), the vLLM server it started does not hold the GPU on."""
    import os
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from slmloop.serve.server import start_child\n"
            "child = start_child([sys.executable, '-c', 'import time; time.sleep(300)'], subprocess.DEVNULL)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived its parent")
