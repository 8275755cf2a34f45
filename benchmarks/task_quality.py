"""Task quality: the whole loop on real tasks, as a user runs it, against the cheap baselines.

For each task: write a project (manifest + data files) → data import → data prepare
(the official test file as the gold set, labels/fields auto) → every cheap baseline
→ the base model → train with the default recipe → evaluate the fine-tuned model →
paired comparisons. Prints the wall time of each stage, every model's headline
metric with its CI, and the paired tests' verdicts.

    python benchmarks/task_quality.py [--task hwu64-cls|hwu64-ext|sms] [--json FILE]
        [--data-dir ../shared/datasets] [--work DIR] [--set train.KEY=VALUE ...] [--max-rows N]

Tasks:
    hwu64-cls   HWU64 fold 1: 64 intents (label = <scenario>_<intent>), 9,960 train rows, 1,076 gold
    hwu64-ext   the same rows: the inline slots (`[slot : value]`) as a JSON object, slots optional
    hwu64-oos   HWU64 intents with 10 of them (seeded) held out of training and validation: their gold rows
                are out of scope (label oos); the classifier abstains (task.abstain, defaults). Reports
                in-scope accuracy and out-of-scope recall beside the closed-world in-scope accuracy
    sms         the bundled SMS spam example (2 labels, 1,500 rows; gold split from the data)
    viggo       ViGGO data-to-text: video-game meaning representation -> one or two sentences; the CSV files
                as shipped (train.csv as the source, test.csv as the gold file: 359 inputs with ~3 references
                each), scored against every reference (chrF headline, multi-reference BLEU beside it)

``--json FILE`` writes a list with one object per task: task, wall_s (whole loop), stages,
metric, finetuned, finetuned_ci, base, baselines, best_baseline {name, value}, verdict,
eval_s (fine-tuned gold eval), train_s, forecast (training and eval), tokens_per_row and
tokens_per_row_ratio (a training row with the task's schema vs a 2-label / 3-field one). A
classifier with a label prior (train.label_prior) also has finetuned.label_prior (its weight)
and finetuned.model_alone (the fine-tuned model's accuracy without it).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: hwu64-oos: intents held out of training and validation (their gold rows are out of scope)
OOS_INTENTS = 10
SLOT = re.compile(r"\[\s*([^\]:]+?)\s*:\s*([^\]]*?)\s*\]")


def hwu64_rows(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Rows of the HWU64 CSV files in ``folder`` as classification or extraction rows."""
    rows: list[dict[str, Any]] = []
    for f in sorted(folder.glob("*.csv")):
        with open(f, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh, delimiter=";"):
                text = " ".join(r["answer_from_anno"].split())
                if kind == "cls":
                    rows.append({"text": text, "label": f"{r['scenario']}_{r['intent']}"})
                    continue
                out: dict[str, Any] = {}
                for slot, value in SLOT.findall(r["answer_annotation"]):
                    value = " ".join(value.split())
                    if not value:
                        continue
                    if slot in out:  # a slot that occurs twice holds a list
                        out[slot] = [*out[slot], value] if isinstance(out[slot], list) else [out[slot], value]
                    else:
                        out[slot] = value
                rows.append({"text": text, "output": out})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def make_project(name: str, folder: Path, data_dir: Path, overrides: dict[str, Any], max_rows: int | None) -> Path:
    """A project folder as a user would write it for ``name``."""
    import shutil

    from slmloop.project import init_project

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if name == "sms":
        init_project(folder, example="sms-spam")
        manifest = yaml.safe_load((folder / "slmloop.yaml").read_text())
    elif name == "viggo":
        (folder / "data").mkdir()
        for f in ("train.csv", "test.csv"):
            shutil.copyfile(data_dir / "viggo" / f, folder / "data" / f)
        mapping = {"input": "mr", "output": "ref"}
        manifest = {
            "project": {"name": name},
            "task": {
                "type": "generation",
                "instruction": "Say in one or two sentences what the meaning representation says about the game.",
            },
            "data": {
                "sources": [{"path": "data/train.csv", "fields": mapping}],
                "gold": {"path": "data/test.csv", "fields": mapping},
            },
        }
    else:
        kind = name.split("-")[1]
        train = hwu64_rows(data_dir / "hwu64" / "train", "ext" if kind == "ext" else "cls")
        gold = hwu64_rows(data_dir / "hwu64" / "test", "ext" if kind == "ext" else "cls")
        if kind == "oos":  # 10 intents (seeded) held out of training; their gold rows are out of scope
            held = set(random.Random(0).sample(sorted({r["label"] for r in train}), OOS_INTENTS))
            train = [r for r in train if r["label"] not in held]
            gold = [dict(r, label="oos") if r["label"] in held else r for r in gold]
        (folder / "data").mkdir(exist_ok=True)
        _write_jsonl(folder / "data" / "train.jsonl", train)
        _write_jsonl(folder / "data" / "test.jsonl", gold)
        if kind == "oos":
            task = {
                "type": "classification",
                "instruction": "Classify the intent of the request.",
                "labels": "auto",
                "out_of_scope": "oos",
                "abstain": {},
            }
        elif kind == "cls":
            task = {"type": "classification", "instruction": "Classify the intent of the request.", "labels": "auto"}
        else:
            task = {
                "type": "extraction",
                "instruction": "Extract the slots of the request as a JSON object.",
                "fields": "auto",
            }
        manifest = {
            "project": {"name": name},
            "task": task,
            "data": {
                "sources": [{"path": "data/train.jsonl"}],
                "gold": {"path": "data/test.jsonl"},
            },
        }
    if max_rows:
        manifest.setdefault("data", {}).setdefault("split", {})["max_rows"] = max_rows
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        manifest.setdefault(section, {})[key] = value
    (folder / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def _tokens_per_row(project: Any, rows: list[dict[str, Any]], shortlist: Any) -> dict[str, float]:
    """Mean tokens of a training row: the task's own schema vs a 2-label / 3-field one, both prompt styles.

    With a shortlist (train.shortlist), rows carry it as in training; a 2-label schema's shortlist
    names at most those 2 labels.
    """
    from dataclasses import replace

    from slmloop.models.catalog import resolve_model
    from slmloop.models.loading import load_tokenizer
    from slmloop.predict.tasks import Hints, answer_target, prompt_messages, resolve_answer

    tok = load_tokenizer(resolve_model(project.manifest.model.base))
    style = project.manifest.train.prompt
    task, _ = resolve_answer(project.task, rows, style)  # answered as training answers (inline or JSON)
    small = (
        task.model_copy(update={"labels": task.label_list[:2]})
        if task.type == "classification"
        else task.model_copy(update={"fields": task.field_list[:3]})
    )
    sample = rows[:500]
    hints = [Hints() for _ in sample]
    small_hints = hints
    if shortlist is not None and shortlist.k:
        hints = shortlist.hints(task, sample)
        small_hints = hints  # an extractor's examples do not depend on the schema
        if not shortlist.examples:
            small_hints = [replace(h, shortlist=h.shortlist[:2]) for h in hints]

    def mean(t: Any, style: str, shown: list[Any]) -> float:
        texts = [
            tok.apply_chat_template(
                [*prompt_messages(t, r, style, h), {"role": "assistant", "content": answer_target(t, r)}],
                tokenize=False,
            )
            for r, h in zip(sample, shown, strict=True)
        ]
        return statistics.mean(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"])

    out = {
        "style": style,
        "shortlist": shortlist.k if shortlist is not None else 0,  # a label prior alone is not in the prompt
        "schema": mean(task, style, hints),
        "small_schema": mean(small, style, small_hints),
    }
    out["ratio"] = out["schema"] / out["small_schema"]
    if style != "full":
        out["full_style_ratio"] = mean(task, "full", hints) / mean(small, "full", small_hints)
    return out


def run_task(name: str, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    from rich.console import Console

    from slmloop.baselines import baselines_for
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.evaluate.paired import compare_pair
    from slmloop.metrics import HEADLINE
    from slmloop.project import open_project
    from slmloop.train.recipe import train

    console = Console(stderr=True)
    folder = make_project(name, Path(args.work) / name, Path(args.data_dir), overrides, args.max_rows)
    stages: dict[str, float] = {}
    started = time.perf_counter()

    def stage(label: str, t0: float) -> None:
        stages[label] = time.perf_counter() - t0
        console.print(f"[bold]{name}[/bold] · {label}: {stages[label]:.1f} s")

    t0 = time.perf_counter()
    project = open_project(folder)
    for src in project.manifest.data.sources:
        import_source(project, src)
    splits = prepare_dataset(project, console=console).splits
    stage("import + prepare", t0)
    task = project.task
    metric = HEADLINE[task.type][0]
    baselines = {}
    for b in baselines_for(task):
        t0 = time.perf_counter()
        baselines[b] = evaluate(project, f"baseline:{b}", console=console)
        stage(f"baseline:{b}", t0)
    t0 = time.perf_counter()
    base = evaluate(project, "base", console=console)
    stage("base eval", t0)
    t0 = time.perf_counter()
    run = train(project, console=console)
    stage("train", t0)
    t0 = time.perf_counter()
    tuned = evaluate(project, run.name, console=console)
    stage("fine-tuned eval", t0)
    wall = time.perf_counter() - started

    best_name, best = max(baselines.items(), key=lambda kv: kv[1].metrics[metric]) if baselines else (None, None)
    vs_base = compare_pair(project, base, tuned, metric)
    vs_best = compare_pair(project, best, tuned, metric) if best is not None else None
    # generation: the other similarity metrics too, each paired on the same gold rows
    more = [m for m in HEADLINE[task.type][1:] if m != "exact_match"] if task.type in ("generation", "chat") else []
    also = {m: compare_pair(project, best, tuned, m) for m in more} if best is not None else {}
    from slmloop.predict.companion import load_companion

    tokens = _tokens_per_row(project, splits.train, load_companion(project.locate(run.path) / "adapter"))

    def cell(e: Any) -> dict[str, Any]:
        lo, hi = e.metrics["ci"].get(metric, [None, None])
        return {"value": e.metrics[metric], "ci": [lo, hi], "eval_s": e.seconds, "prompt": e.metrics.get("prompt")}

    forecast = run.metrics
    result = {
        "task": name,
        "rows": {"train": len(splits.train), "validation": len(splits.validation), "gold": len(splits.gold)},
        "labels_or_fields": len(task.label_list or task.field_list),
        "wall_s": wall,
        "stages": stages,
        "metric": metric,
        "finetuned": cell(tuned),
        "base": cell(base),
        "baselines": {k: cell(v) for k, v in baselines.items()},
        "best_baseline": {"name": best_name, "value": best.metrics[metric] if best else None},
        "verdict_vs_base": vs_base.sentence,
        "verdict_vs_best_baseline": vs_best.verdict if vs_best else None,
        "sentence_vs_best_baseline": vs_best.sentence if vs_best else None,
        "vs_best_baseline_also": {
            m: {
                "finetuned": c.b_value,
                "baseline": c.a_value,
                "diff": c.test.diff,
                "ci": list(c.test.ci),
                "p_value": c.test.p_value,
                "verdict": c.verdict,
            }
            for m, c in also.items()
        },
        "eval_s": tuned.seconds,
        "train_s": stages["train"],
        "train_compute_s": forecast["train_seconds"],
        "forecast": {
            "train_s": forecast["forecast_seconds"],
            "peak_gib": forecast["forecast_peak_gib"],
            "measured_peak_gib": forecast["peak_gib"],
            "eval_s": run.config.get("forecast", {}).get("eval_seconds"),
        },
        "tokens_per_row": tokens,
        "tokens_per_row_ratio": tokens["ratio"],
        "run": {"name": run.name, "config": run.config.get("train"), "steps": forecast["steps"]},
        "subsets": tuned.metrics.get("subsets"),
    }
    runtime = tuned.metrics.get("runtime") or {}
    if "label_prior" in runtime:  # the label prior's product; the model on its own beside it
        result["finetuned"]["label_prior"] = runtime["label_prior"]
        result["finetuned"]["model_alone"] = runtime["model_alone_accuracy"]
    if "span_prior" in runtime:  # the span prior's fused answers; the model on its own beside them
        result["finetuned"]["span_prior"] = runtime["span_prior"]
        result["finetuned"]["model_alone"] = runtime["model_alone_micro_f1"]
    if "oos_recall" in tuned.metrics:
        result["abstention"] = _abstention(project, tuned, [*baselines.values(), base])
    if task.type == "extraction":
        result["finetuned"]["exact_match"] = tuned.metrics.get("exact_match")
        result["finetuned"]["json_valid_rate"] = tuned.metrics.get("json_valid_rate")
    project.close()
    return result


def _abstention(project: Any, tuned: Any, others: list[Any]) -> dict[str, Any]:
    """Out-of-scope detection: in-scope accuracy (abstentions there wrong) and out-of-scope recall, with their
    CIs, beside the same model's closed-world in-scope accuracy (its answer before abstaining) and the others'."""
    from slmloop.evaluate.results import gold_rows

    rows = gold_rows(project, tuned.gold_id)
    preds = project.store.predictions(tuned.id)
    inside = [(r, p) for r, p in zip(rows, preds, strict=True) if r["label"] != "oos"]
    closed = sum(p.scores.get("answered_label", p.prediction) == r["label"] for r, p in inside) / max(1, len(inside))
    names = ("in_scope_accuracy", "oos_recall", "oos_precision", "oos_auroc")

    def cells(e: Any) -> dict[str, Any]:
        return {m: {"value": e.metrics.get(m), "ci": e.metrics["ci"].get(m)} for m in names if m in e.metrics}

    return {
        "finetuned": cells(tuned),
        "closed_world_in_scope_accuracy": closed,
        "abstain": (tuned.metrics.get("runtime") or {}).get("abstain"),
        "others": {e.model_ref: cells(e) for e in others},
    }


def _table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="task quality (2 CPU cores unless stated; metric [95 % CI])", title_justify="left")
    for col in (
        "task",
        "metric",
        "base",
        "best baseline",
        "fine-tuned",
        "vs best baseline",
        "eval",
        "loop",
        "tok ratio",
    ):
        t.add_column(col)

    def fmt(c: dict[str, Any]) -> str:
        lo, hi = c["ci"]
        return f"{c['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{c['value']:.3f}"

    for r in results:
        bb = r["best_baseline"]
        best = fmt(r["baselines"][bb["name"]]) + f" {bb['name']}" if bb["name"] else "–"
        t.add_row(
            r["task"],
            r["metric"],
            fmt(r["base"]),
            best,
            fmt(r["finetuned"]),
            str(r["verdict_vs_best_baseline"]),
            f"{r['eval_s']:.0f} s",
            f"{r['wall_s'] / 60:.1f} min",
            f"{r['tokens_per_row_ratio']:.2f}",
        )
    Console(width=200).print(t)
    for r in results:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items())
        print(f"{r['task']}: {stages}")
        print(f"  {r['verdict_vs_base']}")
        ft = r["finetuned"]
        if "label_prior" in ft:
            print(
                f"  with the label prior (weight {ft['label_prior']:g}, chosen on validation): {ft['value']:.3f}; "
                f"the fine-tuned model on its own: {ft['model_alone']:.3f}"
            )
        if "span_prior" in ft:
            print(
                f"  with the span prior (CRF tagger; judge threshold {ft['span_prior']['threshold']:g}, fit on "
                f"validation): {ft['value']:.3f}; "
                f"the fine-tuned model on its own: {ft['model_alone']:.3f}"
            )
        if "abstention" in r:
            a = r["abstention"]

            def pair(c: dict[str, Any]) -> str:
                parts = []
                for m in ("in_scope_accuracy", "oos_recall"):
                    if m in c and c[m]["value"] is not None:
                        lo, hi = c[m]["ci"] or (float("nan"), float("nan"))
                        parts.append(f"{m} {c[m]['value']:.3f} [{lo:.3f}, {hi:.3f}]")
                return ", ".join(parts)

            print(
                f"  abstention: fine-tuned {pair(a['finetuned'])}; closed world (no abstention) in-scope accuracy "
                f"{a['closed_world_in_scope_accuracy']:.3f}"
            )
            for who, c in a["others"].items():
                print(f"    {who}: {pair(c)}")
        if r["sentence_vs_best_baseline"]:
            print(f"  {r['sentence_vs_best_baseline']}")
        for m, c in r.get("vs_best_baseline_also", {}).items():
            print(
                f"  {m}: fine-tuned {c['finetuned']:.3f} vs {r['best_baseline']['name']} {c['baseline']:.3f} "
                f"({c['diff']:+.3f}, 95 % CI {c['ci'][0]:+.3f} to {c['ci'][1]:+.3f}, p = {c['p_value']:.2g}): "
                f"{c['verdict']}"
            )
        f = r["forecast"]
        print(
            f"  forecast vs measured: train {f['train_s']:.0f} s vs {r['train_compute_s']:.0f} s compute "
            f"({r['train_s']:.0f} s with set-up and validation); peak {f['peak_gib']:.2f} vs "
            f"{f['measured_peak_gib']:.2f} GiB; gold eval {f['eval_s'] or 0:.0f} s vs {r['eval_s']:.0f} s"
        )
        tk = r["tokens_per_row"]
        print(
            f"  tokens per training row ({tk['style']} prompt"
            + (f" + shortlist of {tk['shortlist']}" if tk.get("shortlist") else "")
            + f"): {tk['schema']:.1f} with {r['labels_or_fields']} "
            f"labels/fields vs {tk['small_schema']:.1f} with 2-3 → ratio {tk['ratio']:.2f}"
            + (f" (the full prompt style: {tk['full_style_ratio']:.2f})" if "full_style_ratio" in tk else "")
        )


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", action="append", choices=["hwu64-cls", "hwu64-ext", "hwu64-oos", "sms", "viggo"])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--work", default="/tmp/slmloop-task-quality")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", action="append", default=[], help="manifest override, e.g. train.epochs=2")
    ap.add_argument("--max-rows", type=int, help="sample the training rows (quick checks)")
    args = ap.parse_args()
    tasks = args.task or ["hwu64-cls", "hwu64-ext", "sms"]
    if any(t.startswith("hwu64") for t in tasks) and not (Path(args.data_dir) / "hwu64").exists():
        sys.exit(f"HWU64 not found under {args.data_dir} (pass --data-dir)")
    overrides = _parse_set(args.set)
    results = []
    for name in tasks:
        results.append(run_task(name, args, overrides))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    _table(results)


if __name__ == "__main__":
    main()
