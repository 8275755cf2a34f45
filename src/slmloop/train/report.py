"""Pictures of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_loss_curve"]


def plot_loss_curve(steps: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Training loss (raw and smoothed) and validation loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    xs = [s["step"] for s in steps]
    ys = [s["loss"] for s in steps]
    if xs:
        ax.plot(xs, ys, color="#9ecae1", linewidth=1, label="train loss (per step)")
        window = max(1, len(ys) // 20)
        smooth = [
            sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))
        ]
        ax.plot(xs, smooth, color="#08519c", linewidth=2, label=f"train loss ({window}-step mean)")
    vx = [s["step"] for s in steps if s.get("val_loss") is not None]
    vy = [s["val_loss"] for s in steps if s.get("val_loss") is not None]
    if vx:
        ax.plot(vx, vy, "o-", color="#d94801", linewidth=2, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy on answer tokens")
    ax.set_title(title or "loss curve")
    if ys and max(ys) / max(min(ys), 1e-6) > 50:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
