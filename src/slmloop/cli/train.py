"""``slmloop train`` and ``slmloop runs``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from slmloop.cli.common import ProjectOpt, err, load, out, table
from slmloop.cli.options import as_flags, config_options
from slmloop.manifest import TrainConfig


def _launch(num_processes: int, args: list[str]) -> int:
    """Re-run this command in N data-parallel processes through accelerate (torchrun underneath)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "slmloop",
        "train",
        *args,
    ]
    err.print(f"launching {num_processes} processes: {' '.join(cmd[2:])}")
    return subprocess.call(cmd)


@config_options(TrainConfig, skip=("early_stopping",))
def train(
    overrides: dict[str, Any],
    max_length: Annotated[int | None, typer.Option(help="Longest example in tokens (model.max_length).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset version (default: newest).")] = None,
    init_from: Annotated[
        str | None, typer.Option(help="Start from an earlier adapter: run-N or a release (vN) — the iterate step.")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue an interrupted run (run-N) from its last checkpoint.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the preflight forecast and stop.")] = False,
    num_processes: Annotated[int, typer.Option(help="Data-parallel processes (accelerate launch).")] = 1,
    allow_leakage: Annotated[
        bool, typer.Option("--allow-leakage", help="Train even if train/validation rows copy gold rows (audited).")
    ] = False,
    project: ProjectOpt = Path("."),
) -> int:
    """Fine-tune the base model with LoRA on the newest dataset version.

    Every option of the manifest's train: section is also an option here (same name, same meaning).
    """
    if num_processes > 1:
        if dry_run:
            err.print("[yellow]--dry-run forecasts one process; run it without --num-processes.[/yellow]")
        named = {"dataset": dataset, "init_from": init_from, "resume": resume, "max_length": max_length}
        flags = as_flags({**overrides, **named})
        if allow_leakage:
            flags.append("--allow-leakage")
        code = _launch(num_processes, [*flags, "--project", str(project.resolve())])
        if code == 0:
            runs(project)
        return code

    from slmloop.train.preflight import render_forecast
    from slmloop.train.recipe import plan
    from slmloop.train.recipe import train as run_training

    proj = load(project)
    if max_length is not None:
        proj.manifest.model.max_length = max_length
    if dry_run:
        forecast = plan(proj, overrides, dataset_id=dataset, allow_leakage=allow_leakage, init_from=init_from)
        out.print(render_forecast(forecast, title="preflight (dry run: nothing was trained)"))
        return 0 if forecast.fits and not forecast.answer_cut else 1
    run = run_training(
        proj,
        overrides,
        dataset_id=dataset,
        allow_leakage=allow_leakage,
        init_from=init_from,
        resume=resume,
        console=err,
    )
    if run.status != "completed":  # a non-main data-parallel process
        return 0
    m = run.metrics
    val = f"{m['val_loss_first']:.4f} → {m['val_loss']:.4f}" if m.get("val_loss") is not None else "n/a"
    folder = proj.locate(run.path)
    out.print(
        f"[bold green]{run.name} completed[/bold green]: {m['steps']} steps in {m['train_seconds']:.0f} s "
        f"({m['tokens_per_s']:.0f} tok/s; forecast {m['forecast_seconds']:.0f} s) · train loss "
        f"{m['train_loss_first']:.3f} → {m['train_loss_last']:.3f} · validation loss {val} · "
        f"result: {m['selected']}"
        + (" (stopped early)" if m["stopped_early"] else "")
        + f"\n  peak memory {m['peak_gib']:.2f} GiB (forecast {m['forecast_peak_gib']:.2f} GiB)"
        + f"\n  adapter: {folder / 'adapter'} · loss curve: {folder / 'loss_curve.png'}"
    )
    return 0


def runs(project: ProjectOpt = Path(".")) -> None:
    """Training runs of the project."""
    from slmloop.store import Run

    proj = load(project)
    t = table("run", "created", "status", "dataset", "steps", "val loss", "tok/s")
    for r in proj.store.list(Run, Run.id):
        m = r.metrics or {}
        vl = m.get("val_loss")
        t.add_row(
            r.name,
            f"{r.created_at:%Y-%m-%d %H:%M}",
            r.status,
            r.dataset_id,
            str(m.get("steps", "")),
            f"{vl:.4f}" if isinstance(vl, float) else "",
            f"{m['tokens_per_s']:.0f}" if "tokens_per_s" in m else "",
        )
    out.print(t)
