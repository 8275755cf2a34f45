"""Data-stage scale benchmark: 200,000 rows with planted exact and near duplicates.

Runs `slmloop data import` + `slmloop data prepare` (normalise, exact dedupe,
MinHash near dedupe, near-duplicate leakage check against gold, stratified
split) on a generated classification set and prints:

- wall time and rows/s, and the ratio to a reference measured in the same run
  (reading and json-parsing the same file, the floor any importer pays);
- peak memory (max RSS of this process);
- how many planted exact and near duplicates were found, and false merges
  (independent rows wrongly merged as near duplicates).

Targets (issue 3): < 120 s and < 4 GiB on a 2-core machine, >= 95 % of planted
near duplicates found, < 1 % false merges.

    python benchmarks/data_prepare.py [--rows 200000] [--seed 0]

The semantic (MiniLM) leakage check is switched off here: it embeds every row
(~2 ms each on this CPU) and is measured separately by its own cache.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import yaml

LABELS = ["billing", "delivery", "refund", "account", "other"]


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "en", "or", "ul", "is"]
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def edit(words: list[str], rng: random.Random, vocab: list[str]) -> list[str]:
    """A small edit: substitute, delete or insert one word, sometimes with a casing change."""
    w = list(words)
    op = rng.choice(["sub", "del", "ins"])
    i = rng.randrange(len(w))
    if op == "sub":
        w[i] = rng.choice(vocab)
    elif op == "del" and len(w) > 3:
        del w[i]
    else:
        w.insert(i, rng.choice(vocab))
    if rng.random() < 0.3:
        w[0] = w[0].capitalize()
    return w


def generate(n: int, seed: int) -> tuple[list[dict], dict[int, tuple[str, int]]]:
    """Rows and the ground truth: line -> (planted kind, line of the original)."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    cum, total = [], 0.0
    for r in range(len(vocab)):  # Zipf-like word frequencies
        total += 1 / (r + 1) ** 0.9
        cum.append(total)
    n_exact, n_near = n // 50, n // 33  # 2 % exact copies, 3 % near copies
    n_orig = n - n_exact - n_near
    rows: list[dict] = []
    truth: dict[int, tuple[str, int]] = {}
    originals: list[list[str]] = []
    for _ in range(n_orig):
        words = rng.choices(vocab, cum_weights=cum, k=rng.randint(12, 40))
        originals.append(words)
        rows.append({"text": " ".join(words), "label": rng.choice(LABELS), "customer": f"c{rng.randrange(50_000)}"})
    planted = []
    for _ in range(n_exact):
        j = rng.randrange(n_orig)
        text = " ".join(originals[j])
        text = text.upper() if rng.random() < 0.5 else "  " + text.replace(" ", "  ") + " "
        planted.append(("exact", j, {"text": text, "label": rows[j]["label"], "customer": rows[j]["customer"]}))
    for _ in range(n_near):
        j = rng.randrange(n_orig)
        text = " ".join(edit(originals[j], rng, vocab))
        planted.append(("near", j, {"text": text, "label": rows[j]["label"], "customer": rows[j]["customer"]}))
    for kind, j, row in planted:  # copies always come after their original
        truth[len(rows) + 1] = (kind, j + 1)
        rows.append(row)
    return rows, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from slmloop.data.dedupe import jaccard, shingle_hashes
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.project import open_project

    rows, truth = generate(args.rows, args.seed)
    with tempfile.TemporaryDirectory(prefix="slmloop-bench-data-") as d:
        root = Path(d)
        (root / "data").mkdir()
        path = root / "data" / "rows.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        manifest = {
            "task": {"type": "classification", "labels": LABELS},
            "data": {"sources": [{"path": "data/rows.jsonl"}], "leakage": {"semantic": False}},
        }
        (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest))

        t0 = time.perf_counter()
        with open(path, encoding="utf-8") as f:
            parsed = sum(1 for line in f if json.loads(line))
        reference_s = time.perf_counter() - t0

        project = open_project(root)
        t0 = time.perf_counter()
        imp = import_source(project, project.manifest.data.sources[0]).record
        t_import = time.perf_counter() - t0
        splits = prepare_dataset(project).splits
        total_s = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        rejects = project.objects.read_jsonl(splits.version.rejects_object)
        project.close()

    by_line = {r["line"]: r for r in rejects}
    planted_exact = [ln for ln, (k, _) in truth.items() if k == "exact"]
    planted_near = [ln for ln, (k, _) in truth.items() if k == "near"]
    found_exact = sum(by_line.get(ln, {}).get("reason") == "duplicate_exact" for ln in planted_exact)
    dup_reasons = {"duplicate_near", "duplicate_exact"}
    found_near = sum(by_line.get(ln, {}).get("reason") in dup_reasons for ln in planted_near)
    # gold-leak removal also catches a planted copy whose original went to gold
    found_near_any = sum(by_line.get(ln, {}).get("reason") in dup_reasons | {"leaks_gold"} for ln in planted_near)
    false_merges = sum(1 for ln, r in by_line.items() if r["reason"] == "duplicate_near" and ln not in truth)
    near_pairs = [(ln, o) for ln, (k, o) in truth.items() if k == "near"][:2000]
    sims = [jaccard(shingle_hashes(rows[ln - 1]["text"]), shingle_hashes(rows[o - 1]["text"])) for ln, o in near_pairs]
    result = {
        "rows": args.rows,
        "rows_parsed_reference": parsed,
        "import_s": round(t_import, 1),
        "total_s": round(total_s, 1),
        "rows_per_s": round(args.rows / total_s),
        "reference_json_parse_s": round(reference_s, 2),
        "ratio_to_reference": round(total_s / reference_s, 1),
        "peak_rss_gib": round(peak_gib, 2),
        "planted_exact": len(planted_exact),
        "found_exact": found_exact,
        "planted_near": len(planted_near),
        "found_near_as_duplicate": found_near,
        "found_near_incl_gold_leak": found_near_any,
        "near_recall": round(found_near_any / len(planted_near), 4),
        "false_merges": false_merges,
        "false_merge_rate": round(false_merges / (args.rows - len(truth)), 5),
        "planted_near_jaccard_min_median": [round(min(sims), 2), round(sorted(sims)[len(sims) // 2], 2)],
        "accepted_rows": imp.accepted,
        "train": splits.version.counts["train"],
        "validation": splits.version.counts["validation"],
        "gold": splits.version.counts["gold"],
        "rejected": splits.version.counts["rejected"],
    }
    print(json.dumps(result, indent=2))
    ok = total_s < 120 and peak_gib < 4 and result["near_recall"] >= 0.95 and result["false_merge_rate"] < 0.01
    print(
        f"\n{args.rows} rows in {total_s:.1f} s ({result['rows_per_s']} rows/s, {result['ratio_to_reference']}x "
        f"the time to just parse the file), peak {peak_gib:.2f} GiB; near duplicates found "
        f"{found_near_any}/{len(planted_near)} ({100 * result['near_recall']:.1f} %), exact {found_exact}/"
        f"{len(planted_exact)}, false merges {false_merges} ({100 * result['false_merge_rate']:.3f} %) -> "
        f"{'targets met' if ok else 'TARGETS MISSED'}"
    )


if __name__ == "__main__":
    main()
