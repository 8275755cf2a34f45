"""Every library module says what it exports, exports what it says, and is imported only through that.

- every name in ``__all__`` exists, and every library module has an ``__all__``;
- every package has an ``__init__.py`` whose ``__all__`` is its public API;
- ``from slmloop.x import name`` anywhere in the library names something ``slmloop.x`` exports;
- imports between slmloop modules (inside functions too) form no circle, and rooms import one way.
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


def _imports(tree: ast.Module) -> set[str]:
    """slmloop modules a module imports, at its top or inside a function (not under TYPE_CHECKING)."""
    type_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slmloop"):
            found.add(node.module or "")
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("slmloop"))
    return found


#: imports inside a function that close a circle, each kept lazy on purpose
LAZY = {
    # Ray (hundreds of MB, seconds to import) loads only for a bake-off run on Ray Tune
    ("slmloop.graduate.bakeoff", "slmloop.graduate.tune"),
}


def _room(module: str) -> str:
    """A module's room: its folder under slmloop/ (``evaluate``), or the module (``manifest``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "slmloop"


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def _module_graph() -> dict[str, list[str]]:
    sources = _sources()
    return {
        name: sorted(m for m in _imports(tree) if m in sources and m != name and (name, m) not in LAZY)
        for name, tree in sources.items()
    }


def test_no_import_circles() -> None:
    """No module imports itself back, counting imports inside functions too."""
    cycles = _cycles(_module_graph())
    assert not cycles, "import circles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_rooms_import_one_way() -> None:
    """Rooms (slmloop's folders and top-level modules) form layers: no two reach each other."""
    rooms: dict[str, set[str]] = {}
    for name, targets in _module_graph().items():
        for target in targets:
            if _room(name) != _room(target):
                rooms.setdefault(_room(name), set()).add(_room(target))
    cycles = _cycles({room: sorted(targets) for room, targets in rooms.items()})
    assert not cycles, "rooms that import each other:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_the_circle_tests_see_imports_inside_functions() -> None:
    tree = ast.parse("def f():\n    from slmloop.evaluate import evaluate\n")
    assert "slmloop.evaluate" in _imports(tree)
    assert _cycles({"a": ["b"], "b": ["a"]}) and not _cycles({"a": ["b"], "b": []})
