"""``slmloop analyze EVAL_ID``: where the model fails, why, and which data would fix it.

- **Slices**: the metric by gold label, by input-length quartile, and by every tag
  column the gold rows carry (source columns kept as metadata).
- **Failure clusters**: confusion pairs (classification); error types — invalid
  JSON, missing field, wrong value, extra field (extraction); MiniLM embedding
  clusters of the failing inputs, named by their most distinctive words
  (generation, chat) — each with exemplars.
- **Likely mislabelled rows**, confident-learning style: a row whose given label
  the model confidently disputes (its probability for another label reaches that
  label's per-class threshold — the mean probability the model gives the label on
  rows that carry it). Gold rows from the evaluation; training rows with ``--train``.
- **A remediation plan**, and ``--export FILE``: rows to label, in a form
  ``slmloop data import`` accepts — live requests that resemble the failures, and
  training rows whose labels look wrong. Gold rows are never exported for
  training (the leakage gate would refuse them anyway).
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
from slmloop.data.versions import load_dataset, row_field
from slmloop.errors import NotFoundError
from slmloop.evaluate.metrics import field_diff, parse_json_object
from slmloop.evaluate.results import evaluation_task, gold_rows
from slmloop.project import Project
from slmloop.store import Evaluation, Prediction, atomic_write_json, atomic_write_text
from slmloop.tasks import input_text

__all__ = [
    "Analysis",
    "Cluster",
    "Slice",
    "analyze",
    "export_for_labelling",
    "find_label_issues",
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


def find_label_issues(labels: list[int], probs: np.ndarray) -> list[tuple[int, int, float]]:
    """Rows whose given label the model confidently disputes: ``[(row, suggested, self_confidence)]``.

    Confident learning: per-class threshold t_j = mean p(j) over rows labelled j; a row
    labelled i counts as class j when p(j) >= t_j (the largest such j); off-diagonal
    assignments are label issues, most suspicious (lowest p(i)) first.
    """
    y = np.asarray(labels)
    k = probs.shape[1]
    thresholds = np.array([probs[y == j, j].mean() if (y == j).any() else 1.0 for j in range(k)])
    issues = []
    for i, (given, p) in enumerate(zip(y, probs, strict=True)):
        above = [j for j in range(k) if p[j] >= thresholds[j]]
        if not above:
            continue
        j = max(above, key=lambda c: p[c])
        if j != given:
            issues.append((i, j, float(p[given])))
    return sorted(issues, key=lambda x: x[2])


def _disputed(task: Any, split: str, rows: list[dict], scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``split`` whose label the model's probabilities dispute (see :func:`find_label_issues`)."""
    labels = task.label_list
    probs = np.array([[s["probs"].get(lab, 0.0) for lab in labels] for s in scores])
    given = [labels.index(r["label"]) for r in rows]
    return [
        {
            "split": split,
            "row": i,
            "text": input_text(task, rows[i])[:200],
            "label": rows[i]["label"],
            "suggested": labels[j],
            "p_given": conf,
            "p_suggested": float(probs[i, j]),
        }
        for i, j, conf in find_label_issues(given, probs)
    ]


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


def _embedding_clusters(project: Project, preds: list[Prediction]) -> list[Cluster]:
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    from slmloop.data.leakage import project_embedder

    failing = [i for i, p in enumerate(preds) if not p.correct]
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
    train_issues = [x for x in analysis.label_issues if x["split"] == "train"]
    if gold_issues:
        plan.append(
            f"{len(gold_issues)} gold row(s) look mislabelled — review them; fix with `slmloop gold remove` "
            "and `slmloop gold add`."
        )
    if train_issues:
        plan.append(f"{len(train_issues)} training row(s) look mislabelled — relabel them (`--export` writes them).")
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
    try:
        eid = int(str(evaluation_ref).removeprefix("eval-"))
    except ValueError:
        raise NotFoundError(f"{evaluation_ref!r} is not an evaluation id", hint="They look like eval-3.") from None
    ev = project.store.get(Evaluation, eid, "evaluation", "`slmloop eval` prints evaluation ids.")
    task = evaluation_task(project, ev)
    rows = gold_rows(project, ev.gold_id)
    preds = list(project.store.predictions(ev.id))
    hits = np.array([p.correct for p in preds], dtype=bool)
    analysis = Analysis(ev, float(hits.mean()) if len(hits) else math.nan)
    analysis.slices = _slices(task, rows, hits)
    if task.type == "classification":
        analysis.clusters = _classification_clusters(preds)
    elif task.type == "extraction":
        analysis.clusters = _extraction_clusters(rows, preds)
    else:
        analysis.clusters = _embedding_clusters(project, preds)
    if task.type == "classification" and task.label_list and preds and "probs" in preds[0].scores:
        analysis.label_issues = _disputed(task, "gold", rows, [p.scores for p in preds])
        if train_rows and not ev.model_ref.startswith("endpoint:"):
            analysis.label_issues += _train_label_issues(project, ev, console)
    analysis.plan = _plan(analysis, task.type)
    if report:
        analysis.path = _write_report(project, analysis)
    return analysis


def _train_label_issues(project: Project, ev: Evaluation, console: Console) -> list[dict[str, Any]]:
    """Score the training rows of the evaluated model's dataset with that model, flag disputed labels."""
    from slmloop.evaluate.answers import answer_rows
    from slmloop.models.loading import pick_dtype
    from slmloop.shortlist import Shortlist
    from slmloop.targets import load_target, resolve_target

    target = resolve_target(project, ev.model_ref)
    lineage = target.run or target.release
    if lineage is None:
        return []
    task = target.answering_task(project)
    train = load_dataset(project, lineage.dataset_id).train
    shortlist = target.shortlist()
    if shortlist is not None:  # as in training: each row's shortlist without the row itself
        cache = project.home / "cache" / "embeddings"
        index = Shortlist.build(task, train, shortlist.k, cache_dir=cache)
        train = index.annotate(task, train, leave_out_self=True, cache_dir=cache)
    model, tok = load_target(target, pick_dtype(project.manifest.eval.precision))
    cfg = project.manifest.eval
    with console.status(f"scoring {len(train)} training rows with {target.ref} …"):
        answers = answer_rows(
            task,
            target.prompt,
            "rank",
            model,
            tok,
            train,
            batch_size=cfg.batch_size,
            max_new_tokens=1,
            margin=cfg.rank_margin,
        )
    return _disputed(task, "train", train, [a.scores for a in answers])


def export_for_labelling(project: Project, analysis: Analysis, path: Path, limit: int = 200) -> dict[str, int]:
    """Rows worth labelling, as JSONL ``slmloop data import`` accepts; gold rows are never included."""
    task = evaluation_task(project, analysis.evaluation)
    preds = list(project.store.predictions(analysis.evaluation.id))
    out: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    gold_keys = {dedupe_key(p.input) for p in preds}
    failing = [p.input for p in preds if not p.correct]
    requests = [r for r in project.store.requests() if r.status == 200 and r.input.strip()]
    live = list({dedupe_key(r.input): r for r in requests if dedupe_key(r.input) not in gold_keys}.values())
    if failing and live:
        from slmloop.data.leakage import project_embedder

        embed = project_embedder(project)
        e_fail, e_live = embed(failing), embed([r.input for r in live])
        sim = (e_live @ e_fail.T).max(axis=1)
        for j in np.argsort(-sim)[:limit]:
            if sim[j] < 0.5:
                break
            r = live[j]
            answer = r.output
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                answer = json.loads(r.output).get("label", answer)
            key = "text" if task.type in ("classification", "extraction") else "input"
            target = "label" if task.type == "classification" else "output"
            out.append(
                {
                    key: r.input,
                    target: answer,
                    "needs_review": True,
                    "source": "live traffic",
                    "why": f"resembles failing gold rows (cosine {sim[j]:.2f}); label pre-filled with the "
                    "model's answer",
                }
            )
            counts["live traffic"] += 1
    for issue in analysis.label_issues:
        if issue["split"] == "train":
            out.append(
                {
                    "text": issue["text"],
                    "label": issue["label"],
                    "suggested_label": issue["suggested"],
                    "needs_review": True,
                    "source": "train",
                    "why": f"the model gives {issue['suggested']} p={issue['p_suggested']:.2f}",
                }
            )
            counts["train"] += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
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
