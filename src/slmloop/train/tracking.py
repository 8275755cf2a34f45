"""Optional metric reporting to the tools people already use: TensorBoard and MLflow."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from slmloop.errors import ConfigError

__all__ = ["Tracker", "open_trackers", "read_trace"]


def read_trace(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``trace.jsonl``: one entry per optimizer step (a line torn by a kill is skipped)."""
    path = run_dir / "trace.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # blank, or half a line written when the run was killed
    return out


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.report_to includes tensorboard, but the tensorboard package is not installed",
                hint="pip install tensorboard (or remove it from train.report_to)",
            ) from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, run_name: str, params: dict[str, Any], default_uri: Path) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError(
                "train.report_to includes mlflow, but the mlflow package is not installed",
                hint="pip install mlflow (or remove it from train.report_to)",
            ) from None
        import os

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(default_uri.resolve().as_uri())
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:250] for k, v in params.items()})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def open_trackers(names: Sequence[str], run_dir: Path, run_name: str, params: dict[str, Any]) -> list[Tracker]:
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(_TensorBoard(run_dir / "tensorboard"))
        elif name == "mlflow":
            trackers.append(_MLflow(run_name, params, run_dir.parent.parent / "mlruns"))
    return trackers
