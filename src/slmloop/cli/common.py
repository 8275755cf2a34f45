"""What every CLI module shares: the --project option, consoles, opening the project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slmloop.project import Project, open_project

__all__ = ["ProjectOpt", "err", "load", "out"]

out = Console()
err = Console(stderr=True)

ProjectOpt = Annotated[
    Path,
    typer.Option(
        "--project",
        "-p",
        envvar="SLMLOOP_PROJECT",
        help="Project folder (holds slmloop.yaml).",
        show_default=False,
    ),
]


def load(project: Path) -> Project:
    return open_project(project)
