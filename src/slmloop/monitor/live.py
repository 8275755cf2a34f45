"""Live quality: the gold rows sent to the running server, scored, and compared with the release's gold score.

Drift signals say traffic changed; this says whether the *answers* changed. The
server answers the project's current gold rows through ``/v1/predict`` (what
users get: the engine, precision and batching in use) and the answers are
compared, row by row, with the release's own gold evaluation by the evaluation
stage's paired test. The whole gold set is stored as an evaluation (``live:NAME``);
``sample`` sends a seeded sample of it instead (a cheaper check, compared on the
same rows, not stored as an evaluation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from rich.console import Console

from slmloop.errors import NotFoundError
from slmloop.evaluate.evaluate import answer_gold, evaluate
from slmloop.evaluate.paired import compare_pair, paired_test, verdict
from slmloop.evaluate.results import evaluation_task, gold_rows, row_scores
from slmloop.evaluate.scoring import score_answers
from slmloop.manifest import CompareConfig
from slmloop.metrics import HEADLINE, RowScores
from slmloop.predict.targets import resolve_release
from slmloop.project import Project
from slmloop.release.registry import release_evaluation

__all__ = ["LiveCheck", "live_quality"]


@dataclass(frozen=True)
class LiveCheck:
    metric: str
    rows: int
    recorded: str  # the release's evaluation
    live: str  # the live evaluation, or "sample of N"
    recorded_value: float
    live_value: float
    p_value: float
    verdict: str  # better | worse | not distinguishable
    sentence: str


def live_quality(
    project: Project,
    url: str,
    release_ref: str | int | None = None,
    *,
    sample: int | None = None,
    console: Console | None = None,
) -> LiveCheck:
    """Score the server at ``url`` on gold (all rows, or a seeded ``sample``) against the release's record."""
    release = resolve_release(project, release_ref)
    recorded = release_evaluation(project, release)
    if recorded is None:
        raise NotFoundError(
            f"v{release.version} has no evaluation on the current gold set to compare with",
            hint=f"Run `slmloop eval --model v{release.version}` first.",
        )
    cfg = project.manifest.eval.model_copy(update={"gates": [], "compare": CompareConfig(baseline="none")})
    if sample is None:
        live = evaluate(project, f"live:{url}", pack=cfg, console=console)
        c = compare_pair(project, recorded, live)
        return LiveCheck(
            c.metric, live.n_rows, recorded.name, live.name, c.a_value, c.b_value, c.test.p_value, c.verdict, c.sentence
        )
    gold = gold_rows(project, recorded.gold_id)
    idx = np.array(sorted(random.Random(0).sample(range(len(gold)), min(sample, len(gold)))))
    rows = [gold[i] for i in idx]
    task = evaluation_task(project, recorded)
    answered = answer_gold(project, f"live:{url}", rows, cfg, console=console)
    live_scores = score_answers(task, rows, [a.prediction for a in answered.answers], [a.raw for a in answered.answers])
    everything = row_scores(project, recorded, cfg, task)
    recorded_scores = RowScores(everything.task, len(idx), everything.subset(idx), everything.labels)
    metric = HEADLINE[task.type][0]
    test = paired_test(recorded_scores, live_scores, metric)
    said = verdict(test, cfg.compare.alpha, cfg.compare.min_effect)
    a, b = recorded_scores.metric(metric), live_scores.metric(metric)
    sentence = (
        f"live {metric} {b:.4f} vs recorded {a:.4f} on the same {len(idx)} gold rows "
        f"({test.test}, p = {test.p_value:.3g}): {said}"
    )
    return LiveCheck(metric, len(idx), recorded.name, f"sample of {len(idx)}", a, b, test.p_value, said, sentence)
