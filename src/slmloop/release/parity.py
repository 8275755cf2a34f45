"""Do the shipped files give the answers evaluation measured? Each one answers the gold rows.

At export every artifact a server can load — the merged weights (or the adapter where none are
written; transformers, at ``serve.precision``) and each GGUF file (llama.cpp) — answers the first ``export.parity_rows``
gold rows through the one answering path (:func:`slmloop.predict.answers.answer_rows`): the
run's answering mode (ranked labels or generated text), its companion index (shortlist, label
prior, span prior), its rank margin and its JSON constraint. Each artifact's final answers are
compared with the answers of the run's evaluation on the same rows (the stored predictions;
without an evaluation, the run is answered the way evaluation answers it):

- ``agreement``: the share of rows with the same final answer, with its Wilson interval;
- ``diff``: the headline metric of the artifact minus the evaluation's on those rows, with the
  paired interval and p-value of :func:`slmloop.evaluate.paired.paired_test`;
- the first rows where they differ.

Promotion refuses a release whose artifact agrees on fewer than
``export.parity_min_agreement`` of the rows (:mod:`slmloop.release.registry`). A broken
conversion (rotary layout, special tokens spelled out, an EOS that never stops), a label
ranking that an engine cannot do, or a precision that moves answers shows up here, before a
user meets it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from slmloop.evaluate.paired import paired_test
from slmloop.evaluate.results import gold_rows
from slmloop.evaluate.scoring import score_answers
from slmloop.evaluate.stats import wilson_ci
from slmloop.manifest import TaskConfig
from slmloop.metrics import HEADLINE
from slmloop.models.loading import pick_dtype
from slmloop.predict.answers import Engine, ModelAnswer, answer_rows, resolve_mode
from slmloop.predict.companion import load_companion
from slmloop.predict.constrain import decoding_schema
from slmloop.predict.parsing import parse_json_object, value_pairs
from slmloop.predict.targets import ModelTarget, gguf_engine, load_engine, resolve_target
from slmloop.predict.tasks import Hints
from slmloop.project import Project
from slmloop.store import Evaluation, Run

__all__ = ["ParityInputs", "answers_alike", "compare_answers", "release_parity"]


class ParityInputs:
    """What every artifact is asked with: the rows, their hints, and how the run answers."""

    def __init__(self, project: Project, run: Run, task: TaskConfig, style: str, adapter: Path) -> None:
        cfg = project.manifest
        self.task, self.style = task, style
        self.rows = gold_rows(project, run.gold_id)[: cfg.export.parity_rows]
        self.mode = resolve_mode(task, cfg.eval.mode)
        self.margin = cfg.eval.rank_margin
        self.max_new_tokens = cfg.eval.max_new_tokens
        self.batch_size = cfg.eval.batch_size
        self.schema = decoding_schema(task, cfg.eval)
        companion = load_companion(adapter)
        self.hints: list[Hints] | None = None
        if companion is not None:
            self.hints = companion.hints(task, self.rows, cache_dir=project.home / "cache" / "embeddings")

    def answer(self, engine: Engine, name: str, console: Console) -> list[ModelAnswer]:
        from slmloop.evaluate.evaluate import progress_bar

        with progress_bar(console, f"parity: {name} on {len(self.rows)} gold rows") as bar:
            job = bar.add_task(name, total=len(self.rows))
            return answer_rows(
                self.task,
                self.style,
                self.mode,
                engine,
                self.rows,
                self.hints,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                margin=self.margin,
                progress=lambda n: bar.advance(job, n),
                schema=self.schema,
            )


def answers_alike(task: TaskConfig, a: ModelAnswer, b: ModelAnswer) -> bool:
    """The same final answer: the label, the extracted values (in any key order), the text."""
    if task.type == "extraction":
        oa, ob = parse_json_object(a.raw), parse_json_object(b.raw)
        if oa is None or ob is None:
            return a.raw.strip() == b.raw.strip()
        return value_pairs(oa) == value_pairs(ob)
    return a.prediction.strip() == b.prediction.strip()


def compare_answers(
    task: TaskConfig, rows: list[dict[str, Any]], reference: list[ModelAnswer], answers: list[ModelAnswer]
) -> dict[str, Any]:
    """Agreement of ``answers`` with ``reference`` and the headline metric's difference, each with its interval."""
    same = [answers_alike(task, r, a) for r, a in zip(reference, answers, strict=True)]
    head = HEADLINE[task.type][0]
    ref = score_answers(task, rows, [a.prediction for a in reference], [a.raw for a in reference])
    got = score_answers(task, rows, [a.prediction for a in answers], [a.raw for a in answers])
    test = paired_test(ref, got, head)
    lo, hi = wilson_ci(sum(same), len(same))
    return {
        "rows": len(rows),
        "agreement": sum(same) / max(1, len(rows)),
        "agreement_ci": [lo, hi],
        "metric": head,
        "reference_value": ref.metric(head),
        "value": got.metric(head),
        "diff": got.metric(head) - ref.metric(head),
        "diff_ci": list(test.ci),
        "p_value": test.p_value,
        "disagreements": [
            {"row": i, "evaluated": reference[i].raw, "served": answers[i].raw} for i, ok in enumerate(same) if not ok
        ][:20],
    }


def _reference(
    project: Project, run: Run, evaluation: Evaluation | None, inputs: ParityInputs, console: Console
) -> tuple[str, list[ModelAnswer]]:
    """The evaluation's answers on the parity rows; without one, the run answered as evaluation answers it."""
    n = len(inputs.rows)
    if evaluation is not None:
        preds = [p for p in project.store.predictions(evaluation.id) if p.idx < n]
        if len(preds) == n:
            return evaluation.name, [ModelAnswer(p.prediction, p.raw, dict(p.scores)) for p in preds]
    target = resolve_target(project, run.name)
    engine = load_engine(target, "transformers", pick_dtype(project.manifest.eval.precision))
    return f"{run.name} (answered at export)", inputs.answer(engine, run.name, console)


def release_parity(
    project: Project,
    run: Run,
    folder: Path,
    evaluation: Evaluation | None,
    task: TaskConfig,
    style: str,
    *,
    console: Console | None = None,
) -> dict[str, Any]:
    """Every loadable artifact in the release folder ``folder`` against the run's evaluation (see the module)."""
    console = console or Console(stderr=True)
    inputs = ParityInputs(project, run, task, style, folder / "adapter")
    reference, ref_answers = _reference(project, run, evaluation, inputs, console)
    merged = folder / "merged"
    target = ModelTarget(
        "export",
        resolve_target(project, run.name).base,
        adapter=folder / "adapter",
        merged=merged if (merged / "config.json").exists() else None,
        release=None,
        prompt=style,
        task=task,
    )
    artifacts: dict[str, Any] = {}
    todo: list[tuple[str, str, Path | None]] = []
    todo.append(("merged" if target.merged is not None else "adapter", "transformers", None))
    todo += [(f"gguf/{p.name}", "llamacpp", p) for p in sorted((folder / "gguf").glob("*.gguf"))]
    for name, engine_name, gguf in todo:
        started = time.perf_counter()
        engine = _engine(project, target, engine_name, gguf)
        try:
            answers = inputs.answer(engine, f"{name} ({engine_name})", console)
        finally:
            engine.close()
        entry = {"engine": engine_name, **compare_answers(task, inputs.rows, ref_answers, answers)}
        if engine_name == "transformers":
            entry["precision"] = project.manifest.serve.precision
        entry["seconds"] = time.perf_counter() - started
        artifacts[name] = entry
        lo, hi = entry["diff_ci"]
        console.print(
            f"parity {name} ({engine_name}): the evaluated answer on {entry['agreement']:.1%} of {entry['rows']} "
            f"gold rows; {entry['metric']} {entry['value']:.4f} vs {entry['reference_value']:.4f} evaluated "
            f"(diff {entry['diff']:+.4f}, CI [{lo:+.4f}, {hi:+.4f}])"
        )
    return {"reference": reference, "mode": inputs.mode, "rows": len(inputs.rows), "artifacts": artifacts}


def _engine(project: Project, target: ModelTarget, engine_name: str, gguf: Path | None) -> Engine:
    if gguf is not None:
        return gguf_engine(target, gguf)
    return load_engine(target, engine_name, pick_dtype(project.manifest.serve.precision))
