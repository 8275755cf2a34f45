"""The real server process (uvicorn) facing hostile input: every bad request gets a quick 4xx JSON answer."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from slmloop.serve.server import ServerProcess

pytestmark = pytest.mark.integration  # trains the tiny model; starts a server

KEY = {"Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def server(trained_project: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("served") / "proj"
    shutil.copytree(trained_project, root)
    with ServerProcess(root, env={"SLMLOOP_API_KEYS": "test-key,other-key"}) as s:
        yield s.url


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        url + "/v1/predict",
        content=body,
        headers={"content-type": "application/json", **KEY, **(headers or {})},
        timeout=60,
    )


def test_the_api_key_comes_from_the_environment(server: str) -> None:
    assert httpx.post(server + "/v1/predict", json={"text": "hi"}).status_code == 401
    assert httpx.post(server + "/v1/predict", json={"text": "hi"}, headers=KEY).status_code == 200
    assert httpx.get(server + "/health").status_code == 200


def _model_answered(url: str) -> float:
    """Requests the model has answered so far (the sum of the batch-size histogram)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("slmloop_batch_size_sum"):
            return float(line.split()[-1])
    return 0.0


def test_a_400k_character_input_is_refused_at_once_and_delays_no_one(server: str) -> None:
    normal: list[int] = []

    def other_client() -> None:
        for _ in range(5):
            normal.append(httpx.post(server + "/v1/predict", json={"text": "lunch at noon"}, headers=KEY).status_code)

    answered_before = _model_answered(server)
    t = threading.Thread(target=other_client)
    t.start()
    r = httpx.post(server + "/v1/predict", json={"text": "x" * 400_000}, headers=KEY, timeout=60)
    t.join()
    assert r.status_code == 413 and r.json()["error"]["code"] == "input_too_long"
    # refused on its length in characters, before the tokenizer (which took minutes over such an input) ran
    assert "400,000 characters" in r.json()["error"]["message"]
    assert normal == [200] * 5
    assert _model_answered(server) - answered_before == 5  # the model saw the five, never the 400k one


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"text": "\\ud800"}', 422, "not valid Unicode"),  # a lone surrogate
        (b'{"text": "\xff\xfe\xfa"}', 400, "UTF-8"),  # not UTF-8 at all
        (b"\xff" * 64, 400, "UTF-8"),
        (b'{"text": ' + b'"a' + b"b" * 1_200_000 + b'"}', 413, "max_request_bytes"),
    ],
)
def test_malformed_bodies_get_a_json_4xx_from_the_real_server(
    server: str, body: bytes, status: int, needle: str
) -> None:
    r = _post(server, body)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]


def test_the_upstream_engine_answers_like_the_server_it_forwards_to(server: str, trained_project: Path) -> None:
    """The vLLM engine's client side, against a real OpenAI-compatible server (slmloop's own)."""
    from slmloop.predict.engines import UpstreamEngine
    from slmloop.project import open_project
    from slmloop.serve.engine import Predictor
    from slmloop.serve.server import load_predictor

    project = open_project(trained_project)
    local = load_predictor(project, None)
    remote = Predictor(
        UpstreamEngine(server + "/v1", "toy-v1", local.tokenizer, api_key="other-key"),
        task=local.task,
        name="toy-v1",
        release=1,
        max_new_tokens=local.max_new_tokens,
        prompt=local.prompt,
    )
    texts = ["free prize call now", "see you at lunch"]
    conversations = [[{"role": "user", "content": t}] for t in texts]
    # one conversation at a time: a random tiny model's near-tied logits can flip between a batch of two
    # and a lone pass, and whether the server groups two concurrent requests depends on their timing
    here = [local.chat_many([c], 6)[0] for c in conversations]
    streamed: dict[int, list[int]] = {0: [], 1: []}
    there = [
        remote.chat_many([c], 6, on_token=lambda _, t, k=k: streamed[k].append(t))[0]
        for k, c in enumerate(conversations)
    ]
    assert [a.text for a in there] == [a.text for a in here]
    assert [local.tokenizer.decode(streamed[i]).strip() for i in (0, 1)] == [a.text for a in here]
    # a classifier's answer is a ranked label: an engine that only generates is refused, not answered otherwise
    from slmloop.errors import ModelError

    with pytest.raises(ModelError, match="cannot rank labels"):
        remote.predict_many(texts)
    remote.mode = "generate"  # a release evaluated with eval.mode: generate is answered by generation alike
    labels = remote.predict_many(texts)
    assert all(r["label"] in (None, "ham", "spam") and "raw" in r for r in labels)
    project.close()


def test_live_quality_scores_the_running_server_on_gold(trained_copy, monkeypatch) -> None:
    from slmloop.cli import main
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.monitor.live import live_quality
    from slmloop.store import Evaluation

    project = trained_copy
    project.manifest.eval.compare.baseline = "none"
    recorded = evaluate(project, "v1")
    monkeypatch.setenv("SLMLOOP_API_KEYS", "live-key")  # the server requires it; the live client sends it
    with ServerProcess(project.root, env={"SLMLOOP_API_KEYS": "live-key"}) as s:
        check = live_quality(project, s.url)
        sampled = live_quality(project, s.url, sample=10)
        assert main(["monitor", "gold", "--url", s.url, "--sample", "12", "-p", str(project.root)]) == 0
    assert check.recorded == recorded.name and check.live.startswith("eval-") and check.rows == recorded.n_rows
    assert abs(check.live_value - check.recorded_value) <= 0.05 and check.verdict != "worse"
    assert sampled.rows == 10 and sampled.live == "sample of 10" and sampled.verdict != "worse"
    live = project.store.latest(Evaluation, Evaluation.id)
    assert live.model_ref == "live:toy-v1"  # the full check is stored; the sampled ones are not


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as raw bytes over a socket (no client library tidies it up): the status and body."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_an_authorization_header_with_any_bytes_is_refused_with_a_json_401(server: str) -> None:
    body = b'{"text": "hi"}'
    for raw in (b"Bearer t\xe9st-key", b"Bearer \xff\xfe\x80key", b"\xc3\xa9", b"Bearer test-key\x7f"):
        request = (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Authorization: " + raw + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        status, answer = _raw(server, request)
        assert 400 <= status < 500, (raw, status, answer)  # never a 500
        if status == 401:
            assert json.loads(answer)["error"]["code"] == "invalid_api_key"
    ok = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    ok += b"Authorization: Bearer test-key\r\nContent-Length: 14\r\n\r\n" + body
    assert _raw(server, ok)[0] == 200  # the same path with the key answers


def test_requests_to_random_paths_do_not_grow_the_metrics(server: str) -> None:
    before = httpx.get(server + "/metrics").text.splitlines()
    for i in range(150):
        httpx.get(f"{server}/probe-{i}", headers=KEY)
        httpx.post(f"{server}/v1/probe-{i}", json={}, headers=KEY)
    after = httpx.get(server + "/metrics").text.splitlines()
    assert not any("probe-" in line for line in after)
    assert len(after) - len(before) < 40  # the "other" path's few series, not 300 paths' worth
    assert any('endpoint="other"' in line and 'status="404"' in line for line in after)


def test_under_overload_the_server_refuses_with_429_and_answers_the_rest(trained_project: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    root = tmp_path / "proj"
    shutil.copytree(trained_project, root)
    manifest = yaml.safe_load((root / "slmloop.yaml").read_text())
    manifest["serve"] = {"max_queue": 1, "batching": False}
    (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    with ServerProcess(root) as s:

        def ask(i: int) -> httpx.Response:
            return httpx.post(s.url + "/v1/predict", json={"text": f"free prize {i} call now"}, timeout=60)

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(ask, range(192)))
        statuses = {r.status_code for r in answers}
        assert statuses == {200, 429}, statuses
        refused = [r for r in answers if r.status_code == 429]
        assert all(r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1 for r in refused)
        assert ask(999).status_code == 200  # and it answers normally right after
        assert httpx.get(s.url + "/health").json()["status"] == "ok"


def test_a_body_over_the_limit_is_refused_whatever_its_framing(server: str) -> None:
    # no Content-Length (chunked): the limit still holds, and the body is not read past it
    def chunks(total: int) -> Any:
        yield b'{"text": "'
        for _ in range(total // 65536):
            yield b"a" * 65536
        yield b'"}'

    r = httpx.post(
        server + "/v1/predict",
        content=chunks(2_000_000),
        headers={"content-type": "application/json", **KEY},
        timeout=60,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "max_request_bytes" in r.json()["error"]["message"]
    ok = httpx.post(
        server + "/v1/predict",
        content=iter([b'{"text": ', b'"lunch at noon"}']),
        headers={"content-type": "application/json", **KEY},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["label"] in ("ham", "spam")


def _metric(url: str, prefix: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_a_client_that_leaves_mid_stream_stops_its_generation(server: str) -> None:
    import socket
    import time

    # greedy, the toy model never ends this answer before its 1,024 tokens: it is still generating when the client
    # leaves after its first words
    before = _metric(server, 'slmloop_abandoned_total{when="running"}')
    body = json.dumps(
        {"messages": [{"role": "user", "content": "tell me more"}], "max_tokens": 1024, "temperature": 0.0,
         "stream": True}
    ).encode()  # fmt: skip
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer test-key\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        received = sock.recv(4096)
        assert b"200 OK" in received
        # the headers and the role chunk come before the model runs: leave once a word has come, so the
        # generation is under way (leaving earlier drops the request from the queue: when="queued")
        while b'"content"' not in received and len(received) < 1_000_000:
            received += sock.recv(4096)
        assert b'"content"' in received
    for _ in range(100):
        if _metric(server, 'slmloop_abandoned_total{when="running"}') > before:
            break
        time.sleep(0.1)
    assert _metric(server, 'slmloop_abandoned_total{when="running"}') == before + 1
    assert _metric(server, 'slmloop_requests_total{endpoint="/v1/chat/completions",status="499"}') >= 1
    assert httpx.post(server + "/v1/predict", json={"text": "hi"}, headers=KEY).status_code == 200
