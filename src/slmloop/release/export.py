"""``slmloop export``: a run → a versioned, checksummed, self-describing release folder.

    releases/v3/
      README.md           the model card: task, gold metrics with CIs, baselines, lineage, limits
      adapter/            the LoRA adapter (PEFT format) + tokenizer
      merged/             base + adapter merged, safetensors + tokenizer (optional)
      reference/          what in-distribution traffic looks like, for `slmloop monitor`
      gguf/               model-q8_0.gguf / model-f16.gguf + Ollama Modelfile (export.gguf)
      manifest.json       lineage (run, dataset, gold, base model), metrics, sha256 of every file

The folder is built under a temporary name and renamed into place; the release
row and its audit event are written in one transaction after that.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from slmloop import versions
from slmloop.errors import StoreError
from slmloop.evaluate.results import newest_evaluation
from slmloop.manifest import TaskConfig
from slmloop.models.catalog import ResolvedModel, resolve_model
from slmloop.predict.targets import resolve_run
from slmloop.progress import status
from slmloop.project import Project
from slmloop.release.card import model_card
from slmloop.release.profile import build_profile, write_profile
from slmloop.store import Evaluation, Release, Run, atomic_dir, atomic_write_json, sha256_file, utcnow

__all__ = ["export_release", "verify_release"]

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _headline(ev: Evaluation | None) -> dict[str, Any]:
    if ev is None:
        return {}
    keep = {k: v for k, v in ev.metrics.items() if isinstance(v, int | float)}
    return {"evaluation": ev.name, "gold": ev.gold_id, **keep, "ci": ev.metrics.get("ci", {})}


def _merge(run: Run, adapter: Path, out: Path, dtype_name: str) -> None:
    import torch

    from slmloop.models.loading import load_causal_lm, load_tokenizer
    from slmloop.models.quiet import quiet_transformers

    base = resolve_model(run.base_model)
    # the same merge evaluation uses: fp32 add of the low-rank update, one cast
    model = load_causal_lm(base, getattr(torch, _DTYPES[dtype_name]), adapter=adapter, merge=True)
    with quiet_transformers():
        model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(base).save_pretrained(out)
    tok_src = adapter / "tokenizer_config.json"
    if tok_src.exists():  # the tokenizer the run trained with wins (chat template)
        for f in adapter.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copyfile(f, out / f.name)


def _task(project: Project, run: Run) -> TaskConfig:
    return TaskConfig.model_validate(run.config["task"]) if run.config.get("task") else project.task


def _prompt_format(project: Project, run: Run) -> dict[str, Any]:
    """How the model must be asked: the style it was trained with and the exact system message."""
    from slmloop.predict.companion import SHORTLIST_TASKS, load_companion
    from slmloop.predict.tasks import system_message

    task = _task(project, run)
    style = run.config.get("prompt", "full")
    shortlist = (run.config.get("train") or {}).get("shortlist") if task.type in SHORTLIST_TASKS else None
    index = load_companion(project.locate(run.path) / "adapter")
    weight = index.prior.weight if index is not None and index.prior is not None else None
    spans = index.active_spans if index is not None else None
    return {
        "style": style,
        "system": system_message(task, style) or None,
        "task": task.type,
        "answer": task.answer if task.type == "extraction" else None,
        "shortlist": shortlist or None,
        "label_prior": weight or None,
        "span_prior": {"fields": spans.tagger.fields, **spans.judge.summary()} if spans is not None else None,
    }


def _gguf(project: Project, run: Run, folder: Path, prompt: dict[str, Any], console: Console) -> dict[str, Any]:
    """GGUF files of the merged weights and an Ollama Modelfile (their parity is checked with the other artifacts)."""
    from slmloop.models.loading import load_tokenizer
    from slmloop.release.gguf import gguf_file_name, source_pre_tokenizer, write_gguf, write_modelfile

    cfg = project.manifest.export
    merged, out = folder / "merged", folder / "gguf"
    out.mkdir()
    base = resolve_model(run.base_model)
    pre = source_pre_tokenizer(Path(base.path)) if base.is_local else None
    name = f"{project.manifest.project.name}-{run.name}"
    report: dict[str, Any] = {}
    for qtype in cfg.gguf:
        with status(console, f"writing GGUF {qtype} …"):
            path = write_gguf(merged, out / gguf_file_name(qtype), qtype, name=name, pre=pre)
        report[qtype] = {"file": f"gguf/{path.name}", "bytes": path.stat().st_size}
    first = "q8_0" if "q8_0" in cfg.gguf else cfg.gguf[0]
    write_modelfile(
        out,
        gguf_file_name(first),
        load_tokenizer(ResolvedModel(str(merged), str(merged), "local")),
        prompt.get("system"),
    )
    return report


def _parity(
    project: Project, run: Run, folder: Path, evaluation: Evaluation | None, prompt: dict[str, Any], console: Console
) -> dict[str, Any] | None:
    """Each artifact's answers against the run's evaluation (:mod:`slmloop.release.parity`); None: llama.cpp is
    missing to run the GGUF files."""
    from slmloop.models.llamacpp import llama_cpp_available
    from slmloop.release.parity import release_parity

    cfg = project.manifest.export
    if cfg.gguf and not llama_cpp_available():
        console.print(
            "[yellow]parity not checked: llama-cpp-python is not installed to run the GGUF files "
            "(promotion gates on export.parity_min_agreement will refuse this release)[/yellow]"
        )
        return None
    return release_parity(project, run, folder, evaluation, _task(project, run), prompt["style"], console=console)


def _write_release(
    project: Project,
    run: Run,
    version: int,
    target: Path,
    adapter: Path,
    prompt: dict[str, Any],
    evaluation: Any,
    metrics: dict[str, Any],
    console: Console,
) -> str:
    """Write the release folder ``target`` atomically; returns its manifest's sha256."""
    cfg = project.manifest.export
    with atomic_dir(target) as tmp:
        shutil.copytree(adapter, tmp / "adapter")
        if cfg.merged:
            with status(console, f"merging {run.name} into {run.base_model} ({cfg.dtype}) …"):
                _merge(run, adapter, tmp / "merged", cfg.dtype)
        gguf = _gguf(project, run, tmp, prompt, console) if cfg.gguf else {}
        parity = _parity(project, run, tmp, evaluation, prompt, console)
        with status(console, "reference profile for monitoring …"):
            write_profile(build_profile(project, version, run.dataset_id, run.id), tmp / "reference")
        card = model_card(project, run, version, _task(project, run), prompt, evaluation, gguf, parity)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = {
            str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "format": "slmloop-release/1",
            "version": version,
            "created_at": utcnow().isoformat(),
            "project": project.manifest.project.name,
            "run": run.name,
            "dataset": run.dataset_id,
            "gold": run.gold_id,
            "base_model": run.base_model,
            "task": (run.config.get("task") or project.task.model_dump()),
            "prompt": prompt,
            "train": run.config.get("train", {}),
            "merged_dtype": cfg.dtype if cfg.merged else None,
            "metrics": metrics,
            "gguf": gguf,
            "parity": parity,
            "train_metrics": run.metrics,
            "files": files,
            "versions": versions(),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        manifest_sha = sha256_file(tmp / "manifest.json")
    return manifest_sha


def export_release(project: Project, run_ref: str | None = None, *, console: Console | None = None) -> Release:
    console = console or Console(stderr=True)
    run = resolve_run(project, run_ref)
    adapter = project.locate(run.path) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise StoreError(f"{run.name} has no adapter at {adapter}", hint="Retrain with `slmloop train`.")
    with project.store.session() as s:
        version = project.store.next_release_version(s)
    target = project.releases_dir / f"v{version}"
    if target.exists():  # an export killed after its folder was written and before its row: no release owns it
        orphan = target.with_name(f".orphan-v{version}-{utcnow():%Y%m%d-%H%M%S}")
        target.rename(orphan)
        console.print(
            f"[yellow]{project.relative(target)} was left by an export that did not finish (no release v{version} "
            f"in the store); moved it to {project.relative(orphan)}[/yellow]"
        )
    evaluation = newest_evaluation(project, [run.name], run.gold_id)
    metrics = _headline(evaluation)
    prompt = _prompt_format(project, run)
    try:
        manifest_sha = _write_release(project, run, version, target, adapter, prompt, evaluation, metrics, console)
    except FileExistsError:
        raise StoreError(
            f"another export wrote v{version} while this one ran", hint="Run `slmloop export` again."
        ) from None
    release = Release(
        version=version,
        run_id=run.id,
        path=project.relative(target),
        manifest_sha256=manifest_sha,
        dataset_id=run.dataset_id,
        gold_id=run.gold_id,
        base_model=run.base_model,
        metrics=metrics,
    )
    try:
        return project.store.add(release, "release.export", f"v{version}", run=run.name, path=str(target))
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise


def verify_release(project: Project, release: Release) -> list[str]:
    """Files whose checksum no longer matches the release manifest (empty = intact)."""
    import json

    folder = project.locate(release.path)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        return ["manifest.json (missing)"]
    problems = []
    if sha256_file(manifest_path) != release.manifest_sha256:
        problems.append("manifest.json (changed since export)")
    files = json.loads(manifest_path.read_text())["files"]
    for name, info in files.items():
        p = folder / name
        if not p.exists():
            problems.append(f"{name} (missing)")
        elif sha256_file(p) != info["sha256"]:
            problems.append(f"{name} (checksum differs)")
    return problems
