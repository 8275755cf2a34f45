"""Errors a user can cause, through the real command line (a subprocess): exit code, message, hint, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_project
from tests.tiny import toy_rows

pytestmark = pytest.mark.integration  # every test runs the real command line in a subprocess


def slmloop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "SLMLOOP_PROJECT": ""}
    return subprocess.run(
        [sys.executable, "-m", "slmloop", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_clean_error(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """One ``Error:`` line with a hint, the expected exit code, and never a Python traceback."""
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    assert "Error:" in res.stderr and "hint:" in res.stderr, res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "p", str(tmp_path / "no-model-here"), toy_rows(60))


def test_no_manifest_and_a_broken_manifest(tmp_path: Path) -> None:
    assert_clean_error(slmloop("train", "-p", str(tmp_path)), 2, "no slmloop.yaml", "slmloop init")
    (tmp_path / "slmloop.yaml").write_text("task:\n  type: classification\n labels: [a, b]\n")
    assert_clean_error(slmloop("validate", "-p", str(tmp_path)), 2, "YAML syntax error", "line 3")


def test_missing_files_and_unknown_references(project: Path, tmp_path: Path) -> None:
    assert_clean_error(slmloop("data", "import", str(tmp_path / "nope.csv"), "-p", str(project)), 1, "does not exist")
    assert_clean_error(slmloop("data", "prepare", "-p", str(project)), 1, "no imported data yet")
    assert_clean_error(slmloop("eval", "show", "eval-7", "-p", str(project)), 1, "does not exist")
    assert_clean_error(slmloop("eval", "show", "seven", "-p", str(project)), 1, "is not an evaluation")
    assert_clean_error(slmloop("export", "-p", str(project)), 1, "no completed training run")


def test_a_wrong_model_path_is_named(project: Path) -> None:
    assert slmloop("data", "import", "-p", str(project)).returncode == 0
    assert slmloop("data", "prepare", "-p", str(project)).returncode == 0
    assert_clean_error(slmloop("train", "-p", str(project)), 1, "no-model-here")


def test_bad_eval_packs(project: Path, tmp_path: Path) -> None:
    assert_clean_error(
        slmloop("eval", "--model", "base", "--pack", str(tmp_path / "none.yaml"), "-p", str(project)),
        2,
        "does not exist",
    )
    pack = tmp_path / "pack.yaml"
    pack.write_text(yaml.safe_dump({"gates": [{"metric": "accuracy", "threshold": "high"}], "bootstrapp": 5}))
    assert_clean_error(slmloop("eval", "--pack", str(pack), "-p", str(project)), 2, "threshold", "bootstrapp")
    pack.write_text("gates: [\n")
    assert_clean_error(slmloop("eval", "--pack", str(pack), "-p", str(project)), 2, "not valid YAML")


def test_bad_training_options(project: Path) -> None:
    res = slmloop("train", "--epochs", "lots", "-p", str(project))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--epochs" in res.stderr
    res = slmloop("train", "--prompt", "verbose", "-p", str(project))
    assert res.returncode == 2 and "verbose" in res.stderr and "compact" in res.stderr


def test_resuming_from_a_damaged_checkpoint(trained_project: Path, tmp_path: Path) -> None:
    from slmloop.project import open_project
    from slmloop.store import Run

    root = tmp_path / "copy"
    shutil.copytree(trained_project, root)
    p = open_project(root)
    with p.store.session() as s:
        run = s.get(Run, 1)
        assert run is not None
        run.status = "interrupted"
        run_dir = p.locate(run.path)
    p.close()
    ckpt = run_dir / "checkpoints" / "step-9999999"  # newer than any real one: resume picks it
    ckpt.mkdir(parents=True)
    (ckpt / "loop.json").write_text('{"step": 1')  # torn write
    (ckpt / "trainable.safetensors").write_bytes(b"\x00garbage")
    (ckpt / "state.pt").write_bytes(b"not a pickle")
    assert_clean_error(slmloop("train", "--resume", "run-1", "-p", str(root)), 1, "is damaged", "step-9999999")
    assert_clean_error(slmloop("train", "--resume", "run-9", "-p", str(root)), 1, "does not exist")
