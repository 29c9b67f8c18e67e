"""Issue 22 item 6: what the views show of a stage record: its own time, rounded
numbers, and table plots with a legend and ±std error bars."""

from __future__ import annotations

import json
from datetime import datetime

import dagster as dg
import pytest

from pipelines.config import load_params
from pipelines.graph import STAMP, build_graph, write_stamp
from tests.conftest import TINY_PARAMS, write_params


def test_dagster_metadata_floats_are_rounded_to_4_significant_digits():
    from dagster_project.records import round_sig, to_dagster_metadata

    meta = to_dagster_metadata({"zsl mAP": 3.9604666666666666, "n": 7, "big": 123456.789})
    assert meta["zsl mAP"] == 3.96 and meta["n"] == 7 and meta["big"] == 123500.0
    assert round_sig(0.000123456) == pytest.approx(0.0001235)
    assert round_sig(float("nan")) != round_sig(float("nan"))  # NaN stays NaN


def test_reported_record_carries_the_stages_own_time(tmp_path):
    from dagster_project.records import asset_key, reconcile

    params = load_params(write_params(tmp_path, TINY_PARAMS), check_methods=False)
    graph = build_graph(params)
    stage = graph["dataset@toyworld"]
    out = tmp_path / stage.out
    out.mkdir(parents=True)
    (out / "meta.json").write_text(json.dumps({"counts": {"train": 3}}))
    write_stamp(params, graph, stage.name)
    record = json.loads((out / STAMP).read_text())
    record["finished_at"] = "2026-01-02T03:04:05.250+00:00"  # long before this report
    (out / STAMP).write_text(json.dumps(record))

    instance = dg.DagsterInstance.ephemeral()
    assert reconcile(instance, params) == ["dataset@toyworld"]
    got = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(stage)), limit=1
    ).records[0]
    want = datetime.fromisoformat(record["finished_at"]).timestamp()
    assert got.timestamp == pytest.approx(want)
    assert got.asset_materialization.metadata["n_train"].value == 3
    assert reconcile(instance, params) == []  # seen: not reported twice


def test_table_plot_has_legend_and_std_error_bars():
    import matplotlib.pyplot as plt
    from matplotlib.container import BarContainer

    from pipelines.tables import map_figure

    def bars(ax):
        return next(c for c in ax.containers if isinstance(c, BarContainer))

    rows = [
        {"dataset": "d", "variant": "a", "task": "zsl", "mAP": 10.0, "mAP std": 1.5},
        {"dataset": "d", "variant": "b", "task": "zsl", "mAP": 12.0, "mAP std": 0.5,
         "mAP (paper)": 20.0},
    ]  # fmt: skip
    fig = map_figure(rows)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "paper (published)" in texts  # the red line on the 2nd row, not only the 1st
    assert any("± std" in t for t in texts)
    err = bars(ax).errorbar
    assert err is not None
    segments = err.lines[2][0].get_segments()
    assert [round(s[1][0] - s[0][0], 6) for s in segments] == [3.0, 1.0]  # 2 std wide
    plt.close(fig)

    fig = map_figure([{"dataset": "d", "variant": "a", "task": "zsl", "mAP": 10.0}])
    assert bars(fig.axes[0]).errorbar is None  # no std, no error bar
    plt.close(fig)
