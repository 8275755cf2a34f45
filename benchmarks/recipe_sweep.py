"""The recipe sweep behind slmloop's training defaults: quality per minute on 2 CPU cores.

Takes a project that `benchmarks/task_quality.py` prepared (data imported, gold frozen,
baselines and base evaluated), trains one run per recipe with the public API and
scores it on the gold set. Prints (and with --json writes) one row per recipe: the
headline metric with its 95 % CI, training minutes, gold-eval seconds, and the metric
gained per training minute over the base model.

    python benchmarks/recipe_sweep.py PROJECT_DIR --recipe NAME:key=value,key=value ... [--json FILE]

    e.g. --recipe "attn-1ep:target_modules=auto,epochs=1" --recipe "all-2ep:target_modules=all-linear,epochs=2"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml


def _parse(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, body = spec.partition(":")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path)
    ap.add_argument("--recipe", action="append", required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from rich.console import Console

    from slmloop.evaluate.evaluate import evaluate
    from slmloop.evaluate.results import latest_evaluations
    from slmloop.manifest import EvalConfig
    from slmloop.metrics import HEADLINE
    from slmloop.project import open_project
    from slmloop.train.recipe import train

    console = Console(stderr=True)
    project = open_project(args.project)
    metric = HEADLINE[project.task.type][0]
    gold_id = latest_evaluations(project, project.store.get_meta("current_gold") or "")[0].gold_id
    base = next(e for e in latest_evaluations(project, gold_id) if e.model_ref == "base")
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    done = {r["recipe"] for r in results}
    plain = EvalConfig.model_validate({**project.manifest.eval.model_dump(), "compare": {"baseline": "none"}})
    for spec in args.recipe:
        name, overrides = _parse(spec)
        if name in done:
            continue
        t0 = time.perf_counter()
        run = train(project, overrides, console=console)
        train_s = time.perf_counter() - t0
        ev = evaluate(project, run.name, pack=plain, console=console)
        value = ev.metrics[metric]
        lo, hi = ev.metrics["ci"][metric]
        row = {
            "recipe": name,
            "overrides": overrides,
            "run": run.name,
            metric: value,
            "ci": [lo, hi],
            "train_min": train_s / 60,
            "train_compute_min": run.metrics["train_seconds"] / 60,
            "forecast_min": run.metrics["forecast_seconds"] / 60,
            "eval_s": ev.seconds,
            "gain_per_min": (value - base.metrics[metric]) / max(train_s / 60, 1e-9),
            "steps": run.metrics["steps"],
            "val_loss": run.metrics["val_loss"],
            "subsets": ev.metrics.get("subsets"),
        }
        if project.task.type == "extraction":
            row["exact_match"] = ev.metrics.get("exact_match")
        results.append(row)
        console.print(
            f"[bold]{name}[/bold]: {metric} {value:.4f} [{lo:.3f}, {hi:.3f}] · train {train_s / 60:.1f} min "
            f"· eval {ev.seconds:.0f} s"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    print(f"| recipe | {metric} [95 % CI] | train min | gold eval s | gain per train min |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['recipe']} | {r[metric]:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['train_min']:.1f} "
            f"| {r['eval_s']:.0f} | {r['gain_per_min']:.3f} |"
        )


if __name__ == "__main__":
    main()
