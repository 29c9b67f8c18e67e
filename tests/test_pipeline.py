"""The whole pipeline on a tiny toyworld: cells, tables, incrementality, MLflow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.cells import load_cell_scores
from pipelines.config import load_params
from pipelines.graph import build_graph, is_fresh
from pipelines.metrics import mean_average_precision
from pipelines.runner import run_stage, run_stages


def test_cells_write_the_metrics_contract(tiny_workspace):
    params = load_params(tiny_workspace)
    for ds, variant in params.cells:
        cell = params.path("results") / "cells" / ds / variant
        m = json.loads((cell / "metrics.json").read_text())
        for task in ("zsl", "gzsl"):
            assert set(m[task]) == {"mAP", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5"}
            assert all(0 <= v <= 100 for v in m[task].values())
        assert m["meta"]["variant"] == variant and m["meta"]["backbone"] == "toy-clip"
        assert m["meta"]["eval"]["zero_positive"] == "zero"
        scores = load_cell_scores(params, ds, variant)
        assert scores.dtype == np.float32 and scores.shape == (
            160,
            m["meta"]["n_seen"] + m["meta"]["n_unseen"],
        )


def test_metrics_are_recomputable_from_scores(tiny_workspace):
    from pipelines.data.prepared import PreparedDataset

    params = load_params(tiny_workspace)
    ds = PreparedDataset.load(params.path("data") / "toyworld")
    scores = load_cell_scores(params, "toyworld", "clip_zeroshot")
    labels = ds.splits["test"].labels
    m = json.loads(
        (params.path("results") / "cells/toyworld/clip_zeroshot/metrics.json").read_text()
    )
    S = ds.label_space.n_seen
    assert mean_average_precision(scores[:, S:], labels[:, S:]) == pytest.approx(
        m["zsl"]["mAP"], abs=1e-3
    )
    assert mean_average_precision(scores, labels) == pytest.approx(m["gzsl"]["mAP"], abs=1e-3)


def test_second_run_recomputes_nothing(tiny_workspace):
    params = load_params(tiny_workspace)
    ran = run_stages(params, ["table@tiny"], lambda p, st: pytest.fail(f"{st.name} recomputed"))
    assert ran == []


def test_table_files(tiny_workspace):
    params = load_params(tiny_workspace)
    out = params.path("results") / "tables" / "tiny"
    md = (out / "table.md").read_text()
    for row in ("random", "clip_zeroshot", "clip_zeroshot-single"):
        assert f"| toyworld | {row} | ZSL |" in md
    table = json.loads((out / "table.json").read_text())
    assert table["missing"] == [] and len(table["rows"]) == 6
    assert (out / "mAP.png").stat().st_size > 1000


def test_mlflow_has_one_run_per_cell(tiny_workspace):
    import mlflow

    params = load_params(tiny_workspace)
    mlflow.set_tracking_uri(params.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["ovml/toyworld"], output_format="list")
    by_variant = {r.data.tags["variant"]: r for r in runs}
    assert set(by_variant) == {"random", "clip_zeroshot", "clip_zeroshot-single"}
    run = by_variant["clip_zeroshot"]
    assert {"git_sha", "dataset", "backbone"} <= set(run.data.tags)
    m = json.loads(
        (params.path("results") / "cells/toyworld/clip_zeroshot/metrics.json").read_text()
    )
    assert run.data.metrics["zsl_mAP"] == pytest.approx(m["zsl"]["mAP"])
    assert run.data.params["config.prompts"] == "pool"
    tables = mlflow.search_runs(experiment_names=["tables"], output_format="list")
    assert tables and tables[0].data.tags["table"] == "tiny"


def test_changing_a_variant_reruns_only_that_cell(tiny_workspace, tmp_path):
    """Copy the workspace, change one variant's params: exactly its cell and the table rerun."""
    import shutil

    import yaml

    ws = tmp_path / "ws"
    shutil.copytree(
        tiny_workspace.parent, ws, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")
    )
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["variants"]["clip_zeroshot-single"]["prompts"] = "pool"
    raw["tracking"]["enabled"] = False
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(ws / "params.yaml")
    graph = build_graph(params)
    assert not is_fresh(params, graph, "cell@toyworld@clip_zeroshot-single")
    ran = run_stages(params, ["table@tiny"], lambda p, st: run_stage(p, st, progress=False))
    assert ran == ["cell@toyworld@clip_zeroshot-single", "table@tiny"]
    a = load_cell_scores(params, "toyworld", "clip_zeroshot-single")
    b = load_cell_scores(params, "toyworld", "clip_zeroshot")
    np.testing.assert_allclose(a, b, rtol=1e-6)  # same config now: same scores
