"""The whole loop through the real CLI, in subprocesses, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from slmloop.serve.server import ServerProcess
from tests.conftest import write_project
from tests.tiny import toy_rows

pytestmark = pytest.mark.integration


def slm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "slmloop", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_loop_end_to_end_through_the_cli(tmp_path: Path, tiny_model: Path) -> None:
    root = write_project(tmp_path / "proj", tiny_model, toy_rows(200), train={"epochs": 4})
    assert slm("validate", cwd=root).returncode == 0
    imp = slm("data", "import", cwd=root)
    assert imp.returncode == 0 and "accepted 200 + rejected 0" in imp.stdout
    assert slm("data", "prepare", cwd=root).returncode == 0
    assert slm("eval", "--model", "base", cwd=root).returncode == 0
    tr = slm("train", cwd=root)
    assert tr.returncode == 0 and "run-1 completed" in tr.stdout, tr.stderr
    ev = slm("eval", cwd=root)
    assert ev.returncode == 0
    assert "base" in ev.stdout and "run-1" in ev.stdout  # side by side
    ex = slm("export", cwd=root)
    assert ex.returncode == 0 and "release v1" in ex.stdout
    manifest = json.loads((root / ".slmloop" / "releases" / "v1" / "manifest.json").read_text())
    assert manifest["metrics"]["accuracy"] > 0.5

    with ServerProcess(root, release=1) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for row in toy_rows(30, seed=5):
            r = client.post("/v1/predict", json={"text": row["text"]})
            assert r.status_code == 200 and r.json()["label"] in ("ham", "spam")
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200
        assert client.post("/v1/predict", json={"nope": 1}).status_code == 422
    mon = slm("monitor", cwd=root)
    verdict = mon.stdout.split()[0] if mon.stdout else ""
    assert (mon.returncode, verdict) in ((0, "OK"), (0, "WARN"), (1, "DRIFT")), mon.stdout + mon.stderr
    listed = slm("releases", cwd=root)
    assert "v1" in listed.stdout
    failures = slm("eval", "show", "eval-2", "--failures", cwd=root)
    assert failures.returncode == 0
