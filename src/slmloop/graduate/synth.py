"""Synthetic data: a teacher writes new inputs for thin or failing labels.

Each request shows the teacher the task's instruction and a few real training inputs of the label
(drawn anew each time, so repeated requests differ) and asks for new ones, one per line. The
answers are cleaned (numbering, quotes, empty and repeated lines dropped) and written to a JSONL
file whose rows carry ``synthetic: true``, the teacher and the label they were written for. That
file is then imported like any other source: ``data prepare`` dedupes it, drops what copies gold,
redacts PII, and keeps synthetic rows in training only (never validation or gold); evaluations
slice gold rows by whether their nearest training row is synthetic or real.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from slmloop.data.clean import dedupe_key
from slmloop.data.versions import load_dataset
from slmloop.errors import ConfigError, DataError
from slmloop.project import Project
from slmloop.store import atomic_write_text, utcnow

__all__ = ["SynthResult", "clean_lines", "synthesize", "thin_labels", "weakest_labels"]

PER_REQUEST = 10
SHOWN = 5
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


@dataclass
class SynthResult:
    file: Path
    per_label: dict[str, int]
    requests: int


def clean_lines(text: str) -> list[str]:
    """The inputs in a teacher's answer: one per line, numbering and wrapping quotes removed."""
    out = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip().strip('"').strip("'").strip()
        if len(line.split()) >= 2 and not line.endswith(":"):
            out.append(line)
    return out


def thin_labels(project: Project, below: int) -> list[str]:
    """Labels with fewer than ``below`` training rows in the newest dataset version."""
    from collections import Counter

    counts = Counter(r["label"] for r in load_dataset(project).train)
    task = project.task
    return sorted(lab for lab in task.label_list if counts.get(lab, 0) < below)


def weakest_labels(project: Project, k: int, model: str | None = None) -> list[str]:
    """The ``k`` labels with the lowest gold F1 in the newest evaluation of ``model`` (default: the newest run)."""
    from slmloop.data.versions import current_gold
    from slmloop.evaluate.results import newest_evaluation
    from slmloop.predict.targets import resolve_target

    ref = resolve_target(project, model or "latest").ref
    gold = current_gold(project)
    evaluation = newest_evaluation(project, [ref], gold.id if gold else None)
    if evaluation is None:
        raise ConfigError(f"{ref} has no evaluation on the current gold set", hint=f"Run `slmloop eval {ref}` first.")
    per_class = evaluation.metrics.get("per_class", {})
    ranked = sorted((v["f1"], lab) for lab, v in per_class.items() if v.get("support", 0) > 0)
    return [lab for _, lab in ranked[:k]]


def _messages(instruction: str, label: str, shown: list[str], k: int) -> list[dict[str, str]]:
    examples = "\n".join(f"- {t}" for t in shown)
    return [
        {"role": "system", "content": "You write realistic, varied inputs for training a text classifier."},
        {
            "role": "user",
            "content": f"Task: {instruction}\nLabel: {label}\nReal inputs with this label:\n{examples}\n\n"
            f"Write {k} new inputs that a user might send and that have the label {label}. Vary the wording "
            "and the details; do not copy the examples. One input per line, nothing else.",
        },
    ]


class _Teacher:
    """Greedy text from ``endpoint:NAME`` or a local model (a run, a release, base, ``model:PATH``)."""

    def __init__(self, project: Project, ref: str, max_new_tokens: int) -> None:
        self.max_new_tokens = max_new_tokens
        if ref.startswith("endpoint:"):
            from slmloop.models.endpoint import Endpoint

            self.endpoint: Any = Endpoint.declared(project.manifest.eval.endpoints, ref.split(":", 1)[1])
            return
        from slmloop.models.loading import pick_dtype
        from slmloop.predict.targets import load_target, resolve_target

        self.endpoint = None
        self.model, self.tok = load_target(resolve_target(project, ref), pick_dtype(project.manifest.eval.precision))

    def ask(self, messages: list[dict[str, str]]) -> str:
        if self.endpoint is not None:
            return str(self.endpoint.ask(messages, self.max_new_tokens).text)
        from slmloop.models.inference import generate
        from slmloop.models.loading import render_prompt

        prompt = render_prompt(self.tok, messages)
        return str(generate(self.model, self.tok, [prompt], max_new_tokens=self.max_new_tokens, batch_size=1)[0][0])

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()


def synthesize(
    project: Project,
    teacher: str,
    labels: list[str],
    n: int,
    *,
    out: Path | None = None,
    seed: int = 0,
    max_new_tokens: int = 400,
    console: Console | None = None,
) -> SynthResult:
    """Ask ``teacher`` for ``n`` new inputs per label; write them (marked synthetic) to a JSONL file."""
    console = console or Console(stderr=True)
    task = project.task
    if task.type != "classification":
        raise ConfigError(
            "data synth writes inputs for classification labels",
            hint="For extraction or generation, distil a teacher's answers instead (slmloop distill).",
        )
    unknown = [lab for lab in labels if lab not in task.label_list]
    if unknown:
        raise ConfigError(f"not labels of this task: {', '.join(unknown)}", hint="`slmloop data report` lists them.")
    if not labels:
        raise ConfigError("no label to write examples for", hint="Pass --for-label X, --thin-below N or --weakest K.")
    train = load_dataset(project).train
    known = {dedupe_key(r["text"]) for r in train}
    rng = random.Random(seed)
    asker = _Teacher(project, teacher, max_new_tokens)
    rows: list[dict[str, Any]] = []
    per_label: dict[str, int] = {}
    requests = 0
    try:
        for label in labels:
            pool = [r["text"] for r in train if r["label"] == label]
            got: list[str] = []
            seen = set(known)
            for _ in range(max(3, 3 * -(-n // PER_REQUEST))):  # at most 3× the requests n needs
                if len(got) >= n:
                    break
                shown = rng.sample(pool, min(SHOWN, len(pool)))
                requests += 1
                for line in clean_lines(asker.ask(_messages(task.instruction, label, shown, PER_REQUEST))):
                    key = dedupe_key(line)
                    if key not in seen:
                        seen.add(key)
                        got.append(line)
            per_label[label] = len(got[:n])
            rows += [
                {"text": t, "label": label, "synthetic": True, "synth_teacher": teacher, "synth_for": label}
                for t in got[:n]
            ]
            console.print(f"{label}: {per_label[label]} new inputs")
    finally:
        asker.close()
    if not rows:
        raise DataError(f"teacher {teacher} wrote no usable input", hint="Try a stronger teacher (endpoint:NAME).")
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    out = out or project.home / "synth" / f"synth-{stamp}.jsonl"
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return SynthResult(out, per_label, requests)
