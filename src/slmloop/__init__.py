"""slmloop: the whole loop of a small-language-model fine-tuning project.

data → train (LoRA SFT) → evaluate on a gold set → iterate → export & deploy → monitor.
The CLI (``slmloop``) is a thin layer over the functions exported here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
from collections.abc import Callable
from typing import Any

__all__ = ["__version__", "lazy_api", "versions"]

try:
    __version__ = importlib.metadata.version("slmloop")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
    __version__ = "0.0.0+unknown"


def versions() -> dict[str, str]:
    """Versions of slmloop and the libraries that shape its results (for lineage)."""
    out = {"slmloop": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "tokenizers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def lazy_api(package: str, names: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """A package's public API as ``(__all__, __getattr__)``: ``names`` maps each name to its submodule.

    The submodule is imported on first use, so importing one stage does not import the others
    (and ``slmloop --help`` stays instant).
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(names), __getattr__
