"""The dashboard over HTTP (no browser): numbers from the store, gated promote/rollback, auth, read-only.

The browser walk over a real demo project is in tests/integration/test_ui_browser.py.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from fastapi.testclient import TestClient

from slmloop.evaluate.evaluate import evaluate
from slmloop.manifest import GateConfig
from slmloop.release.export import export_release
from slmloop.release.registry import alias_history
from slmloop.store import DatasetVersion, Evaluation, Run
from slmloop.ui.app import create_ui_app

pytestmark = pytest.mark.integration  # trains the tiny model

LOCAL = "http://127.0.0.1"  # the dashboard answers only to local names unless told others


@pytest.fixture
def evaluated(trained_copy):
    """The trained toy project with base and run-1 scored on gold, and no gate but accuracy ≥ 0.0."""
    project = trained_copy
    project.manifest.eval.compare.baseline = "none"
    project.manifest.eval.gates = [GateConfig(metric="accuracy", threshold=0.0)]
    evaluate(project, "base")
    evaluate(project, "run-1")
    return project


def _token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no action form"
    return match.group(1)


def _cell(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert match, f"no #{element_id} on the page"
    return match.group(1).strip()


def test_every_page_shows_the_numbers_in_the_store(evaluated) -> None:
    project = evaluated
    client = TestClient(create_ui_app(project), base_url=LOCAL)
    tuned = project.store.latest(Evaluation, Evaluation.id)
    run = project.store.get(Run, 1, "run", "")
    overview = client.get("/").text
    assert 'data-stage="evaluate"' in overview and f"accuracy {tuned.metrics['accuracy']:.4f}" in overview
    assert "No alias points at a release yet" in overview

    evals = client.get("/evals").text
    row = re.search(r'data-model="run-1">.*?class="n headline">([0-9.]+)<', evals, re.S)
    assert row and row.group(1) == f"{tuned.metrics['accuracy']:.4f}"

    page = client.get(f"/evals/{tuned.id}").text
    assert not list(project.reports_dir.glob("analysis-*"))  # the failure clusters are shown, no report written
    value = re.search(r'data-metric="accuracy"><td>accuracy</td><td class="n value">([0-9.]+)<', page)
    assert value and float(value.group(1)) == pytest.approx(tuned.metrics["accuracy"], abs=5e-5)
    assert "accuracy ≥ 0.0" in page and "PASS" in page

    run_page = client.get("/runs/1").text
    assert _cell(run_page, "val-loss") == f"{run.metrics['val_loss']:.4f}"
    assert f"{run.metrics['train_seconds']:.2f}" in run_page  # forecast against measured

    data = client.get("/data").text
    version = project.store.get(DatasetVersion, run.dataset_id, "dataset version", "")
    row = re.search(rf'data-version="{version.id}">(.*?)</tr>', data, re.S)
    assert row, "the dataset version is not listed"
    cells = re.findall(r'<td class="n">(\d+)</td>', row.group(1))
    assert cells[:3] == [str(version.counts[s]) for s in ("train", "validation", "gold")]
    for page_url in ("/runs", "/releases", "/monitor", "/compare?a=base&b=run-1"):
        assert client.get(page_url).status_code == 200, page_url


def test_rows_browser_filters_by_outcome_text_and_label(evaluated) -> None:
    project = evaluated
    client = TestClient(create_ui_app(project), base_url=LOCAL)
    ev = project.store.latest(Evaluation, Evaluation.id)
    preds = project.store.predictions(ev.id)
    wrong = sum(not p.correct for p in preds)
    spam = sum(p.reference == "spam" for p in preds)
    assert f"{wrong} row(s) match" in client.get(f"/evals/{ev.id}/rows?only=failures").text
    assert f"{len(preds) - wrong} row(s) match" in client.get(f"/evals/{ev.id}/rows?only=correct").text
    assert f"{spam} row(s) match" in client.get(f"/evals/{ev.id}/rows?label=spam").text
    word = preds[0].input.split()[0].lower()
    hits = sum(word in (p.input + p.reference + p.raw).lower() for p in preds)
    assert f"{hits} row(s) match" in client.get(f"/evals/{ev.id}/rows", params={"q": word}).text


def test_compare_page_runs_the_paired_test_on_stored_evaluations(evaluated) -> None:
    from slmloop.analyze.compare import compare_models

    project = evaluated
    client = TestClient(create_ui_app(project), base_url=LOCAL)
    page = client.get("/compare?a=base&b=run-1").text
    assert not list(project.reports_dir.glob("compare-*"))  # looking writes no report
    expected = compare_models(project, ["base", "run-1"]).comparisons[0]
    assert _cell(page, "value-a") == f"{expected.a_value:.4f}" and _cell(page, "value-b") == f"{expected.b_value:.4f}"
    assert f"p = {expected.test.p_value:.3g}" in page and expected.verdict in page
    assert len(project.store.list(Evaluation)) == 2  # reused the stored evaluations: no new one


def test_promote_and_rollback_from_the_dashboard_move_the_alias_in_the_store(evaluated) -> None:
    project = evaluated
    export_release(project, "run-1")  # v2
    client = TestClient(create_ui_app(project), base_url=LOCAL)
    token = _token(client.get("/releases").text)
    r = client.post(
        "/releases/promote",
        data={"csrf": token, "version": "1", "alias": "production", "reason": "first"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and project.store.alias_target("production") == 1
    client.post("/releases/promote", data={"csrf": token, "version": "2", "alias": "production", "reason": "newer"})
    assert project.store.alias_target("production") == 2
    page = client.post("/releases/rollback", data={"csrf": token, "alias": "production", "reason": "bad"}).text
    assert project.store.alias_target("production") == 1
    assert "production rolled back to v1 (from v2)" in page
    moves = alias_history(project, "production")
    assert [(m.action, m.version, m.previous) for m in moves] == [
        ("rollback", 1, 2),
        ("promote", 2, 1),
        ("promote", 1, None),
    ]
    assert moves[0].reason == "bad"


def test_a_failing_gate_refuses_the_promotion_until_it_is_forced(evaluated) -> None:
    project = evaluated
    project.manifest.eval.gates = [GateConfig(metric="accuracy", threshold=1.01)]  # today's gate: nobody passes
    client = TestClient(create_ui_app(project), base_url=LOCAL)
    token = _token(client.get("/releases").text)
    form = {"csrf": token, "version": "1", "alias": "production", "reason": "try"}
    r = client.post("/releases/promote", data=form)
    assert r.status_code == 409 and "cannot be promoted to production" in r.text and 'id="force"' in r.text
    assert project.store.alias_target("production") is None
    client.post("/releases/promote", data={**form, "force": "on"})
    (move,) = alias_history(project, "production")
    assert move.forced and move.version == 1
    assert "was forced to v1 past failed gates" in client.get("/").text


def test_read_only_dashboard_offers_and_accepts_no_action(evaluated) -> None:
    project = evaluated
    client = TestClient(create_ui_app(project, read_only=True), base_url=LOCAL)
    page = client.get("/releases").text
    assert 'method="post"' not in page and "read-only" in page
    r = client.post("/releases/promote", data={"version": "1", "alias": "production", "reason": "x"})
    assert r.status_code == 403 and project.store.alias_target("production") is None


def test_forms_without_the_page_token_are_refused(evaluated) -> None:
    project = evaluated
    client = TestClient(create_ui_app(project), base_url=LOCAL)
    r = client.post("/releases/promote", data={"csrf": "forged", "version": "1", "alias": "production", "reason": "x"})
    assert r.status_code == 403 and project.store.alias_target("production") is None


def test_api_keys_guard_every_page_and_the_login_sets_a_cookie(evaluated) -> None:
    client = TestClient(create_ui_app(evaluated, keys={"s3cret-key"}), base_url=LOCAL)
    assert client.get("/health").status_code == 200
    r = client.get("/releases", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.get("/releases").status_code == 401
    assert client.get("/releases", headers={"authorization": "Bearer s3cret-key"}).status_code == 200
    assert client.post("/login", data={"key": "wrong", "next": "/runs"}).status_code == 401
    r = client.post("/login", data={"key": "s3cret-key", "next": "/runs"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
    assert "s3cret-key" not in cookie  # a session token, never the key itself
    assert client.get("/releases").status_code == 200  # the cookie now
    token = _token(client.get("/releases").text)
    client.post("/releases/promote", data={"csrf": token, "version": "1", "alias": "staging", "reason": "by key"})
    fingerprint = hashlib.sha256(b"s3cret-key").hexdigest()[:8]
    assert alias_history(evaluated, "staging")[0].who == f"ui (key {fingerprint})"  # never the key itself


def test_report_files_stay_inside_the_reports_and_runs_folders(evaluated) -> None:
    client = TestClient(create_ui_app(evaluated), base_url=LOCAL)
    assert client.get("/files/runs/run-1/loss_curve.png").headers["content-type"] == "image/png"
    for path in ("/files/../slmloop.yaml", "/files/slmloop.db", "/files/runs/run-1/../../slmloop.db"):
        assert client.get(path).status_code == 404, path
    missing = client.get("/evals/999")
    assert missing.status_code == 404 and "evaluation 999" in missing.text


def test_bakeoffs_page_shows_the_trials_and_the_winner(trained_copy) -> None:
    from slmloop.graduate.bakeoff import run_bakeoff
    from slmloop.manifest import BakeoffConfig

    project = trained_copy
    project.manifest.eval.compare.baseline = "none"
    client = TestClient(create_ui_app(project), base_url=LOCAL)
    assert "No bake-off yet" in client.get("/bakeoffs").text
    cfg = BakeoffConfig(trials=2, space={"learning_rate": [5e-3, 1e-7]}, halving=None, include_default=False)
    bo = run_bakeoff(project, cfg=cfg, against="run-1")
    page = client.get("/bakeoffs").text
    assert f'data-bakeoff="{bo.id}"' in page and page.count("data-trial=") == 2
    assert "learning_rate=1e-07" in page and "unfinished" not in page
    assert _cell(page, f"winner-gold-{bo.id}") == f"{bo.gold['winner_metrics']['value']:.4f}"
    plot = client.get(f"/files/bakeoffs/{bo.id}/trials.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert client.get(f"/files/bakeoffs/{bo.id}/state.json").status_code == 200
    assert client.get("/files/bakeoffs/../slmloop.db").status_code == 404


def test_a_request_naming_another_host_is_refused_so_a_rebound_page_cannot_promote(evaluated) -> None:
    """DNS rebinding: a page on evil.example re-points its name to 127.0.0.1 and posts to the dashboard; the
    browser still sends Host: evil.example, and the dashboard (with no keys) refuses it."""
    page = TestClient(create_ui_app(evaluated), base_url="http://evil.example:8080")
    assert page.get("/").status_code == 400
    r = page.post("/releases/promote", data={"version": "1", "alias": "production", "reason": "x", "force": "on"})
    assert r.status_code == 400 and alias_history(evaluated, "production") == []
    shared = TestClient(create_ui_app(evaluated, hosts=["dash.internal"]), base_url="http://dash.internal:8080")
    assert shared.get("/").status_code == 200  # a name the operator allowed (slmloop ui --allow-host)


def test_a_session_ends_at_sign_out_and_a_forged_cookie_opens_nothing(evaluated) -> None:
    client = TestClient(create_ui_app(evaluated, keys={"s3cret-key"}), base_url=LOCAL)
    client.post("/login", data={"key": "s3cret-key", "next": "/"}, follow_redirects=False)
    session = client.cookies.get("slmloop_session")
    page = client.get("/releases").text
    assert "Sign out" in page
    other = TestClient(create_ui_app(evaluated, keys={"s3cret-key"}), base_url=LOCAL)
    other.cookies.set("slmloop_session", "s3cret-key")  # the old cookie held the key: it opens nothing now
    assert other.get("/releases").status_code == 401
    assert client.post("/logout", data={"csrf": _token(page)}, follow_redirects=False).status_code == 303
    again = TestClient(create_ui_app(evaluated, keys={"s3cret-key"}), base_url=LOCAL)
    again.cookies.set("slmloop_session", session)  # the ended session, replayed
    assert again.get("/releases").status_code == 401
    assert client.get("/releases").status_code == 401


def test_the_model_servers_api_keys_do_not_open_the_dashboard(evaluated, tmp_path, monkeypatch) -> None:
    """`slmloop ui` reads the dashboard's own keys; a key that calls the model does not promote."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**__import__("os").environ, "SLMLOOP_API_KEYS": "model-key", "SLMLOOP_UI_KEYS": "admin-key"}
    cmd = [sys.executable, "-m", "slmloop", "ui", "--port", str(port), "-p", str(evaluated.root)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(url + "/releases", headers={"authorization": "Bearer model-key"}).status_code == 401
        assert httpx.get(url + "/releases", headers={"authorization": "Bearer admin-key"}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
