"""``slmloop bakeoff`` (several training settings, the winner judged on gold) and ``slmloop distill``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slmloop.cli.common import ProjectOpt, err, load, out, table
from slmloop.errors import ConfigError

if TYPE_CHECKING:
    from slmloop.graduate.bakeoff import Bakeoff
    from slmloop.project import Project


def bakeoff(
    trials: Annotated[int | None, typer.Option(help="Trials (bakeoff.trials).")] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Run the trials on Ray Tune (ASHA): 'local' starts a Ray instance here, else a cluster "
            "address (ray://host:10001 or auto); the project folder must be shared with its workers."
        ),
    ] = None,
    against: Annotated[
        str | None,
        typer.Option(
            help="Incumbent the winner is compared with on gold (default: production release, "
            "else the newest run outside the bake-off, else base)."
        ),
    ] = None,
    init_from: Annotated[str | None, typer.Option(help="Warm-start every trial from run-N or a release.")] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new bake-off even if an unfinished one matches.")] = False,
    show: Annotated[str | None, typer.Option(help="Print a bake-off's table (bo-N) and stop.")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Try the settings of the manifest's bakeoff: space on the validation split (successive halving),
    then score the winner on gold against the incumbent with the paired test. A killed bake-off continues
    where it stopped when the command is run again."""
    from slmloop.graduate.bakeoff import load_bakeoff, run_bakeoff

    proj = load(project)
    cfg = proj.manifest.bakeoff
    if trials is not None:
        if trials < 1:
            raise ConfigError(f"--trials {trials}: a bake-off needs at least one trial", hint="e.g. --trials 6")
        cfg = cfg.model_copy(update={"trials": trials})
    bo = (
        load_bakeoff(proj, show)
        if show
        else run_bakeoff(proj, cfg=cfg, ray=ray, against=against, init_from=init_from, new=new, console=err)
    )
    print_bakeoff(proj, bo)


def print_bakeoff(proj: Project, bo: Bakeoff) -> None:
    from slmloop.graduate.report import bakeoff_rows

    rows = bakeoff_rows(bo)
    t = table(*rows[0].keys(), title=f"{bo.id} · validation {bo.metric}", right=(bo.metric, "train_s"), fold=True)
    for r in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()))
    out.print(t)
    g = bo.gold or {}
    if g:
        w = g["winner_metrics"]
        out.print(f"winner trial {bo.winner} on gold: {w['metric']} {w['value']:.4f}")
        if "incumbent_metrics" in g:
            out.print(f"against {bo.incumbent}: [bold]{g['verdict']}[/bold] — {g['sentence']}")
    folder = proj.bakeoffs_dir / bo.id
    out.print(f"report: {folder / 'report.md'} · plot: {folder / 'trials.png'}")


def distill(
    teacher: Annotated[
        str,
        typer.Option(
            help="run-N, vN, model:PATH_OR_ID (another local model), endpoint:NAME (eval.endpoints, any "
            "OpenAI-compatible API) or live:URL (a running slmloop serve)."
        ),
    ],
    unlabelled: Annotated[
        Path | None, typer.Option(help="Inputs without labels for the teacher to answer (e.g. a monitor export).")
    ] = None,
    train_inputs: Annotated[
        bool, typer.Option("--train-inputs/--no-train-inputs", help="Let the teacher answer the training inputs.")
    ] = True,
    train_student: Annotated[
        bool, typer.Option("--train/--no-train", help="Train the student on the teacher's answers.")
    ] = True,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset version whose inputs are used (default: newest).")
    ] = None,
    init_from: Annotated[str | None, typer.Option(help="Warm-start the student from run-N or a release.")] = None,
    token_level: Annotated[
        bool,
        typer.Option(
            "--token-level/--sequence-level",
            help="With a local teacher of the student's tokenizer, also match its token distributions (KL).",
        ),
    ] = True,
    project: ProjectOpt = Path("."),
) -> None:
    """Capture a teacher's answers as a new dataset version (provenance recorded), train the student on
    them, and score student, teacher and base on gold with their cost per 1k requests."""
    from slmloop.graduate.distill import distill as run_distill

    proj = load(project)
    result = run_distill(
        proj,
        teacher,
        unlabelled=unlabelled,
        use_train=train_inputs,
        dataset_id=dataset,
        train_student=train_student,
        init_from=init_from,
        token_level=token_level,
        console=err,
    )
    c = result.counts
    agree = result.version.config["distill"].get("agreement_with_labels")
    out.print(
        f"[bold green]{result.version.id}[/bold green]: {c['rows']} rows answered by {teacher} "
        f"({c['from_train']} training inputs, {c['from_unlabelled']} unlabelled; {c['invalid_answers']} invalid "
        "answers left out)" + (f" · teacher agrees with the human labels on {agree:.1%}" if agree is not None else "")
    )
    if result.table:
        t = table("role", "model", "metric", "value", "95% CI", "rows/s", "cost / 1k req", right=("value", "rows/s"))
        for r in result.table:
            ci = r["ci"] or [None, None]
            t.add_row(
                r["role"],
                r["model"],
                r["metric"],
                f"{r['value']:.4f}",
                f"{ci[0]:.3f}–{ci[1]:.3f}" if ci[0] is not None else "",
                f"{r['rows_per_s']:.1f}" if r["rows_per_s"] else "",
                f"{r['cost_per_1k_requests']:.4f}" if r["cost_per_1k_requests"] is not None else "",
            )
        out.print(t)
