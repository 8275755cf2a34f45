"""One bake-off trial in its own process: ``python -m slmloop.graduate.trial SPEC.json``.

The spec names the project, the bake-off and the trial, its train: overrides and where to pause;
the result (run, status, validation history) is written to ``spec['result']``. A process per trial
hands its memory back whole when it ends, so a long bake-off does not grow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slmloop.errors import SlmloopError
from slmloop.store import atomic_write_json

__all__ = ["main"]


def main(argv: list[str]) -> int:
    from rich.console import Console

    from slmloop.graduate.bakeoff import train_trial
    from slmloop.project import open_project

    spec = json.loads(Path(argv[0]).read_text())
    project = open_project(spec["project"])
    try:
        result = train_trial(project, spec, console=Console(stderr=True))
    except SlmloopError as exc:
        result = {"status": "failed", "error": exc.message + (f" ({exc.hint})" if exc.hint else "")}
    except KeyboardInterrupt:
        return 130
    finally:
        project.close()
    atomic_write_json(spec["result"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
