"""``slmloop serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmloop.cli.common import ProjectOpt, err, load
from slmloop.cli.options import config_options, with_overrides
from slmloop.manifest import ServeConfig


@config_options(ServeConfig)
def serve(
    overrides: dict[str, Any],
    release: Annotated[str | None, typer.Option(help="N, vN or an alias (default: production, else newest).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Serve a release over HTTP (OpenAI-compatible /v1/chat/completions and /v1/predict).

    Every key of the manifest's serve: section is also an option here (--host, --port …).
    """
    from slmloop.serve.server import serve as run_server

    proj = load(project)
    proj.manifest.serve = with_overrides(ServeConfig, proj.manifest.serve.model_dump(), overrides)
    cfg = proj.manifest.serve
    err.print(f"serving on http://{cfg.host}:{cfg.port} (Ctrl-C stops)")
    run_server(proj, release, cfg.host, cfg.port)
