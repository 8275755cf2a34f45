"""Distillation: a teacher answers the training inputs (and unlabelled ones); the student learns its answers.

The teacher is anything ``slmloop eval`` can ask: a run or release of this project, another local
model (``model:PATH_OR_ID``), an OpenAI-compatible endpoint declared under ``eval.endpoints``
(``endpoint:NAME``), or a running ``slmloop serve`` (``live:URL``). Its answers become a new dataset
version whose provenance (teacher, parent version, inputs, what was dropped and why, how often the
teacher agreed with the human labels) is stored in the version's config; the validation split and
the gold set stay human-labelled. The student trains on it: sequence-level (the teacher's answer is
the target) and, when the teacher is a local model with the student's tokenizer, token-level too
(``train.distill_from``: KL to the teacher's answer-token distributions at a temperature). Student,
teacher and base are then scored on gold with their cost per 1k requests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from slmloop.data.sources import read_records
from slmloop.data.versions import DatasetSplits, load_dataset, set_current_dataset
from slmloop.errors import DataError
from slmloop.manifest import SourceConfig, TaskConfig
from slmloop.predict.parsing import parse_json_object
from slmloop.predict.tasks import input_text
from slmloop.project import Project
from slmloop.store import DatasetVersion, Evaluation, Run

__all__ = ["Distilled", "distill", "teacher_rows", "unlabelled_inputs"]

INPUT_FIELD = {"classification": "text", "extraction": "text", "generation": "input"}


@dataclass
class Distilled:
    teacher: str
    version: DatasetVersion
    counts: dict[str, Any]
    run: Run | None = None
    table: list[dict[str, Any]] = field(default_factory=list)  # student, teacher, base on gold


def unlabelled_inputs(task: TaskConfig, path: Path) -> list[dict[str, Any]]:
    """Inputs of a file without labels (JSONL/CSV/…; a monitor export works as it is): one row per input."""
    if task.type not in INPUT_FIELD:
        raise DataError(f"distillation needs a {', '.join(INPUT_FIELD)} task, not {task.type}")
    key = INPUT_FIELD[task.type]
    if not path.exists():
        raise DataError(f"no such file: {path}", hint="Pass a JSONL/CSV file of inputs (e.g. a monitor export).")
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for rec in read_records(path, SourceConfig(path=str(path))):
        value = (rec.fields or {}).get(key)
        if rec.fields is None or not isinstance(value, str) or not value.strip():
            bad.append(f"{rec.file}:{rec.line}")
            continue
        rows.append({key: value})
    if bad:
        raise DataError(
            f"{len(bad)} row(s) of {path} have no {key!r} text (e.g. {', '.join(bad[:3])})",
            hint=f"Every row needs the input under {key!r}; fix or remove those rows.",
        )
    return rows


def _as_target(task: TaskConfig, prediction: str, raw: str) -> Any:
    """The teacher's answer as a training target, or None when it is not a valid one."""
    if task.type == "classification":
        return prediction if prediction in task.label_list else None
    if task.type == "extraction":
        return parse_json_object(raw)
    return prediction if prediction.strip() else None


def teacher_rows(
    project: Project, teacher: str, inputs: list[dict[str, Any]], task: TaskConfig, console: Console
) -> tuple[list[dict[str, Any]], int, str]:
    """The inputs with the teacher's answers as targets (rows it answered invalidly are left out, counted),
    and the teacher's canonical name (``latest`` → ``run-7``)."""
    from slmloop.evaluate.evaluate import answer_gold

    cfg = project.manifest.eval.model_copy(update={"forgetting": None})  # the teacher only answers
    answered = answer_gold(project, teacher, inputs, cfg, allow_leakage=True, console=console)
    target = "label" if task.type == "classification" else "output"
    rows, invalid = [], 0
    for row, answer in zip(inputs, answered.answers, strict=True):
        value = _as_target(task, answer.prediction, answer.raw)
        if value is None:
            invalid += 1
            continue
        # what the teacher knew beyond its answer: a ranked label distribution, or an endpoint's token log-probs
        scores: dict[str, Any] = {k: answer.scores[k] for k in ("probs", "logprobs") if k in answer.scores}
        rows.append({**row, target: value, "_teacher": {"ref": answered.model_ref, "raw": answer.raw, **scores}})
    # a local ref's canonical name (latest → run-7); an endpoint or live server keeps the name it was asked by
    name = teacher if teacher.startswith(("endpoint:", "live:")) else answered.model_ref
    return rows, invalid, name


def _dedupe(task: TaskConfig, rows: list[dict[str, Any]], gold: list[dict[str, Any]], project: Project) -> tuple:
    """Drop unlabelled inputs that copy a gold row (leakage) or repeat an earlier input."""
    from slmloop.data.clean import dedupe_key
    from slmloop.data.leakage import gold_leaks

    texts = [input_text(task, r) for r in rows]
    leaks = gold_leaks(texts, [input_text(task, g) for g in gold], project.manifest.data.leakage)
    seen: set[str] = set()
    kept, repeats = [], 0
    for i, r in enumerate(rows):
        if i in leaks:
            continue
        key = dedupe_key(texts[i])
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        kept.append(r)
    return kept, len(leaks), repeats


def _store_version(
    project: Project, parent: DatasetSplits, train: list[dict[str, Any]], provenance: dict[str, Any]
) -> DatasetVersion:
    train_obj = project.objects.put_jsonl(train)
    v = parent.version
    key = hashlib.sha256(f"{train_obj}:{v.validation_object}:{v.gold_id}:{provenance['teacher']}".encode())
    version_id = "ds-" + key.hexdigest()[:12]
    with project.store.session() as s:
        existing = s.get(DatasetVersion, version_id)
        if existing is not None:
            set_current_dataset(project, s, version_id)
            s.expunge(existing)
            return existing
    counts = {
        "train": len(train),
        "validation": parent.version.counts.get("validation", len(parent.validation)),
        "gold_rows_total": parent.version.counts.get("gold_rows_total", len(parent.gold)),
        "distilled": provenance["counts"],
    }
    version = DatasetVersion(
        id=version_id,
        import_ids=parent.version.import_ids,
        train_object=train_obj,
        validation_object=parent.version.validation_object,
        gold_id=parent.version.gold_id,
        rejects_object=project.objects.put_jsonl([]),
        counts=counts,
        config={**parent.version.config, "parent": parent.version.id, "distill": provenance},
    )
    with project.store.session() as s:  # the teacher's data is the current dataset version from now on
        s.add(version)
        set_current_dataset(project, s, version_id)
        project.store.log_event(s, "data.distill", version_id, parent=parent.version.id, teacher=provenance["teacher"])
    return version


def _agreement(task: TaskConfig, human: list[dict[str, Any]], taught: list[dict[str, Any]]) -> float | None:
    """How often the teacher gave the human label (training inputs only)."""
    target = "label" if task.type == "classification" else "output"
    by_input = {input_text(task, r): r[target] for r in taught}
    pairs = [(r[target], by_input[input_text(task, r)]) for r in human if input_text(task, r) in by_input]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def _same_tokenizer(project: Project, teacher: str) -> bool:
    """Whether a local teacher shares the student's vocabulary (token-level distillation is possible)."""
    if teacher.startswith(("endpoint:", "live:", "baseline:")):
        return False
    from slmloop.models.catalog import resolve_model
    from slmloop.models.loading import load_tokenizer
    from slmloop.predict.targets import resolve_target

    target = resolve_target(project, teacher)
    mine = load_tokenizer(resolve_model(project.manifest.model.base))
    return bool(load_tokenizer(target.base).get_vocab() == mine.get_vocab())


def _gold_table(project: Project, refs: dict[str, str], console: Console) -> list[dict[str, Any]]:
    from slmloop.data.versions import current_gold
    from slmloop.evaluate.evaluate import stored_or_new
    from slmloop.metrics import HEADLINE

    gold = current_gold(project)
    assert gold is not None
    table = []
    for role, ref in refs.items():
        if not ref.startswith(("endpoint:", "live:", "baseline:")):
            from slmloop.predict.targets import resolve_target

            ref = resolve_target(project, ref).ref  # v2 and release-2 are the same stored evaluations
        e: Evaluation = stored_or_new(project, ref, gold.id, project.manifest.eval, console)
        metric = HEADLINE[project.task.type][0]
        rt = e.metrics.get("runtime", {})
        table.append(
            {
                "role": role,
                "model": ref,
                "evaluation": e.name,
                "metric": metric,
                "value": e.metrics.get(metric),
                "ci": e.metrics.get("ci", {}).get(metric),
                "rows_per_s": rt.get("rows_per_s"),
                "cost_per_1k_requests": rt.get("cost_per_1k_requests"),
            }
        )
    return table


def distill(
    project: Project,
    teacher: str,
    *,
    unlabelled: Path | None = None,
    use_train: bool = True,
    dataset_id: str | None = None,
    train_student: bool = True,
    overrides: dict[str, Any] | None = None,
    init_from: str | None = None,
    token_level: bool = True,
    console: Console | None = None,
) -> Distilled:
    """Teacher answers → a new dataset version (provenance recorded) → the student → student/teacher/base on gold."""
    console = console or Console(stderr=True)
    parent = load_dataset(project, dataset_id)
    task = TaskConfig.model_validate(parent.version.config["task"]) if "task" in parent.version.config else project.task
    if task.type not in INPUT_FIELD:
        raise DataError(f"distillation needs a {', '.join(INPUT_FIELD)} task, not {task.type}")
    key = INPUT_FIELD[task.type]
    from_train = [{key: r[key]} for r in parent.train] if use_train else []
    extra: list[dict[str, Any]] = []
    leaked = repeats = in_train = 0
    if unlabelled is not None:
        extra = unlabelled_inputs(task, unlabelled)
        from slmloop.data.clean import dedupe_key

        known = {dedupe_key(input_text(task, r)) for r in parent.train} if use_train else set()
        given = len(extra)
        extra = [r for r in extra if dedupe_key(input_text(task, r)) not in known]
        in_train = given - len(extra)
        extra, leaked, repeats = _dedupe(task, extra, parent.gold + parent.validation, project)
    inputs = from_train + extra
    if not inputs:
        raise DataError("nothing for the teacher to answer", hint="Keep the training inputs or pass --unlabelled FILE.")
    console.print(f"teacher {teacher}: answering {len(from_train)} training and {len(extra)} unlabelled inputs")
    taught, invalid, teacher = teacher_rows(project, teacher, inputs, task, console)
    if not taught:
        raise DataError(f"teacher {teacher} gave no valid answer", hint="Check the teacher with `slmloop eval`.")
    counts = {
        "from_train": len(from_train),
        "from_unlabelled": len(extra),
        "unlabelled_dropped": {"copies gold or validation": leaked, "repeated": repeats, "already training": in_train},
        "invalid_answers": invalid,
        "rows": len(taught),
    }
    token_level = token_level and _same_tokenizer(project, teacher)
    provenance = {
        "teacher": teacher,
        "unlabelled": str(unlabelled) if unlabelled else None,
        "counts": counts,
        "agreement_with_labels": _agreement(task, parent.train, taught) if use_train else None,
        "level": "token (KL) + sequence" if token_level else "sequence",
    }
    version = _store_version(project, parent, taught, provenance)
    out = Distilled(teacher, version, counts)
    if not train_student:
        return out
    from slmloop.train.recipe import train

    if token_level:
        overrides = {**(overrides or {}), "distill_from": teacher}
    out.run = train(
        project, overrides, dataset_id=version.id, init_from=init_from, origin={"distill": teacher}, console=console
    )
    out.table = _gold_table(project, {"student": out.run.name, "teacher": teacher, "base": "base"}, console)
    return out
