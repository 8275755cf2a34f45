"""The bake-off's table and plot: what each trial tried, how far it got, and how the winner did on gold."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmloop.project import Project
from slmloop.store import atomic_write_text

if TYPE_CHECKING:
    from slmloop.graduate.bakeoff import Bakeoff, Trial

__all__ = ["bakeoff_rows", "describe_params", "plot_trials", "write_bakeoff_report"]


def describe_params(params: dict[str, Any]) -> str:
    """A trial's settings as one line (``lr=0.0002, r=16``)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "the manifest's settings"


def _epochs(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def bakeoff_rows(bo: Bakeoff) -> list[dict[str, Any]]:
    """One row per trial, best first: settings, epochs reached, validation metric, status, run, seconds."""

    def key(t: Trial) -> tuple[int, float, float]:
        order = {"completed": 0, "pruned": 1, "paused": 1, "running": 2, "pending": 3, "failed": 4}
        value = t.score if t.score is not None else float("nan")
        sign = -1 if bo.higher_is_better else 1
        return order.get(t.status, 5), -t.reached, sign * value if value == value else float("inf")

    rows = []
    for t in sorted(bo.trials, key=key):
        rows.append(
            {
                "trial": t.n,
                "settings": describe_params(t.params),
                "epochs": f"{_epochs(t.reached)} / {_epochs(t.epochs)}",
                bo.metric: t.score,
                "status": t.status + (" ★" if bo.winner == t.n else ""),
                "run": t.run or "",
                "train_s": round(t.seconds),
            }
        )
    return rows


def plot_trials(bo: Bakeoff, path: Path) -> Path:
    """Validation metric against epochs trained, one line per trial (pruned dashed, winner bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for t in bo.trials:
        if not t.scores:
            continue
        xs = [p["epochs"] for p in t.scores]
        ys = [p["value"] for p in t.scores]
        win = bo.winner == t.n
        style = "--" if t.status == "pruned" else "-"
        ax.plot(
            xs,
            ys,
            style,
            marker="o",
            linewidth=3 if win else 1.3,
            alpha=1.0 if win or t.status == "completed" else 0.6,
            label=f"{t.n}: {describe_params(t.params)}" + (" (winner)" if win else ""),
        )
    ax.set_xlabel("epochs trained")
    ax.set_ylabel(f"validation {bo.metric}")
    ax.set_title(f"{bo.id}: {len(bo.trials)} trials (dashed: cut by successive halving)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_bakeoff_report(project: Project, bo: Bakeoff) -> Path:
    """``.slmloop/bakeoffs/bo-N/report.md`` with ``trials.png``: the table, the winner on gold, the test."""
    folder = project.bakeoffs_dir / bo.id
    plot_trials(bo, folder / "trials.png")
    rows = bakeoff_rows(bo)
    head = list(rows[0]) if rows else []
    lines = [
        f"# Bake-off {bo.id}",
        "",
        f"{len(bo.trials)} trials ({bo.backend}), ranked by validation {bo.metric}; the winner was then scored once "
        "on gold.",
        "",
        "![trials](trials.png)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(_fmt(r[h]) for h in head) + " |" for r in rows),
        "",
    ]
    g = bo.gold or {}
    if g:
        w = g.get("winner_metrics", {})
        lines += [
            "## On gold",
            "",
            f"- winner: trial {bo.winner} · {w.get('metric')} {_fmt(w.get('value'))} (CI {w.get('ci')})",
        ]
        if "incumbent_metrics" in g:
            i = g["incumbent_metrics"]
            lines += [
                f"- incumbent: {bo.incumbent} · {i.get('metric')} {_fmt(i.get('value'))} (CI {i.get('ci')})",
                f"- paired test ({g['test']}): difference {g['diff']:+.4f}, CI {g['ci'][0]:+.4f} to "
                f"{g['ci'][1]:+.4f}, p = {g['p_value']:.3g} → **{g['verdict']}**",
            ]
        lines += ["", g.get("sentence", ""), ""]
    return atomic_write_text(folder / "report.md", "\n".join(lines))
