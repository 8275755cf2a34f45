"""``slmloop analyze EVAL_ID``: where the model fails, why, and which data would fix it.

- **Slices**: the metric by gold label, by input-length quartile, and by every tag
  column the gold rows carry (source columns kept as metadata).
- **Failure clusters**: confusion pairs (classification); error types — invalid
  JSON, missing field, wrong value, extra field (extraction); MiniLM embedding
  clusters of the failing inputs, named by their most distinctive words
  (generation, chat) — each with exemplars.
- **The weakest labels / fields** (lowest F1 on gold) and, for generation, the worst
  quarter of the rows by chrF as its failures.
- **Likely mislabelled rows**, by confident learning (:mod:`slmloop.analyze.label_issues`):
  gold rows the evaluated model disputes (it never trained on them), and with
  ``--train`` the training and validation rows, each scored by models that did not
  learn it (cross-validated cheap models; the fine-tuned run on validation rows).
- **A remediation plan**, and ``--export FILE``: rows to label, in a form
  ``slmloop data import`` accepts — suspected label errors (with the given and the
  suggested label), live requests or inputs of an unlabelled pool (``--pool``) nearest
  the failures, else the training rows nearest them. A person sets ``label`` and
  ``reviewed: true``; importing the file applies the corrections (a later import
  wins), and confirmed rows are not suggested again. Gold rows are never exported
  for training (the leakage gate would refuse them anyway).
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from slmloop.data.clean import dedupe_key
from slmloop.data.importer import refuse_active_source
from slmloop.data.versions import load_dataset, row_field
from slmloop.evaluate.results import evaluation_task, find_evaluation, gold_rows, learned_from
from slmloop.predict.parsing import field_diff, parse_json_object
from slmloop.predict.tasks import input_text
from slmloop.project import Project
from slmloop.store import Evaluation, Prediction, atomic_write_json, atomic_write_text

__all__ = [
    "Analysis",
    "Cluster",
    "Slice",
    "analyze",
    "export_for_labelling",
    "failing_rows",
    "read_pool",
]

MIN_SLICE = 5


@dataclass
class Slice:
    by: str
    value: str
    n: int
    score: float
    failures: int


@dataclass
class Cluster:
    kind: str
    title: str
    n: int
    rows: list[int]
    exemplars: list[dict[str, Any]]


@dataclass
class Analysis:
    evaluation: Evaluation
    overall: float
    slices: list[Slice] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    path: Path | None = None
    #: gold rows counted as failures (indices), and the weakest labels / fields: (name, F1, gold rows)
    failing: list[int] = field(default_factory=list)
    weakest: list[tuple[str, float, int]] = field(default_factory=list)


def _disputed(task: Any, split: str, rows: list[dict], scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``split`` whose label the model's probabilities dispute: counted as another label by confident
    learning (a lone model's mistakes alone are not evidence). The model must not have trained on them (gold)."""
    from slmloop.analyze.label_issues import confident_learning

    labels = task.label_list
    probs = np.array([[s["probs"].get(lab, 0.0) for lab in labels] for s in scores])
    given = np.array([labels.index(r["label"]) for r in rows])
    return [
        {
            "split": split,
            "row": i,
            "text": input_text(task, rows[i])[:200],
            "label": rows[i]["label"],
            "suggested": labels[j],
            "p_given": float(probs[i, given[i]]),
            "p_suggested": float(probs[i, j]),
        }
        for i, j, _ in confident_learning(given, probs, likelier=False)
    ]


def failing_rows(project: Project, evaluation: Evaluation, preds: list[Prediction]) -> list[int]:
    """The gold rows an evaluation counts as failures: wrong answers; for generation and chat, where several
    wordings are right, the worst quarter of the rows by chrF (those not matched exactly)."""
    task = evaluation_task(project, evaluation)
    if task.type not in ("generation", "chat"):
        return [i for i, p in enumerate(preds) if not p.correct]
    from slmloop.evaluate.results import row_scores

    chrf = row_scores(project, evaluation, task=task).arrays["chrf"]
    if not len(chrf):
        return []
    bar = float(np.quantile(chrf, 0.25))
    return [i for i, p in enumerate(preds) if chrf[i] <= bar and not p.correct]


def _weakest(evaluation: Evaluation, limit: int = 10) -> list[tuple[str, float, int]]:
    """The labels or fields with the lowest gold F1 (the most gold rows first among equals)."""
    table = evaluation.metrics.get("per_class") or evaluation.metrics.get("per_field") or {}
    ranked = sorted(table.items(), key=lambda kv: (kv[1]["f1"], -kv[1]["support"]))
    return [(name, float(v["f1"]), int(v["support"])) for name, v in ranked if v["support"]][:limit]


def _slices(task: Any, rows: list[dict], hits: np.ndarray) -> list[Slice]:
    out: list[Slice] = []
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    if task.type == "classification":
        for i, r in enumerate(rows):
            groups[("label", r["label"])].append(i)
    lengths = np.array([len(input_text(task, r).split()) for r in rows])
    if len(rows) >= 8:
        q = np.quantile(lengths, [0.25, 0.5, 0.75])
        edges = [0, *(int(x) for x in q), int(lengths.max())]
        for i, n in enumerate(lengths):
            b = int(np.searchsorted(q, n, side="left"))
            groups[("length (words)", f"{edges[b] + (1 if b else 0)}–{edges[b + 1]}")].append(i)
    tags: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        for k, v in (r.get("_meta") or {}).items():
            tags[k].add(str(v))
    for k, values in tags.items():
        if 2 <= len(values) <= 20:
            for i, r in enumerate(rows):
                groups[(k, str(row_field(r, k)))].append(i)
    for (by, value), idx in groups.items():
        h = hits[idx]
        out.append(Slice(by, value, len(idx), float(h.mean()), int((~h).sum())))
    return sorted(out, key=lambda s: (s.by, s.score))


def _exemplar(i: int, p: Prediction) -> dict[str, Any]:
    return {"row": i, "input": p.input[:200], "expected": p.reference[:120], "got": p.raw[:120]}


def _classification_clusters(preds: list[Prediction]) -> list[Cluster]:
    pairs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, p in enumerate(preds):
        if not p.correct:
            pairs[(p.reference, p.prediction or "<invalid>")].append(i)

    def confidence(i: int) -> float:
        return float(preds[i].scores.get("probs", {}).get(preds[i].prediction, 0.0))

    clusters = []
    for (ref, got), idx in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
        idx = sorted(idx, key=confidence, reverse=True)  # the most confident mistakes first
        clusters.append(
            Cluster("confusion", f"{ref} predicted as {got}", len(idx), idx, [_exemplar(i, preds[i]) for i in idx[:5]])
        )
    return clusters


def _extraction_clusters(rows: list[dict], preds: list[Prediction]) -> list[Cluster]:
    """Failures grouped by error type and field (the same field-by-field diff `eval show` prints)."""
    kinds: dict[str, list[int]] = defaultdict(list)
    for i, (row, p) in enumerate(zip(rows, preds, strict=True)):
        obj = parse_json_object(p.raw)
        if obj is None:
            kinds["invalid JSON"].append(i)
            continue
        for d in field_diff(row["output"], obj):
            kinds[f"{d['kind']} {d['field']!r}"].append(i)
    clusters = []
    for k, idx in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        exemplars = []
        for i in idx[:5]:
            ex = _exemplar(i, preds[i])
            obj = parse_json_object(preds[i].raw)
            ex["diff"] = field_diff(rows[i]["output"], obj) if obj is not None else []
            exemplars.append(ex)
        clusters.append(Cluster("error type", k, len(idx), idx, exemplars))
    return clusters


def _embedding_clusters(project: Project, preds: list[Prediction], failing: list[int]) -> list[Cluster]:
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    from slmloop.data.leakage import project_embedder

    if not failing:
        return []
    texts = [preds[i].input for i in failing]
    emb = project_embedder(project)(texts)
    k = max(1, min(8, round(math.sqrt(len(failing) / 2))))
    labels = (
        KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(emb)
        if len(failing) > k
        else np.zeros(len(failing), dtype=int)
    )
    clusters = []
    for c in range(labels.max() + 1):
        members = [failing[j] for j in np.flatnonzero(labels == c)]
        docs = [preds[i].input for i in members]
        try:
            tf = TfidfVectorizer(stop_words="english", max_features=2000).fit(texts)
            weights = np.asarray(tf.transform(docs).mean(axis=0)).ravel()
            words = [tf.get_feature_names_out()[j] for j in weights.argsort()[::-1][:4] if weights[j] > 0]
        except ValueError:  # only stop words
            words = []
        centre = emb[labels == c].mean(axis=0)
        order = np.argsort(-(emb[labels == c] @ centre))
        clusters.append(
            Cluster(
                "embedding",
                ", ".join(words) or f"cluster {c + 1}",
                len(members),
                members,
                [_exemplar(members[j], preds[members[j]]) for j in order[:5]],
            )
        )
    return sorted(clusters, key=lambda c: -c.n)


def _plan(analysis: Analysis, task_type: str) -> list[str]:
    plan = []
    overall = analysis.overall
    for s in analysis.slices:
        if s.n >= MIN_SLICE and s.score < overall - 0.05:
            need = max(20, 2 * s.failures)
            plan.append(
                f"{s.by} = {s.value}: {s.score:.2f} vs {overall:.2f} overall on {s.n} gold rows — add about "
                f"{need} more (or cleaner) training examples of this kind."
            )
    for c in analysis.clusters[:3]:
        if c.kind == "confusion":
            plan.append(
                f"{c.title} {c.n}× — add contrastive examples near this boundary and check that the label "
                "definitions in task.instruction separate them."
            )
        elif c.kind == "error type":
            plan.append(
                f"{c.title} in {c.n} rows — add training examples that exercise it; check the field "
                "names in task.fields match the training outputs."
            )
        else:
            plan.append(f"failing inputs about '{c.title}' ({c.n}) — collect and label more inputs like the exemplars.")
    gold_issues = [x for x in analysis.label_issues if x["split"] == "gold"]
    train_issues = [x for x in analysis.label_issues if x["split"] != "gold"]
    if gold_issues:
        plan.append(
            f"{len(gold_issues)} gold row(s) look mislabelled — review them; fix with `slmloop gold remove` "
            "and `slmloop gold add`."
        )
    if train_issues:
        plan.append(
            f"{len(train_issues)} training row(s) look mislabelled to models that did not learn them — `--export FILE` "
            "writes them with the suggested label: set `label` and `reviewed: true`, then `slmloop data import FILE`."
        )
    if not plan:
        plan.append("no slice or cluster stands out at this gold size: more gold rows would show smaller effects.")
    return plan


def analyze(
    project: Project,
    evaluation_ref: str,
    *,
    train_rows: bool = False,
    console: Console | None = None,
    report: bool = True,
) -> Analysis:
    """Slices, failure clusters, disputed labels and a plan; ``report=False`` writes no HTML report."""
    console = console or Console(stderr=True)
    ev = find_evaluation(project, str(evaluation_ref))
    task = evaluation_task(project, ev)
    rows = gold_rows(project, ev.gold_id)
    preds = list(project.store.predictions(ev.id))
    failing = failing_rows(project, ev, preds)
    hits = np.ones(len(preds), dtype=bool)
    hits[failing] = False
    analysis = Analysis(ev, float(hits.mean()) if len(hits) else math.nan, failing=failing, weakest=_weakest(ev))
    analysis.slices = _slices(task, rows, hits)
    if task.type == "classification":
        analysis.clusters = _classification_clusters(preds)
    elif task.type == "extraction":
        analysis.clusters = _extraction_clusters(rows, preds)
    else:
        analysis.clusters = _embedding_clusters(project, preds, failing)
    if task.type == "classification" and task.label_list and preds and "probs" in preds[0].scores:
        analysis.label_issues = _disputed(task, "gold", rows, [p.scores for p in preds])
    if train_rows and task.type == "classification":
        analysis.label_issues += _train_label_issues(project, ev, console)
    analysis.plan = _plan(analysis, task.type)
    if report:
        analysis.path = _write_report(project, analysis)
    return analysis


def _train_label_issues(project: Project, ev: Evaluation, console: Console) -> list[dict[str, Any]]:
    """Suspected label errors in the training and validation rows the evaluated model learned from (the current
    dataset version for the base model and endpoints), scored out of sample."""
    from slmloop.analyze.label_issues import label_suspects

    dataset_id = learned_from(ev)
    run = ev.model_ref if ev.model_ref.startswith("run-") else None
    if ev.model_ref.startswith("release-"):
        from slmloop.predict.targets import resolve_target

        lineage = resolve_target(project, ev.model_ref).release
        run = f"run-{lineage.run_id}" if lineage is not None else None
    return [x.as_dict() for x in label_suspects(project, dataset_id, run=run, console=console)]


def read_pool(task: Any, path: Path) -> list[str]:
    """Unlabelled inputs to choose from: a text file (one input a line) or any source file slmloop reads (the
    task's input column — ``text`` / ``input`` — else each record's first text value)."""
    from slmloop.data.sources import SourceStats, read_records
    from slmloop.errors import DataError
    from slmloop.manifest import SourceConfig

    if not path.exists():
        raise DataError(f"pool {path} does not exist", hint="Pass a file of unlabelled inputs (.txt, .jsonl, .csv).")
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    key = "input" if task.type in ("generation", "chat") else "text"
    texts = []
    for rec in read_records(path, SourceConfig(path=str(path)), SourceStats()):
        if rec.reason is not None or not isinstance(rec.fields, dict):
            continue
        value = rec.fields.get(key)
        if not isinstance(value, str):
            value = next((v for v in rec.fields.values() if isinstance(v, str) and v.strip()), None)
        if value and value.strip():
            texts.append(value.strip())
    return texts


def _suggestions(project: Project, task: Any, texts: list[str]) -> list[Any]:
    """A starting answer for unlabelled inputs, for a person to check: the label of a logistic regression over
    the MiniLM embeddings of the training rows (classification), else the answer of the nearest training input."""
    from slmloop.baselines import fit_baseline
    from slmloop.data.leakage import project_embedder

    data = load_dataset(project)
    name = "minilm-lr" if task.type == "classification" else "knn"
    fitted = fit_baseline(name, task, data.train, project_embedder(project), project.home / "cache")
    key = "text" if task.type in ("classification", "extraction") else "input"
    answers = fitted.predict([{key: t} for t in texts])
    if task.type == "extraction":
        return [parse_json_object(a.raw) or {} for a in answers]
    return [a.prediction for a in answers]


def export_for_labelling(
    project: Project,
    analysis: Analysis,
    path: Path,
    limit: int = 200,
    pool: Path | None = None,
    near: int | None = None,
) -> dict[str, int]:
    """Rows worth a person's look, as JSONL ``slmloop data import`` reads; gold rows are never included.

    First up to ``limit`` suspected label errors of the training data, with the label they have (``label``,
    to be corrected in place, and ``given_label``) and the suggested one; then up to ``near`` (default:
    ``limit``) inputs nearest the failing gold rows — of ``pool`` (unlabelled inputs) if given, else of live
    traffic, else the training rows themselves — each with a suggested answer. Every row carries
    ``reviewed: false``: a person sets the answer and ``reviewed: true``; rows imported so are not suggested
    again."""
    refuse_active_source(project, path)
    task = evaluation_task(project, analysis.evaluation)
    preds = list(project.store.predictions(analysis.evaluation.id))
    key = "text" if task.type in ("classification", "extraction") else "input"
    target = "label" if task.type == "classification" else "output"
    out: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    taken = {dedupe_key(p.input) for p in preds}  # gold inputs, then every input already exported
    for issue in [x for x in analysis.label_issues if x["split"] != "gold"][:limit]:
        out.append(
            {
                key: issue["text"],
                "label": issue["label"],
                "given_label": issue["label"],
                "suggested_label": issue["suggested"],
                "reviewed": False,
                "source": issue.get("source", issue["split"]),
                "why": f"likely mislabelled: models that did not learn this row give {issue['suggested']} "
                f"p={issue['p_suggested']:.2f}, {issue['label']} p={issue['p_given']:.2f}",
            }
        )
        taken.add(dedupe_key(issue["text"]))
        counts["suspected label errors"] += 1
    failing = [preds[i].input for i in analysis.failing]
    near = limit if near is None else near
    if failing and near and task.type != "chat":
        nearest = _nearest_to_failures(project, task, analysis, failing, taken, near, pool)
        for text, answer, where, why in nearest:
            out.append({key: text, target: answer, "reviewed": False, "source": where, "why": why})
            counts[where] += 1
    return _write_export(path, out, counts)


def _nearest_to_failures(
    project: Project,
    task: Any,
    analysis: Analysis,
    failing: list[str],
    taken: set[str],
    limit: int,
    pool: Path | None,
) -> list[tuple[str, Any, str, str]]:
    """Up to ``limit`` (input, suggested answer, where from, why) nearest the failing gold inputs (MiniLM cosine
    >= 0.5): of ``pool``, else of live traffic (the model's answer), else training rows (their answer now)."""
    from slmloop.data.leakage import project_embedder

    answers: list[Any] | None = None
    if pool is not None:
        found, where = read_pool(task, pool), f"pool {pool.name}"
    else:
        requests = {dedupe_key(r.input): r for r in project.store.requests() if r.status == 200 and r.input.strip()}
        found, where = [r.input for r in requests.values()], "live traffic"
        answers = [_live_answer(r.output) for r in requests.values()]
        if not found:  # no unlabelled inputs: the training rows nearest the failures, to check their answers
            train = load_dataset(project, learned_from(analysis.evaluation)).train
            found, where = [input_text(task, r) for r in train], "training rows"
            answers = [r["label"] if task.type == "classification" else r["output"] for r in train]
    unique = list({dedupe_key(t): k for k, t in enumerate(found) if dedupe_key(t) not in taken}.values())
    if not unique:
        return []
    embed = project_embedder(project)
    sim = (embed([found[k] for k in unique]) @ embed(failing).T).max(axis=1)
    order = [j for j in np.argsort(-sim)[:limit] if sim[j] >= 0.5]
    chosen = [unique[j] for j in order]
    if answers is None:
        suggested, how = _suggestions(project, task, [found[k] for k in chosen]), "a cheap model's guess"
    else:
        suggested = [answers[k] for k in chosen]
        how = "the model's answer" if where == "live traffic" else "its answer now (check it)"
    return [
        (found[k], answer, where, f"near failing gold rows (cosine {sim[j]:.2f}); pre-filled with {how}")
        for j, k, answer in zip(order, chosen, suggested, strict=True)
    ]


def _live_answer(output: str) -> Any:
    """What the server answered, as a row's answer: a classifier's label, else the output as logged."""
    with contextlib.suppress(json.JSONDecodeError, AttributeError):
        return json.loads(output).get("label", output)
    return output


def _write_export(path: Path, rows: list[dict[str, Any]], counts: Counter[str]) -> dict[str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return dict(counts)


def _write_report(project: Project, a: Analysis) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = project.reports_dir / f"analysis-{a.evaluation.name}"
    folder.mkdir(parents=True, exist_ok=True)
    shown = [s for s in a.slices if s.n >= MIN_SLICE][:25]
    if shown:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(shown) + 1.5), dpi=100)
        names = [f"{s.by} = {s.value} (n={s.n})" for s in shown]
        ax.barh(
            names,
            [s.score for s in shown],
            color=["#de2d26" if s.score < a.overall - 0.05 else "#6baed6" for s in shown],
        )
        ax.axvline(a.overall, color="black", linestyle="--", label=f"overall {a.overall:.3f}")
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{a.evaluation.model_ref}: score by slice")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "slices.png")
        plt.close(fig)
    esc = html.escape
    clusters = "".join(
        f"<h3>{esc(c.title)} ({c.n})</h3><table>"
        + "".join(
            f"<tr><td>{x['row']}</td><td>{esc(x['input'])}</td><td>{esc(x['expected'])}</td><td>{esc(x['got'])}</td></tr>"
            for x in c.exemplars
        )
        + "</table>"
        for c in a.clusters[:10]
    )
    issues = "".join(
        f"<tr><td>{x['split']}</td><td>{x['row']}</td><td>{esc(x['text'])}</td><td>{esc(x['label'])}"
        f"</td><td>{esc(x['suggested'])} ({x['p_suggested']:.2f})</td></tr>"
        for x in a.label_issues[:50]
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>analysis {a.evaluation.name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:75em}} td{{padding:.2em .6em;
border-bottom:1px solid #ddd;vertical-align:top}}</style></head><body>
<h1>Failure analysis of {a.evaluation.name} ({esc(a.evaluation.model_ref)})</h1>
<h2>Plan</h2><ol>{"".join(f"<li>{esc(p)}</li>" for p in a.plan)}</ol>
<img src="slices.png" alt="score by slice" style="max-width:100%">
<h2>Failure clusters</h2>{clusters or "<p>no failures</p>"}
<h2>Likely mislabelled rows</h2><table>{issues}</table></body></html>"""
    atomic_write_text(folder / "index.html", page)
    atomic_write_json(
        folder / "analysis.json",
        {
            "evaluation": a.evaluation.name,
            "overall": a.overall,
            "plan": a.plan,
            "slices": [s.__dict__ for s in a.slices],
            "clusters": [{"kind": c.kind, "title": c.title, "n": c.n, "exemplars": c.exemplars} for c in a.clusters],
            "label_issues": a.label_issues,
        },
    )
    return folder
