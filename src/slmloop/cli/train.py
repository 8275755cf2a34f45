"""``slmloop train`` and ``slmloop runs``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmloop.cli.common import ProjectOpt, err, load, out


def train(
    epochs: Annotated[float | None, typer.Option(help="Passes over the training split.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per micro-batch.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | bf16 | fp32")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset version (default: newest).")] = None,
    allow_leakage: Annotated[
        bool,
        typer.Option("--allow-leakage", help="Train even if train/validation rows copy gold rows (audited)."),
    ] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Fine-tune the base model with LoRA on the newest dataset version (overrides: manifest train:)."""
    from slmloop.train.recipe import train as run_training

    proj = load(project)
    overrides = {
        "epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lora_r": lora_r,
        "precision": precision,
        "seed": seed,
    }
    run = run_training(proj, overrides, dataset_id=dataset, allow_leakage=allow_leakage, console=err)
    m = run.metrics
    val = f"{m['val_loss_first']:.4f} → {m['val_loss']:.4f}" if m.get("val_loss") is not None else "n/a"
    out.print(
        f"[bold green]{run.name} completed[/bold green]: {m['steps']} steps in {m['train_seconds']:.0f} s "
        f"({m['tokens_per_s']:.0f} tok/s) · train loss {m['train_loss_first']:.3f} → {m['train_loss_last']:.3f} "
        f"· validation loss {val}\n  adapter: {proj.locate(run.path) / 'adapter'} · "
        f"loss curve: {proj.locate(run.path) / 'loss_curve.png'}"
    )


def runs(project: ProjectOpt = Path(".")) -> None:
    """Training runs of the project."""
    from slmloop.store import Run

    proj = load(project)
    t = Table()
    for col in ("run", "created", "status", "dataset", "steps", "val loss", "tok/s"):
        t.add_column(col)
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
