"""Data-centric iteration, measured: does a round of label fixes, found by slmloop, bring a model back?

On HWU64 intents (fold 1: 64 intents, the official test file as the gold set):

    flip a share of the training file's labels (seeded; each to another intent of the same scenario, so the
    noise looks like human confusion; gold stays clean)
    → import → prepare → train (the noisy start) → evaluate
    → rounds: analyze --train (suspects scored out of sample) → export the top K suspects →
      a "person" sets each exported row's label from the clean file and marks it reviewed →
      import the file → prepare → retrain from scratch with the default recipe → evaluate

and, as the reference, the same loop on the clean file (the clean-data model). Printed and ``--json``:
the precision and recall of each round's suspects against the rows still flipped, gold accuracy with
its 95 % CI for the clean-data model, the noisy start and every round, each round paired against the
noisy start (McNemar), and the wall time of each round.

    python benchmarks/iterate.py [--data-dir ../shared/datasets] [--work DIR] [--rounds 3] [--top 500]
        [--noise 0.2] [--seed 0] [--json FILE] [--max-rows N] [--set train.KEY=VALUE ...]

Retraining is from scratch each round (the recipe a user runs after a data change), not warm-started.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from task_quality import _parse_set, hwu64_rows  # noqa: E402  (a sibling benchmark script)


def flip_labels(rows: list[dict[str, Any]], share: float, seed: int) -> set[int]:
    """Flip ``share`` of the rows' labels in place, each to another intent of the same scenario; the rows flipped."""
    rng = random.Random(seed)
    labels = sorted({r["label"] for r in rows})
    by_scenario: dict[str, list[str]] = collections.defaultdict(list)
    for lab in labels:
        by_scenario[lab.split("_")[0]].append(lab)
    flipped = set(rng.sample(range(len(rows)), round(share * len(rows))))
    for i in sorted(flipped):
        own = rows[i]["label"]
        others = [lab for lab in by_scenario[own.split("_")[0]] if lab != own] or [lab for lab in labels if lab != own]
        rows[i]["label"] = rng.choice(others)
    return flipped


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def make_project(folder: Path, train: list[dict], gold: list[dict], overrides: dict, max_rows: int | None) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    _write_jsonl(folder / "data" / "train.jsonl", train)
    _write_jsonl(folder / "data" / "test.jsonl", gold)
    manifest: dict[str, Any] = {
        "project": {"name": folder.name},
        "task": {"type": "classification", "instruction": "Classify the intent of the request.", "labels": "auto"},
        "data": {"sources": [{"path": "data/train.jsonl"}], "gold": {"path": "data/test.jsonl"}},
    }
    if max_rows:
        manifest["data"]["split"] = {"max_rows": max_rows}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        manifest.setdefault(section, {})[key] = value
    (folder / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def _cell(ev: Any) -> dict[str, Any]:
    lo, hi = ev.metrics["ci"]["accuracy"]
    runtime = ev.metrics.get("runtime", {})
    return {
        "evaluation": ev.name,
        "model": ev.model_ref,
        "accuracy": ev.metrics["accuracy"],
        "ci": [lo, hi],
        "model_alone": runtime.get("model_alone_accuracy"),
    }


def train_and_eval(project: Any, console: Any) -> tuple[Any, Any]:
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.train.recipe import train

    run = train(project, console=console)
    return run, evaluate(project, run.name, console=console)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from slmloop.analyze.failures import analyze, export_for_labelling
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.data.versions import load_dataset
    from slmloop.evaluate.paired import compare_pair
    from slmloop.manifest import SourceConfig
    from slmloop.project import open_project

    console = Console(stderr=True)
    data = Path(args.data_dir) / "hwu64"
    clean = hwu64_rows(data / "train", "cls")
    gold = hwu64_rows(data / "test", "cls")
    truth = {r["text"]: r["label"] for r in clean}
    noisy = [dict(r) for r in clean]
    flipped = flip_labels(noisy, args.noise, args.seed)
    overrides = _parse_set(args.set)
    work = Path(args.work)
    result: dict[str, Any] = {
        "task": "hwu64-cls",
        "noise": args.noise,
        "flipped": len(flipped),
        "train_rows": len(clean),
        "top": args.top,
        "seed": args.seed,
        "retrain": "from scratch",
    }

    def stage(label: str, started: float) -> float:
        seconds = time.perf_counter() - started
        console.print(f"[bold]iterate[/bold] · {label}: {seconds:.0f} s")
        return seconds

    t0 = time.perf_counter()
    reference = open_project(make_project(work / "clean", clean, gold, overrides, args.max_rows))
    import_source(reference, reference.manifest.data.sources[0])
    prepare_dataset(reference, console=console)
    _, clean_eval = train_and_eval(reference, console)
    result["clean"] = {**_cell(clean_eval), "wall_s": stage("clean-data model", t0)}
    reference.close()

    t0 = time.perf_counter()
    project = open_project(make_project(work / "noisy", noisy, gold, overrides, args.max_rows))
    import_source(project, project.manifest.data.sources[0])
    start = prepare_dataset(project, console=console).splits
    wrong_start = sum(1 for r in start.train + start.validation if r["label"] != truth[r["text"]])
    run, start_eval = train_and_eval(project, console)
    result["noisy_start"] = {**_cell(start_eval), "wrong": wrong_start, "wall_s": stage("noisy start", t0)}
    result["rounds"] = []
    for k in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        current = load_dataset(project, run.dataset_id)
        wrong_now = {r["text"] for r in current.train + current.validation if r["label"] != truth[r["text"]]}
        analysis = analyze(project, ev_name(project, run), train_rows=True, console=console, report=False)
        export = work / "noisy" / "fixes" / f"round-{k}.jsonl"
        export_for_labelling(project, analysis, export, limit=args.top, near=0)
        rows = [json.loads(line) for line in export.read_text().splitlines()]
        suspects = {r["text"] for r in rows}
        hits = len(suspects & wrong_now)
        for r in rows:  # the person: the right label, confirmed
            r["label"], r["reviewed"] = truth[r["text"]], True
        _write_jsonl(export, rows)
        found = time.perf_counter() - t0
        import_source(project, SourceConfig(path=str(export)))
        done = prepare_dataset(project, console=console)
        relabelled = len(done.changes.relabelled) if done.changes is not None else 0
        run, ev = train_and_eval(project, console)
        vs = compare_pair(project, start_eval, ev, "accuracy")
        after = load_dataset(project, run.dataset_id)
        still = sum(1 for r in after.train + after.validation if r["label"] != truth[r["text"]])
        result["rounds"].append(
            {
                "round": k,
                "suspects": len(suspects),
                "precision": hits / len(suspects) if suspects else None,
                "recall": hits / len(wrong_now) if wrong_now else None,
                "wrong_before": len(wrong_now),
                "relabelled": relabelled,
                "wrong_after": still,
                **_cell(ev),
                "vs_noisy_start": {
                    "diff": vs.test.diff,
                    "ci": list(vs.test.ci),
                    "p_value": vs.test.p_value,
                    "test": vs.test.test,
                    "verdict": vs.verdict,
                },
                "find_s": found,
                "wall_s": stage(f"round {k}", t0),
            }
        )
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
    project.close()
    return result


def ev_name(project: Any, run: Any) -> str:
    """The newest evaluation of ``run`` (the one this round just made)."""
    from slmloop.evaluate.results import newest_evaluation

    found = newest_evaluation(project, [run.name])
    assert found is not None
    return found.name


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def acc(c: dict[str, Any]) -> str:
        return f"{c['accuracy']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"

    t = Table(
        title=f"iterate: HWU64 intents, {100 * result['noise']:.0f} % of {result['train_rows']} training labels "
        f"flipped ({result['flipped']}), top {result['top']} suspects a round, retrained {result['retrain']}",
        title_justify="left",
    )
    for col in (
        "model",
        "suspects: precision",
        "recall",
        "still wrong",
        "gold accuracy [95 % CI]",
        "vs noisy start",
        "wall",
    ):
        t.add_column(col)
    t.add_row("clean-data model", "", "", "0", acc(result["clean"]), "", f"{result['clean']['wall_s'] / 60:.1f} min")
    ns = result["noisy_start"]
    t.add_row("noisy start", "", "", str(ns["wrong"]), acc(ns), "", f"{ns['wall_s'] / 60:.1f} min")
    for r in result["rounds"]:
        vs = r["vs_noisy_start"]
        t.add_row(
            f"round {r['round']}",
            f"{r['precision']:.3f} ({r['suspects']})",
            f"{r['recall']:.3f} of {r['wrong_before']}",
            str(r["wrong_after"]),
            acc(r),
            f"{vs['diff']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}] p={vs['p_value']:.2g} {vs['verdict']}",
            f"{r['wall_s'] / 60:.1f} min",
        )
    Console(width=200).print(t)
    last = result["rounds"][-1] if result["rounds"] else None
    if last is not None:
        gap = result["clean"]["accuracy"] - last["accuracy"]
        print(
            f"after {last['round']} round(s): {gap * 100:+.1f} points from the clean-data model "
            f"(target: within 1); vs the noisy start: {last['vs_noisy_start']['verdict']}; every round's precision "
            f">= 0.8: {all(r['precision'] >= 0.8 for r in result['rounds'])}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--work", default="/tmp/slmloop-iterate")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=500, help="suspects exported for labelling each round")
    ap.add_argument("--noise", type=float, default=0.2, help="share of training labels flipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--max-rows", type=int, help="sample the training rows (quick checks)")
    ap.add_argument("--set", action="append", default=[], help="manifest override, e.g. train.epochs=1")
    args = ap.parse_args()
    if not (Path(args.data_dir) / "hwu64").exists():
        sys.exit(f"HWU64 not found under {args.data_dir} (pass --data-dir)")
    result = run_benchmark(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print_table(result)


if __name__ == "__main__":
    main()
