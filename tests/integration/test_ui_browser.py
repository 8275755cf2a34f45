"""The dashboard in real headless Chromium over a project made by `slmloop demo`.

Every page is visited; its key numbers are checked against what the CLI prints for
the same project; promote and rollback are clicked and the alias is read back from
the store. Screenshots of every page go to ``test-artifacts/ui/`` (or
``$SLMLOOP_TEST_ARTIFACTS/ui``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from slmloop.project import open_project
from slmloop.release.registry import promotion_problems
from slmloop.serve.server import free_port
from slmloop.store import DriftReport, Evaluation, Release

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SLMLOOP_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "ui"


def _cli(*args: str, root: Path) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "slmloop", *args, "-p", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by `make setup`")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `apt-get install chromium` (scripts/setup.sh does it where it can)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def dashboard(demo_project) -> Iterator[str]:
    assert demo_project.returncode == 0, demo_project.stderr[-3000:]
    root = demo_project.root
    _cli("export", "run-1", root=root)  # v2: a second version to roll back from
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmloop", "ui", "--port", str(port), "-p", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SLMLOOP_USER": "browser-test"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the dashboard did not come up in 120 s"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _image_loaded(page, selector: str) -> bool:
    return bool(page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0"))


def test_every_page_of_a_demo_project_in_chromium(browser, dashboard, demo_project) -> None:
    root = demo_project.root
    project = open_project(root)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations before promote / rollback

    # what the CLI says about this project
    runs_cli = _cli("runs", root=root)
    val_loss = re.search(r"run-1 .*?completed.*?│\s*\d+\s*│\s*([0-9.]+)\s*│", runs_cli)
    assert val_loss, runs_cli
    compare_cli = _cli("compare", "base", "run-1", root=root)
    tuned_acc = re.search(r"run-1\s*│\s*eval-\d+\s*│\s*\w+\s*│\s*([0-9.]+) \[", compare_cli)
    base_acc = re.search(r"base\s*│\s*eval-\d+\s*│\s*\w+\s*│\s*([0-9.]+) \[", compare_cli)
    assert tuned_acc and base_acc, compare_cli
    data_cli = _cli("data", "list", root=root)
    version = re.search(r"(ds-[0-9a-f]+)\s*│[^│]*│\s*(\d+)\s*│\s*(\d+)\s*│", data_cli)
    assert version, data_cli

    # overview: every stage, the fine-tuned accuracy the CLI printed
    page.goto(dashboard + "/")
    _shot(page, "01-overview")
    stages = page.locator(".stage h3 a").all_inner_texts()
    assert [s.lower() for s in stages] == ["data", "train", "evaluate", "release", "monitor"]
    assert f"accuracy {tuned_acc.group(1)}" in page.inner_text("[data-stage=evaluate]")

    # data: the version's counts as `slmloop data list` prints them; rejects by reason, with the rows
    page.goto(dashboard + "/data")
    _shot(page, "02-data")
    cells = page.locator(f"[data-version={version.group(1)}] td.n").all_inner_texts()
    assert cells[:2] == [version.group(2), version.group(3)]
    page.click(f"[data-version={version.group(1)}] a:has-text('duplicate_exact')")
    _shot(page, "03-rejects")
    shown = page.locator("#rejects tbody tr").count()
    assert shown > 0 and f"{shown} row(s) rejected as duplicate_exact" in page.inner_text("main")

    # runs: the validation loss `slmloop runs` prints, the loss curve, forecast against measured
    page.goto(dashboard + "/runs")
    page.click("a:has-text('run-1')")
    _shot(page, "04-run")
    assert page.inner_text("#val-loss") == val_loss.group(1)
    assert _image_loaded(page, "img.plot")
    assert page.locator("#forecast tbody tr").count() == 3

    # evaluations: the same accuracies as `slmloop compare`; a page per evaluation; the row browser
    page.goto(dashboard + "/evals")
    _shot(page, "05-evaluations")
    assert page.inner_text("[data-model=run-1] .headline") == tuned_acc.group(1)
    assert page.inner_text("[data-model=base] .headline") == base_acc.group(1)
    page.click("[data-model=run-1] a")
    _shot(page, "06-evaluation")
    assert page.inner_text("[data-metric=accuracy] .value") == tuned_acc.group(1)
    assert _image_loaded(page, "img.plot")  # the confusion matrix
    tuned = next(e for e in reversed(project.store.list(Evaluation, Evaluation.id)) if e.model_ref == "run-1")
    wrong = sum(not p.correct for p in project.store.predictions(tuned.id))
    page.click("a:has-text('failures only')")
    _shot(page, "07-rows")
    assert page.inner_text("#matched").startswith(f"{wrong} row(s) match")
    page.fill("input[name=q]", "zzzz-no-such-text")
    page.click("#row-filter button")
    assert page.inner_text("#matched").startswith("0 row(s) match")

    # compare: base against the fine-tuned model with the paired test
    page.goto(dashboard + "/compare")
    page.select_option("select[name=a]", "base")
    page.select_option("select[name=b]", "run-1")
    page.click("#compare-form button")
    _shot(page, "08-compare")
    assert page.inner_text("#value-b") == tuned_acc.group(1) and page.inner_text("#value-a") == base_acc.group(1)
    assert "better" in page.inner_text("#verdict")

    # monitor: the signal history plot, the newest run's windows, the export button
    page.goto(dashboard + "/monitor")
    _shot(page, "09-monitor")
    assert _image_loaded(page, "#history-plot")
    newest = next(r for r in reversed(project.store.list(DriftReport, DriftReport.id)) if r.stats.get("windows"))
    assert page.locator("#windows tbody tr").count() == len(newest.stats["windows"])
    assert page.locator("#drifted tbody tr").count() > 0
    with page.expect_download() as download:
        page.click("#export button")
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert rows and all(r["monitor_run"] == newest.id and "label" in r for r in rows)

    # releases: promote v1, promote v2, roll back; the store follows every click. A release whose gates
    # fail (the demo's model can be significantly worse than TF-IDF + LR: it depends on the seed and on the
    # CPU's kernels) is refused as `slmloop promote` refuses it, then forced through the offered button.
    page.goto(dashboard + "/releases")
    assert page.locator("#releases tbody tr").count() == 2
    for version_no in ("1", "2"):
        release = project.store.get(Release, int(version_no), "release", "")
        _, problems = promotion_problems(project, release)
        page.select_option("#promote select[name=version]", version_no)
        page.fill("#promote input[name=alias]", "production")
        page.fill("#promote input[name=reason]", f"browser test v{version_no}")
        page.click("#promote button")
        if problems:
            refusal = page.inner_text("#refused")
            assert f"v{version_no} cannot be promoted to production" in refusal and problems[0] in refusal
            assert project.store.alias_target("production") != int(version_no)
            page.click("#force")
            assert page.inner_text("#done") == f"production → v{version_no} (forced past failed gates)"
        else:
            assert page.inner_text("#done") == f"production → v{version_no}"
        assert project.store.alias_target("production") == int(version_no)
    _shot(page, "10-releases-promoted")
    page.fill("[data-alias=production] input[name=reason]", "browser rollback")
    page.click("[data-alias=production] button.rollback")
    _shot(page, "11-releases-rolled-back")
    assert "production rolled back to v1 (from v2)" in page.inner_text("#done")
    assert project.store.alias_target("production") == 1
    assert page.inner_text("[data-alias=production] .version") == "v1"
    history = page.locator("#history tbody tr").all_inner_texts()
    assert len(history) == 3 and "rollback" in history[0] and "browser rollback" in history[0]

    page.goto(dashboard + "/")
    assert "production → v1" in page.inner_text("#live")
    _shot(page, "12-overview-live")
    page.close()
    project.close()
