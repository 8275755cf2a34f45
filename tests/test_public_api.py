"""Every library module says what it exports, exports what it says, and is imported only through that.

- every name in ``__all__`` exists, and every library module has an ``__all__``;
- every package has an ``__init__.py`` whose ``__all__`` is its public API;
- ``from slmloop.x import name`` anywhere in the library names something ``slmloop.x`` exports;
- module-level imports between slmloop modules form no circle.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import slmloop

SRC = Path(slmloop.__file__).parent
MODULES = [m for m in pkgutil.walk_packages(slmloop.__path__, "slmloop.") if not m.name.endswith("__main__")]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in SRC.rglob("*.py")}


def test_every_name_in_all_exists() -> None:
    for info in MODULES:
        module = importlib.import_module(info.name)
        for exported in getattr(module, "__all__", []):
            assert hasattr(module, exported), f"{info.name}.__all__ lists {exported!r}, which it does not define"


def test_every_library_module_and_package_declares_its_api() -> None:
    library = [m.name for m in MODULES if not m.name.startswith("slmloop.cli.")]
    missing = [name for name in library if not hasattr(importlib.import_module(name), "__all__")]
    assert not missing, f"modules without __all__: {missing}"
    packages = {p.parent for p in SRC.rglob("*.py") if p.parent != SRC}
    assert all((p / "__init__.py").exists() for p in packages), "a package folder without __init__.py"


def test_imports_use_only_exported_names() -> None:
    wrong = []
    for name, tree in _sources().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("slmloop"):
                continue
            target = importlib.import_module(node.module)
            exported = set(getattr(target, "__all__", []))
            for alias in node.names:
                is_submodule = (
                    importlib.util.find_spec(f"{node.module}.{alias.name}") is not None
                    if hasattr(target, "__path__")
                    else False
                )
                if alias.name not in exported and not is_submodule:
                    wrong.append(f"{name}: from {node.module} import {alias.name}")
    assert not wrong, "imports of names their module does not export:\n" + "\n".join(wrong)


def _top_level_imports(tree: ast.Module) -> set[str]:
    """slmloop modules imported when the module is imported (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in [node] if not isinstance(node, ast.If | ast.Try) else ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("slmloop"):
                found.add(sub.module or "")
                found.update(f"{sub.module}.{a.name}" for a in sub.names)
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("slmloop"))
    return found


def test_no_import_circles() -> None:
    sources = _sources()
    graph = {
        name: sorted(m for m in _top_level_imports(tree) if m in sources and m != name)
        for name, tree in sources.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(" → ".join(c) for c in cycles)
