"""Real datasets through the graph: a configured release becomes a dataset stage (DVC
stage + Dagster asset) that prepares it with the official-format parser."""

from __future__ import annotations

import json

import yaml

from pipelines.config import load_params
from pipelines.graph import build_graph, dvc_yaml
from pipelines.runner import run_stage, run_stages
from tests.conftest import write_params
from tests.release_fixtures import build_nus_wide


def test_configured_release_is_prepared_by_its_stage(tmp_path, tiny_params_dict):
    release = tmp_path / "nus-release"
    build_nus_wide(release)
    tiny_params_dict["datasets"]["nus-wide"] = {
        "source": "nus-wide",
        "backbone": "toy-clip",
        "release_dir": str(release),
        "eval": {"top_k": [3, 5]},
    }
    tiny_params_dict["tracking"] = {"enabled": False}
    params = load_params(write_params(tmp_path, tiny_params_dict))
    graph = build_graph(params)
    assert "dataset@nus-wide" in graph  # no table needs it yet, but the release is configured
    stage = yaml.safe_load(dvc_yaml(params))["stages"]["dataset__nus-wide"]
    assert str(release) in stage["deps"] and "pipelines/data/nus_wide.py" in stage["deps"]

    from dagster_project.assets import build_assets

    assert any(a.key.path == ["dataset", "nus-wide"] for a in build_assets(params))
    ran = run_stages(params, ["dataset@nus-wide"], lambda p, st: run_stage(p, st, progress=False))
    assert ran == ["dataset@nus-wide"]
    labels = json.loads((tmp_path / "data" / "nus-wide" / "labels.json").read_text())
    assert (len(labels["seen"]), len(labels["unseen"])) == (925, 81)
    assert run_stages(params, ["dataset@nus-wide"], lambda p, st: run_stage(p, st)) == []
