"""Dagster: the definitions load, and the demo graph materialises in-process."""

from __future__ import annotations

import json
import os

import dagster as dg

from tests.conftest import TINY_PARAMS, write_params


def test_materialise_demo_graph_in_process(tmp_path, monkeypatch):
    path = write_params(tmp_path, TINY_PARAMS)
    monkeypatch.setenv("OVML_PARAMS", str(path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    os.makedirs(tmp_path / "dagster_home", exist_ok=True)
    from dagster_project.definitions import build_definitions

    defs = build_definitions(str(path))
    assets = list(defs.assets)
    resources = defs.resources
    instance = dg.DagsterInstance.ephemeral()
    upstream = [a for a in assets if a.key.path[0] not in ("cells", "table", "report")]
    res = dg.materialize(upstream, resources=resources, instance=instance)
    assert res.success
    cells = [a for a in assets if a.key.path[0] == "cells"]
    assert {a.key.path[2] for a in cells} == {"random", "clip_zeroshot", "clip_zeroshot-single"}
    for cell in cells:
        assert cell.partitions_def is None  # the tiny table trains each variant once
        res = dg.materialize([cell], resources=resources, instance=instance)
        assert res.success
        mat = res.asset_materializations_for_node(cell.node_def.name)[0]
        assert 0 <= mat.metadata["zsl mAP"].value <= 100
    table = next(a for a in assets if a.key.path[0] == "table")
    res = dg.materialize([table], resources=resources, instance=instance)
    assert res.success
    meta = res.asset_materializations_for_node(table.node_def.name)[0].metadata
    records = meta["table"].value.records  # a native table, one record per (variant, task)
    assert {r.data["variant"] for r in records} == {
        "random",
        "clip_zeroshot",
        "clip_zeroshot-single",
    }
    assert all(0 <= r.data["mAP"] <= 100 for r in records)
    assert "data:image/png;base64," in meta["plot"].value
    assert 0 <= meta["toyworld/clip_zeroshot ZSL mAP"].value <= 100  # the Plots tab's series
    # files are exactly what the CLI / DVC would write
    out = json.loads((tmp_path / "results/tables/tiny/table.json").read_text())
    assert out["missing"] == []
    # a second materialisation reuses the fresh stage instead of recomputing
    res = dg.materialize(
        [a for a in upstream if a.key.path[0] == "dataset"],
        resources=resources,
        instance=instance,
    )
    mat = res.get_asset_materialization_events()[0].materialization
    assert mat.metadata["reused"].value is True


def test_asset_checks_run(tiny_workspace):
    from dagster_project.definitions import build_definitions

    defs = build_definitions(str(tiny_workspace))
    checks = list(defs.asset_checks)
    assert {c.check_key.name for c in checks} == {"metrics_in_range", "complete"}
    table = next(a for a in defs.assets if a.key.path[0] == "table")
    res = dg.materialize(
        [table, *checks], resources=defs.resources, instance=dg.DagsterInstance.ephemeral()
    )
    assert res.success
    evaluations = res.get_asset_check_evaluations()
    assert [(e.check_name, e.passed) for e in evaluations] == [("complete", True)]


def test_dagster_definitions_validate_cli(tmp_path):
    """What CI runs: `dagster definitions validate` on the project's code location."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    env.pop("OVML_PARAMS", None)
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-m",
            "dagster_project.definitions",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "passed validation" in res.stdout + res.stderr
