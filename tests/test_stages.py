"""The stage kinds: one module each behind one table (issue 23).

Each module of pipelines/stages/ declares its kind's stages and runs and describes
them; the graph only assembles the declarations. These tests hold that layout: every
kind module is in the table with the same five names, the spec imports nothing of the
project, graph.py never branches on a stage kind, and declaring the whole graph imports
no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.stages.kinds import KINDS, stage_kind

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "pipelines" / "stages"
SHARED = {"__init__", "spec", "kinds"}


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in ("pipelines", "dagster_project")}


def test_every_kind_module_is_in_the_one_table_with_the_same_names():
    modules = {p.stem for p in STAGES.glob("*.py")} - SHARED
    assert modules == set(KINDS)
    for kind, module in KINDS.items():
        assert kind == module.KIND
        for name in ("request", "declare", "run", "describe"):
            assert callable(getattr(module, name)), f"pipelines/stages/{kind}.py lacks {name}"


def test_an_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown stage kind 'nope' \\(known: corpus, dataset"):
        stage_kind("nope")


def test_the_spec_is_a_leaf():
    assert _project_imports(STAGES / "spec.py") == set()


def test_graph_assembles_without_branching_on_kinds_or_importing_science():
    path = ROOT / "pipelines" / "graph.py"
    allowed = {
        "pipelines.config",
        "pipelines.io",
        "pipelines.records",
        "pipelines.stages.kinds",
        "pipelines.stages.spec",
        "pipelines.workspace",
    }
    assert _project_imports(path) <= allowed
    src = path.read_text(encoding="utf-8")
    build = next(
        n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "build_graph"
    )
    for node in ast.walk(build):  # no `kind == "cell"`-style chains in the assembly
        assert not (
            isinstance(node, ast.Compare)
            and any(isinstance(c, ast.Constant) and c.value in KINDS for c in node.comparators)
        ), f"graph.build_graph compares with a stage kind at line {node.lineno}"


def test_declaring_the_whole_graph_imports_no_torch():
    code = (
        "import sys\n"
        "from pipelines.config import load_params\n"
        "from pipelines.graph import build_graph\n"
        "from pipelines.records import stage_metadata\n"
        "for f in ('params.yaml', 'params.real.yaml'):\n"
        "    g = build_graph(load_params(f, check_methods=False))\n"
        "    assert {s.kind for s in g.values()} <= set(__import__('pipelines.stages.kinds',"
        " fromlist=['KINDS']).KINDS)\n"
        "for kind in ('dataset', 'cell', 'table', 'corpus', 'relations'):\n"
        "    stage_metadata(__import__('pathlib').Path('/nonexistent'), kind, 'x')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip'))\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
