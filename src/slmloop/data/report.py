"""``slmloop data diff`` and ``slmloop data report``: what a dataset version holds and how it changed."""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from slmloop.data.diff import SPLITS, DatasetChanges, dataset_changes
from slmloop.data.prepare import example_token_lengths
from slmloop.data.versions import DatasetSplits, current_dataset, load_dataset, previous_dataset
from slmloop.errors import ModelError, NotFoundError
from slmloop.predict.tasks import input_text, target_text
from slmloop.project import Project
from slmloop.store import atomic_write_text

__all__ = ["diff_datasets", "write_data_report"]


def diff_datasets(project: Project, old_id: str | None = None, new_id: str | None = None) -> DatasetChanges:
    """Every row added, removed, relabelled (same input, new answer) or moved, between two dataset versions:
    by default the current version and the one it replaced."""
    new = load_dataset(project, new_id)
    if old_id is None:
        current = current_dataset(project)
        old_id = previous_dataset(project) if current is not None and current.id == new.version.id else None
        if old_id is None:
            raise NotFoundError(
                f"no earlier version to compare {new.version.id} with",
                hint="Name two versions: `slmloop data diff OLD NEW` (`slmloop data list` lists them).",
            )
    return dataset_changes(project.task, load_dataset(project, old_id), new)


def _token_lengths(project: Project, splits: DatasetSplits) -> tuple[dict[str, list[int]], str]:
    parts = {"train": splits.train, "validation": splits.validation, "gold": splits.gold}
    try:  # the same count as data.max_tokens uses: the whole chat-formatted example
        return {k: example_token_lengths(project, v) if v else [] for k, v in parts.items()}, "tokens"
    except ModelError:  # the report must not depend on the model being installed
        task = project.manifest.task
        words = {
            k: [len((input_text(task, r) + " " + target_text(task, r)).split()) for r in v] for k, v in parts.items()
        }
        return words, "words"


def _plots(project: Project, splits: DatasetSplits, rejects: list[dict], path: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = splits.version.counts
    lengths, unit = _token_lengths(project, splits)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    ax = axes[0, 0]
    labels = counts.get("labels")
    if labels and len({lab for part in labels.values() for lab in part}) > FEW_LABELS:
        _plot_many_labels(labels, path.with_name("labels.png"))
        for s in SPLITS:
            ax.hist(list(labels.get(s, {}).values()), bins=20, alpha=0.5, label=s)
        ax.set_xlabel("rows per label")
        ax.set_ylabel("labels")
        ax.set_title(
            f"label balance ({len({lab for part in labels.values() for lab in part})} labels; all: labels.png)"
        )
        ax.legend()
    elif labels:
        names = sorted({lab for part in labels.values() for lab in part})
        x = np.arange(len(names))
        for k, s in enumerate(SPLITS):
            total = sum(labels.get(s, {}).values()) or 1
            ax.bar(x + (k - 1) * 0.27, [labels.get(s, {}).get(n, 0) / total for n in names], 0.27, label=s)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("share of split")
        ax.set_title("label balance per split")
        ax.legend()
    else:
        ax.bar(SPLITS, [len(splits.train), len(splits.validation), len(splits.gold)], color="#3182bd")
        ax.set_title("rows per split")
    ax = axes[0, 1]
    every = [n for v in lengths.values() for n in v]
    bins = np.histogram_bin_edges(every or [0, 1], bins=30)
    for s in SPLITS:
        if lengths[s]:
            ax.hist(lengths[s], bins=bins, alpha=0.5, density=True, label=s)
    ax.axvline(project.manifest.model.max_length, color="#a50f15", linestyle="--", label="model.max_length")
    ax.set_title(f"example length ({unit}, chat-formatted)" if unit == "tokens" else "example length (words)")
    ax.legend()
    ax = axes[1, 0]
    reasons = Counter(r["reason"] for r in rejects)
    if reasons:
        items = reasons.most_common()
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#e6550d")
        ax.set_title(f"rejected rows by reason ({sum(reasons.values())})")
    else:
        ax.text(0.5, 0.5, "no rejected rows", ha="center", va="center")
        ax.set_axis_off()
    ax = axes[1, 1]
    pii = counts.get("pii", {})
    leak = {k: v for k, v in counts.get("leakage", {}).items() if k != "checks"}
    bars = {**{f"PII {k}": v for k, v in pii.items()}, **{f"leak {k}": v for k, v in leak.items()}}
    if bars:
        ax.barh(list(bars), list(bars.values()), color="#756bb1")
        ax.set_title("PII found and gold leaks removed")
    else:
        checks = ", ".join(counts.get("leakage", {}).get("checks", []))
        ax.text(
            0.5,
            0.5,
            f"no PII found (mode {project.manifest.data.pii.mode})\nno gold leaks ({checks})",
            ha="center",
            va="center",
        )
        ax.set_axis_off()
    fig.suptitle(f"dataset {splits.version.id} · gold {splits.version.gold_id}", fontweight="bold")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {
        "unit": unit,
        "mean": {s: (sum(v) / len(v) if v else 0) for s, v in lengths.items()},
        "max": {s: max(v, default=0) for s, v in lengths.items()},
    }


FEW_LABELS = 12  # above this, per-label bars move to their own tall plot


def _plot_many_labels(labels: dict[str, dict[str, int]], path: Path) -> Path:
    """Every label's training rows, sorted, with its gold rows beside: readable at 150 labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({lab for part in labels.values() for lab in part}, key=lambda n: labels["train"].get(n, 0))
    fig, ax = plt.subplots(figsize=(8, 0.18 * len(names) + 1.5), dpi=100)
    y = range(len(names))
    ax.barh(list(y), [labels["train"].get(n, 0) for n in names], color="#3182bd", label="train")
    ax.barh(list(y), [labels.get("gold", {}).get(n, 0) for n in names], color="#fd8d3c", height=0.4, label="gold")
    ax.set_yticks(list(y), names, fontsize=6 if len(names) > 60 else 8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("rows")
    ax.set_title("rows per label, rarest first")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _clusters(rejects: list[dict]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for r in rejects:
        if r["reason"] in ("duplicate_exact", "duplicate_near") and "of" in r:
            groups[r["of"]["text"]].append(r["raw"])
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def _gold_file_html(counts: dict[str, Any], table: Any) -> str:
    g = counts.get("gold_file")
    if not g:
        return ""
    rows = [["rows read", g["rows_read"]], ["gold rows", g["accepted"]]]
    rows += [[f"rejected: {k}", n] for k, n in sorted(g["rejected"].items())]
    return f"<h2>Gold file {html.escape(g['path'])}</h2>" + table(rows, ["", "rows"])


def _contamination_html(counts: dict[str, Any], table: Any) -> str:
    k = counts.get("contamination")
    if not k:
        return ""
    return (
        f"<h2>Close paraphrases of gold rows in training</h2><p>{k['close']} of {k['gold_rows']} gold rows "
        f"({100 * k['rate']:.1f} %) have a training input with MiniLM cosine ≥ {k['threshold']}. They are kept "
        "(paraphrases are what intent data is made of); every evaluation reports its metrics on gold rows with and "
        "without such a neighbour.</p>" + table(list(k["histogram"].items()), ["nearest-neighbour cosine", "gold rows"])
    )


def write_data_report(project: Project, version_id: str | None = None) -> tuple[Path, dict[str, Any]]:
    splits = load_dataset(project, version_id)
    v = splits.version
    rejects = project.objects.read_jsonl(v.rejects_object)
    folder = project.reports_dir / f"data-{v.id}"
    folder.mkdir(parents=True, exist_ok=True)
    lengths = _plots(project, splits, rejects, folder / "data.png")
    clusters = _clusters(rejects)
    leaks = [r for r in rejects if r["reason"] == "leaks_gold"]
    esc = html.escape

    def table(rows: list[list[Any]], head: list[str]) -> str:
        h = "".join(f"<th>{esc(x)}</th>" for x in head)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{h}</tr>{body}</table>"

    c = v.counts
    steps = [
        ["rows in", c["rows_in"]],
        ["text normalised", c["normalized_changed"]],
        *[[f"rejected: {k}", n] for k, n in sorted(c["rejected"].items())],
        ["train", c["train"]],
        ["validation", c["validation"]],
        ["gold (this version)", c["gold_rows_total"]],
    ]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>data {v.id}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:75em}} td,th{{padding:.2em .8em;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}} h2{{margin-top:1.5em}}</style></head><body>
<h1>Dataset {v.id}</h1><p>gold {esc(v.gold_id)} · created {v.created_at:%Y-%m-%d %H:%M} ·
imports {esc(", ".join(v.import_ids))}</p>
<img src="data.png" alt="data plots" style="max-width:100%">
{'<img src="labels.png" alt="rows per label" style="max-width:100%">' if (folder / "labels.png").exists() else ""}
{"".join(f"<p><b>warning:</b> {esc(w)}</p>" for w in c.get("warnings", []))}
<h2>Where every row went</h2>{table(steps, ["step", "rows"])}
{_gold_file_html(c, table)}
{_contamination_html(c, table)}
<h2>Duplicate clusters ({len(clusters)})</h2>
{
        table(
            [[len(d) + 1, k[:120], " | ".join(x[:60] for x in d[:3])] for k, d in clusters[:15]],
            ["rows", "kept", "dropped (first 3)"],
        )
    }
<h2>Gold leakage removed ({len(leaks)})</h2>
{
        table(
            [[r["detail"], r["raw"][:100], r.get("of", {}).get("text", "")[:100]] for r in leaks[:30]],
            ["match", "row", "gold row"],
        )
    }
<h2>PII</h2><p>mode {esc(project.manifest.data.pii.mode)}: {esc(str(c.get("pii", {})) or "none")}</p>
</body></html>"""
    atomic_write_text(folder / "index.html", page)
    return folder, {"lengths": lengths, "clusters": len(clusters), "leaks": len(leaks), "rejects": len(rejects)}
