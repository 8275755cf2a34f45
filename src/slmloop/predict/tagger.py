"""The CRF tagger: which words of a request are a value of which field.

A field is a *span field* when most of its training values occur verbatim (as whole
tokens, ignoring case) in the input: those values are tagged BIO on the input's tokens
and a linear-chain CRF (crfsuite) learns to tag them, from each token's words, shapes and
affixes and from MiniLM clusters of the request and of its words (:class:`Context`).

The ``crf`` baseline (:mod:`slmloop.baselines.crf`) answers with it; the span prior
(:mod:`slmloop.predict.spans`) weighs its reading against a fine-tuned extractor's answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from slmloop.manifest import TaskConfig
from slmloop.predict.inline import find_span, tokens
from slmloop.predict.tasks import input_text

__all__ = [
    "SPAN_SHARE",
    "Context",
    "SpanTagger",
    "bio_tags",
    "decode_spans",
    "find_span",
    "span_fields",
    "tokens",
]

#: share of a field's training values that must be spans of the input for the CRF to tag it
SPAN_SHARE = 0.5


def _values(v: Any) -> list[Any]:
    return [x for x in (v if isinstance(v, list) else [v]) if x is not None and x != ""]


def bio_tags(text: str, output: dict[str, Any], fields: set[str]) -> tuple[list[tuple[str, int, int]], list[str], int]:
    """Tokens of ``text``, their BIO tags for the values of ``fields``, and how many values were not found."""
    toks = tokens(text)
    tags = ["O"] * len(toks)
    taken: set[int] = set()
    missed = 0
    for f in sorted(fields):
        for v in _values(output.get(f)):
            span = find_span(toks, str(v), taken) if isinstance(v, str | int | float) else None
            if span is None:
                missed += 1
                continue
            a, b = span
            taken.update(range(a, b))
            tags[a] = f"B-{f}"
            for i in range(a + 1, b):
                tags[i] = f"I-{f}"
    return toks, tags, missed


def span_fields(task: TaskConfig, train: list[dict[str, Any]]) -> dict[str, float]:
    """Each field's share of training values found verbatim in the input."""
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for r in train:
        toks = tokens(input_text(task, r))
        for f, v in r["output"].items():
            for x in _values(v):
                total[f] += 1
                found[f] += isinstance(x, str | int | float) and find_span(toks, str(x), set()) is not None
    return {f: found[f] / total[f] for f in total}


def _shape(w: str) -> str:
    s = re.sub("[A-Z]", "A", re.sub("[a-z]", "a", re.sub("[0-9]", "0", w)))
    return re.sub(r"(.)\1+", r"\1\1", s)


def _features(toks: list[tuple[str, int, int]], context: ContextIds | None = None) -> list[dict[str, Any]]:
    words = [t for t, _, _ in toks]
    feats = []
    for i, w in enumerate(words):
        lw = w.lower()
        f: dict[str, Any] = {
            "bias": 1.0,
            "w": lw,
            "p2": lw[:2],
            "s2": lw[-2:],
            "s3": lw[-3:],
            "shape": _shape(w),
            "digit": w.isdigit(),
            "title": w.istitle(),
            "pos": min(i, 5),
        }
        for o in (-2, -1, 1, 2):
            j = i + o
            if 0 <= j < len(words):
                f[f"w{o}"] = words[j].lower()
                f[f"s{o}"] = _shape(words[j])
            else:
                f[f"w{o}"] = "<edge>"
        f["w-1|w"] = f["w-1"] + "|" + lw
        f["w|w+1"] = lw + "|" + f["w1"]
        if context is not None:
            coarse, fine = context.request
            f["rq"], f["rq+"], f["rq|w"] = str(coarse), str(fine), f"{coarse}|{lw}"
            for o in (-1, 0, 1):
                j = i + o
                f[f"wc{o}"] = str(context.words[j]) if 0 <= j < len(words) else "<edge>"
        feats.append(f)
    return feats


def decode_spans(text: str, toks: list[tuple[str, int, int]], tags: list[str]) -> dict[str, list[str]]:
    """BIO tags back to field values (the input's own characters); an I- without its B- opens a span."""
    out: dict[str, list[str]] = {}
    current: tuple[str, int, int] | None = None
    for (_, start, end), tag in [*zip(toks, tags, strict=True), (("", 0, 0), "O")]:
        kind, _, name = tag.partition("-")
        if current is not None and (kind != "I" or name != current[0]):
            out.setdefault(current[0], []).append(text[current[1] : current[2]])
            current = None
        if kind == "B" or (kind == "I" and current is None):
            current = (name, start, end)
        elif kind == "I" and current is not None:
            current = (current[0], current[1], end)
    return out


#: the CRF's training settings: L-BFGS with elastic-net regularisation
CRF_PARAMS = {"c1": 0.05, "c2": 0.05, "max_iterations": 150}
#: bump when the tokens or features change: cached taggers of an older version are not reused
CRF_VERSION = 2
#: k-means clusters of the training requests' sentence embeddings (coarse, fine): the kind of request
REQUEST_CLUSTERS = (32, 128)
#: k-means clusters of the training vocabulary's word vectors: words that mean alike share a feature
WORD_CLUSTERS = 256


#: a text's tokens, their most likely tags and each token's tag marginals
Reading = tuple[list[tuple[str, int, int]], list[str], list[dict[str, float]]]


class ContextIds(NamedTuple):
    """What a token is read with besides its own words: its request's clusters, each word's cluster."""

    request: tuple[int, int]
    words: list[int]


def _nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # k-means' own assignment: the smallest squared distance, |c|^2 - 2 x.c
    return np.argmin((centroids**2).sum(axis=1)[None, :] - 2.0 * vectors @ centroids.T, axis=1)


def _kmeans(vectors: np.ndarray, k: int, n_init: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(np.unique(vectors, axis=0))))
    return KMeans(k, n_init=n_init, random_state=0).fit(vectors).cluster_centers_.astype(np.float32)


@dataclass
class Context:
    """Clusters of MiniLM embeddings that tell the CRF which kind of request and which kind of word it reads.

    They make the CRF alone clearly better on HWU64 slots (measured: docs/training.md, "The span prior").
    The request's clusters (its sentence embedding's nearest k-means centroid, fit on the training
    requests) stand for its scenario: "work" is an event in an alarm request, a place elsewhere. A word's
    cluster (the mean of the embedder's input embeddings of its pieces, nearest of centroids fit on the
    training vocabulary) lets words never seen in training share what similar words learned.
    """

    coarse: np.ndarray  # (k, dim) centroids of the training requests' embeddings
    fine: np.ndarray
    words: np.ndarray  # (k, dim) centroids of the training vocabulary's word vectors
    embedder: str = "all-minilm-l6-v2"
    cache_dir: Path | None = field(default=None, compare=False)  # the sentence embeddings' cache
    _seen: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, texts: list[str], embedder: str, cache_dir: Path | None = None) -> Context:
        from slmloop.models.embedder import embed, word_vectors

        vectors = embed(texts, embedder, cache_dir)
        vocab = sorted({t.lower() for text in texts for t, _, _ in tokens(text)})
        coarse, fine = (_kmeans(vectors, k, n_init=2) for k in REQUEST_CLUSTERS)
        words = _kmeans(word_vectors(vocab, embedder), WORD_CLUSTERS, n_init=1)
        return cls(coarse, fine, words, embedder, cache_dir)

    def ids(self, texts: list[str]) -> list[ContextIds]:
        from slmloop.models.embedder import embed, word_vectors

        if not texts:
            return []
        vectors = embed(texts, self.embedder, self.cache_dir)
        coarse, fine = _nearest_centroid(vectors, self.coarse), _nearest_centroid(vectors, self.fine)
        words = [[t.lower() for t, _, _ in tokens(text)] for text in texts]
        new = sorted({w for ws in words for w in ws} - self._seen.keys())
        if new:
            self._seen.update(
                zip(new, _nearest_centroid(word_vectors(new, self.embedder), self.words).tolist(), strict=True)
            )
        return [
            ContextIds((int(c), int(f)), [self._seen[w] for w in ws])
            for c, f, ws in zip(coarse, fine, words, strict=True)
        ]

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}coarse": self.coarse,
            f"{prefix}fine": self.fine,
            f"{prefix}words": self.words,
            f"{prefix}embedder": np.array(self.embedder),
        }

    @classmethod
    def from_arrays(cls, z: Any, prefix: str) -> Context:
        return cls(z[f"{prefix}coarse"], z[f"{prefix}fine"], z[f"{prefix}words"], str(z[f"{prefix}embedder"]))


@dataclass
class SpanTagger:
    """A linear-chain CRF (crfsuite) that tags the values of ``fields`` on an input's tokens."""

    model: bytes  # the crfsuite model file
    fields: list[str]
    context: Context | None = None  # None: the tokens' own features only (a tagger of CRF_VERSION 1)
    _tagger: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @classmethod
    def fit(
        cls,
        task: TaskConfig,
        train: list[dict[str, Any]],
        fields: set[str],
        cache_dir: Path | None = None,
        embedder: str = "all-minilm-l6-v2",
    ) -> SpanTagger:
        """Train on the BIO tags of ``fields`` in ``train``.

        ``cache_dir`` (a project's ``cache/``): a tagger trained on the very same rows and fields before is
        read from its ``crf/`` (the ``crf`` baseline and the span prior fit the same tagger on the same
        training split); its ``embeddings/`` holds the requests' sentence embeddings.
        """
        import pycrfsuite

        texts = [input_text(task, r) for r in train]
        outputs = [r["output"] for r in train]
        key = hashlib.sha256(
            json.dumps(
                [CRF_VERSION, CRF_PARAMS, REQUEST_CLUSTERS, WORD_CLUSTERS, embedder, sorted(fields), texts, outputs],
                sort_keys=True,
            ).encode("utf-8")
        ).hexdigest()[:32]
        embeddings = cache_dir / "embeddings" if cache_dir is not None else None
        cached = cache_dir / "crf" / f"{key}.npz" if cache_dir is not None else None
        if cached is not None and cached.exists():
            return cls.from_arrays(np.load(cached, allow_pickle=False), "", embeddings)
        context = Context.fit(texts, embedder, embeddings)
        trainer = pycrfsuite.Trainer(algorithm="lbfgs", verbose=False)
        trainer.set_params(CRF_PARAMS)
        for text, r, ids in zip(texts, train, context.ids(texts), strict=True):
            toks, tags, _ = bio_tags(text, r["output"], fields)
            trainer.append(_features(toks, ids), tags)
        with tempfile.TemporaryDirectory(prefix="slmloop-crf-") as tmp:
            path = Path(tmp) / "model.crfsuite"
            trainer.train(str(path))
            tagger = cls(path.read_bytes(), sorted(fields), context)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            part = cached.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(part, allow_pickle=False, **tagger.arrays(""))
            os.replace(part, cached)
        return tagger

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The tagger as arrays named ``prefix...`` (for an ``.npz``; :meth:`from_arrays` reads them back)."""
        out = {
            f"{prefix}model": np.frombuffer(self.model, dtype=np.uint8),
            f"{prefix}fields": np.array(self.fields, dtype=str),
        }
        return out | (self.context.arrays(f"{prefix}context_") if self.context is not None else {})

    @classmethod
    def from_arrays(cls, z: Any, prefix: str, embeddings: Path | None = None) -> SpanTagger:
        context = None
        if f"{prefix}context_coarse" in z:
            context = Context.from_arrays(z, f"{prefix}context_")
            context.cache_dir = embeddings
        return cls(z[f"{prefix}model"].tobytes(), [str(x) for x in z[f"{prefix}fields"]], context)

    def _open(self) -> Any:
        if self._tagger is None:
            import pycrfsuite

            self._tagger = pycrfsuite.Tagger()
            self._tagger.open_inmemory(self.model)
        return self._tagger

    def _items(self, texts: list[str]) -> list[tuple[list[tuple[str, int, int]], list[dict[str, Any]]]]:
        ids: list[ContextIds | None] = (
            list(self.context.ids(texts)) if self.context is not None else [None] * len(texts)
        )
        return [(toks, _features(toks, c)) for toks, c in zip(map(tokens, texts), ids, strict=True)]

    def tag(self, texts: list[str]) -> list[tuple[list[tuple[str, int, int]], list[str]]]:
        """The tokens of each text and their most likely tags."""
        with self._lock:
            tagger = self._open()
            return [(toks, list(tagger.tag(feats)) if toks else []) for toks, feats in self._items(texts)]

    def read(self, texts: list[str], min_p: float) -> list[Reading]:
        """Tokens, most likely tags and each token's tag marginals (those of at least ``min_p``), per text."""
        out: list[Reading] = []
        with self._lock:
            tagger = self._open()
            labels = tagger.labels()
            for toks, feats in self._items(texts):
                if not toks:
                    out.append((toks, [], []))
                    continue
                tags = list(tagger.tag(feats))  # sets the sequence the marginals are read on
                marginals = [
                    {y: round(p, 4) for y in labels if (p := tagger.marginal(y, t)) >= min_p} for t in range(len(toks))
                ]
                out.append((toks, tags, marginals))
        return out
