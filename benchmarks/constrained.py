"""Constrained decoding on HWU64 slots: the base and the fine-tuned model with and without the task's schema.

Writes the `hwu64-ext` project of ``benchmarks/task_quality.py`` (HWU64 fold 1: the slots of
each request as a JSON object, fields auto), imports and prepares it, then evaluates the base
model on the 1,076 gold rows twice in the same run: ``eval.constrain: off`` (the answer opens a
JSON object and stops when it closes; keys and values free) and ``eval.constrain: json_schema``
(decoded under the task's schema). With ``--tuned`` it then trains the default recipe and
evaluates the fine-tuned model both ways too. Prints, for each: valid JSON rate, schema pass
rate, micro-F1 with its CI, and the decoding time per generated token; then the paired test of
micro-F1 for each model.

    python benchmarks/constrained.py [--tuned] [--reuse] [--data-dir ../shared/datasets] [--work DIR] [--json FILE]

``--reuse`` evaluates the project ``--work`` already holds (and its last run) instead of writing and training it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--work", default="/tmp/slmloop-constrained")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tuned", action="store_true", help="also train the default recipe and compare it both ways")
    ap.add_argument("--reuse", action="store_true", help="the project --work holds as it is, and its last run")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rich.console import Console
    from task_quality import make_project

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.evaluate.paired import compare_pair
    from slmloop.project import open_project

    console = Console(stderr=True)
    folder = Path(args.work) / "hwu64-ext"
    trained = sorted((folder / ".slmloop" / "runs").glob("run-*")) if args.reuse else []
    if not args.reuse or not (folder / "slmloop.yaml").exists():
        folder = make_project("hwu64-ext", folder, Path(args.data_dir), {}, None)
    project = open_project(folder)
    if not args.reuse:
        for src in project.manifest.data.sources:
            import_source(project, src)
        prepare_dataset(project, console=console)
    project.manifest.eval.compare.baseline = "none"
    from slmloop.train.recipe import train

    results: dict[str, Any] = {}
    models = ["base"]
    if args.tuned:
        models.append(trained[-1].name if trained else train(project, console=console).name)
    for model in models:
        who = "base" if model == "base" else "fine-tuned"
        evaluations = {}
        for mode in ("off", "json_schema"):
            project.manifest.eval.constrain = mode
            ev = evaluate(project, model, console=console)
            evaluations[mode] = ev
            tokens = sum(int((p.scores or {}).get("new_tokens", 0)) for p in project.store.predictions(ev.id))
            m = ev.metrics
            r = results[f"{who} {mode}"] = {
                "json_valid_rate": m["json_valid_rate"],
                "schema_pass_rate": m["schema_pass_rate"],
                "micro_f1": m["micro_f1"],
                "micro_f1_ci": m["ci"].get("micro_f1"),
                "seconds": ev.seconds,
                "tokens": tokens,
                "ms_per_token": 1000 * ev.seconds / max(1, tokens),
            }
            lo, hi = r["micro_f1_ci"] or (float("nan"), float("nan"))
            print(
                f"{who}, constrain {mode:>11}: valid JSON {r['json_valid_rate']:.3f}  "
                f"schema pass {r['schema_pass_rate']:.3f}  "
                f"micro-F1 {r['micro_f1']:.3f} [{lo:.3f}, {hi:.3f}]  {r['seconds']:.0f} s for {tokens:,} tokens "
                f"({r['ms_per_token']:.2f} ms per token)"
            )
        c = compare_pair(project, evaluations["off"], evaluations["json_schema"], "micro_f1")
        results[f"{who} micro_f1_paired"] = {"diff": c.test.diff, "ci": list(c.test.ci), "p_value": c.test.p_value}
        print(f"{who}: {c.sentence}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    project.close()


if __name__ == "__main__":
    main()
