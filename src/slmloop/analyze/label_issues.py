"""Training rows whose label is probably wrong, from probabilities of models that did not learn the row.

A model scored on the rows it was trained on is confident of their labels, the wrong
ones included: it memorised them. So every row of a dataset version's training and
validation splits is scored *out of sample*:

1. a cheap model that never saw it — k-fold cross-validation of the two text
   baselines (MiniLM embeddings + logistic regression, TF-IDF + logistic
   regression), their probabilities averaged;
2. on the validation rows, which a fine-tuned run trained on this version did not
   learn, that run's probabilities too (the answers it gives: label ranking with
   its label prior), averaged with the cheap ones.

Confident learning (Northcutt, Jiang & Chuang 2021, written here: cleanlab is
AGPL-3.0) then names the suspects: each label j gets the threshold t_j = the mean
probability of j over the rows labelled j; a row labelled i whose probability of
some other label j reaches t_j — or whose own label is not its likeliest — is a
suspect, suggested its likeliest other label, and suspects are ranked by the
margin p(suggested) - p(given), largest first.

Rows a person has already confirmed — imported with a true ``reviewed`` column, as
the labelling export asks — are not suggested again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rich.console import Console

from slmloop.data.diff import where_from
from slmloop.data.versions import dataset_task, load_dataset, row_field
from slmloop.errors import ConfigError
from slmloop.manifest import TaskConfig
from slmloop.predict.tasks import input_text
from slmloop.progress import status
from slmloop.project import Project

__all__ = ["FOLDS", "Suspect", "confident_learning", "cross_validated_probabilities", "label_suspects", "reviewed"]

#: folds of the cross-validation that scores each row with models that did not see it
FOLDS = 5


@dataclass
class Suspect:
    split: str  # train | validation
    row: int
    text: str  # the whole input (a correction must name it exactly)
    label: str  # the label the row has now
    suggested: str
    p_given: float
    p_suggested: float
    source: str  # file:line of the row

    @property
    def margin(self) -> float:
        return self.p_suggested - self.p_given

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reviewed(row: dict[str, Any]) -> bool:
    """A row a person confirmed: its source had a true ``reviewed`` column."""
    value = row_field(row, "reviewed")
    if isinstance(value, str):
        return value.strip().casefold() in ("true", "1", "yes", "y")
    return bool(value)


def confident_learning(labels: np.ndarray, probs: np.ndarray, likelier: bool = True) -> list[tuple[int, int, float]]:
    """``[(row, suggested label, margin)]`` of the rows whose given label the probabilities dispute, the most
    suspicious first.

    A row is disputed when confident learning counts it as another label — per-label threshold t_j = mean
    p(j) over the rows labelled j, a row labelled i counts as j when p(j) >= t_j (the likeliest such j) —
    or, with ``likelier``, when another label is simply likelier than its own. It is suggested the likeliest
    other label, and ranked by the margin p(suggested) - p(given) (confident learning's normalised margin),
    largest first."""
    y = np.asarray(labels)
    n, k = probs.shape
    thresholds = np.array([probs[y == j, j].mean() if (y == j).any() else np.inf for j in range(k)])
    above = probs >= thresholds[None, :]
    counted_as = np.where(above, probs, -1.0).argmax(axis=1)
    flagged = above.any(axis=1) & (counted_as != y)
    given = probs[np.arange(n), y]
    others = probs.copy()
    others[np.arange(n), y] = -1.0
    suggested = others.argmax(axis=1)
    margin = others[np.arange(n), suggested] - given
    disputed = np.flatnonzero(flagged | (margin > 0) if likelier else flagged)
    order = disputed[np.argsort(-margin[disputed], kind="stable")]
    return [(int(i), int(suggested[i]), float(margin[i])) for i in order]


#: regularisation of the cross-validated regressions: stronger than the baselines' (C = 20), because here a
#: fifth of the labels may be wrong and a loosely regularised fit learns them
CV_C = 2.0


def cross_validated_probabilities(
    task: TaskConfig,
    rows: list[dict[str, Any]],
    embed: Callable[[list[str]], np.ndarray],
    folds: int = FOLDS,
    seed: int = 0,
) -> np.ndarray:
    """(rows, labels of ``task``) probabilities, each row's from models fit on the other folds: MiniLM + logistic
    regression and TF-IDF + logistic regression, averaged. Stratified folds (fewer where a label is rare)."""
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    from slmloop.baselines.text import logistic_regression, tfidf_features

    labels = task.label_list
    index = {lab: j for j, lab in enumerate(labels)}
    y = np.array([index[str(r["label"])] for r in rows])
    texts = np.array([input_text(task, r) for r in rows], dtype=object)
    vectors = embed(list(texts))
    smallest = min(Counter(y.tolist()).values())
    splitter = (
        StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed)
        if smallest >= 2
        else KFold(folds, shuffle=True, random_state=seed)
    )
    probs = np.zeros((len(rows), len(labels)))
    for train, held in splitter.split(vectors, y):
        dense = logistic_regression(CV_C).fit(vectors[train], y[train])
        probs[np.ix_(held, dense.classes_)] += dense.predict_proba(vectors[held]) / 2
        sparse = make_pipeline(tfidf_features(), logistic_regression(CV_C)).fit(list(texts[train]), y[train])
        probs[np.ix_(held, sparse[-1].classes_)] += sparse.predict_proba(list(texts[held])) / 2
    return probs


def _run_probabilities(project: Project, run_name: str, rows: list[dict[str, Any]], console: Console) -> np.ndarray:
    """A fine-tuned run's label probabilities on ``rows`` (as it answers: its shortlist and label prior)."""
    from slmloop.models.loading import pick_dtype
    from slmloop.predict.answers import answer_rows
    from slmloop.predict.engines import LocalEngine
    from slmloop.predict.targets import load_target, resolve_target

    target = resolve_target(project, run_name)
    task = target.answering_task(project)
    cfg = project.manifest.eval
    companion = target.companion()
    hints = None
    if companion is not None:
        hints = companion.hints(task, rows, cache_dir=project.home / "cache" / "embeddings")
    model, tok = load_target(target, pick_dtype(cfg.precision))
    with status(console, f"scoring {len(rows)} validation rows with {run_name} (it did not train on them) …"):
        answers = answer_rows(
            task,
            target.prompt,
            "rank",
            LocalEngine(model, tok),
            rows,
            hints,
            batch_size=cfg.batch_size,
            max_new_tokens=1,
            margin=cfg.rank_margin,
        )
    labels = task.label_list
    return np.array([[a.scores["probs"].get(lab, 0.0) for lab in labels] for a in answers])


def label_suspects(
    project: Project,
    dataset_id: str | None = None,
    *,
    run: str | None = None,
    folds: int = FOLDS,
    console: Console | None = None,
) -> list[Suspect]:
    """Suspected label errors among the training and validation rows of a dataset version (default: the
    current one), most suspicious first. ``run``: a fine-tuned run trained on that version, whose answers on
    the validation rows are weighed in. Rows a person confirmed are left out."""
    from slmloop.data.leakage import project_embedder

    console = console or Console(stderr=True, quiet=True)
    data = load_dataset(project, dataset_id)
    task = dataset_task(project, data.version)
    if task.type != "classification":
        raise ConfigError(
            f"label issues are found for classification; this is a {task.type} task",
            hint="`slmloop analyze eval-N` shows an extractor's failures field by field.",
        )
    rows = data.train + data.validation
    split = ["train"] * len(data.train) + ["validation"] * len(data.validation)
    with status(console, f"scoring {len(rows)} rows with cheap models that did not see them ({folds}-fold) …"):
        probs = cross_validated_probabilities(task, rows, project_embedder(project), folds)
    if run is not None and data.validation:
        val = slice(len(data.train), len(rows))
        probs[val] = (probs[val] + _run_probabilities(project, run, data.validation, console)) / 2
    labels = task.label_list
    y = np.array([labels.index(str(r["label"])) for r in rows])
    rare = {lab for lab, n in Counter(str(r["label"]) for r in rows).items() if n < 2}  # no other row to judge by
    out = []
    for i, j, _ in confident_learning(y, probs):
        if reviewed(rows[i]) or rows[i]["label"] in rare:
            continue
        out.append(
            Suspect(
                split=split[i],
                row=i if split[i] == "train" else i - len(data.train),
                text=input_text(task, rows[i]),
                label=str(rows[i]["label"]),
                suggested=labels[j],
                p_given=float(probs[i, y[i]]),
                p_suggested=float(probs[i, j]),
                source=where_from(rows[i]),
            )
        )
    return out
