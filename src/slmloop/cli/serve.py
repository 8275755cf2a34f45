"""``slmloop serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmloop.cli.common import ProjectOpt, err, load
from slmloop.cli.options import config_options, with_overrides
from slmloop.manifest import ServeConfig


@config_options(ServeConfig, skip=("api_keys",))  # keys on a command line end up in shell history
def serve(
    overrides: dict[str, Any],
    release: Annotated[str | None, typer.Option(help="N or vN: serve this release and only this one.")] = None,
    alias: Annotated[
        str | None,
        typer.Option(help="Serve what this alias points at and follow its moves (promote/rollback) without downtime."),
    ] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Serve a release over HTTP (OpenAI-compatible /v1/chat/completions and /v1/predict, /metrics).

    Default: follow the production alias if there is one, else serve the newest release.
    API keys come from $SLMLOOP_API_KEYS (comma-separated) or serve.api_keys.

    Every key of the manifest's serve: section is also an option here (--host, --port …).
    """
    from slmloop.serve.server import serve as run_server

    proj = load(project)
    proj.manifest.serve = with_overrides(ServeConfig, proj.manifest.serve.model_dump(), overrides)
    cfg = proj.manifest.serve
    if release is not None and alias is not None:
        from slmloop.errors import ConfigError

        raise ConfigError("--release and --alias exclude each other", hint="Pass one of them.")
    err.print(f"serving on http://{cfg.host}:{cfg.port} (Ctrl-C stops)")
    run_server(proj, release, cfg.host, cfg.port, alias=alias)
