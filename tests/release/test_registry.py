"""The release registry: verify, model card, gated promote, rollback, alias history, schema migration."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from slmloop.cli import main
from slmloop.errors import ConfigError, GateError, NotFoundError
from slmloop.evaluate.evaluate import evaluate
from slmloop.manifest import GateConfig
from slmloop.predict.targets import resolve_release
from slmloop.release.export import export_release
from slmloop.release.registry import alias_history, aliases, promote, rollback
from slmloop.store import Release, Store

pytestmark = pytest.mark.integration  # trains the tiny model


def _evaluate_with_gate(project, ref: str, threshold: float):
    project.manifest.eval.gates = [GateConfig(metric="accuracy", threshold=threshold)]
    project.manifest.eval.compare.baseline = "none"
    return evaluate(project, ref)


def test_promote_is_gated_forced_moves_are_recorded_and_rollback_goes_back(trained_copy, monkeypatch) -> None:
    project = trained_copy
    monkeypatch.setenv("SLMLOOP_USER", "ana")
    with pytest.raises(GateError, match="no evaluation on the current gold set"):
        promote(project, "v1", "production", reason="first")

    _evaluate_with_gate(project, "v1", threshold=1.01)  # a gate nobody passes
    with pytest.raises(GateError, match=r"accuracy >= 1.01"):
        promote(project, "v1", "production", reason="first")
    forced = promote(project, "v1", "production", reason="hotfix", force=True)
    assert forced.forced and forced.previous is None and forced.who == "ana"
    event = project.store.events(kind="alias.promote")[0]
    assert event.payload["forced"] is True and event.payload["failed_gates"][0].startswith("accuracy >= 1.01 (is ")

    v2 = export_release(project, "run-1")
    _evaluate_with_gate(project, f"v{v2.version}", threshold=0.0)
    moved = promote(project, "v2", "production", reason="better")
    assert (moved.version, moved.previous, moved.forced) == (2, 1, False)
    assert resolve_release(project, "production").version == 2
    with pytest.raises(ConfigError, match="already points at v2"):
        promote(project, "v2", "production", reason="again")

    back = rollback(project, "production")
    assert (back.version, back.previous, back.action) == (1, 2, "rollback")
    assert [(a.alias, a.version) for a in aliases(project)] == [("production", 1)]
    history = alias_history(project, "production")
    assert [(h.action, h.previous, h.version) for h in history] == [
        ("rollback", 2, 1),
        ("promote", 1, 2),
        ("promote", None, 1),
    ]
    assert [h.reason for h in history[1:]] == ["better", "hotfix"]


def test_promotion_judges_the_gates_of_today_not_those_of_the_evaluation(trained_copy) -> None:
    project = trained_copy
    _evaluate_with_gate(project, "v1", threshold=0.0)
    project.manifest.eval.gates = [GateConfig(metric="accuracy", threshold=1.01)]  # stricter since
    with pytest.raises(GateError, match=r"accuracy >= 1.01"):
        promote(project, "v1", "production", reason="stricter gate")
    project.manifest.eval.gates = []
    assert promote(project, "v1", "production", reason="no gate").version == 1


def test_rollback_of_an_unknown_or_fresh_alias_is_a_clear_error(trained_copy) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        rollback(trained_copy, "staging")
    promote(trained_copy, "v1", "staging", reason="try", force=True)
    with pytest.raises(ConfigError, match="no earlier version"):
        rollback(trained_copy, "staging")
    with pytest.raises(ConfigError, match="cannot be an alias"):
        promote(trained_copy, "v1", "v2", reason="x", force=True)


def test_cli_promote_refuses_with_exit_3_and_verify_names_the_changed_file(trained_copy, capsys) -> None:
    root = str(trained_copy.root)
    assert main(["promote", "v1", "--to", "production", "--reason", "go", "-p", root]) == 3
    assert "no evaluation" in capsys.readouterr().err
    assert main(["promote", "v1", "--to", "production", "--reason", "go", "--force", "-p", root]) == 0
    assert main(["releases", "-p", root]) == 0
    shown = capsys.readouterr().out
    assert "production" in shown and "(forced)" in shown

    assert main(["verify", "production", "-p", root]) == 0
    folder = trained_copy.locate(trained_copy.store.get(Release, 1, "release", "").path)
    weights = folder / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    weights.write_bytes(bytes(data))
    assert main(["verify", "v1", "-p", root]) != 0
    assert "adapter/adapter_model.safetensors (checksum differs)" in capsys.readouterr().err


def test_release_ships_a_model_card_with_the_measured_metrics(trained_copy) -> None:
    project = trained_copy
    ev = _evaluate_with_gate(project, "run-1", threshold=0.0)
    rel = export_release(project, "run-1")
    folder = project.locate(rel.path)
    card = (folder / "README.md").read_text()
    lo, hi = ev.metrics["ci"]["accuracy"]
    assert f"{ev.metrics['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in card
    assert "**run-1 (this release)**" in card and rel.dataset_id in card and rel.gold_id in card
    assert "README.md" in json.loads((folder / "manifest.json").read_text())["files"]
    old = project.locate(project.store.get(Release, 1, "release", "").path) / "README.md"
    assert "Not evaluated" in old.read_text()  # v1 was exported before any evaluation


def test_a_store_from_schema_1_is_migrated_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"))
        c.execute(text("INSERT INTO meta VALUES ('schema_version', '1')"))
        c.execute(
            text(
                "CREATE TABLE alias_history (id INTEGER PRIMARY KEY, ts DATETIME, alias VARCHAR(64), "
                "version INTEGER, previous INTEGER, reason TEXT)"
            )
        )
        c.execute(text("INSERT INTO alias_history VALUES (1, '2026-01-01 00:00:00', 'production', 1, NULL, 'old')"))
    engine.dispose()
    store = Store(url)
    assert store.get_meta("schema_version") == "3"
    from slmloop.store import AliasHistory

    (row,) = store.list(AliasHistory)
    assert (row.alias, row.reason, row.who, row.action, row.forced) == ("production", "old", "", "promote", False)
    store.close()


def test_promote_and_rollback_under_load_swap_the_served_model_without_a_failed_request(trained_copy) -> None:
    import threading
    import time

    import httpx
    import yaml

    from slmloop.serve.server import ServerProcess

    project = trained_copy
    manifest = yaml.safe_load((project.root / "slmloop.yaml").read_text())
    manifest["serve"] = {"reload_interval": 0.3}
    (project.root / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    promote(project, "v1", "production", reason="first", force=True)
    export_release(project, "run-1")  # v2

    statuses: list[int] = []
    models: set[str] = set()
    stop = threading.Event()

    def traffic(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                r = client.post("/v1/predict", json={"text": "free prize, call now"})
                statuses.append(r.status_code)
                models.add(r.json().get("model", "?"))

    def wait_for(url: str, release: int) -> None:
        deadline = time.monotonic() + 90
        while httpx.get(url + "/health").json()["release"] != release:
            assert time.monotonic() < deadline, f"the server never switched to v{release}"
            time.sleep(0.2)

    def keep_going(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 90
        while not done():
            assert time.monotonic() < deadline, "the clients stopped getting answers"
            time.sleep(0.05)

    with ServerProcess(project.root, alias="production") as server:
        clients = [threading.Thread(target=traffic, args=(server.url,)) for _ in range(4)]
        for c in clients:
            c.start()
        promote(project, "v2", "production", reason="newer", force=True)
        wait_for(server.url, 2)
        answered = len(statuses)
        keep_going(lambda: len(statuses) > answered + 8)  # the clients go on through the new release
        rollback(project, "production", reason="back")
        wait_for(server.url, 1)
        answered = len(statuses)
        keep_going(lambda: len(statuses) > answered + 8)
        stop.set()
        for c in clients:
            c.join()
    assert len(statuses) > 20 and set(statuses) == {200}
    assert models == {"toy-v1", "toy-v2"}


def test_rollback_walks_the_promotions_back_and_never_forward(trained_copy) -> None:
    project = trained_copy
    for _ in range(2):
        export_release(project, "run-1")  # v2, v3
    for v in (1, 2, 3):
        promote(project, f"v{v}", "production", reason=f"v{v}", force=True)
    assert rollback(project, "production").version == 2
    assert rollback(project, "production").version == 1  # not back to v3
    with pytest.raises(ConfigError, match="no earlier version"):
        rollback(project, "production")  # every promotion rolled back: nothing earlier, and never forward
    assert resolve_release(project, "production").version == 1
    promote(project, "v3", "production", reason="again", force=True)
    assert rollback(project, "production").version == 1  # a new promotion goes back where it came from


def test_a_move_that_expects_another_version_is_refused(trained_copy) -> None:
    from slmloop.errors import ConflictError

    project = trained_copy
    export_release(project, "run-1")  # v2
    promote(project, "v1", "production", reason="first", force=True)
    promote(project, "v2", "production", reason="second", force=True, expect=1)
    # a second operator, who saw production at v1, clicks again: refused, not applied on top of the first's move
    with pytest.raises(ConflictError, match="points at v2 now, not at v1"):
        promote(project, "v2", "production", reason="double submit", force=True, expect=1)
    with pytest.raises(ConflictError, match="points at v2 now, not at v1"):
        rollback(project, "production", expect=1)
    assert rollback(project, "production", expect=2).version == 1
    assert main(["rollback", "production", "--from", "v2", "-p", str(project.root)]) == 4  # exit 4: a conflict
    assert len(alias_history(project, "production")) == 3


def test_rollback_refuses_a_release_whose_files_changed(trained_copy) -> None:
    project = trained_copy
    export_release(project, "run-1")  # v2
    promote(project, "v1", "production", reason="first", force=True)
    promote(project, "v2", "production", reason="second", force=True)
    card = project.locate(project.store.get(Release, 1, "release", "").path) / "README.md"
    card.write_text(card.read_text() + "tampered\n")
    with pytest.raises(GateError, match="changed since export"):
        rollback(project, "production")
    assert resolve_release(project, "production").version == 2


def test_concurrent_promotions_are_serialised_and_each_records_what_it_replaced(trained_copy) -> None:
    """Two processes promote at the same moment: each move's 'previous' is the one before it, none repeated."""
    import subprocess
    import sys

    project = trained_copy
    for _ in range(3):
        export_release(project, "run-1")  # v2, v3, v4
    promote(project, "v1", "production", reason="first", force=True)
    code = (
        "import sys; from slmloop.project import open_project; from slmloop.release.registry import promote; "
        "p = open_project(sys.argv[1]); promote(p, sys.argv[2], 'production', reason='race', force=True)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(project.root), f"v{v}"]) for v in (2, 3, 4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    history = list(reversed(alias_history(project, "production")))
    assert [h.previous for h in history[1:]] == [h.version for h in history[:-1]]  # a chain, no fork
    assert sorted(h.version for h in history[1:]) == [2, 3, 4]


def test_a_changed_release_is_never_served(trained_copy) -> None:
    """Checked against its export checksums before it loads: at start, and at a hot swap (where the old
    release keeps answering, the failure shows in /health and /metrics, and the watcher backs off)."""
    import time

    import httpx
    import yaml

    from slmloop.errors import ServeError
    from slmloop.serve.server import ServerProcess, load_predictor

    project = trained_copy
    manifest = yaml.safe_load((project.root / "slmloop.yaml").read_text())
    manifest["serve"] = {"reload_interval": 0.2}
    (project.root / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    promote(project, "v1", "production", reason="first", force=True)
    v2 = export_release(project, "run-1")
    config = project.locate(v2.path) / "merged" / "config.json"
    config.write_text(config.read_text().replace("}", ', "planted": 1}', 1))
    with pytest.raises(ServeError, match=r"v2 changed since it was exported.*merged/config.json"):
        load_predictor(project, 2)
    assert main(["serve", "--release", "2", "-p", str(project.root)]) == 1

    with ServerProcess(project.root, alias="production") as server:
        promote(project, "v2", "production", reason="tampered", force=True)
        deadline = time.monotonic() + 60
        while "reload_error" not in (health := httpx.get(server.url + "/health").json()):
            assert time.monotonic() < deadline, "the failed reload never showed in /health"
            time.sleep(0.1)
        assert health["release"] == 1 and health["reload_error"]["release"] == 2
        assert "changed since it was exported" in health["reload_error"]["error"]
        assert httpx.post(server.url + "/v1/predict", json={"text": "hi"}).json()["model"] == "toy-v1"
        metrics = httpx.get(server.url + "/metrics").text
        assert any(x.startswith("slmloop_reload_failures ") and float(x.split()[1]) >= 1 for x in metrics.splitlines())
        tries = health["reload_error"]["tries"]
        time.sleep(1.0)  # 5 polls at the configured interval; backing off, it tries at most twice more
        assert httpx.get(server.url + "/health").json()["reload_error"]["tries"] <= tries + 2
        rollback(project, "production", reason="back")
        while "reload_error" in httpx.get(server.url + "/health").json():
            assert time.monotonic() < deadline + 30, "the error stayed after the alias came back"
            time.sleep(0.1)
