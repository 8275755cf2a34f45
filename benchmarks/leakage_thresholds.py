"""The measurement behind the leakage defaults (docs/leakage.md).

For a project whose gold set and fine-tuned / baseline evaluations exist (e.g. the
one `benchmarks/task_quality.py --task hwu64-cls` leaves behind), prints how gold
rows spread over the cosine of their nearest training input (MiniLM), how often
that neighbour has the same label, each model's accuracy per band, the character
5-gram Jaccard of the pair, examples per band, and the share of gold rows each
candidate threshold would mark.

    python benchmarks/leakage_thresholds.py PROJECT_DIR [--models run-1 baseline:minilm-lr]
"""

from __future__ import annotations

import argparse

import numpy as np

BANDS = [(0.0, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project")
    ap.add_argument("--models", nargs="*", default=None, help="model refs to report (default: every evaluated one)")
    args = ap.parse_args()

    from slmloop.data.dedupe import jaccard, shingle_hashes
    from slmloop.data.leakage import project_embedder
    from slmloop.data.versions import load_dataset
    from slmloop.evaluate.results import latest_evaluations
    from slmloop.predict.tasks import input_text
    from slmloop.project import open_project

    p = open_project(args.project)
    d = load_dataset(p)
    task = p.task
    pool = d.train + d.validation
    train = [input_text(task, r) for r in pool]
    gold = [input_text(task, r) for r in d.gold]
    embed = project_embedder(p)
    sims = embed(gold) @ embed(train).T
    nearest, cos = sims.argmax(1), sims.max(1)
    evals = [e for e in latest_evaluations(p, d.version.gold_id) if args.models is None or e.model_ref in args.models]
    correct = {e.model_ref: np.array([x.correct for x in p.store.predictions(e.id)]) for e in evals}
    jac = np.array([jaccard(shingle_hashes(gold[i]), shingle_hashes(train[j])) for i, j in enumerate(nearest)])
    same = None
    if task.type == "classification":
        same = np.array([d.gold[i]["label"] == pool[j]["label"] for i, j in enumerate(nearest)])
    head = ["cosine", "gold rows", *(["same label"] if same is not None else []), *correct, "mean Jaccard"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for lo, hi in BANDS:
        m = (cos >= lo) & (cos < hi)
        cells = [f"{lo:.2f}-{min(hi, 1):.2f}", str(int(m.sum()))]
        if same is not None:
            cells.append(f"{same[m].mean():.2f}" if m.any() else "–")
        cells += [f"{c[m].mean():.3f}" if m.any() else "–" for c in correct.values()]
        cells.append(f"{jac[m].mean():.2f}" if m.any() else "–")
        print("| " + " | ".join(cells) + " |")
    for t in (0.8, 0.85, 0.9, 0.95):
        print(f"threshold {t}: {100 * (cos >= t).mean():.1f} % of gold rows marked")
    print(f"near (Jaccard >= 0.6) to the nearest neighbour: {100 * (jac >= 0.6).mean():.2f} % of gold rows")
    rng = np.random.default_rng(0)
    for lo, hi in BANDS[3:]:
        idx = np.flatnonzero((cos >= lo) & (cos < hi))
        for i in rng.choice(idx, min(3, len(idx)), replace=False):
            print(f"  {cos[i]:.3f} J={jac[i]:.2f} | {gold[i]!r} ~ {train[nearest[i]]!r}")
    p.close()


if __name__ == "__main__":
    main()
