"""``slmloop serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmloop.cli.common import ProjectOpt, err, load


def serve(
    release: Annotated[str | None, typer.Option(help="N, vN or an alias (default: production, else newest).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Serve a release over HTTP (OpenAI-compatible /v1/chat/completions and /v1/predict)."""
    from slmloop.serve.server import serve as run_server

    proj = load(project)
    h = host or proj.manifest.serve.host
    p = port or proj.manifest.serve.port
    err.print(f"serving on http://{h}:{p} (Ctrl-C stops)")
    run_server(proj, release, h, p)
