"""Near-duplicate detection with MinHash LSH (datasketch), verified by exact Jaccard.

Each text becomes a set of character 5-grams of its case-folded, space-collapsed
form. LSH proposes candidates; a candidate counts only if the exact Jaccard
similarity of the two shingle sets reaches the threshold, so LSH's false
positives never merge rows. Clusters are stars around a *representative*: the
first row (in input order) of its cluster, which is what we keep — deterministic,
and free of the chaining that merges A~B~C into one cluster when A≁C.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["NearDuplicates", "Signatures", "find_near_duplicates", "jaccard", "nearest_matches", "shingles"]


def shingles(text: str, k: int = 5) -> set[str]:
    t = " ".join(text.casefold().split())
    if len(t) <= k:
        return {t}
    return {t[i : i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass
class NearDuplicates:
    #: for every row, the index of its cluster's representative (itself if it is one)
    representative: list[int]
    #: for every non-representative row, its exact Jaccard similarity to the representative
    similarity: dict[int, float]

    @property
    def duplicates(self) -> list[int]:
        return [i for i, r in enumerate(self.representative) if r != i]

    def clusters(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, r in enumerate(self.representative):
            out.setdefault(r, []).append(i)
        return out


class Signatures:
    """Shingle sets of some texts, and their MinHashes (computed once, on first use)."""

    def __init__(self, texts: Sequence[str], k: int = 5, num_perm: int = 128, seed: int = 1) -> None:
        self.sets = [shingles(t, k) for t in texts]
        self.num_perm = num_perm
        self.seed = seed
        self._hashes: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.sets)

    @property
    def hashes(self) -> list[Any]:
        if self._hashes is None:
            from datasketch import LeanMinHash, MinHash

            out = []
            for s in self.sets:
                m = MinHash(num_perm=self.num_perm, seed=self.seed)
                m.update_batch([x.encode("utf-8") for x in s])
                out.append(LeanMinHash(m))
            self._hashes = out
        return self._hashes

    def subset(self, index: Sequence[int]) -> Signatures:
        sub = Signatures([], num_perm=self.num_perm, seed=self.seed)
        sub.sets = [self.sets[i] for i in index]
        if self._hashes is not None:
            sub._hashes = [self._hashes[i] for i in index]
        return sub


def _lsh(threshold: float, num_perm: int) -> Any:
    from datasketch import MinHashLSH

    # a lower LSH threshold than the verified one: candidates are cheap, misses are not
    return MinHashLSH(threshold=max(threshold - 0.1, 0.05), num_perm=num_perm)


def find_near_duplicates(sig: Signatures, threshold: float) -> NearDuplicates:
    """Cluster rows whose shingle Jaccard similarity to a representative is ≥ ``threshold``."""
    lsh = _lsh(threshold, sig.num_perm)
    representative = list(range(len(sig)))
    similarity: dict[int, float] = {}
    for i, mh in enumerate(sig.hashes):
        best: tuple[int, float] | None = None
        for key in lsh.query(mh):
            j = int(key)
            sim = jaccard(sig.sets[i], sig.sets[j])
            if sim >= threshold and (best is None or j < best[0]):
                best = (j, sim)
        if best is None:
            lsh.insert(str(i), mh)
        else:
            representative[i] = best[0]
            similarity[i] = best[1]
    return NearDuplicates(representative, similarity)


def nearest_matches(queries: Signatures, refs: Signatures, threshold: float) -> dict[int, tuple[int, float]]:
    """For each query row with a reference row at Jaccard ≥ ``threshold``: (best ref, similarity)."""
    if not len(refs) or not len(queries):
        return {}
    lsh = _lsh(threshold, refs.num_perm)
    for j, mh in enumerate(refs.hashes):
        lsh.insert(str(j), mh)
    out: dict[int, tuple[int, float]] = {}
    for i, mh in enumerate(queries.hashes):
        for key in lsh.query(mh):
            j = int(key)
            sim = jaccard(queries.sets[i], refs.sets[j])
            if sim >= threshold and (i not in out or sim > out[i][1]):
                out[i] = (j, sim)
    return out
