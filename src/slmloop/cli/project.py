"""``slmloop init`` and ``slmloop validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmloop.cli.common import ProjectOpt, err, out
from slmloop.errors import ConfigError
from slmloop.manifest import MANIFEST_NAME, load_manifest
from slmloop.project import EXAMPLES, init_project


def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    task: Annotated[str, typer.Option(help="classification | extraction | generation")] = "classification",
    example: Annotated[str | None, typer.Option(help=f"Start from bundled data: {', '.join(EXAMPLES)}.")] = None,
) -> None:
    """Create a project: a commented slmloop.yaml (and the example's data)."""
    path = init_project(directory, task=task, example=example)
    out.print(f"Wrote [bold]{path}[/bold]")
    if example:
        out.print(f"Next: cd {directory} && slmloop data import data/sms_spam.tsv && slmloop data prepare")
    else:
        out.print(f"Next: edit {path.name}, then `slmloop validate`.")


def validate(project: ProjectOpt = Path(".")) -> int:
    """Check slmloop.yaml and report every problem at once (exit code 2 if any)."""
    try:
        manifest = load_manifest(project / MANIFEST_NAME if project.is_dir() else project)
    except ConfigError as exc:
        if not exc.problems:
            raise
        err.print(f"[bold red]Error:[/bold red] {MANIFEST_NAME} has {len(exc.problems)} problem(s):")
        for key, msg in exc.problems:
            err.print(f"  [bold]{key or '<root>'}[/bold]: {msg}", highlight=False)
        err.print("[yellow]hint:[/yellow] fix the keys above and run `slmloop validate` again.")
        return 2
    out.print(
        f"[green]OK[/green] {manifest.project.name}: {manifest.task.type} task, "
        f"{len(manifest.data.sources)} source(s), base model {manifest.model.base}"
    )
    return 0
