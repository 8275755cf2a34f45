"""Every library module says what it exports, and exports what it says."""

from __future__ import annotations

import importlib
import pkgutil

import slmloop

MODULES = [m for m in pkgutil.walk_packages(slmloop.__path__, "slmloop.") if not m.name.endswith("__main__")]


def test_every_name_in_all_exists() -> None:
    for info in MODULES:
        module = importlib.import_module(info.name)
        for exported in getattr(module, "__all__", []):
            assert hasattr(module, exported), f"{info.name}.__all__ lists {exported!r}, which it does not define"


def test_every_library_module_declares_its_api() -> None:
    library = [m.name for m in MODULES if not m.ispkg and not m.name.startswith("slmloop.cli.")]
    missing = [name for name in library if not hasattr(importlib.import_module(name), "__all__")]
    assert not missing, f"modules without __all__: {missing}"
