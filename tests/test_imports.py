"""Imports inside the package flow one way: no module imports, even late inside a function or
only for the type checker, a module that (directly or through others) imports it back.

Read from the source with ``ast`` rather than from ``sys.modules``, so an import that only runs
inside a function counts as much as one at the top. Imports under ``if TYPE_CHECKING:`` count
too: they never run, but a circle there is still a circle for mypy and for the reader, and the
way out is the same (a ``Protocol`` where the other side is used, as ``_lifecycle.Drainable``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import interakt_logging

PACKAGE = "interakt_logging"
SOURCE = Path(interakt_logging.__file__).parent


def _modules() -> Dict[str, Path]:
    return {path.stem: path for path in sorted(SOURCE.glob("*.py"))}


def _imported(module: str, source: str, modules: Set[str]) -> Set[str]:
    """The package's modules that ``module`` imports, wherever in its source the import is."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] != PACKAGE:
                continue  # another distribution
            if node.level > 1:
                raise AssertionError(f"{module}: relative import beyond the package")
            inner = (node.module or "").split(".")
            target = inner[1] if node.level == 0 and len(inner) > 1 else (
                inner[0] if node.level == 1 and inner[0] else ""
            )
            if target:
                found.add(target)
            else:  # ``from . import x``: a module when x is one, else a name of __init__
                for alias in node.names:
                    found.add(alias.name if alias.name in modules else "__init__")
    found.discard(module)
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imported(name, path.read_text(), set(modules)) for name, path in modules.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One example path for each circle found by a depth-first walk (empty when acyclic)."""
    found: List[List[str]] = []
    done: Set[str] = set()

    def walk(node: str, path: List[str]) -> None:
        if node in path:
            found.append([*path[path.index(node):], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*path, node])
        done.add(node)

    for start in sorted(graph):
        walk(start, [])
    return found


def test_no_import_circle_in_the_package() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_reader_counts_late_and_type_only_imports() -> None:
    source = """
from __future__ import annotations
import json
from typing import TYPE_CHECKING
from . import _a, __version__
from ._b import thing
import interakt_logging._c
from interakt_logging import InteraktHandler
if TYPE_CHECKING:
    from ._typed_only import Hint
else:
    from ._otherwise import fallback

def late() -> None:
    from ._d import later
    class Inner:
        def method(self) -> None:
            import interakt_logging._e.sub
"""
    modules = {"_a", "_b", "_c", "_d", "_e", "_typed_only", "_otherwise", "me", "__init__"}
    assert _imported("me", source, modules) == {
        "_a", "__init__", "_b", "_c", "_typed_only", "_otherwise", "_d", "_e"
    }


def test_the_cycle_finder_reports_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
