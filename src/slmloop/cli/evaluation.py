"""``slmloop eval`` (score a model on gold) and ``slmloop eval show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmloop.cli.common import ProjectOpt, err, load, out

app = typer.Typer(help="Score models on the frozen gold set.", invoke_without_command=True)


@app.callback()
def evaluate(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(help="base | run-N | latest | vN (release) | alias. Default: newest run, else base."),
    ] = None,
    allow_leakage: Annotated[bool, typer.Option("--allow-leakage", help="Evaluate despite leakage (audited).")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Score a model on the gold set; shows base and fine-tuned side by side."""
    if ctx.invoked_subcommand is not None:
        return
    from slmloop.evaluate.evaluate import evaluate as run_eval
    from slmloop.store import Run

    proj = load(project)
    if model is None:
        completed = [r for r in proj.store.list(Run, Run.id) if r.status == "completed"]
        model = completed[-1].name if completed else "base"
    ev = run_eval(proj, model, allow_leakage=allow_leakage, console=err)
    out.print(f"[bold]{ev.name}[/bold]: {ev.model_ref} on {ev.gold_id} ({ev.n_rows} rows, {ev.seconds:.0f} s)")
    comparison_table(proj, ev.gold_id)
    out.print(f"report: {proj.reports_dir / ev.name / 'index.html'}")


def comparison_table(proj, gold_id: str) -> None:  # type: ignore[no-untyped-def]
    from slmloop.evaluate.evaluate import HEADLINE, latest_evaluations

    evals = latest_evaluations(proj, gold_id)
    keys = list(HEADLINE[proj.manifest.task.type])
    extra = [k for k in ("invalid_rate",) if any(k in e.metrics for e in evals)]
    t = Table(title=f"gold set {gold_id}", title_justify="left")
    t.add_column("model")
    t.add_column("evaluation")
    for k in keys + extra:
        t.add_column(k, justify="right")
    for e in evals:
        t.add_row(e.model_ref, e.name, *(f"{e.metrics.get(k, float('nan')):.4f}" for k in keys + extra))
    out.print(t)


@app.command("show")
def show(
    evaluation: Annotated[str, typer.Argument(help="eval-N")],
    failures: Annotated[bool, typer.Option("--failures", help="Only rows the model got wrong.")] = False,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 50,
    project: ProjectOpt = Path("."),
) -> None:
    """Every stored prediction of an evaluation."""
    from slmloop.errors import NotFoundError
    from slmloop.store import Evaluation

    proj = load(project)
    try:
        eid = int(evaluation.removeprefix("eval-"))
    except ValueError:
        raise NotFoundError(f"{evaluation!r} is not an evaluation id", hint="They look like eval-3.") from None
    ev = proj.store.get(Evaluation, eid, "evaluation", "`slmloop eval` prints their ids.")
    preds = [p for p in proj.store.predictions(ev.id) if not (failures and p.correct)]
    t = Table(title=f"{ev.name} · {ev.model_ref} · {len(preds)} row(s)", title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("input", overflow="fold", max_width=60)
    t.add_column("expected")
    t.add_column("predicted")
    t.add_column("ok")
    for p in preds[:limit]:
        t.add_row(str(p.idx), p.input[:200], p.reference[:80], p.prediction[:80], "✓" if p.correct else "✗")
    out.print(t)
