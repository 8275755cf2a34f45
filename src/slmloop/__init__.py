"""slmloop: the whole loop of a small-language-model fine-tuning project.

data → train (LoRA SFT) → evaluate on a gold set → iterate → export & deploy → monitor.
The CLI (``slmloop``) is a thin layer over the functions exported here.
"""

from __future__ import annotations

import importlib.metadata
import platform

__all__ = ["__version__", "versions"]

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
