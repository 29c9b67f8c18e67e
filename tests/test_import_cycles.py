"""No import circles in pipelines/ or dagster_project/ (issue 23).

Imports are read with ``ast``, nothing is executed. A module-level import and an import
inside a function both count (a function-level import only hides a circle until the
function runs); imports under ``if TYPE_CHECKING:`` do not (they never run). An edge goes
to the module a statement names: ``from pipelines.text import prompts`` needs
``pipelines.text.prompts``, ``from pipelines.text import dagster_metadata`` needs
``pipelines.text`` (the package's ``__init__``); the parent packages Python initialises
on the way are not edges (a child always finds its parent loaded).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "dagster_project")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under :data:`PACKAGES`."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``, at any depth, except under ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                walk(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` (the module in ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        for alias in node.names:  # `from pkg import module` needs the module, not pkg
            out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in out if m in known and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = module_files(root)
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle ``[a, b, ..., a]`` per strongly connected component of more than one
    module (Tarjan), the shortest found from its first module in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return [_shortest_circle(graph, comp) for comp in sorted(components, key=sorted)]


def _shortest_circle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(comp)} is not a circle")  # pragma: no cover


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles (break each by moving the shared piece down):\n" + (
        "\n".join(" -> ".join(c) for c in cycles)
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_walker_finds_function_level_and_relative_cycles(tmp_path):
    _write(
        tmp_path,
        {
            "pipelines/__init__.py": "",
            "pipelines/a.py": "from pipelines.b import thing\n",
            "pipelines/b.py": "def f():\n    from . import a\n",
            "pipelines/sub/__init__.py": "",
            "pipelines/sub/c.py": "import pipelines.sub.d\n",
            "pipelines/sub/d.py": "from ..sub import c\n",
            "dagster_project/__init__.py": "",
        },
    )
    cycles = find_cycles(import_graph(tmp_path))
    assert cycles == [
        ["pipelines.a", "pipelines.b", "pipelines.a"],
        ["pipelines.sub.c", "pipelines.sub.d", "pipelines.sub.c"],
    ]


def test_walker_ignores_type_checking_imports(tmp_path):
    _write(
        tmp_path,
        {
            "pipelines/__init__.py": "",
            "pipelines/a.py": "from pipelines import b\n",
            "pipelines/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipelines import a\n"
            ),
            "dagster_project/__init__.py": "",
        },
    )
    assert find_cycles(import_graph(tmp_path)) == []
