"""Calibrating the invalid-output threshold with a model that generates its answers.

A classifier in rank mode cannot answer outside its labels, so drift_calibration.py
never sees an invalid output. This script takes a project whose model generates
(extraction, generation, or classification with ``eval.mode: generate``), answers
through the serving predictor of its newest release (exported from the newest run
if there is none), and measures the ``invalid`` signal the way ``slmloop monitor``
computes it:

- the reference rate from one half of the gold inputs (as a release's profile takes
  it from gold), live in-distribution windows from the other half: false alarms;
- off-domain traffic (NLU++ hotels requests): does a domain shift make the model
  produce unusable output?
- a serving fault: the same release answering with ``max_new_tokens`` cut to
  ``--fault-tokens`` (truncated JSON, the failure users report most from exported
  models), alone and mixed 50/50 with healthy traffic.

Prints, per window size, the share of ``--windows`` windows flagged ``drift`` and
``warn`` for each kind, with the thresholds of ``monitor.thresholds.invalid``.

    python benchmarks/invalid_calibration.py --project PATH [--data ../shared/datasets/nlupp_banking_hotels]
        [--run run-N] [--windows 50] [--sizes 10,20,30,50,100,200] [--fault-tokens 12] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _valid_flags(predictor: Any, texts: list[str], what: str) -> dict[str, bool]:
    from rich.progress import Progress

    flags: dict[str, bool] = {}
    with Progress() as bar:
        task = bar.add_task(what, total=len(texts))
        for i in range(0, len(texts), 32):
            chunk = texts[i : i + 32]
            for text, answer in zip(chunk, predictor.predict_many(chunk), strict=True):
                flags[text] = bool(answer["valid"])
            bar.advance(task, len(chunk))
    return flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=True, help="a project whose model generates its answers")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "nlupp_banking_hotels")
    ap.add_argument("--windows", type=int, default=50)
    ap.add_argument("--sizes", default="10,20,30,50,100,200")
    ap.add_argument("--fault-tokens", type=int, default=12)
    ap.add_argument("--run", help="export this run (default: the newest release, else the newest completed run)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from slmloop.data.versions import current_gold_rows
    from slmloop.monitor.signals import invalid_signal, judge
    from slmloop.predict.tasks import input_text
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.serve.server import load_predictor
    from slmloop.store import Release, Run

    project = open_project(args.project)
    release = None if args.run else project.store.latest(Release, Release.version)
    if release is None:
        runs = [r.name for r in project.store.list(Run, Run.id) if r.status == "completed"]
        if not runs:
            raise SystemExit(f"{args.project} has no completed run to export")
        release = export_release(project, args.run or runs[-1])
    cfg = project.manifest.monitor
    warn, drift = cfg.thresholds.invalid
    _, gold = current_gold_rows(project)
    rng = random.Random(0)
    inputs = list(dict.fromkeys(input_text(project.task, r) for r in gold))
    rng.shuffle(inputs)
    ref_half, live_half = inputs[: len(inputs) // 2], inputs[len(inputs) // 2 :]
    hotels = [r["text"] for i in range(20) for r in json.loads((args.data / "hotels" / f"fold{i}.json").read_text())]
    hotels = rng.sample(hotels, min(len(hotels), len(live_half)))

    started = time.perf_counter()
    predictor = load_predictor(project, release.version)
    healthy = _valid_flags(predictor, ref_half + live_half + hotels, "answering (healthy server)")
    predictor.max_new_tokens = args.fault_tokens
    faulty = _valid_flags(predictor, live_half, f"answering (max_new_tokens {args.fault_tokens})")
    ref = (sum(not healthy[x] for x in ref_half), len(ref_half))
    rates = {
        "reference (gold half A)": ref[0] / ref[1],
        "in distribution (gold half B)": sum(not healthy[x] for x in live_half) / len(live_half),
        "hotels": sum(not healthy[x] for x in hotels) / len(hotels),
        f"fault: max_new_tokens {args.fault_tokens}": sum(not faulty[x] for x in live_half) / len(live_half),
    }
    print(
        f"v{release.version} of {project.manifest.project.name} ({project.task.type}); "
        f"answered {len(healthy) + len(faulty)} inputs in {time.perf_counter() - started:.0f} s"
    )
    for name, rate in rates.items():
        print(f"  invalid-output rate, {name}: {rate:.3f}")

    def window(pool: list[str], flags: dict[str, bool], n: int) -> list[bool]:
        picks = rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)
        return [not flags[x] for x in picks]

    def verdict(bad: list[bool]) -> str:
        return judge(invalid_signal(ref, sum(bad), len(bad), warn=warn, drift=drift), cfg.alpha).verdict

    kinds = {
        "in distribution": lambda n: window(live_half, healthy, n),
        "hotels": lambda n: window(hotels, healthy, n),
        "fault": lambda n: window(live_half, faulty, n),
        "fault 50/50": lambda n: window(live_half, healthy, n - n // 2) + window(live_half, faulty, n // 2),
    }
    print(f"thresholds warn {warn}, drift {drift}, alpha {cfg.alpha}; {args.windows} windows per cell")
    print(f"{'window':>6} | " + " | ".join(f"{k + ': drift/warn':>26}" for k in kinds))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        cell: dict[str, Any] = {"window": size}
        for kind, draw in kinds.items():
            verdicts = [verdict(draw(size)) for _ in range(args.windows)]
            cell[kind] = {v: verdicts.count(v) / len(verdicts) for v in ("drift", "warn")}
        rows.append(cell)
        print(f"{size:>6} | " + " | ".join(f"{cell[k]['drift']:>19.0%} / {cell[k]['warn']:>4.0%}" for k in kinds))
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "thresholds": [warn, drift], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
