"""The `ovml` command line: data prepare on an official-format fixture, errors, help."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipelines.cli import app
from tests.release_fixtures import build_coco, build_nus_wide

runner = CliRunner()


def _prepare(dataset: str, release, out, *options: str):
    return runner.invoke(
        app, ["data", "prepare", dataset, "--release", str(release), "--out", str(out), *options]
    )


def test_data_prepare_nus_wide(tmp_path):
    release = tmp_path / "release"
    build_nus_wide(release)
    res = _prepare("nus-wide", str(release), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert len(labels["seen"]) == 925 and len(labels["unseen"]) == 81


def test_data_prepare_coco_with_option(tmp_path):
    release = tmp_path / "release"
    build_coco(release)
    res = _prepare(
        "coco-zsl", str(release), str(tmp_path / "out"), "-o", "exclude_train_with_unseen=true"
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["n_seen"] == 48 and meta["n_unseen"] == 17


def test_data_prepare_errors_are_one_line(tmp_path):
    res = _prepare("nus-wide", str(tmp_path / "nope"), str(tmp_path / "o"))
    assert (
        res.exit_code == 1
        and "release folder not found" in res.output
        and "Traceback" not in res.output
    )
    res = _prepare("imagenet", str(tmp_path), str(tmp_path / "o"))
    assert res.exit_code == 2 and "unknown dataset" in res.output
    release = tmp_path / "release"
    build_coco(release)
    res = _prepare("coco-zsl", str(release), str(tmp_path / "o"), "-o", "no_such_option=1")
    assert res.exit_code == 1 and "no_such_option" in res.output
    assert not (tmp_path / "o").exists()


def test_unknown_names_are_clear(tiny_workspace):
    res = runner.invoke(app, ["run", "toyworld", "nope", "--params", str(tiny_workspace)])
    assert res.exit_code == 2 and "unknown variant 'nope'" in res.output
    res = runner.invoke(app, ["table", "nope", "--params", str(tiny_workspace)])
    assert res.exit_code == 2 and "unknown table" in res.output


def test_run_and_table_on_fresh_workspace_recompute_nothing(tiny_workspace):
    res = runner.invoke(app, ["table", "tiny", "--params", str(tiny_workspace)])
    assert res.exit_code == 0, res.output
    assert "0 stage(s) ran" in res.output and "clip_zeroshot" in res.output
    res = runner.invoke(app, ["list", "--params", str(tiny_workspace)])
    assert res.exit_code == 0
    # everything the table needs is fresh (the report, downstream of every table, never ran)
    assert all("stale" not in line for line in res.output.splitlines() if "report" not in line)


def test_data_download_cli(tmp_path):
    import polars as pl
    from fault_server import FaultServer

    with FaultServer() as srv:
        manifest = tmp_path / "manifest.csv"
        pl.DataFrame(
            {
                "image_id": ["a/1.jpg", "b/2.jpg", "c/3.jpg"],
                "url": [
                    srv.url("/good/a"),
                    srv.url("/status/404/b"),
                    srv.url("/redirect_placeholder/c"),
                ],
            }
        ).write_csv(manifest)
        res = runner.invoke(
            app,
            [
                "data",
                "download",
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "dl"),
                "--workers",
                "2",
                "--allow-private-hosts",  # the fault server listens on 127.0.0.1
            ],
        )
    assert res.exit_code == 0, res.output
    ledger = pl.read_parquet(tmp_path / "dl" / "ledger.parquet").sort("image_id")
    assert ledger["status"].to_list() == ["ok", "dead_http", "dead_placeholder"]
    summary = json.loads((tmp_path / "dl" / "summary.json").read_text())
    assert summary["counts"]["ok"] == 1


def test_data_download_bad_manifest(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("image_id,link\nx,http://127.0.0.1:9/x\n")
    res = runner.invoke(
        app, ["data", "download", "--manifest", str(bad), "--out", str(tmp_path / "dl")]
    )
    assert res.exit_code == 1 and "m.csv" in res.output and "Traceback" not in res.output


def test_list_shows_never_run_and_the_demo_first(tmp_path, tiny_params_dict):
    """Issue 22 item 8: a stage with no record is "never run", not "stale"; a stage whose
    output changed is stale with its reason; the demo's stages are listed first."""
    import json

    from pipelines.config import load_params
    from pipelines.graph import build_graph, write_stamp
    from tests.conftest import write_params

    raw = tiny_params_dict
    raw["tracking"] = {"enabled": False}
    raw["tables"] = {  # the demo's table is declared last: its cells come late in run order
        "other": {"title": "other", "datasets": ["toyworld"], "rows": ["clip_zeroshot"]},
        "tiny": {"title": "tiny", "datasets": ["toyworld"], "rows": ["random"]},
    }
    raw["demo_tables"] = ["tiny"]
    path = write_params(tmp_path, raw)
    params = load_params(path, check_methods=False)
    graph = build_graph(params)
    assert list(graph).index("cell@toyworld@clip_zeroshot") < list(graph).index(
        "cell@toyworld@random"
    )
    data = tmp_path / graph["dataset@toyworld"].out
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"counts": {}}))
    write_stamp(params, graph, "dataset@toyworld")
    (data / "meta.json").write_text(json.dumps({"counts": {"train": 1}}))  # now stale

    res = runner.invoke(app, ["list", "--params", str(path)])
    assert res.exit_code == 0, res.output
    rows = {}
    for i, line in enumerate(res.output.splitlines()):
        cols = [c.strip() for c in line.split("│")]
        if len(cols) > 2 and cols[1] in graph:
            rows[cols[1]] = (i, cols[2])
    assert set(rows) == set(graph)
    assert rows["dataset@toyworld"][1] == "stale"
    assert {s for n, (_, s) in rows.items() if n != "dataset@toyworld"} == {"never run"}
    demo = ["dataset@toyworld", "cell@toyworld@random", "table@tiny"]
    others = ["cell@toyworld@clip_zeroshot", "table@other", "report@all"]
    assert max(rows[n][0] for n in demo) < min(rows[n][0] for n in others)
    assert "stale dataset@toyworld: output" in res.output
    assert "1 stale" in res.output and f"{len(graph) - 1} never run" in res.output
