"""Shortlists: the labels of a request's most similar training rows, read by the classifier.

A classifier fine-tuned with ``train.shortlist: K`` reads, after each request, the K labels
that its nearest training requests carry, most likely first::

    what's the weather like tomorrow
    (similar requests: weather_query, calendar_query, general_quirky)

Nearness is the cosine of MiniLM sentence embeddings; the labels are ranked by a vote of the
NEIGHBOURS nearest rows, each weighted by its similarity to the power POWER (so one very close
row outweighs several loose ones). The model learns when to follow the shortlist and when to
overrule it, for the few tokens the shortlist adds to a row (measured: docs/training.md, "Shortlists").

Training rows get their shortlist *without themselves* (nor exact copies of their text), as
a new request would get it. The index — the embeddings and labels of the training split —
is saved beside the adapter (``shortlist.npz``), so a release carries it and evaluation,
serving and the export parity check build the very prompt the model was trained on.

An extractor trained with a shortlist reads, after each request, its K nearest training
requests *with their answers* (an example of the annotation conventions the data follows:
which words make a value, which field holds them)::

    remind me to call mum this sunday
    (similar request: set a reminder for this friday -> {"date": "this friday"})

Its index keeps the training inputs and answers too, since the prompt shows them.

A classifier also gets a **label prior** (``train.label_prior``): a logistic regression over the
same embeddings, fit on the training split beside the adapter. Label ranking scores a label as
log P_model(label) + w * log P_prior(label), a product of experts: the fine-tuned model and the
embeddings make different mistakes. w is chosen on the validation split after training, among
:data:`PRIOR_WEIGHTS` (0: the prior is not used, and not shipped). The prior is not part of the
prompt: whoever ranks the labels adds it (:func:`slmloop.predict.answers.answer_rows`).

An extractor's index may carry a **span prior** instead (``train.span_prior``, :mod:`slmloop.predict.spans`):
a CRF tagger whose reading of the request is weighed against the model's answer. It indexes no
rows, so an index that holds only a span prior has none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from slmloop.errors import ModelError
from slmloop.manifest import TaskConfig
from slmloop.models.embedder import embed
from slmloop.predict.abstain import Abstention
from slmloop.predict.spans import SpanJudge, SpanPrior
from slmloop.predict.tagger import SpanTagger
from slmloop.predict.tasks import Hints, answer_target, input_text

__all__ = [
    "AUTO_EXAMPLES",
    "NEIGHBOURS",
    "POWER",
    "PRIOR_WEIGHTS",
    "SHORTLIST_FILE",
    "SHORTLIST_TASKS",
    "Companion",
    "LabelPrior",
    "load_companion",
    "shortlist_size",
]

#: the file beside an adapter (and in a release's adapter folder) that holds the index
SHORTLIST_FILE = "shortlist.npz"
#: nearest training rows that vote (more voters raise the chance the true label is on the shortlist, with
#: less gained for each doubling; chosen on HWU64, see docs/training.md, "Shortlists")
NEIGHBOURS = 20
#: a voter's weight is its cosine similarity to this power (a very close row outweighs several loose ones,
#: which puts the true label first more often; see docs/training.md, "Shortlists")
POWER = 4.0
#: rows embedded per similarity block (bounds the block at BLOCK x training rows floats)
BLOCK = 1024
#: train.shortlist: auto gives AUTO_SIZE labels to tasks with AUTO_MIN_LABELS labels or more (chosen on
#: HWU64 intents, see docs/training.md); with a handful of labels a shortlist would name most of them
AUTO_SIZE, AUTO_MIN_LABELS = 5, 10
#: train.shortlist: auto gives extraction tasks this many examples: none, since on HWU64 slots an example
#: gained less than a third epoch without it, for more tokens a row (docs/training.md, "Examples for
#: extraction"); ``shortlist: 1`` turns it on
AUTO_EXAMPLES = 0
#: task types that read a shortlist: labels (classification) or examples (extraction)
SHORTLIST_TASKS = ("classification", "extraction")
#: the label prior's inverse regularisation strength (the text baselines' logistic regression)
PRIOR_C = 20.0
#: the label prior's weights tried on the validation split (the first best wins: the smallest)
PRIOR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def shortlist_size(setting: int | str, task: TaskConfig) -> int:
    """Labels (classification) or examples (extraction) per shortlist for ``task`` (0: none).

    The setting, with ``auto`` resolved; other task types read none.
    """
    if task.type not in SHORTLIST_TASKS:
        return 0
    if setting == "auto":
        if task.type == "extraction":
            return AUTO_EXAMPLES
        return AUTO_SIZE if len(task.label_list) >= AUTO_MIN_LABELS else 0
    return int(setting)


@dataclass
class LabelPrior:
    """P(label | request) from a logistic regression over the request's embedding.

    ``weight`` multiplies its log-probabilities where they join the model's label scores.
    """

    classes: list[str]
    coef: np.ndarray  # (classes, dim); one row for two classes (the second class's logit)
    intercept: np.ndarray  # (classes,) or (1,)
    weight: float = 0.0

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: list[str]) -> LabelPrior:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=PRIOR_C, max_iter=2000)  # the text baselines' classifier
        clf.fit(vectors, labels)
        return cls([str(c) for c in clf.classes_], clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32))

    def log_probs(self, vectors: np.ndarray) -> np.ndarray:
        """(rows, classes) log-probabilities, as scikit-learn's ``predict_log_proba`` gives them."""
        z = vectors @ self.coef.T + self.intercept
        if z.shape[1] == 1:  # binary: sigmoid of the second class's logit = softmax of [0, z]
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def row_priors(self, vectors: np.ndarray, weight: float | None = None) -> list[dict[str, float]]:
        """Each row's ``{label: weight x log P(label)}``, what label ranking adds to the model's scores."""
        w = self.weight if weight is None else weight
        return [dict(zip(self.classes, (w * row).tolist(), strict=True)) for row in self.log_probs(vectors)]

    def choose_weight(
        self, model_probs: list[dict[str, float]], vectors: np.ndarray, truth: list[str]
    ) -> dict[str, Any]:
        """The weight (of :data:`PRIOR_WEIGHTS`) whose fused answers are right most often on ``truth``.

        ``model_probs``: the model's own label probabilities on those rows (no prior). Sets
        :attr:`weight` and returns the accuracy of every weight tried.
        """
        from slmloop.predict.answers import fuse_prior

        priors = self.row_priors(vectors, 1.0)
        tried = {}
        for w in PRIOR_WEIGHTS:
            hits = 0
            for probs, prior, want in zip(model_probs, priors, truth, strict=True):
                fused = fuse_prior(probs, {k: w * v for k, v in prior.items()}) if probs else probs
                hits += bool(fused) and next(iter(fused)) == want
            tried[w] = hits / len(truth) if truth else 0.0
        self.weight = max(PRIOR_WEIGHTS, key=lambda w: (tried[w], -w))
        return {"weight": self.weight, "accuracy_by_weight": {str(w): a for w, a in tried.items()}, "rows": len(truth)}


@dataclass
class Companion:
    k: int  # labels (classification) or examples (extraction) per shortlist
    labels: list[str]  # the label of every indexed training row (extraction: its answer)
    vectors: np.ndarray  # (rows, dim) unit-normalised float32 embeddings of their inputs
    embedder: str = "all-minilm-l6-v2"
    texts: list[str] | None = None  # the indexed inputs (kept while training, for leave-one-out)
    examples: bool = False  # extraction: the shortlist is the nearest rows' inputs with their answers
    prior: LabelPrior | None = None  # classification: the label prior fit on the indexed rows
    spans: SpanPrior | None = None  # extraction: the span prior (a CRF tagger fit on the training split)
    abstain: Abstention | None = None  # classification: when to answer the out-of-scope label instead

    @classmethod
    def empty(cls) -> Companion:
        """An index of no rows (it carries only a prior)."""
        return cls(0, [], np.zeros((0, 1), dtype=np.float32))

    @property
    def in_use(self) -> bool:
        """Whether a model answering with this index reads or is weighed by any of it."""
        return bool(self.k) or self.active_prior is not None or self.active_spans is not None or bool(self.abstain)

    @property
    def active_prior(self) -> LabelPrior | None:
        """The label prior, where its weight is not 0."""
        return self.prior if self.prior is not None and self.prior.weight > 0 else None

    @property
    def active_spans(self) -> SpanPrior | None:
        """The span prior, where its rule can change an answer."""
        return self.spans if self.spans is not None and self.spans.judge.active else None

    @classmethod
    def build(cls, task: TaskConfig, rows: list[dict[str, Any]], k: int, cache_dir: Path | None = None) -> Companion:
        """The index of ``rows`` (a training split)."""
        texts = [input_text(task, r) for r in rows]
        vectors = embed(texts, cache_dir=cache_dir) if texts else np.zeros((0, 1), dtype=np.float32)
        examples = task.type == "extraction"
        labels = [answer_target(task, r) if examples else str(r["label"]) for r in rows]
        return cls(k, labels, vectors, texts=texts, examples=examples)

    def candidates(
        self, texts: list[str], *, leave_out_self: bool = False, cache_dir: Path | None = None
    ) -> list[list[Any]]:
        """The shortlist of each text; ``leave_out_self``: indexed rows with the same text do not vote.

        Classification: labels, most likely first. Extraction: ``[input, answer]`` pairs of the
        nearest indexed rows, nearest first.
        """
        if not texts or not self.labels or not self.k:
            return [[] for _ in texts]
        return self._candidates(texts, embed(texts, self.embedder, cache_dir), leave_out_self)

    def _candidates(self, texts: list[str], query: np.ndarray, leave_out_self: bool) -> list[list[Any]]:
        if not self.labels or not self.k:  # a prior-only index (k = 0) has no shortlist to give
            return [[] for _ in texts]
        if (leave_out_self or self.examples) and self.texts is None:
            raise ModelError("this shortlist was loaded without its texts", hint="Rebuild it from the training rows.")
        same: dict[str, list[int]] = {}
        if leave_out_self:
            for i, t in enumerate(self.texts or []):
                same.setdefault(t, []).append(i)
        out: list[list[Any]] = []
        for start in range(0, len(texts), BLOCK):
            sims = query[start : start + BLOCK] @ self.vectors.T
            for row, text in zip(sims, texts[start : start + BLOCK], strict=True):
                if leave_out_self:
                    row[same.get(text, [])] = -np.inf
                out.append(self._examples(row) if self.examples else self._vote(row))
        return out

    def _examples(self, sims: np.ndarray) -> list[list[str]]:
        assert self.texts is not None
        return [[self.texts[j], self.labels[j]] for j in _nearest(sims, self.k) if np.isfinite(sims[j])]

    def _vote(self, sims: np.ndarray) -> list[str]:
        score: dict[str, float] = {}
        for j in _nearest(sims, NEIGHBOURS):
            if np.isfinite(sims[j]):
                score[self.labels[j]] = score.get(self.labels[j], 0.0) + max(float(sims[j]), 0.0) ** POWER
        # most votes first; a tie goes to the label of the nearer row (dicts keep first-seen order)
        return sorted(score, key=lambda lab: -score[lab])[: self.k]

    def hints(
        self,
        task: TaskConfig,
        rows: list[dict[str, Any]],
        *,
        leave_out_self: bool = False,
        cache_dir: Path | None = None,
    ) -> list[Hints]:
        """What each of ``rows`` is asked with: its shortlist or examples (the prompt shows them after the
        request) and, when the index has a prior in use, what the answering code weighs the model's answer
        with: a classifier's label prior (label ranking adds it), an extractor's span reading."""
        texts = [input_text(task, r) for r in rows]
        prior = self.active_prior
        found: list[Any] = [() for _ in rows]
        priors: list[dict[str, float]] = [{} for _ in rows]
        if rows and (self.k or prior is not None):
            query = embed(texts, self.embedder, cache_dir)
            if self.k:
                found = self._candidates(texts, query, leave_out_self)
            if prior is not None:
                priors = prior.row_priors(query)
        spans = self.active_spans
        readings = spans.readings(texts) if rows and spans is not None else [None] * len(rows)
        if self.examples:
            return [
                Hints(examples=tuple((a, b) for a, b in c), prior=p, spans=s)
                for c, p, s in zip(found, priors, readings, strict=True)
            ]
        return [
            Hints(shortlist=tuple(c), prior=p, spans=s, abstain=self.abstain)
            for c, p, s in zip(found, priors, readings, strict=True)
        ]

    def save(self, folder: Path) -> Path:
        """Write ``folder/shortlist.npz`` atomically.

        A classifier's texts stay behind (its prompt never shows them); an extractor's are kept.
        """
        path = folder / SHORTLIST_FILE
        tmp = folder / f".{SHORTLIST_FILE}.{os.getpid()}.tmp.npz"
        arrays: dict[str, np.ndarray] = {
            "k": np.array(self.k),
            "labels": np.array(self.labels, dtype=str),
            "vectors": self.vectors.astype(np.float32),
            "embedder": np.array(self.embedder),
        }
        if self.examples:
            arrays["texts"] = np.array(self.texts or [], dtype=str)
        if (prior := self.active_prior) is not None:
            arrays["prior_classes"] = np.array(prior.classes, dtype=str)
            arrays["prior_coef"] = prior.coef
            arrays["prior_intercept"] = prior.intercept
            arrays["prior_weight"] = np.array(prior.weight)
        if (spans := self.active_spans) is not None:
            arrays |= spans.tagger.arrays("spans_")
            arrays["spans_judge"] = np.array(spans.judge.as_list())
            arrays["spans_alternative_p"] = np.array(spans.judge.alternative_p)
        if self.abstain is not None:
            arrays["abstain_label"] = np.array(self.abstain.label)
            arrays["abstain"] = self.abstain.as_array()
        np.savez(tmp, allow_pickle=False, **arrays)
        os.replace(tmp, path)
        return path


def _nearest(sims: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest similarities, largest first (ties: the earlier row)."""
    n = min(n, len(sims))
    near = np.argpartition(-sims, n - 1)[:n] if n < len(sims) else np.arange(len(sims))
    return near[np.argsort(-sims[near], kind="stable")]


def load_companion(folder: Path | None) -> Companion | None:
    """The shortlist saved in ``folder`` (an adapter folder), or None when the model reads none."""
    if folder is None or not (folder / SHORTLIST_FILE).exists():
        return None
    path = folder / SHORTLIST_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            texts = [str(x) for x in z["texts"]] if "texts" in z.files else None
            labels = [str(x) for x in z["labels"]]
            prior = None
            if "prior_weight" in z.files:
                classes = [str(x) for x in z["prior_classes"]]
                prior = LabelPrior(classes, z["prior_coef"], z["prior_intercept"], float(z["prior_weight"]))
            spans = None
            if "spans_model" in z.files:
                judge = SpanJudge.from_list(z["spans_judge"].tolist())
                if "spans_alternative_p" in z.files:  # saved before: the tagger's best reading only
                    judge = replace(judge, alternative_p=float(z["spans_alternative_p"]))
                spans = SpanPrior(SpanTagger.from_arrays(z, "spans_"), judge)
            vectors, embedder = z["vectors"], str(z["embedder"])
            abstain = Abstention.from_array(str(z["abstain_label"]), z["abstain"]) if "abstain" in z.files else None
            return Companion(int(z["k"]), labels, vectors, embedder, texts, texts is not None, prior, spans, abstain)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(
            f"the shortlist index {path} cannot be read ({exc})",
            hint="The model was trained to read a shortlist; re-export the release or retrain the run.",
        ) from None
