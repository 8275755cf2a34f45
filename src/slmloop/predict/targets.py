"""What a model reference means: ``base``, ``run-3``, ``latest``, ``v2``, ``release-2``, an alias.

Evaluation and serving both resolve references here, so ``slmloop eval
--model v2`` scores exactly the files ``slmloop serve --release 2`` answers with,
in the prompt style the model was trained with: the base model is asked in the
``full`` style (a zero-shot model needs the label list), a run or release in the
style its run recorded (runs made before styles existed used ``full``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from slmloop.errors import ConfigError, ModelError, NotFoundError
from slmloop.manifest import TaskConfig
from slmloop.models.catalog import ResolvedModel, resolve_model
from slmloop.models.loading import load_causal_lm, load_tokenizer
from slmloop.predict.companion import Companion, load_companion
from slmloop.project import Project
from slmloop.store import Release, Run

if TYPE_CHECKING:
    import torch

    from slmloop.predict.answers import Engine

__all__ = [
    "ENGINES",
    "ModelTarget",
    "gguf_engine",
    "load_engine",
    "load_target",
    "release_gguf",
    "resolve_release",
    "resolve_run",
    "resolve_target",
    "trained_task",
]

#: the engines a release can be answered with here (vLLM is started by ``slmloop serve --engine vllm``)
ENGINES = ("transformers", "llamacpp")


@dataclass
class ModelTarget:
    ref: str  # canonical: "base", "run-3", "release-2"
    base: ResolvedModel
    adapter: Path | None = None
    merged: Path | None = None
    run: Run | None = None
    release: Release | None = None
    #: the prompt style the model answers in (see slmloop.predict.tasks)
    prompt: str = "full"
    #: the task the model was trained for (labels, fields); None: the project's current task
    task: TaskConfig | None = None

    @property
    def kind(self) -> str:
        return self.ref.split("-")[0]

    def answering_task(self, project: Project) -> TaskConfig:
        """The task as this model answers it: a trained model's own (its answer format included); a zero-shot
        model answers the project's task with the JSON object."""
        if self.task is not None:
            return self.task
        task = project.task
        return task if task.answer == "json" else task.model_copy(update={"answer": "json"})

    def companion(self) -> Companion | None:
        """The companion index saved with the model (its shortlist, label prior, span prior), or None."""
        return load_companion(self.adapter)


def trained_task(run: Run) -> TaskConfig | None:
    raw = (run.config or {}).get("task")
    return TaskConfig.model_validate(raw) if raw else None


_RUN = re.compile(r"^(?:run-)?(\d+)$")
_RELEASE = re.compile(r"^(?:v|release-|release:)(\d+)$")


def resolve_run(project: Project, ref: str | None = None) -> Run:
    """``run-N``, ``N`` or ``latest`` (the newest completed run)."""
    if ref in (None, "latest"):
        with project.store.session() as s:
            run = s.scalars(select(Run).where(Run.status == "completed").order_by(Run.id.desc()).limit(1)).first()
        if run is None:
            raise NotFoundError("no completed training run yet", hint="Run `slmloop train` first.")
        return run
    m = _RUN.match(ref)
    if not m:
        raise NotFoundError(f"{ref!r} is not a run id", hint="Run ids look like run-3; `slmloop runs`.")
    run = project.store.get(Run, int(m.group(1)), "run", "`slmloop runs` lists the runs.")
    if run.status != "completed":
        raise NotFoundError(
            f"{run.name} is {run.status}, so it has no adapter to use",
            hint="Pick a completed run (`slmloop runs`), or resume this one with `slmloop train --resume`.",
        )
    return run


def resolve_release(project: Project, ref: str | int | None = None) -> Release:
    """``N``, ``vN``, ``release-N``, an alias name, or None (production alias, else newest)."""
    if ref is None:
        version = project.store.alias_target("production")
        if version is None:
            latest = project.store.latest(Release, Release.version)
            if latest is None:
                raise NotFoundError("no release yet", hint="Run `slmloop export` first.")
            return latest
        ref = version
    if isinstance(ref, int) or str(ref).isdigit():
        version = int(ref)
    else:
        m = _RELEASE.match(str(ref))
        if m:
            version = int(m.group(1))
        else:
            target = project.store.alias_target(str(ref))
            if target is None:
                raise NotFoundError(
                    f"{ref!r} is neither a release version nor an alias",
                    hint="`slmloop releases` lists versions and aliases.",
                )
            version = target
    return project.store.get(Release, version, "release", "`slmloop releases` lists them.")


def resolve_target(project: Project, ref: str) -> ModelTarget:
    base = project.manifest.model.base
    if ref == "base":
        return ModelTarget("base", resolve_model(base))
    if ref.startswith("model:"):  # another local model (a catalog name, a folder, a hub id): zero-shot
        return ModelTarget(ref, resolve_model(ref.removeprefix("model:")))
    if ref == "latest" or _RUN.match(ref):
        run = resolve_run(project, ref)
        adapter = project.locate(run.path) / "adapter"
        style = (run.config or {}).get("prompt", "full")
        return ModelTarget(
            run.name, resolve_model(run.base_model), adapter=adapter, run=run, prompt=style, task=trained_task(run)
        )
    release = resolve_release(project, ref)
    folder = project.locate(release.path)
    merged = folder / "merged"
    with project.store.session() as s:
        made_by = s.get(Run, release.run_id)
    return ModelTarget(
        f"release-{release.version}",
        resolve_model(release.base_model),
        adapter=folder / "adapter",
        merged=merged if (merged / "config.json").exists() else None,
        release=release,
        prompt=(made_by.config or {}).get("prompt", "full") if made_by else "full",
        task=trained_task(made_by) if made_by else None,
    )


def load_target(target: ModelTarget, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, tokenizer) ready for inference.

    A release loads its merged weights (the shipped files); a run merges its
    adapter the same way export does (fp32 add, one cast), so a run and the
    release made from it answer alike.
    """
    if target.merged is not None:
        local = ResolvedModel(target.ref, str(target.merged), "local")
        return load_causal_lm(local, dtype), load_tokenizer(local)
    tok_source = target.base
    if target.adapter is not None:
        if not (target.adapter / "adapter_config.json").exists():
            raise ModelError(
                f"{target.ref} has no adapter at {target.adapter}",
                hint="The files may have been deleted; retrain or re-export.",
            )
        if (target.adapter / "tokenizer_config.json").exists():
            # the run saved the tokenizer it trained with (chat template included)
            tok_source = ResolvedModel(target.ref, str(target.adapter), "local")
    model = load_causal_lm(target.base, dtype, adapter=target.adapter, merge=True)
    return model, load_tokenizer(tok_source)


def release_gguf(target: ModelTarget, qtype: str | None = None) -> Path:
    """The GGUF file of a release that llama.cpp answers with: ``qtype``'s, else the most exact one it has."""
    if target.release is None or target.adapter is None:
        raise ConfigError(
            f"{target.ref} is not a release: only an exported release has a GGUF file for llama.cpp",
            hint="Export it (`slmloop export`, with export.gguf: [q8_0]) and name it as vN.",
        )
    folder = target.adapter.parent / "gguf"
    for q in [qtype] if qtype else ["q8_0", "f16", "q5_k_m", "q4_k_m"]:
        path = folder / f"model-{q}.gguf"
        if path.exists():
            return path
    raise ModelError(
        f"{target.ref} has no {qtype + ' ' if qtype else ''}GGUF file to answer with llama.cpp",
        hint="Export with export.gguf: [q8_0] in slmloop.yaml, or use the transformers engine.",
    )


def load_engine(target: ModelTarget, engine: str, dtype: torch.dtype) -> Engine:
    """The engine that answers for ``target``: ``transformers`` (its weights in this process) or ``llamacpp``
    (a release's GGUF file, prompts rendered by the release's own tokenizer, stopped where the merged model's
    generation config stops)."""
    from slmloop.predict.engines import LocalEngine

    if engine == "transformers":
        model, tok = load_target(target, dtype)
        return LocalEngine(model, tok)
    if engine != "llamacpp":
        raise ConfigError(f"unknown engine {engine!r}", hint=f"Use one of: {', '.join(ENGINES)}.")
    return gguf_engine(target, release_gguf(target))


def gguf_engine(target: ModelTarget, gguf: Path, *, threads: int | None = None) -> Engine:
    """llama.cpp answering with ``gguf``, a file of ``target``'s release: prompts rendered by the release's own
    tokenizer, stopped where the merged model's generation config stops."""
    import importlib.util
    import json

    from slmloop.predict.engines import LlamaCppEngine

    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelError(
            "the llamacpp engine needs llama.cpp's Python binding, which is not installed",
            hint="pip install llama-cpp-python (the README set-up installs it).",
        )
    source = target.merged if target.merged is not None else target.adapter
    assert source is not None
    tok = load_tokenizer(ResolvedModel(target.ref, str(source), "local"))
    stops = {tok.eos_token_id} if isinstance(tok.eos_token_id, int) else set()
    config = source / "generation_config.json"
    if config.exists():
        said = json.loads(config.read_text()).get("eos_token_id")
        stops |= {i for i in (said if isinstance(said, list) else [said]) if isinstance(i, int)}
    return LlamaCppEngine(str(gguf), tok, threads=threads, stop_ids=stops)
