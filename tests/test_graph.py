"""One DAG, three views: dvc.yaml and Dagster assets derived from params.yaml."""

from __future__ import annotations

import yaml

from pipelines.config import load_params, split_seed
from pipelines.graph import build_graph, dvc_yaml, fingerprint, upstream
from tests.conftest import REPO, write_params


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
        assert st["outs"] == [f"results/cells/{ds}/{var}"]
        assert st["cmd"] == f"ovml stage cell {ds} {var}"


def test_dagster_assets_match_the_graph():
    from dagster_project.assets import build_assets

    params = load_params(REPO / "params.yaml")
    graph = build_graph(params)
    keys = {tuple(k.path) for a in build_assets(params) for k in a.keys}
    expected = {
        ("cells", st.key[0]) if st.kind == "cell" else (st.kind, *st.key) for st in graph.values()
    }
    assert keys == expected
    cells_asset = next(a for a in build_assets(params) if a.key.path[0] == "cells")
    assert set(cells_asset.partitions_def.get_partition_keys()) == {
        v for d, v in params.cells if d == "toyworld"
    }


def test_changing_one_variant_changes_only_its_cell_and_table(tmp_path, tiny_params_dict):
    before = load_params(write_params(tmp_path / "a", tiny_params_dict))
    tiny_params_dict["variants"]["clip_zeroshot-single"]["prompts"] = "pool"
    after = load_params(write_params(tmp_path / "b", tiny_params_dict))
    g1, g2 = build_graph(before), build_graph(after)
    changed = {n for n in g1 if fingerprint(before, g1, n) != fingerprint(after, g2, n)}
    assert changed == {"cell@toyworld@clip_zeroshot-single", "table@tiny", "report@all"}


def test_upstream_order():
    params = load_params(REPO / "params.yaml")
    order = upstream(build_graph(params), ["cell@toyworld@clip_zeroshot"])
    assert order == [
        "dataset@toyworld",
        "backbone@toy-clip",
        "features@toyworld@toy-clip",
        "cell@toyworld@clip_zeroshot",
    ]


def test_downstream_of_a_rerun_stage_reruns_and_stamps_predate_the_run(tmp_path, tiny_params_dict):
    """If code changes while a stage runs, its stamp holds the fingerprint taken before the
    run (so it stays stale); and a stage whose input was just recomputed always reruns."""
    from pipelines.graph import is_fresh, run_stages, write_stamp

    tiny_params_dict["tracking"] = {"enabled": False}
    params = load_params(write_params(tmp_path, tiny_params_dict))
    graph = build_graph(params)
    for name, st in graph.items():  # pretend everything was computed
        (params.root / st.out).mkdir(parents=True, exist_ok=True)
        write_stamp(params, graph, name)
    tiny_params_dict["datasets"]["toyworld"]["options"]["n_test"] = 150  # dataset is now stale
    params = load_params(write_params(tmp_path, tiny_params_dict))
    seen: list[str] = []
    run_stages(params, ["cell@toyworld@random"], lambda p, st: seen.append(st.name))
    assert seen == [
        "dataset@toyworld",
        "backbone@toy-clip",
        "features@toyworld@toy-clip",
        "cell@toyworld@random",
    ]
    assert is_fresh(params, build_graph(params), "cell@toyworld@random")
