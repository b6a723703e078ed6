"""The package layering of DESIGN.md, checked on the source with ``ast`` (nothing is imported).

Imports flow one way: ``jobs -> pipelines -> workers``, ``jobs -> nerf``, and ``nerf`` may read
``pipelines.schema``. Ray lives in ``pipelines/`` and ``jobs/``, MLflow in ``jobs/`` only. Every import
counts, function-level ones included: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "nerf", "pipelines", "workers")
MAX_LINES = 400

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "workers": ("pipelines", "jobs", "nerf", "ray", "mlflow"),
    "nerf": ("workers", "jobs", "ray", "mlflow"),
    "pipelines": ("jobs", "nerf", "mlflow"),
}
"""Top-level names each package must never import (``nerf`` may still read ``pipelines.schema``)."""


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module (``pipelines.schema``)."""
    target: str
    """The imported module, as precise as the source says (``workers.labels``; for ``from a import b``,
    ``a.b`` when that is a module of the project, else ``a``)."""
    line: int
    type_checking: bool
    """Inside ``if TYPE_CHECKING:`` (no import at run time)."""

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, type_checking))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(module, sub if sub in MODULES else base, node.lineno, type_checking))
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(tree, False)
    return found


IMPORTS = {module: _imports_of(module, path) for module, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_modules_found():
    """The four packages are scanned, and a known import is seen."""
    assert {_top(m) for m in MODULES} == set(PACKAGES)
    assert "pipelines.schema" in MODULES and "workers.parsing" in MODULES
    assert "workers.labels" in {imp.target for imp in IMPORTS["pipelines.schema"]}
    assert "workers.labels" in import_graph()["pipelines.schema"]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_lower_layers(package):
    """A package imports nothing from the layers above it, nor Ray / MLflow where they do not belong."""
    bad = [
        str(imp)
        for module, imports in IMPORTS.items()
        if _top(module) == package
        for imp in imports
        if _top(imp.target) in FORBIDDEN[package]
    ]
    assert not bad, f"{package}/ must not import {', '.join(FORBIDDEN[package])}:\n" + "\n".join(bad)


def test_nerf_reads_only_the_schema_of_pipelines():
    """Of pipelines, nerf reads pipelines.schema only."""
    bad = [
        str(imp)
        for module, imports in IMPORTS.items()
        if _top(module) == "nerf"
        for imp in imports
        if _top(imp.target) == "pipelines" and imp.target != "pipelines.schema"
    ]
    assert not bad, "nerf/ may read pipelines.schema and nothing else of pipelines:\n" + "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at run time (function-level imports included)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, imports in IMPORTS.items():
        for imp in imports:
            if imp.type_checking or imp.target == module:
                continue
            # `import a.b.c` names a.b.c; the most precise project module it names is the edge
            target = imp.target
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                graph[module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per back edge met by a depth-first search, in a stable order."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, BLACK) == GREY:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif colour.get(nxt) == WHITE:
                dfs(nxt)
        stack.pop()
        colour[node] = BLACK

    for node in sorted(graph):
        if colour[node] == WHITE:
            dfs(node)
    return cycles


def test_imports_include_function_level_relative_and_type_checking(tmp_path):
    """The scanner sees imports inside functions, resolves relative ones, and marks TYPE_CHECKING ones."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import mlflow\n"
        "def f():\n    import ray.data\n    from .labels import HEAD\n    from . import parsing\n"
    )
    found = {(i.target, i.type_checking) for i in _imports_of("workers.m", src)}
    assert {("mlflow", True), ("ray.data", False), ("workers.labels", False), ("workers.parsing", False)} <= found


def test_find_cycles_reports_the_cycle():
    """The cycle finder names a cycle in order and finds none in a DAG."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles():
    """No import cycle between package modules, function-level imports included."""
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between package modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_modules_are_small():
    """No package module is over MAX_LINES lines."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    big = sorted((n, m) for m, n in sizes.items() if n > MAX_LINES)
    assert not big, f"modules over {MAX_LINES} lines:\n" + "\n".join(f"{m}: {n}" for n, m in reversed(big))
