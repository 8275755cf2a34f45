"""Bake-off on a real task: N trials on 2 CPU cores within a time budget, the winner against the default.

The task_quality project (HWU64 intents by default) is the starting point: its default run, already
evaluated on gold, is the incumbent. The script writes a ``bakeoff:`` section into the manifest as a
user would, runs ``slmloop bakeoff`` and prints the trial table, the winner against the default run
on gold (paired test), and the bake-off's wall time as a ratio of the budget.

    python benchmarks/bakeoff.py [--work /tmp/tq4] [--task hwu64-cls] [--budget-min 60] [--json FILE]

If ``WORK/TASK`` holds no trained project, task_quality's loop makes one first (not counted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

SPACE = {
    "learning_rate": [1e-3, 2e-3, 4e-3],
    "lora_r": [16, 32],
    "rebalance": ["none", "sqrt"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tq4")
    ap.add_argument("--task", default="hwu64-cls")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--budget-min", type=float, default=60.0)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    folder = Path(args.work) / args.task
    if not (folder / ".slmloop" / "slmloop.db").exists():
        cmd = [sys.executable, str(ROOT / "benchmarks" / "task_quality.py"), "--task", args.task]
        subprocess.check_call([*cmd, "--work", args.work, "--data-dir", args.data_dir])
    manifest = yaml.safe_load((folder / "slmloop.yaml").read_text())
    manifest["bakeoff"] = {"trials": args.trials, "space": SPACE, "halving": {"eta": 3, "min_epochs": 0.5}}
    (folder / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))

    t0 = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "slmloop", "bakeoff", "-p", str(folder), "--against", "run-1"])
    wall = time.perf_counter() - t0
    if code != 0:
        print(f"slmloop bakeoff exited {code}")
        return code

    sys.path.insert(0, str(ROOT / "src"))
    from slmloop.graduate.bakeoff import list_bakeoffs
    from slmloop.project import open_project

    bo = list_bakeoffs(open_project(folder))[-1]
    g = bo.gold or {}
    print(
        f"\n{bo.id}: {len(bo.trials)} trials in {wall / 60:.1f} min — {wall / 60 / args.budget_min:.2f} of the "
        f"{args.budget_min:.0f}-min budget"
    )
    print(f"winner trial {bo.winner}: {g.get('winner_metrics')}")
    if "incumbent_metrics" in g:
        print(f"default run ({bo.incumbent}): {g['incumbent_metrics']}")
        print(f"paired test: {g['verdict']} — {g['sentence']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"wall_s": wall, "budget_s": args.budget_min * 60, **bo.to_dict()}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
