from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Demo:
    root: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """One `slmloop demo` run, as a user starts it (a subprocess), shared by the tests that look at its project."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "slmloop", "demo", "--dir", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=1200,
    )
    return Demo(root, res.returncode, res.stdout, res.stderr)
