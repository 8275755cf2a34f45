"""Abstention: a classifier answers "none of these" when it is unsure, instead of its likeliest label.

Real traffic holds requests that belong to none of a classifier's labels. With
``task.abstain`` set, the score the model answers with — its label probabilities, times the
label prior where it has one — is calibrated on the validation split (one temperature, fit by
log-loss) and thresholded: below the threshold, or when the likeliest label is the
out-of-scope label itself, the answer is ``task.out_of_scope``.

The threshold is chosen on the validation split after training (:func:`choose_threshold`):

- with out-of-scope rows there and ``abstain.min_oos_recall`` set: the lowest threshold that
  catches that share of them (the most in-scope accuracy kept);
- otherwise from the in-scope rows alone: the highest threshold that costs at most
  ``abstain.max_in_scope_drop`` of in-scope accuracy (rows the model would get right and
  abstains on count as lost). Out-of-scope rows, where there are some, report its recall.

The choice is saved with the run's companion index, so evaluation, serving and the parity
check abstain alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slmloop.manifest import TaskConfig

__all__ = ["Abstention", "choose_threshold", "fit_abstention", "fit_temperature"]

#: temperatures tried when calibrating (log-spaced, 0.1 to 10)
TEMPERATURES = tuple(float(t) for t in np.exp(np.linspace(math.log(0.1), math.log(10.0), 61)))
#: the floor of a probability the model gave no score (a label past the rank margin)
FLOOR = 1e-6


@dataclass(frozen=True)
class Abstention:
    """How a classifier abstains: below ``threshold`` calibrated confidence it answers ``label``."""

    label: str
    temperature: float
    threshold: float

    def calibrate(self, probs: dict[str, float]) -> dict[str, float]:
        """``probs`` at the calibrated temperature, renormalised, largest first."""
        logs = {k: math.log(max(p, FLOOR)) / self.temperature for k, p in probs.items()}
        top = max(logs.values())
        z = sum(math.exp(v - top) for v in logs.values())
        return dict(sorted(((k, math.exp(v - top) / z) for k, v in logs.items()), key=lambda kv: -kv[1]))

    def confidence(self, probs: dict[str, float]) -> float:
        """The calibrated probability of the likeliest in-scope label (0 when only the out-of-scope one is scored)."""
        return max((p for k, p in self.calibrate(probs).items() if k != self.label), default=0.0)

    def decide(self, probs: dict[str, float]) -> tuple[bool, float]:
        """(abstain?, confidence) for one answer's label probabilities."""
        conf = self.confidence(probs)
        top = next(iter(probs), self.label)
        return top == self.label or conf < self.threshold, conf

    def as_array(self) -> np.ndarray:
        return np.array([self.temperature, self.threshold])

    @classmethod
    def from_array(cls, label: str, values: np.ndarray) -> Abstention:
        return cls(label, float(values[0]), float(values[1]))


def fit_temperature(probs: Sequence[dict[str, float]], truth: Sequence[str]) -> float:
    """The temperature (of :data:`TEMPERATURES`) that minimises the log-loss of the true labels."""
    if not probs:
        return 1.0

    def loss(t: float) -> float:
        a = Abstention("", t, 0.0)
        return -sum(math.log(max(a.calibrate(p).get(y, FLOOR), FLOOR)) for p, y in zip(probs, truth, strict=True))

    return min(TEMPERATURES, key=lambda t: (loss(t), abs(math.log(t))))


def choose_threshold(
    confidences: Sequence[float],
    top_labels: Sequence[str],
    truth: Sequence[str],
    label: str,
    *,
    max_in_scope_drop: float,
    min_oos_recall: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """The abstention threshold for validation answers (see the module), and what it gives there.

    ``confidences``: each row's calibrated confidence; ``top_labels``: the label each row answers with
    before abstaining; ``truth``: the right label (``label`` for an out-of-scope row).
    """
    conf = np.asarray(confidences, dtype=float)
    top = np.asarray(top_labels, dtype=object)
    want = np.asarray(truth, dtype=object)
    oos = want == label
    inside = ~oos
    right = (top == want) & inside
    said_oos = top == label
    # candidate thresholds: 0 (never abstain on confidence) and midway between neighbouring confidences
    levels = np.unique(conf)
    candidates = [0.0, *((levels[:-1] + levels[1:]) / 2).tolist(), *(levels[-1:] + 1e-9).tolist()]

    def at(t: float) -> tuple[float, float | None, float]:
        abstains = said_oos | (conf < t)
        kept = float((right & ~abstains).sum() / inside.sum()) if inside.any() else math.nan
        recall = float(abstains[oos].mean()) if oos.any() else None
        return kept, recall, float(abstains.mean()) if len(conf) else 0.0

    closed = float(right.sum() / inside.sum()) if inside.any() else math.nan
    scored = [(float(t), *at(float(t))) for t in candidates]
    if min_oos_recall is not None and oos.any():
        reaching = [s for s in scored if s[2] is not None and s[2] >= min_oos_recall]
        chosen = min(reaching, key=lambda s: s[0]) if reaching else max(scored, key=lambda s: (s[2] or 0.0, -s[0]))
        rule = f"the lowest threshold that catches {min_oos_recall:.0%} of the validation out-of-scope rows"
    else:
        allowed = [s for s in scored if not closed - s[1] > max_in_scope_drop + 1e-12]
        chosen = max(allowed, key=lambda s: s[0]) if allowed else scored[0]
        rule = f"the highest threshold that costs at most {max_in_scope_drop:.1%} of in-scope accuracy on validation"
    threshold, kept, recall, rate = chosen
    return threshold, {
        "threshold": threshold,
        "rule": rule,
        "rows": len(conf),
        "oos_rows": int(oos.sum()),
        "closed_world_accuracy": closed,
        "in_scope_accuracy": kept,
        "oos_recall": recall,
        "abstain_rate": rate,
    }


def fit_abstention(
    task: TaskConfig, probs: Sequence[dict[str, float]], truth: Sequence[str]
) -> tuple[Abstention, dict[str, Any]]:
    """How ``task`` abstains, fit on validation answers (``probs``: each row's answered label probabilities,
    largest first; ``truth``: its label): the temperature, then the threshold by ``task.abstain``'s rule."""
    assert task.abstain is not None and task.out_of_scope is not None
    temperature = fit_temperature(probs, truth)
    calibrated = Abstention(task.out_of_scope, temperature, 0.0)
    threshold, choice = choose_threshold(
        [calibrated.confidence(p) for p in probs],
        [next(iter(p), task.out_of_scope) for p in probs],
        truth,
        task.out_of_scope,
        max_in_scope_drop=task.abstain.max_in_scope_drop,
        min_oos_recall=task.abstain.min_oos_recall,
    )
    return Abstention(task.out_of_scope, temperature, threshold), {
        "label": task.out_of_scope,
        "temperature": temperature,
        **choice,
    }
