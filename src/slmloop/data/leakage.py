"""The leakage gate: no training or validation row may copy a gold row.

It stands in front of every training run and every evaluation. A leak blocks
with the list of leaking pairs; overriding needs an explicit flag and is
written to the audit log and into the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from slmloop.data.clean import dedupe_key
from slmloop.errors import LeakageError
from slmloop.manifest import TaskConfig
from slmloop.project import Project
from slmloop.tasks import input_text

__all__ = ["Leak", "find_leaks", "leakage_gate"]


@dataclass
class Leak:
    split: str
    row: int
    gold_row: int
    kind: str
    similarity: float
    text: str
    gold_text: str


def find_leaks(
    task: TaskConfig,
    gold: list[dict[str, Any]],
    **splits: list[dict[str, Any]],
) -> list[Leak]:
    """Exact (normalised, case-folded) input matches between each split and gold."""
    gold_index: dict[str, int] = {}
    for i, row in enumerate(gold):
        gold_index.setdefault(dedupe_key(input_text(task, row)), i)
    leaks: list[Leak] = []
    for name, rows in splits.items():
        for i, row in enumerate(rows):
            j = gold_index.get(dedupe_key(input_text(task, row)))
            if j is not None:
                leaks.append(
                    Leak(name, i, j, "exact", 1.0, input_text(task, row)[:200], input_text(task, gold[j])[:200])
                )
    return leaks


def leakage_gate(
    project: Project,
    task: TaskConfig,
    gold: list[dict[str, Any]],
    *,
    allow: bool,
    context: str,
    **splits: list[dict[str, Any]],
) -> dict[str, Any]:
    """Raise LeakageError when a split overlaps gold, unless ``allow`` (recorded)."""
    leaks = find_leaks(task, gold, **splits)
    status = {
        "checked": sorted(splits),
        "leaks": len(leaks),
        "overridden": False,
        "pairs": [asdict(x) for x in leaks[:50]],
    }
    if not leaks:
        return status
    if not allow:
        lines = "\n".join(
            f"  {x.split}[{x.row}] ≈ gold[{x.gold_row}] ({x.kind}, {x.similarity:.2f}): {x.text[:70]!r}"
            for x in leaks[:20]
        )
        more = f"\n  … and {len(leaks) - 20} more" if len(leaks) > 20 else ""
        raise LeakageError(
            f"{len(leaks)} row(s) of {', '.join(sorted(splits))} copy gold rows:\n{lines}{more}",
            hint="Remove them from the data and run `slmloop data prepare` again, or pass "
            "--allow-leakage to go on anyway (recorded in the audit log).",
        )
    status["overridden"] = True
    with project.store.session() as s:
        project.store.log_event(s, "leakage.override", context, leaks=len(leaks), pairs=status["pairs"][:10])
    return status
