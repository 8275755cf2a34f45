"""``slmloop ui``: the dashboard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from slmloop.cli.common import ProjectOpt, err, load


def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 to share it on the network).")] = "127.0.0.1",
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Look, never change: no promote, rollback or export.")
    ] = False,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="A name the dashboard may be reached by (repeatable), besides localhost and --host; "
            "requests naming any other host get 400.",
        ),
    ] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """The whole loop in a browser: data, runs, evaluations, compare, releases (promote/rollback), monitor.

    Asks for one of the dashboard's own keys (the serve.ui_keys_env variable, SLMLOOP_UI_KEYS by default;
    the server's API keys do not open it); without any, bind it to localhost only.
    """
    import uvicorn

    from slmloop.ui.app import LOCAL_HOSTS, create_ui_app

    proj = load(project)
    keys = {k.strip() for k in os.environ.get(proj.manifest.serve.ui_keys_env, "").split(",") if k.strip()}
    if not keys and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"[yellow]warning:[/yellow] no dashboard key is set and the dashboard listens on {host}: anyone who "
            f"can reach it can promote and roll back. Set ${proj.manifest.serve.ui_keys_env} or pass --read-only."
        )
    hosts = [*LOCAL_HOSTS, *([] if host in ("0.0.0.0", "::") else [host]), *(allow_host or [])]
    app = create_ui_app(proj, keys=keys, read_only=read_only, hosts=hosts)
    mode = " (read-only)" if read_only else ""
    err.print(f"dashboard for {proj.manifest.project.name} on http://{host}:{port}{mode} (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
