"""Calibrating the drift thresholds on a real domain shift: NLU++ banking (in distribution) vs hotels.

The reference profile is built from banking folds 0-9 (training) with folds 10-11
as held-out text for the out-of-vocabulary rate, the way a release's profile is
built from its training and validation splits. Live windows are drawn from:

- unseen banking (folds 12-19): false alarms;
- hotels: real drift;
- a 50/50 mix of the two;

for several window sizes, ``--windows`` windows each, and one window of 5,000
in-distribution requests (drawn with repetition: live traffic repeats itself).
By default the input signals only (embedding, length, out-of-vocabulary): they
need no model. With ``--model`` the loop first fine-tunes the default model on
banking (folds 0-9; first intent as the label, "none" without one; folds 10-11 as
gold), exports it, and its answers to every pooled input add the output signals
(label mix, confidence). Prints, per window size, the share of windows each kind
flags ``drift`` with the thresholds of ``monitor.thresholds``, and the effect sizes
seen (95th percentile in distribution, 5th percentile shifted).

    python benchmarks/drift_calibration.py [--data ../shared/datasets/nlupp_banking_hotels]
        [--windows 50] [--sizes 10,20,30,50,100,200] [--model] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _fold_texts(folder: Path, folds: range) -> list[str]:
    return [row["text"] for i in folds for row in json.loads((folder / f"fold{i}.json").read_text())]


def _banking_model(
    data: Path, pools: list[str], reuse: Path | None
) -> tuple[dict[str, tuple[str, float]], dict[str, int], list[float]]:
    """Fine-tune on banking through the loop; (answer per pooled text, training label mix, gold confidences)."""
    import tempfile

    import yaml

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.store import Release
    from slmloop.train.recipe import train

    def rows(folds: range) -> list[dict[str, str]]:
        out = []
        for i in folds:
            for r in json.loads((data / "banking" / f"fold{i}.json").read_text()):
                out.append({"text": r["text"], "label": (r.get("intents") or ["none"])[0]})
        return out

    if reuse is not None:  # a project this benchmark trained before
        project = open_project(reuse)
        release = project.store.latest(Release, Release.version)
        if release is None:
            raise SystemExit(f"{reuse} has no release")
        return _answers(project, release, pools)
    root = Path(tempfile.mkdtemp(prefix="drift-banking-"))
    (root / "data").mkdir()
    for name, part in (("train", rows(range(10))), ("gold", rows(range(10, 12)))):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    manifest = {
        "project": {"name": "banking"},
        "task": {"type": "classification", "instruction": "Classify the banking request.", "labels": "auto"},
        "data": {"sources": [{"path": "data/train.jsonl"}], "gold": {"path": "data/gold.jsonl"},
                 "split": {"validation": 0.05}},
        "eval": {"compare": {"baseline": "none"}},
    }  # fmt: skip
    (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    project = open_project(root)
    import_source(project, project.manifest.data.sources[0])
    prepare_dataset(project)
    run = train(project)
    evaluate(project, run.name)
    release = export_release(project, run.name)
    print(f"banking model: {run.name} in {root} (reuse it with --model-project {root})")
    return _answers(project, release, pools)


def _answers(
    project: Any, release: Any, pools: list[str]
) -> tuple[dict[str, tuple[str, float]], dict[str, int], list[float]]:
    from slmloop.release.profile import load_profile
    from slmloop.serve.server import load_predictor

    predictor = load_predictor(project, release.version)
    answers: dict[str, tuple[str, float]] = {}
    for i in range(0, len(pools), 32):
        chunk = pools[i : i + 32]
        for text, a in zip(chunk, predictor.predict_many(chunk), strict=True):
            answers[text] = (a["label"], max(a["scores"].values()))
    profile = load_profile(project, release)
    print(
        f"gold confidence mean {np.mean(profile.confidence):.3f}; {len(profile.label_counts)} labels answered on gold"
    )
    return answers, profile.label_counts, profile.confidence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "nlupp_banking_hotels")
    ap.add_argument("--windows", type=int, default=50)
    ap.add_argument("--sizes", default="10,20,30,50,100,200")
    ap.add_argument("--model", action="store_true", help="add the output signals of a model fine-tuned on banking")
    ap.add_argument("--model-project", type=Path, help="reuse the banking project a --model run trained")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.model = args.model or args.model_project is not None

    from slmloop.manifest import MonitorConfig
    from slmloop.models.embedder import embed
    from slmloop.monitor.signals import (
        confidence_signal,
        embedding_signal,
        judge,
        label_mix_signal,
        length_signal,
        oov_signal,
        overall,
        words,
    )

    cfg = MonitorConfig()
    t = cfg.thresholds
    train = _fold_texts(args.data / "banking", range(10))
    held_out = _fold_texts(args.data / "banking", range(10, 12))
    unseen = _fold_texts(args.data / "banking", range(12, 20))
    hotels = _fold_texts(args.data / "hotels", range(20))
    rng = random.Random(0)
    sample = rng.sample(train, min(cfg.reference_size, len(train)))
    vocabulary = {w for x in train for w in words(x)}
    held_words = [w for x in held_out for w in words(x)]
    ref_oov = (sum(w not in vocabulary for w in held_words), len(held_words))
    started = time.perf_counter()
    vectors = embed(sample + unseen + hotels, cfg.embedding_model)
    ref_emb = vectors[: len(sample)]
    emb = dict(zip(sample + unseen + hotels, vectors, strict=True))
    ref_len = [len(words(x)) for x in sample]
    answers: dict[str, tuple[str, float]] = {}
    if args.model:
        answers, label_counts, gold_confidence = _banking_model(args.data, unseen + hotels, args.model_project)
    print(
        f"reference {len(sample)} banking inputs (vocabulary {len(vocabulary)} words, held-out OOV "
        f"{ref_oov[0] / ref_oov[1]:.3f}); pools: unseen banking {len(unseen)}, hotels {len(hotels)}; "
        f"embedded in {time.perf_counter() - started:.0f} s"
    )

    def score(texts: list[str]) -> dict[str, tuple[float, str]]:
        live = np.stack([emb[x] for x in texts])
        signals = [
            embedding_signal(ref_emb, live, warn=t.embedding[0], drift=t.embedding[1], permutations=cfg.permutations),
            length_signal(ref_len, [len(words(x)) for x in texts], warn=t.length[0], drift=t.length[1]),
            oov_signal(vocabulary, ref_oov, texts, warn=t.oov[0], drift=t.oov[1]),
        ]
        if answers:
            said = [answers[x] for x in texts]
            signals.append(
                label_mix_signal(label_counts, [a for a, _ in said], warn=t.label_mix[0], drift=t.label_mix[1])
            )
            signals.append(
                confidence_signal(gold_confidence, [c for _, c in said], warn=t.confidence[0], drift=t.confidence[1])
            )
        judged = [judge(s, cfg.alpha) for s in signals]
        return {**{s.name: (s.effect, s.verdict) for s in judged}, "overall": (0.0, overall(judged))}

    def draw(pool: list[str], n: int) -> list[str]:
        return rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)

    results = []
    header = (
        f"{'window':>6} | {'banking: drift':>14} {'warn':>5} | {'hotels: drift':>13} | {'50/50 mix: drift':>16} | "
        f"{'MMD² p95 in / p5 hotels':>23} | {'OOV p95 in / p5 hotels':>22}"
    )
    print(header)
    print("-" * len(header))
    for size in [int(s) for s in args.sizes.split(",")]:
        kinds = {
            "banking": [score(draw(unseen, size)) for _ in range(args.windows)],
            "hotels": [score(draw(hotels, size)) for _ in range(args.windows)],
            "mix": [score(draw(unseen, size // 2) + draw(hotels, size - size // 2)) for _ in range(args.windows)],
        }
        rate = {k: sum(w["overall"][1] == "drift" for w in v) / len(v) for k, v in kinds.items()}
        warn = sum(w["overall"][1] == "warn" for w in kinds["banking"]) / args.windows
        mmd_in = np.percentile([w["embedding"][0] for w in kinds["banking"]], 95)
        mmd_out = np.percentile([w["embedding"][0] for w in kinds["hotels"]], 5)
        oov_in = np.percentile([w["oov"][0] for w in kinds["banking"]], 95)
        oov_out = np.percentile([w["oov"][0] for w in kinds["hotels"]], 5)
        print(
            f"{size:>6} | {rate['banking']:>14.0%} {warn:>5.0%} | {rate['hotels']:>13.0%} | {rate['mix']:>16.0%} | "
            f"{mmd_in:>10.4f} / {mmd_out:<10.4f} | {oov_in:>9.3f} / {oov_out:<9.3f}"
        )
        alarms = {
            name: sum(w[name][1] == "drift" for w in kinds["banking"])
            for name in kinds["banking"][0]
            if name != "overall"
        }
        flagged = {
            name: sum(w[name][1] == "drift" for w in kinds["hotels"])
            for name in kinds["hotels"][0]
            if name != "overall"
        }
        print(f"{'':>6}   false alarms by signal {alarms}; hotels flagged by signal {flagged}")
        results.append(
            {
                "window": size,
                "false_alarms_by_signal": alarms,
                "hotels_by_signal": flagged,
                "false_alarm": rate["banking"],
                "warn_in_distribution": warn,
                "hotels_detected": rate["hotels"],
                "mix_detected": rate["mix"],
                "mmd2_in_p95": mmd_in,
                "mmd2_hotels_p5": mmd_out,
                "oov_in_p95": oov_in,
                "oov_hotels_p5": oov_out,
            }
        )
    big = score(draw(unseen, 5000))
    print(
        "5,000 in-distribution requests: "
        + ", ".join(f"{k} {v[0]:.4f} ({v[1]})" for k, v in big.items() if k != "overall")
        + f" → {big['overall'][1]}"
    )
    smallest = {
        kind: next((r["window"] for r in results if r[f"{kind}_detected"] >= 0.95), None) for kind in ("hotels", "mix")
    }
    print(f"smallest window detecting >= 95 %: hotels {smallest['hotels']}, 50/50 mix {smallest['mix']}")
    if args.json:
        payload = {"thresholds": t.model_dump(), "alpha": cfg.alpha, "rows": results, "big_window": big}
        args.json.write_text(json.dumps({**payload, "smallest": smallest}, indent=1, default=float))


if __name__ == "__main__":
    main()
