from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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
    assert client.get("/health").json() == {"status": "ok", "model": "toy-v1", "release": 1, "task": "classification"}
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
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stream": true}', 400, "stream"),
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
    before = len(project.store.requests())
    client.post("/v1/predict", json={"text": "logged text"})
    client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    rows = project.store.requests()[before:]
    assert [(r.endpoint, r.status) for r in rows] == [("/v1/predict", 200), ("/v1/predict", 422)]
    assert rows[0].input == "logged text" and '"label"' in rows[0].output and rows[0].release_version == 1
