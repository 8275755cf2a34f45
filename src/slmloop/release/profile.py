"""The reference profile of a release: what its in-distribution traffic looks like.

Written into the release folder at export (``reference/profile.json`` and
``reference/embeddings.npy``), and built on first use (then cached) for releases
exported before profiles existed. It holds:

- a seeded sample of training inputs, their word counts and MiniLM embeddings;
- the training vocabulary, and the share of validation words outside it (the
  out-of-vocabulary rate that in-distribution traffic has);
- the training label mix (classification);
- the model's confidence (top-label probability) and invalid-output rate on the
  gold rows of the run's evaluation: held-out, in-distribution answers.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmloop.project import Project
from slmloop.store import Release, atomic_write_bytes, atomic_write_json

__all__ = ["ReferenceProfile", "build_profile", "load_profile", "words", "write_profile"]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (the vocabulary drift and out-of-vocabulary signals count)."""
    return _WORD.findall(text.lower())


@dataclass
class ReferenceProfile:
    release: int
    texts: list[str]
    lengths: list[int]
    vocabulary: list[str]
    oov: tuple[int, int]  # (unseen words, words) of held-out in-distribution text
    label_share: dict[str, float]  # training labels
    label_counts: dict[str, int]  # the model's answers on held-out rows (else the training labels)
    confidence: list[float]
    invalid: tuple[int, int]  # (invalid answers, answers) on held-out rows
    embedding_model: str
    embeddings: np.ndarray
    abstained: tuple[int, int] = (0, 0)  # (abstentions, answers) on held-out rows: a classifier with task.abstain

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("embeddings")
        return d


def _answer_stats(
    project: Project, version: int, run_id: int
) -> tuple[list[float], tuple[int, int], dict[str, int], tuple[int, int]]:
    """Confidence, invalid-output counts, answered labels and abstentions of the run's newest gold evaluation."""
    from slmloop.evaluate.results import newest_evaluation

    ev = newest_evaluation(project, [f"release-{version}", f"run-{run_id}"])
    if ev is None:
        return [], (0, 0), {}, (0, 0)
    confidence, invalid, abstained, n = [], 0, 0, 0
    labels: dict[str, int] = {}
    for p in project.store.predictions(ev.id):
        n += 1
        probs = (p.scores or {}).get("probs")
        if (p.scores or {}).get("abstained"):
            abstained += 1
        elif probs:
            confidence.append(float(max(probs.values())))
            labels[p.prediction] = labels.get(p.prediction, 0) + 1
        if not p.prediction:
            invalid += 1
    return confidence, (invalid, n), labels, (abstained, n)


def build_profile(project: Project, version: int, dataset_id: str, run_id: int) -> ReferenceProfile:
    """The profile of release ``version`` (trained by run ``run_id`` on ``dataset_id``)."""
    from slmloop.data.versions import load_dataset
    from slmloop.models.embedder import embed
    from slmloop.predict.tasks import input_text

    cfg = project.manifest.monitor
    task = project.task
    splits = load_dataset(project, dataset_id)
    train = list(splits.train)
    random.Random(0).shuffle(train)
    sample = [input_text(task, r) for r in train[: cfg.reference_size]]
    vocabulary = {w for r in splits.train for w in words(input_text(task, r))}
    held_out = [w for r in splits.validation for w in words(input_text(task, r))]
    label_share: dict[str, float] = {}
    counts: dict[str, int] = {}
    if task.type == "classification":
        for r in splits.train:
            counts[str(r["label"])] = counts.get(str(r["label"]), 0) + 1
        label_share = {k: v / len(splits.train) for k, v in sorted(counts.items())}
    confidence, invalid, answered, abstained = _answer_stats(project, version, run_id)
    emb = embed(sample, cfg.embedding_model, project.home / "cache" / "embeddings")
    return ReferenceProfile(
        release=version,
        texts=sample,
        lengths=[len(words(t)) for t in sample],
        vocabulary=sorted(vocabulary),
        oov=(sum(w not in vocabulary for w in held_out), len(held_out)),
        label_share=label_share,
        label_counts=answered or counts,
        confidence=confidence,
        invalid=invalid,
        embedding_model=cfg.embedding_model,
        embeddings=np.asarray(emb, dtype=np.float32),
        abstained=abstained,
    )


def write_profile(profile: ReferenceProfile, folder: Path) -> None:
    import io

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "profile.json", profile.summary())
    buf = io.BytesIO()
    np.save(buf, profile.embeddings)
    atomic_write_bytes(folder / "embeddings.npy", buf.getvalue())


def _read(folder: Path) -> ReferenceProfile:
    d = json.loads((folder / "profile.json").read_text())
    d["oov"], d["invalid"] = tuple(d["oov"]), tuple(d["invalid"])
    d["abstained"] = tuple(d.get("abstained", (0, 0)))
    d.setdefault("label_counts", {})
    return ReferenceProfile(**d, embeddings=np.load(folder / "embeddings.npy"))


def load_profile(project: Project, release: Release) -> ReferenceProfile:
    """The release's profile: from its folder, else from the cache, else built now (and cached)."""
    shipped = project.locate(release.path) / "reference"
    cached = project.home / "cache" / "profiles" / f"v{release.version}"
    if (shipped / "profile.json").exists():
        profile = _read(shipped)
    elif (cached / "profile.json").exists():
        profile = _read(cached)
    else:
        profile = build_profile(project, release.version, release.dataset_id, release.run_id)
        write_profile(profile, cached)
    if not profile.invalid[1] or not profile.label_counts:  # exported before its evaluation, or an older profile
        confidence, invalid, answered, abstained = _answer_stats(project, release.version, release.run_id)
        profile.confidence, profile.invalid, profile.abstained = confidence, invalid, abstained
        profile.label_counts = answered or profile.label_counts
    return profile
