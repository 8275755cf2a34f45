"""What every CLI module shares: the --project option, consoles, opening the project."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from slmloop.project import Project, open_project

__all__ = ["ProjectOpt", "err", "load", "out", "table"]

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


def table(*columns: str, title: str | None = None, right: Collection[str] = (), fold: bool = False) -> Table:
    """A table with these columns, its title on the left; ``right`` columns (numbers) are right-aligned."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold" if fold else "ellipsis")
    return t
