"""One DAG, three views: dvc.yaml and Dagster assets derived from params.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import yaml

from pipelines.config import Params, load_params, split_seed
from pipelines.graph import (
    Stage,
    build_graph,
    dvc_yaml,
    fingerprint,
    is_fresh,
    param_values,
    recorded_outputs_digest,
    stage_status,
    upstream,
)
from pipelines.runner import run_stages
from tests.conftest import REPO, write_params


def deterministic_stage(p: Params, st: Stage) -> None:
    """A stand-in stage whose output is a function of its params and its upstream outputs
    only, not of its code: what a docstring edit leaves a real stage's output."""
    graph = build_graph(p)
    out = p.root / st.out
    out.mkdir(parents=True, exist_ok=True)
    made_of = {
        "params": param_values(p, st.params),
        "inputs": {dep: recorded_outputs_digest(p, graph, dep) for dep in st.deps},
    }
    (out / "out.json").write_text(json.dumps(made_of, sort_keys=True))


def _copy_of_the_code(graph: dict[str, Stage], root: Path) -> Path:
    """The code files the graph hashes, copied under ``root`` (edited there, never in
    the real tree; pipelines.graph.REPO_ROOT is pointed at it)."""
    for st in graph.values():
        for code in st.code:
            if (REPO / code).is_file():
                (root / code).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / code, root / code)
    return root


def test_repo_dvc_yaml_is_in_step_with_params():
    params = load_params(REPO / "params.yaml")
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml(params), (
        "run `ovml dvc-yaml` and commit dvc.yaml"
    )


def test_dvc_stages_match_the_grid():
    params = load_params(REPO / "params.yaml")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    graph = build_graph(params)
    assert set(stages) == {st.dvc_name for st in graph.values()}
    cells = {
        tuple(st["cmd"].split()[3:]) for name, st in stages.items() if name.startswith("cell__")
    }
    assert cells == set(params.cells)
    tables = {st["cmd"].split()[3] for name, st in stages.items() if name.startswith("table__")}
    assert tables == set(params.tables)
    for ds, var in params.cells:
        st = stages[graph[f"cell@{ds}@{var}"].dvc_name]
        assert f"variants.{split_seed(var)[0]}" in st["params"]  # qks@s1 reads variants.qks
        assert st["outs"] == [{f"results/cells/{ds}/{var}": {"persist": True}}]
        assert st["cmd"] == f"ovml stage cell {ds} {var}"


def test_dagster_assets_match_the_graph():
    from dagster_project.assets import build_assets

    params = load_params(REPO / "params.yaml")
    graph = build_graph(params)
    keys = {tuple(k.path) for a in build_assets(params) for k in a.keys}
    expected = {
        ("cells", st.key[0], split_seed(st.key[1])[0]) if st.kind == "cell" else (st.kind, *st.key)
        for st in graph.values()
    }
    assert keys == expected
    by_key = {a.key: a for a in build_assets(params)}
    qks = by_key[dg.AssetKey(["cells", "iconworld", "qks-icon"])]  # the demo trains 3 seeds
    assert qks.partitions_def.get_partition_keys() == ["s0", "s1", "s2"]
    assert qks.group_names_by_key[qks.key] == "cells_iconworld"
    # its upstreams are exactly what its cells read
    want = {
        (graph[d].kind, *graph[d].key)
        for s in (0, 1, 2)
        for d in graph[f"cell@iconworld@qks-icon@s{s}"].deps
    }
    assert {tuple(k.path) for k in qks.asset_deps[qks.key]} == want


def test_changing_one_variant_changes_only_its_cell_and_then_its_table(tmp_path, tiny_params_dict):
    tiny_params_dict["tracking"] = {"enabled": False}
    before = load_params(write_params(tmp_path / "a", tiny_params_dict))
    g1 = build_graph(before)
    assert run_stages(before, ["table@tiny"], deterministic_stage)
    tiny_params_dict["variants"]["clip_zeroshot-single"]["prompts"] = "pool"
    after = load_params(write_params(tmp_path / "a", tiny_params_dict))
    g2 = build_graph(after)
    # only the cell's own inputs changed; the table follows once the cell's outputs do
    changed = {n for n in g1 if fingerprint(before, g1, n) != fingerprint(after, g2, n)}
    assert changed == {"cell@toyworld@clip_zeroshot-single"}
    ran = run_stages(after, ["table@tiny", "report@all"], deterministic_stage)
    assert ran == ["cell@toyworld@clip_zeroshot-single", "table@tiny", "report@all"]


def test_upstream_order():
    params = load_params(REPO / "params.yaml")
    order = upstream(build_graph(params), ["cell@toyworld@clip_zeroshot"])
    assert order == [
        "dataset@toyworld",
        "backbone@toy-clip",
        "features@toyworld@toy-clip",
        "cell@toyworld@clip_zeroshot",
    ]


def test_a_changed_upstream_output_reruns_its_dependants(tmp_path, tiny_params_dict):
    tiny_params_dict["tracking"] = {"enabled": False}
    params = load_params(write_params(tmp_path, tiny_params_dict))
    assert run_stages(params, ["cell@toyworld@random"], deterministic_stage)
    assert run_stages(params, ["cell@toyworld@random"], deterministic_stage) == []
    tiny_params_dict["datasets"]["toyworld"]["options"]["n_test"] = 150  # dataset is now stale
    params = load_params(write_params(tmp_path, tiny_params_dict))
    graph = build_graph(params)
    assert stage_status(params, graph, "cell@toyworld@random") == (True, "up to date")
    reasons: dict[str, str] = {}
    ran = run_stages(
        params,
        ["cell@toyworld@random"],
        deterministic_stage,
        on_stale=lambda name, why: reasons.update({name: why}),
    )
    assert ran == [
        "dataset@toyworld",
        "backbone@toy-clip",
        "features@toyworld@toy-clip",
        "cell@toyworld@random",
    ]
    assert reasons["dataset@toyworld"] == "params or code changed"
    assert reasons["backbone@toy-clip"] == "outputs of upstream dataset@toyworld changed"
    assert is_fresh(params, build_graph(params), "cell@toyworld@random")


def test_a_code_edit_with_identical_outputs_reruns_that_stage_and_not_its_table(
    tmp_path, tiny_params_dict, monkeypatch
):
    """A docstring edit of a method file reruns the cells of that method; their outputs
    come out byte-identical, so the table stays fresh (in `ovml list`, in run_stages and
    in Dagster's code versions). A cell whose output changes makes the table stale."""
    import pipelines.graph as graph_module
    from dagster_project.records import code_version

    tiny_params_dict["tracking"] = {"enabled": False}
    params = load_params(write_params(tmp_path / "ws", tiny_params_dict))
    graph = build_graph(params)
    code_root = _copy_of_the_code(graph, tmp_path / "code")
    monkeypatch.setattr(graph_module, "REPO_ROOT", code_root)
    assert run_stages(params, ["table@tiny"], deterministic_stage)
    versions = {name: code_version(params, graph, name) for name in graph}

    method = code_root / "pipelines/methods/clip_zeroshot.py"
    method.write_text(method.read_text().replace('"""', '"""An edited docstring. ', 1))
    cells = ["cell@toyworld@clip_zeroshot", "cell@toyworld@clip_zeroshot-single"]
    for cell in cells:
        assert stage_status(params, graph, cell) == (False, "params or code changed")
    assert stage_status(params, graph, "table@tiny") == (True, "up to date")
    moved = {name for name in graph if code_version(params, graph, name) != versions[name]}
    assert moved == set(cells)  # Dagster: only the cells' code version moved

    assert run_stages(params, ["table@tiny"], deterministic_stage) == cells
    assert stage_status(params, graph, "table@tiny") == (True, "up to date")

    def edits_its_code_while_it_runs(p: Params, st: Stage) -> None:
        deterministic_stage(p, st)
        method.write_text(method.read_text() + "\n# edited while the cell ran\n")

    run_stages(params, [cells[0]], edits_its_code_while_it_runs, force_only=[cells[0]])
    assert stage_status(params, graph, cells[0]) == (False, "params or code changed")

    def writes_other_bytes(p: Params, st: Stage) -> None:
        (p.root / st.out / "out.json").write_text('{"mAP": 1.0}')

    run_stages(
        params, ["cell@toyworld@random"], writes_other_bytes, force_only=["cell@toyworld@random"]
    )
    assert stage_status(params, graph, "table@tiny") == (
        False,
        "outputs of upstream cell@toyworld@random changed",
    )
    # the edit made while cells[0] ran also changed the file cells[1] is made from
    assert run_stages(params, ["table@tiny"], deterministic_stage) == [*cells, "table@tiny"]
