"""The leakage gate: no training or validation row may copy a gold row.

Copies block; paraphrases are measured:

- **exact** — same normalised, case-folded input: blocks;
- **near** — character 5-gram Jaccard ≥ ``data.leakage.near_threshold`` (MinHash LSH
  proposes candidates, exact Jaccard decides): blocks;
- **semantic** — MiniLM cosine ≥ ``data.leakage.semantic_threshold``. Intent and
  slot datasets are made of paraphrases of the same few requests, so by default
  (``semantic: report``) a close neighbour is *reported*: the share of gold rows
  that have one (:func:`contamination`), and every gold metric split into rows with
  and without one, each with its CI. ``semantic: block`` treats them as leaks.

``data prepare`` drops leaking rows (reason ``leaks_gold``); the gate stands in
front of every training run and every evaluation and blocks with the list of
leaking pairs. Overriding needs an explicit flag and is written to the audit log
and into the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from slmloop.data.clean import dedupe_key
from slmloop.data.dedupe import Signatures, nearest_matches
from slmloop.errors import LeakageError
from slmloop.manifest import LeakageConfig, TaskConfig
from slmloop.predict.tasks import input_text
from slmloop.project import Project

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Leak",
    "contamination",
    "find_leaks",
    "gold_leaks",
    "leakage_gate",
    "nearest_neighbours",
    "neighbour_similarity",
    "project_embedder",
]

Embed = Callable[[list[str]], Any]


@dataclass
class Leak:
    split: str
    row: int
    gold_row: int
    kind: str  # exact | near | semantic
    similarity: float
    text: str
    gold_text: str


def gold_leaks(
    texts: Sequence[str],
    gold_texts: Sequence[str],
    cfg: LeakageConfig,
    embed: Embed | None = None,
    signatures: tuple[Signatures, Signatures] | None = None,
) -> dict[int, tuple[int, str, float]]:
    """``{row: (gold_row, kind, similarity)}`` for every row of ``texts`` that leaks a gold row."""
    found: dict[int, tuple[int, str, float]] = {}
    gold_index: dict[str, int] = {}
    for j, t in enumerate(gold_texts):
        gold_index.setdefault(dedupe_key(t), j)
    for i, t in enumerate(texts):
        hit = gold_index.get(dedupe_key(t))
        if hit is not None:
            found[i] = (hit, "exact", 1.0)
    rest = [i for i in range(len(texts)) if i not in found]
    if rest and gold_texts:
        q, g = signatures or (Signatures([texts[i] for i in rest]), Signatures(gold_texts))
        if signatures is not None:
            q = q.subset(rest)
        for local, (j, sim) in nearest_matches(q, g, cfg.near_threshold).items():
            found[rest[local]] = (j, "near", sim)
    rest = [i for i in range(len(texts)) if i not in found]
    if cfg.semantic == "block" and embed is not None and rest and gold_texts:
        e_rows = embed([texts[i] for i in rest])
        e_gold = embed(list(gold_texts))
        for start in range(0, len(rest), 4096):
            sims = e_rows[start : start + 4096] @ e_gold.T
            best = sims.argmax(axis=1)
            for local, j in enumerate(best):
                cos = float(sims[local, j])
                if cos >= cfg.semantic_threshold:
                    found[rest[start + local]] = (int(j), "semantic", cos)
    return found


def find_leaks(
    task: TaskConfig,
    gold: list[dict[str, Any]],
    cfg: LeakageConfig,
    embed: Embed | None = None,
    **splits: list[dict[str, Any]],
) -> list[Leak]:
    gold_texts = [input_text(task, r) for r in gold]
    leaks: list[Leak] = []
    for name, rows in splits.items():
        texts = [input_text(task, r) for r in rows]
        for i, (j, kind, sim) in sorted(gold_leaks(texts, gold_texts, cfg, embed).items()):
            leaks.append(Leak(name, i, j, kind, sim, texts[i][:200], gold_texts[j][:200]))
    return sorted(leaks, key=lambda x: (-x.similarity, x.split, x.row))


def nearest_neighbours(
    project: Project, texts: Sequence[str], train_texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each text to its nearest training text, and that text's index (MiniLM, cached)."""
    import numpy as np

    if not texts or not train_texts:
        return np.zeros(len(texts), dtype=np.float32), np.zeros(len(texts), dtype=np.int64)
    embed = project_embedder(project)
    q, t = embed(list(texts)), embed(list(train_texts))
    sims = [q[i : i + 2048] @ t.T for i in range(0, len(q), 2048)]
    return np.concatenate([x.max(axis=1) for x in sims]), np.concatenate([x.argmax(axis=1) for x in sims])


def neighbour_similarity(project: Project, texts: Sequence[str], train_texts: Sequence[str]) -> np.ndarray:
    """Cosine similarity of each text to its nearest training text (MiniLM, cached embeddings)."""
    return nearest_neighbours(project, texts, train_texts)[0]


def contamination(
    project: Project, task: TaskConfig, gold: list[dict[str, Any]], train: list[dict[str, Any]]
) -> dict[str, Any]:
    """How many gold rows have a close paraphrase in training (the semantic check, reported)."""
    import numpy as np

    cfg = project.manifest.data.leakage
    sims = neighbour_similarity(project, [input_text(task, r) for r in gold], [input_text(task, r) for r in train])
    close = sims >= cfg.semantic_threshold
    edges = [0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0001]
    hist, _ = np.histogram(sims, bins=edges)
    return {
        "threshold": cfg.semantic_threshold,
        "gold_rows": len(gold),
        "close": int(close.sum()),
        "rate": float(close.mean()) if len(gold) else 0.0,
        "histogram": {f"{a:.2f}-{min(b, 1.0):.2f}": int(n) for a, b, n in zip(edges, edges[1:], hist, strict=False)},
    }


def project_embedder(project: Project) -> Embed:
    """MiniLM embeddings cached in the project store."""
    from slmloop.models.embedder import embed

    spec = project.manifest.data.leakage.embedding_model
    cache = project.home / "cache" / "embeddings"
    return lambda texts: embed(texts, spec, cache)


def leakage_gate(
    project: Project,
    task: TaskConfig,
    gold: list[dict[str, Any]],
    *,
    allow: bool,
    context: str,
    **splits: list[dict[str, Any]],
) -> dict[str, Any]:
    """Raise LeakageError when a split overlaps gold, unless ``allow`` (recorded)."""
    cfg = project.manifest.data.leakage
    semantic = cfg.semantic == "block"
    leaks = find_leaks(task, gold, cfg, project_embedder(project) if semantic else None, **splits)
    status: dict[str, Any] = {
        "checked": sorted(splits),
        "checks": ["exact", "near", *(["semantic"] if semantic else [])],
        "leaks": len(leaks),
        "by_kind": dict(Counter(x.kind for x in leaks)),
        "overridden": False,
        "pairs": [asdict(x) for x in leaks[:50]],
    }
    if not leaks:
        return status
    if not allow:
        lines = "\n".join(
            f"  {x.split}[{x.row}] ≈ gold[{x.gold_row}] ({x.kind} {x.similarity:.2f}): "
            f"{x.text[:60]!r} ~ {x.gold_text[:60]!r}"
            for x in leaks[:20]
        )
        more = f"\n  … and {len(leaks) - 20} more" if len(leaks) > 20 else ""
        raise LeakageError(
            f"{len(leaks)} row(s) of {', '.join(sorted(splits))} copy gold rows:\n{lines}{more}",
            hint="Run `slmloop data prepare` again (it drops rows that leak gold), or pass "
            "--allow-leakage to go on anyway (recorded in the audit log and the run).",
        )
    status["overridden"] = True
    with project.store.session() as s:
        project.store.log_event(s, "leakage.override", context, leaks=len(leaks), pairs=status["pairs"][:10])
    return status
