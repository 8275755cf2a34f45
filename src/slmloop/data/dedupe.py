"""Near-duplicate detection with MinHash LSH (datasketch), verified by exact Jaccard.

Each text becomes the set of its character 5-grams (case-folded, spaces
collapsed), stored compactly as sorted 32-bit hashes. MinHash signatures are
computed for many rows at once with numpy (multiply-shift hashing, one random
odd multiplier per permutation), indexed by datasketch's ``MinHashLSH``; every
candidate pair LSH proposes is then checked with the *exact* Jaccard similarity
of the two sets, so LSH false positives never merge rows.

Clusters are stars around a *representative*: the first row (in input order) of
its cluster, which is the row we keep — deterministic, and free of the chaining
that merges A~B~C into one cluster when A≁C.

Rows are compared whole: a pair whose inputs are near copies is a duplicate only
when their answers agree too (``same_answer``). Inputs that differ in one value
and answers that differ with them are the rows a model learns most from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NearDuplicates", "Signatures", "find_near_duplicates", "jaccard", "nearest_matches", "shingle_hashes"]

_BASE = np.uint64(1_000_003)
_MASK32 = np.uint64(0xFFFFFFFF)


def shingle_hashes(text: str, k: int = 5) -> np.ndarray:
    """Sorted unique 32-bit hashes of the character k-grams of the normalised text."""
    t = " ".join(text.casefold().split())
    codes = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) < k:  # short texts: one zero-padded window
        codes = np.concatenate([codes, np.zeros(k - len(codes), dtype=np.uint64)])
    n = len(codes) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):  # polynomial rolling hash, vectorised over all windows
            h = h * _BASE + codes[j : j + n]
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return np.unique((h & _MASK32).astype(np.uint32))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0


class Signatures:
    """Shingle sets of some texts and their MinHash signatures (computed once, on first use)."""

    def __init__(self, texts: Sequence[str], k: int = 5, num_perm: int = 128, seed: int = 1) -> None:
        self.sets = [shingle_hashes(t, k) for t in texts]
        self.num_perm = num_perm
        self.seed = seed
        self._sig: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sets)

    @property
    def signatures(self) -> np.ndarray:
        """(rows, num_perm) uint64 MinHash signatures."""
        if self._sig is None:
            rng = np.random.default_rng(self.seed)
            mult = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
            add = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
            out = np.empty((len(self.sets), self.num_perm), dtype=np.uint64)
            chunk = 256  # rows per vectorised block: bounds the (perm x shingles) temporaries
            for start in range(0, len(self.sets), chunk):
                part = self.sets[start : start + chunk]
                if not part:
                    continue
                flat = np.concatenate(part).astype(np.uint64)
                offsets = np.cumsum([0] + [len(x) for x in part[:-1]])
                with np.errstate(over="ignore"):
                    hv = (flat[None, :] * mult[:, None] + add[:, None]) >> np.uint64(32)
                out[start : start + len(part)] = np.minimum.reduceat(hv, offsets, axis=1).T
            self._sig = out
        return self._sig

    def minhashes(self) -> list[Any]:
        from datasketch import LeanMinHash

        # "legacy" only labels the sketch format; the LSH index reads the hash values as they are
        return [LeanMinHash(seed=self.seed, hashvalues=row, scheme="legacy") for row in self.signatures]

    def subset(self, index: Sequence[int]) -> Signatures:
        sub = Signatures([], num_perm=self.num_perm, seed=self.seed)
        sub.sets = [self.sets[i] for i in index]
        if self._sig is not None:
            sub._sig = self._sig[list(index)]
        return sub


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


def _lsh(threshold: float, num_perm: int) -> Any:
    from datasketch import MinHashLSH

    # a lower LSH threshold than the verified one: candidates are cheap, misses are not
    return MinHashLSH(threshold=max(threshold - 0.1, 0.05), num_perm=num_perm)


def find_near_duplicates(
    sig: Signatures, threshold: float, same_answer: Callable[[int, int], bool] | None = None
) -> NearDuplicates:
    """Cluster rows whose shingle Jaccard similarity to a representative is ≥ ``threshold`` (and, with
    ``same_answer``, whose answers agree with the representative's)."""
    lsh = _lsh(threshold, sig.num_perm)
    representative = list(range(len(sig)))
    similarity: dict[int, float] = {}
    for i, mh in enumerate(sig.minhashes()):
        best: tuple[int, float] | None = None
        for j in lsh.query(mh):
            s = jaccard(sig.sets[i], sig.sets[j])
            if s >= threshold and (best is None or j < best[0]) and (same_answer is None or same_answer(i, j)):
                best = (j, s)
        if best is None:
            lsh.insert(i, mh, check_duplication=False)
        else:
            representative[i] = best[0]
            similarity[i] = best[1]
    return NearDuplicates(representative, similarity)


def nearest_matches(queries: Signatures, refs: Signatures, threshold: float) -> dict[int, tuple[int, float]]:
    """For each query row with a reference row at Jaccard ≥ ``threshold``: (best ref, similarity)."""
    if not len(refs) or not len(queries):
        return {}
    lsh = _lsh(threshold, refs.num_perm)
    for j, mh in enumerate(refs.minhashes()):
        lsh.insert(j, mh, check_duplication=False)
    out: dict[int, tuple[int, float]] = {}
    for i, mh in enumerate(queries.minhashes()):
        for j in lsh.query(mh):
            s = jaccard(queries.sets[i], refs.sets[j])
            if s >= threshold and (i not in out or s > out[i][1]):
                out[i] = (j, s)
    return out
