"""``slmloop eval`` (score a model on gold, judge the gates), ``eval show``, ``compare`` and ``analyze``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmloop.cli.common import ProjectOpt, err, load, out, table
from slmloop.errors import GateError

app = typer.Typer(help="Score models on the frozen gold set.", invoke_without_command=True)


@app.callback()
def evaluate(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            help="base | run-N | latest | vN (release) | alias | endpoint:NAME. Default: newest run, else base."
        ),
    ] = None,
    pack: Annotated[
        Path | None, typer.Option(help="A standalone eval pack (YAML) instead of the manifest's eval:.")
    ] = None,
    allow_leakage: Annotated[bool, typer.Option("--allow-leakage", help="Evaluate despite leakage (audited).")] = False,
    dataset: Annotated[
        str | None, typer.Option(help="A baseline is fit on this dataset version (default: the current one).")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="What answers for a run or release: transformers, or llamacpp (a release's GGUF file, as "
            "`slmloop serve --engine llamacpp` answers; stored as release-N@llamacpp)."
        ),
    ] = "transformers",
    as_json: Annotated[bool, typer.Option("--json", help="Print the evaluation as JSON.")] = False,
    project: ProjectOpt = Path("."),
) -> int:
    """Score a model on the gold set: metrics with CIs, gates, base and fine-tuned side by side.

    `slmloop eval list` lists the stored evaluations, `slmloop eval show eval-N` one's predictions."""
    if ctx.invoked_subcommand is not None:
        return 0
    from slmloop.evaluate.evaluate import evaluate as run_eval
    from slmloop.evaluate.evaluate import failed_gates
    from slmloop.manifest import load_eval_pack
    from slmloop.store import Run

    proj = load(project)
    cfg = load_eval_pack(pack) if pack else None
    if model is None:
        completed = [r for r in proj.store.list(Run, Run.id) if r.status == "completed"]
        model = completed[-1].name if completed else "base"
    ev = run_eval(proj, model, pack=cfg, allow_leakage=allow_leakage, console=err, dataset_id=dataset, engine=engine)
    failed = failed_gates(ev)
    if as_json:
        import json

        out.print_json(json.dumps({**evaluation_summary(proj, ev), "gates_failed": failed}, default=str))
        if failed:
            raise GateError(f"{ev.model_ref} failed required gate(s): {'; '.join(failed)}", hint="")
        return 0
    out.print(f"[bold]{ev.name}[/bold]: {ev.model_ref} on {ev.gold_id} ({ev.n_rows} rows, {ev.seconds:.0f} s)")
    comparison_table(proj, ev.gold_id, ev.dataset_id)
    for line in prior_lines(ev.metrics):
        out.print(line)
    detail_tables(ev.metrics)
    gate_table(ev.metrics)
    out.print(f"report: {proj.reports_dir / ev.name / 'index.html'}")
    if failed:
        raise GateError(
            f"{ev.model_ref} failed required gate(s): {'; '.join(failed)}",
            hint=f"See {proj.reports_dir / ev.name / 'index.html'}; `slmloop analyze {ev.name}` shows where it fails.",
        )
    return 0


def prior_lines(metrics: dict[str, Any]) -> list[str]:
    """What a prior did to the answers, with the model's own score beside them, and what abstention did."""
    rt = metrics.get("runtime", {})
    lines = []
    if "label_prior" in rt:
        lines.append(
            f"labels ranked with the label prior (weight {rt['label_prior']:g}, chosen on validation): accuracy "
            f"{metrics.get('accuracy', float('nan')):.4f}; the fine-tuned model alone: {rt['model_alone_accuracy']:.4f}"
        )
    if "span_prior" in rt:
        threshold = rt["span_prior"]["threshold"]
        lines.append(
            f"answers weighed with the span prior (a CRF tagger; judge threshold {threshold:g}, fit on validation): "
            "micro_f1 "
            f"{metrics.get('micro_f1', float('nan')):.4f}; the fine-tuned model alone: {rt['model_alone_micro_f1']:.4f}"
        )
    abstain = rt.get("abstain") or (rt.get("baseline") or {}).get("abstain")
    if abstain and "oos_recall" in metrics:
        ci = metrics.get("ci", {})
        lines.append(
            f"abstains below confidence {abstain['threshold']:.3f} (chosen on validation): in-scope accuracy "
            f"{_fmt(metrics['in_scope_accuracy'], ci.get('in_scope_accuracy'))}, out-of-scope recall "
            f"{_fmt(metrics['oos_recall'], ci.get('oos_recall'))}, precision "
            f"{_fmt(metrics.get('oos_precision'), ci.get('oos_precision'))}, AUROC "
            f"{_fmt(metrics.get('oos_auroc'), ci.get('oos_auroc'))}"
        )
    return lines


def _fmt(value: Any, ci: list[float] | None) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "–"
    return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def evaluation_summary(proj: Any, ev: Any) -> dict[str, Any]:
    """An evaluation as JSON scripts read: which model on which data and gold, its metrics with CIs and verdicts."""
    from slmloop.evaluate.results import learned_from
    from slmloop.metrics import HEADLINE

    m = ev.metrics
    task_type = m.get("task", {}).get("type", proj.manifest.task.type)
    names = [k for k in dict.fromkeys([*HEADLINE[task_type], *m.get("ci", {})]) if isinstance(m.get(k), int | float)]
    return {
        "evaluation": ev.name,
        "created": f"{ev.created_at:%Y-%m-%dT%H:%M:%S}",
        "model": ev.model_ref,
        "gold": ev.gold_id,
        "dataset": learned_from(ev),
        "rows": ev.n_rows,
        "seconds": ev.seconds,
        "headline": HEADLINE[task_type][0],
        "metrics": {k: m[k] for k in names},
        "ci": {k: m.get("ci", {}).get(k) for k in names if k in m.get("ci", {})},
        "gates": m.get("gates", []),
        "vs_baseline": m.get("vs_baseline"),
        "must_beat": m.get("must_beat"),
    }


def comparison_table(proj: Any, gold_id: str, dataset_id: str | None = None) -> None:
    """The newest evaluation of each model on ``gold_id``; baselines fit on ``dataset_id`` where given."""
    from slmloop.evaluate.results import latest_evaluations
    from slmloop.metrics import HEADLINE

    evals = latest_evaluations(proj, gold_id, dataset_id)
    keys = list(HEADLINE[proj.task.type])
    t = Table(title=f"gold set {gold_id} (95 % CI)", title_justify="left")
    t.add_column("model")
    t.add_column("evaluation")
    t.add_column("prompt")
    for k in keys:
        t.add_column(k, justify="right")
    t.add_column("s/row", justify="right")
    t.add_column("cost/1k req", justify="right")
    for e in evals:
        rt = e.metrics.get("runtime", {})
        lat = rt.get("latency_p50_s", rt.get("seconds_per_row"))
        cost = rt.get("cost_per_1k_requests")
        t.add_row(
            e.model_ref,
            e.name,
            str(e.metrics.get("prompt", "full")),
            *(_fmt(e.metrics.get(k), e.metrics.get("ci", {}).get(k)) for k in keys),
            f"{lat:.3f}" if lat is not None else "",
            f"{cost:.4f}" if cost is not None else "",
        )
    out.print(t)
    out.print(
        "[dim]prompt: full = instruction + label list / JSON keys (zero-shot); compact = instruction only "
        "(what the model was fine-tuned on); none = a baseline reads the raw input[/dim]"
    )


SHOW_WORST = 10


def _worst(rows: dict[str, dict[str, Any]], what: str, keys: tuple[str, ...], heads: tuple[str, ...]) -> None:
    """The ``SHOW_WORST`` classes or fields with the lowest F1 (the most gold rows first among equals)."""
    worst = sorted(rows.items(), key=lambda kv: (kv[1]["f1"], -kv[1]["support"]))[:SHOW_WORST]
    title = f"weakest {what}s ({len(worst)} of {len(rows)}; all in the HTML report)"
    t = table(what, "F1", *heads, "gold rows", title=title, right=("F1", *heads, "gold rows"))
    for name, c in worst:
        cells = [f"{c[k]:.3f}" if isinstance(c[k], float) else str(c[k]) for k in keys]
        t.add_row(name, f"{c['f1']:.3f}", *cells, str(c["support"]))
    out.print(t)


def detail_tables(metrics: dict[str, Any]) -> None:
    """Weakest classes / fields first and the most frequent confusions: readable at 150 labels or 40 fields."""
    per_class = metrics.get("per_class")
    if per_class and len(per_class) > 2:
        _worst(per_class, "label", ("precision", "recall"), ("precision", "recall"))
    confusion = metrics.get("confusion")
    if confusion and len(confusion["labels"]) > 2:
        from slmloop.evaluate.report import top_confusions

        top = top_confusions(confusion, SHOW_WORST)
        if top:
            t = table("gold label", "predicted", "rows", title="most frequent confusions", right=("rows",))
            for gold, pred, n in top:
                t.add_row(gold, pred, str(n))
            out.print(t)
    per_field = metrics.get("per_field")
    if per_field:
        _worst(per_field, "field", ("tp", "fp", "fn"), ("right", "wrong or extra", "missed"))
    sub = metrics.get("subsets")
    if sub and sub.get("close_neighbour", {}).get("n") and sub.get("no_close_neighbour", {}).get("n"):
        from slmloop.metrics import HEADLINE

        key = next((k for k in sub["close_neighbour"] if k not in ("n", "ci")), None)
        if key is not None and key in HEADLINE.get(metrics.get("task", {}).get("type", ""), (key,)):
            close, clear = sub["close_neighbour"], sub["no_close_neighbour"]
            out.print(
                f"{100 * sub['close_share']:.0f} % of gold rows have a close training paraphrase (MiniLM cosine ≥ "
                f"{sub['threshold']}): {key} {_fmt(close[key], close['ci'].get(key))} on those ({close['n']} rows) vs "
                f"{_fmt(clear[key], clear['ci'].get(key))} on the rest ({clear['n']} rows)"
            )


def gate_table(metrics: dict[str, Any]) -> None:
    gates = metrics.get("gates", [])
    beat = metrics.get("must_beat")
    forgot = metrics.get("forgetting")
    if not gates and not beat and not metrics.get("vs_baseline") and not forgot:
        return
    t = table("gate", "value", "verdict", "required", title="gates")
    for g in gates:
        op = ">=" if g["op"] == "gte" else "<="
        on = f" (CI bound {g['judged_on']:.4f})" if g["significant"] and g["judged_on"] is not None else ""
        t.add_row(
            f"{g['metric']} {op} {g['threshold']}",
            f"{g['value']:.4f}{on}",
            "[green]PASS[/green]" if g["passed"] else "[red]FAIL[/red]",
            "yes" if g["required"] else "no",
        )
    vs = metrics.get("vs_baseline")
    for label, rec, passed in (
        ("must beat", beat, beat is not None and beat["verdict"] == "better"),
        ("not worse than", vs, vs is not None and vs["verdict"] != "worse"),
    ):
        if rec:
            t.add_row(
                f"{label} {rec['against']}",
                f"{rec.get('diff', math.nan):+.4f} (p={rec.get('p_value', 1):.3g})",
                f"[green]PASS[/green] ({rec['verdict']})" if passed else f"[red]{rec['verdict'].upper()}[/red]",
                "yes" if rec.get("required") else "no",
            )
    if forgot:
        b, m = forgot["base"], forgot["model"]
        t.add_row(
            f"forgetting ({forgot['pack']}, {forgot['rows']} rows)",
            f"choice acc {b['choice_accuracy']:.3f} → {m['choice_accuracy']:.3f} "
            f"(p={forgot['choice_accuracy_p']:.3g}); "
            f"solution NLL {b['solution_nll']:.3f} → {m['solution_nll']:.3f}",
            "[green]PASS[/green]" if forgot["passed"] else "[red]FAIL[/red] " + "; ".join(forgot["problems"]),
            "yes" if forgot["required"] else "no",
        )
    out.print(t)
    for rec in (beat, vs):
        if rec and rec.get("sentence"):
            out.print(rec["sentence"], highlight=False)


@app.command("list")
def list_(
    model: Annotated[
        str | None, typer.Option(help="Only evaluations of this model (base, run-3, baseline:knn …).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Newest evaluations to show.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Stored evaluations, newest first: model, data, gold, headline metric with its CI, gates and baseline verdict."""
    import json

    from slmloop.evaluate.evaluate import failed_gates
    from slmloop.store import Evaluation

    proj = load(project)
    evals = [e for e in reversed(proj.store.list(Evaluation, Evaluation.id)) if model is None or e.model_ref == model]
    evals = evals[:limit]
    if as_json:
        rows = [{**evaluation_summary(proj, e), "gates_failed": failed_gates(e)} for e in evals]
        out.print_json(json.dumps(rows, default=str))
        return
    t = table("evaluation", "created", "model", "data", "gold", "headline [95 % CI]", "gates", "vs baseline", fold=True)
    for e in evals:
        info = evaluation_summary(proj, e)
        key = info["headline"]
        failed = failed_gates(e)
        vs = e.metrics.get("vs_baseline")
        t.add_row(
            e.name,
            f"{e.created_at:%m-%d %H:%M}",
            e.model_ref,
            info["dataset"] or "",
            e.gold_id,
            f"{key} {_fmt(info['metrics'].get(key), info['ci'].get(key))}",
            "[red]FAIL[/red] " + "; ".join(failed) if failed else "[green]pass[/green]",
            f"{vs['verdict']} ({vs['against']})" if vs else "",
        )
    out.print(t)
    if not evals:
        out.print("no evaluations yet: `slmloop eval --model base` (or run-N, baseline:NAME)")


@app.command("show")
def show(
    evaluation: Annotated[str, typer.Argument(help="eval-N, or latest: the newest evaluation of a fine-tuned model")],
    failures: Annotated[bool, typer.Option("--failures", help="Only rows the model got wrong.")] = False,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 50,
    project: ProjectOpt = Path("."),
) -> None:
    """Every stored prediction of an evaluation."""
    from slmloop.evaluate.results import find_evaluation

    proj = load(project)
    ev = find_evaluation(proj, evaluation)
    preds = [p for p in proj.store.predictions(ev.id) if not (failures and p.correct)]
    task_type = ev.metrics.get("task", {}).get("type", proj.manifest.task.type)
    t = Table(title=f"{ev.name} · {ev.model_ref} · {len(preds)} row(s)", title_justify="left", show_lines=True)
    t.add_column("#", justify="right")
    t.add_column("input", overflow="fold", max_width=50)
    if task_type == "extraction":
        t.add_column("field-by-field (expected → got)", overflow="fold")
    else:
        t.add_column("expected", overflow="fold", max_width=40)
        t.add_column("predicted", overflow="fold", max_width=40)
    t.add_column("ok")
    for p in preds[:limit]:
        mark = "✓" if p.correct else "✗"
        if task_type == "extraction":
            t.add_row(str(p.idx), p.input, _diff_cell(p.reference, p.raw), mark)
        else:
            t.add_row(str(p.idx), p.input, p.reference, p.prediction, mark)
    out.print(t)
    if len(preds) > limit:
        out.print(f"… {len(preds) - limit} more: --limit {len(preds)}")


def _diff_cell(reference: str, raw: str) -> str:
    """An extraction answer against its reference: only the fields that differ, each with what kind of error."""
    from rich.markup import escape

    from slmloop.predict.parsing import field_diff, parse_json_object, reference_object

    ref = reference_object(reference)
    got = parse_json_object(raw)
    if got is None:
        return f"[red]no JSON object in the answer:[/red] {escape(raw[:200])}"
    diff = field_diff(ref, got)
    if not diff:
        return "[green]all fields right[/green]" + (f" ({len(ref)} field(s))" if ref else " (nothing to extract)")
    colour = {"missing": "yellow", "wrong": "red", "extra": "magenta"}
    lines = [
        f"[{colour[d['kind']]}]{d['kind']:<7}[/{colour[d['kind']]}] {escape(d['field'])}: "
        f"{escape(' | '.join(d['expected']) or '–')} → {escape(' | '.join(d['got']) or '–')}"
        for d in diff
    ]
    return "\n".join(lines)


def compare(
    models: Annotated[list[str], typer.Argument(help="Two or more: base, run-N, vN, alias, endpoint:NAME.")],
    metric: Annotated[str | None, typer.Option(help="Metric to decide on (default: the task's headline).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Re-evaluate instead of reusing stored evaluations.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the evaluations and the paired tests as JSON.")
    ] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Decide between models on the same gold rows: metrics with CIs, paired tests, latency, cost.

    Baselines among them are fit on the data of the first trained model compared."""
    from slmloop.analyze.compare import compare_models

    proj = load(project)
    report = compare_models(proj, models, metric=metric, fresh=fresh, console=err)
    if as_json:
        import json

        comparisons = [
            {
                "against": c.a.model_ref,
                "model": c.b.model_ref,
                "metric": c.metric,
                "diff": c.test.diff,
                "ci": list(c.test.ci),
                "test": c.test.test,
                "p_value": c.test.p_value,
                "verdict": c.verdict,
                "sentence": c.sentence,
            }
            for c in report.comparisons
        ]
        evaluations = [evaluation_summary(proj, e) for e in report.evaluations]
        out.print_json(json.dumps({"evaluations": evaluations, "comparisons": comparisons}, default=str))
        return
    comparison_table(proj, report.evaluations[0].gold_id)
    t = table(
        "model",
        "metric",
        "difference",
        "CI",
        "test",
        "p",
        "verdict",
        title=f"against {report.evaluations[0].model_ref}",
    )
    for c in report.comparisons:
        colour = {"better": "green", "worse": "red"}.get(c.verdict, "yellow")
        t.add_row(
            c.b.model_ref,
            c.metric,
            f"{c.test.diff:+.4f}",
            f"[{c.test.ci[0]:+.4f}, {c.test.ci[1]:+.4f}]",
            c.test.test,
            f"{c.test.p_value:.3g}",
            f"[{colour}]{c.verdict}[/{colour}]",
        )
    out.print(t)
    for c in report.comparisons:
        out.print(f"• {c.sentence}", highlight=False)
    if report.path is not None:
        out.print(f"report: {report.path / 'index.html'}")


def analyze(
    evaluation: Annotated[str, typer.Argument(help="eval-N, or latest: the newest evaluation of a fine-tuned model")],
    train: Annotated[
        bool, typer.Option("--train", help="Also look for mislabelled training rows (scored out of sample).")
    ] = False,
    export: Annotated[
        Path | None, typer.Option(help="Write rows to label (JSONL for `slmloop data import`): suspects, weak cases.")
    ] = None,
    pool: Annotated[
        Path | None, typer.Option(help="Unlabelled inputs (.txt, .jsonl, .csv) to pick the ones nearest failures from.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most suspected label errors to export.")] = 200,
    near: Annotated[int, typer.Option(help="Most inputs near the failing gold rows to export (0: none).")] = 200,
    project: ProjectOpt = Path("."),
) -> None:
    """Where a model fails and which data would fix it: weakest labels / fields, failure clusters, likely
    mislabelled rows with the suggested label, a plan; --export writes the rows to label.

    Label the export (set `label`, and `reviewed: true`), then `slmloop data import FILE` and
    `slmloop data prepare`: a later import's answer wins, and reviewed rows are not suggested again."""
    from slmloop.analyze.failures import analyze as run_analysis
    from slmloop.analyze.failures import export_for_labelling

    proj = load(project)
    a = run_analysis(proj, evaluation, train_rows=train, console=err)
    out.print(f"[bold]{a.evaluation.name}[/bold] ({a.evaluation.model_ref}): {a.overall:.4f} overall")
    if a.weakest:
        kind = "label" if a.evaluation.metrics.get("per_class") else "field"
        t = table(kind, "F1", "gold rows", title=f"weakest {kind}s", right=("F1", "gold rows"))
        for name, f1, n in a.weakest:
            t.add_row(name, f"{f1:.3f}", str(n))
        out.print(t)
    weak = [s for s in a.slices if s.n >= 5 and s.by != "label"]
    if weak:
        t = table("slice", "value", "rows", "score", "failures", title="slices (weakest first within each)")
        for s in weak:
            style = "red" if s.score < a.overall - 0.05 else ""
            t.add_row(
                s.by,
                s.value,
                str(s.n),
                f"[{style}]{s.score:.3f}[/{style}]" if style else f"{s.score:.3f}",
                str(s.failures),
            )
        out.print(t)
    t = table("cluster", "rows", "exemplar", title=f"failure clusters ({len(a.clusters)})", fold=True)
    for c in a.clusters[:10]:
        ex = c.exemplars[0] if c.exemplars else {}
        shown = ex.get("input", "")[:100]
        if ex.get("diff"):  # extraction: the exemplar's field-by-field diff
            shown += "\n" + "; ".join(
                f"{d['kind']} {d['field']}: {' | '.join(d['expected']) or '–'} → {' | '.join(d['got']) or '–'}"
                for d in ex["diff"]
            )
        t.add_row(f"{c.kind}: {c.title}", str(c.n), shown)
    out.print(t)
    per_field = a.evaluation.metrics.get("per_field")
    if per_field:
        detail_tables({"per_field": per_field})
    if a.label_issues:
        t = table(
            "split",
            "row",
            "text",
            "label",
            "suggested",
            "source",
            title=f"likely mislabelled rows ({len(a.label_issues)}, most suspicious first)",
            fold=True,
        )
        for x in a.label_issues[:15]:
            t.add_row(
                x["split"],
                str(x["row"]),
                x["text"][:90],
                f"{x['label']} ({x['p_given']:.2f})",
                f"{x['suggested']} ({x['p_suggested']:.2f})",
                x.get("source", ""),
            )
        out.print(t)
    out.print("[bold]plan[/bold]")
    for i, step in enumerate(a.plan, 1):
        out.print(f"  {i}. {step}", highlight=False)
    if export is not None:
        counts = export_for_labelling(proj, a, export, limit=limit, pool=pool, near=near)
        where = ", ".join(f"{n} {k}" for k, n in counts.items()) or "nothing to label"
        out.print(
            f"wrote {sum(counts.values())} row(s) to label to {export} ({where}). Set each `label` (or `output`) "
            f"and `reviewed: true`, then `slmloop data import {export}` and `slmloop data prepare`"
        )
    if a.path is not None:
        out.print(f"report: {a.path / 'index.html'}")
