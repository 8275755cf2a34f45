"""Live quality: the gold rows sent to the running server, scored, and compared with the release's gold score.

Drift signals say traffic changed; this says whether the *answers* changed. The
server answers the project's current gold rows through ``/v1/predict`` (what
users get: the engine, precision and batching in use); the score is stored as an
evaluation (``live:NAME``) and compared, row by row, with the release's own gold
evaluation by the evaluation stage's paired test.
"""

from __future__ import annotations

from rich.console import Console

from slmloop.errors import NotFoundError
from slmloop.evaluate.evaluate import evaluate
from slmloop.evaluate.paired import Comparison, compare_pair
from slmloop.manifest import CompareConfig
from slmloop.project import Project
from slmloop.release.registry import release_evaluation
from slmloop.store import Evaluation
from slmloop.targets import resolve_release

__all__ = ["live_quality"]


def live_quality(
    project: Project, url: str, release_ref: str | int | None = None, *, console: Console | None = None
) -> tuple[Evaluation, Evaluation, Comparison]:
    """(the release's recorded gold evaluation, the live one, live compared against recorded)."""
    release = resolve_release(project, release_ref)
    recorded = release_evaluation(project, release)
    if recorded is None:
        raise NotFoundError(
            f"v{release.version} has no evaluation on the current gold set to compare with",
            hint=f"Run `slmloop eval --model v{release.version}` first.",
        )
    cfg = project.manifest.eval.model_copy(update={"gates": [], "compare": CompareConfig(baseline="none")})
    live = evaluate(project, f"live:{url}", pack=cfg, console=console)
    return recorded, live, compare_pair(project, recorded, live)
