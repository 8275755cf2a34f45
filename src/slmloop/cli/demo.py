"""``slmloop demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmloop.cli.common import err, out


def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Project folder to create (default: a new temp folder).")
    ] = None,
) -> int:
    """Run the whole loop on the bundled SMS spam data: data → train → eval → export → serve → monitor."""
    from slmloop.demo import run_demo, summary_table

    result = run_demo(directory, console=err)
    out.print(summary_table(result))
    stages = " · ".join(f"{k.split('. ', 1)[-1]} {v:.0f}s" for k, v in result.stages.items())
    out.print(f"[dim]{stages}[/dim]")
    out.print(f"project kept at {result.project_dir} (try: slmloop compare base latest -p {result.project_dir})")
    better = result.tuned.get("accuracy", 0) > result.base.get("accuracy", 0)
    return 0 if better else 1
