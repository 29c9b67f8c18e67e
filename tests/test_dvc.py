"""DVC: `dvc repro` runs the graph; a second repro does nothing; changing one variant's
parameter reruns only that cell and the table, and changing a corpus's size only the corpus
and what reads it. Runs the real dvc (an isolated uv tool)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_params
from pipelines.graph import STAMP, dvc_yaml
from tests.conftest import REPO, TINY_PARAMS, dvc_binary, write_params


def _repro(ws: Path, *targets: str) -> list[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OVML_PARAMS": "",
    }
    env.pop("OVML_PARAMS")
    res = subprocess.run(
        [dvc_binary(), "repro", *targets],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return re.findall(r"Running stage '([^']+)'", res.stdout)


def _dvc_workspace(ws: Path, params: dict, *, init: bool = True) -> Path:
    """A workspace with params.yaml, its dvc.yaml and (``init``) `dvc init` (no git)."""
    path = write_params(ws, params)
    (ws / "pipelines").symlink_to(REPO / "pipelines")  # code deps are repo-relative paths
    (ws / "dvc.yaml").write_text(dvc_yaml(load_params(path)))
    if init:
        _dvc_init(ws)
    return path


def _dvc_init(ws: Path) -> None:
    subprocess.run([dvc_binary(), "init", "--no-scm", "-q"], cwd=ws, check=True, timeout=120)


def _finished_at(ws: Path) -> dict[str, str]:
    """``{stage: finished_at}`` of every stage record in the workspace."""
    return {
        rec["stage"]: rec["finished_at"]
        for p in sorted(ws.rglob(STAMP))
        if ".dvc" not in p.parts
        for rec in [json.loads(p.read_text())]
    }


def _output_hashes(ws: Path) -> dict[str, str]:
    """sha256 and mtime of every file the stages wrote (a deleted-and-rebuilt file changes)."""
    from pipelines.io import sha256_file

    return {
        str(p.relative_to(ws)): f"{sha256_file(p)}:{p.stat().st_mtime_ns}"
        for top in ("data", "models", "features", "results")
        for p in sorted((ws / top).rglob("*"))
        if p.is_file()
    }


def _set_param(path: Path, keys: tuple[str, ...], value) -> None:
    raw = yaml.safe_load(path.read_text())
    node = raw
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.slow
def test_dvc_repro_after_cli_and_dagster_runs_nothing(tmp_path, monkeypatch):
    """Issue 26: what the CLI or Dagster built is in dvc.lock, so `dvc repro` runs 0
    stages and deletes nothing; a params change reruns only its cell and the table."""
    import dagster as dg
    from typer.testing import CliRunner

    from pipelines.cli import app

    ws = tmp_path / "ws"
    path = _dvc_workspace(ws, dict(TINY_PARAMS, tracking={"enabled": False}))
    monkeypatch.setenv("OVML_DVC", dvc_binary())

    res = CliRunner().invoke(app, ["table", "tiny", "--params", str(path)])
    assert res.exit_code == 0, res.output
    assert (ws / "dvc.lock").exists()
    before = _output_hashes(ws)
    assert any(k.startswith("models/toy-clip/") for k in before)
    assert _repro(ws, "table__tiny") == []
    assert _output_hashes(ws) == before  # nothing deleted, nothing rebuilt

    # Dagster recomputes one cell (its params changed) and the table
    _set_param(path, ("variants", "clip_zeroshot-single", "prompts"), "pool")
    monkeypatch.setenv("OVML_PARAMS", str(path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    from dagster_project.definitions import build_definitions

    defs = build_definitions(str(path))
    assets = list(defs.assets)
    cell = next(a for a in assets if a.key.path == ["cells", "toyworld", "clip_zeroshot-single"])
    table = next(a for a in assets if a.key.path[0] == "table")
    instance = dg.DagsterInstance.ephemeral()
    for asset in (cell, table):
        out = dg.materialize([asset], resources=defs.resources, instance=instance)
        assert out.success
        mat = out.get_asset_materialization_events()[0].materialization
        assert mat.metadata["reused"].value is False
    after_dagster = _output_hashes(ws)
    changed = {k for k in after_dagster if after_dagster[k] != before.get(k)}
    assert {k.split("/")[3] for k in changed if k.startswith("results/cells/")} == {
        "clip_zeroshot-single"
    }
    assert _repro(ws, "table__tiny") == []
    assert _output_hashes(ws) == after_dagster

    # a params change seen by DVC alone: only that cell and the table rerun
    _set_param(path, ("variants", "random", "seed_offset"), 7)
    assert sorted(_repro(ws, "table__tiny")) == ["cell__toyworld__random", "table__tiny"]
    after_dvc = _output_hashes(ws)
    assert {k for k in after_dvc if after_dvc[k] != after_dagster.get(k)} <= {
        k for k in after_dvc if k.startswith(("results/cells/toyworld/random/", "results/tables/"))
    }
    assert _repro(ws, "table__tiny") == []


@pytest.mark.slow
def test_plain_dvc_repro_on_a_workspace_built_before_dvc_recomputes_nothing(tmp_path):
    """Issue 26: built by the CLI before `.dvc` existed (so no dvc.lock), then `dvc init`
    and a plain `dvc repro` (no `ovml dvc-commit`): DVC deletes no output (persist) and
    every `ovml stage` finds its stage fresh by its record and returns at once, so nothing
    is recomputed and DVC records the lock; a corrupted output is recomputed, whether DVC
    sees the change (its lock) or only the record's sha256 does (same size and mtime)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    ws = tmp_path / "ws"
    path = _dvc_workspace(ws, dict(TINY_PARAMS, tracking={"enabled": False}), init=False)
    res = CliRunner().invoke(app, ["table", "tiny", "--params", str(path)])
    assert res.exit_code == 0, res.output
    assert not (ws / "dvc.lock").exists()  # no .dvc yet: nothing committed
    built, records = _output_hashes(ws), _finished_at(ws)
    assert any(k.startswith("models/toy-clip/") for k in built)

    _dvc_init(ws)
    ran = _repro(ws, "table__tiny")  # DVC runs every command: it has no lock
    assert "table__tiny" in ran and "backbone__toy-clip" in ran
    assert _finished_at(ws) == records  # no stage recomputed
    assert _output_hashes(ws) == built  # nothing deleted, nothing rewritten
    assert (ws / "dvc.lock").exists()
    assert _repro(ws, "table__tiny") == []  # the lock DVC wrote knows every stage

    # a corrupted output that DVC sees (size changed): the cell reruns, its file is
    # restored, and the table (its input came back byte-identical) is not recomputed
    cell = ws / "results/cells/toyworld/random"
    (cell / "metrics.json").write_text("{}")
    ran = _repro(ws, "table__tiny")
    assert "cell__toyworld__random" in ran
    after = _finished_at(ws)
    assert after["cell@toyworld@random"] != records["cell@toyworld@random"]
    assert {k for k in after if after[k] != records[k]} == {"cell@toyworld@random"}
    now = _output_hashes(ws)
    key = "results/cells/toyworld/random/metrics.json"
    assert now[key].split(":")[0] == built[key].split(":")[0]
    assert _repro(ws, "table__tiny") == []

    # a corruption only the record's sha256 sees (same size, mtime put back) on a
    # workspace without a lock: that stage is recomputed, no other
    (ws / "dvc.lock").unlink()
    victim = max((p for p in cell.iterdir() if p.name != STAMP), key=lambda p: p.stat().st_size)
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = _finished_at(ws)
    _repro(ws, "table__tiny")
    again = _finished_at(ws)
    assert {k for k in again if again[k] != before[k]} == {"cell@toyworld@random"}
    rel = str(victim.relative_to(ws))
    assert _output_hashes(ws)[rel].split(":")[0] == built[rel].split(":")[0]
    assert _repro(ws, "table__tiny") == []


def test_sync_dvc_lock_commits_only_fresh_stages_in_step(tmp_path, monkeypatch):
    """No .dvc: nothing; dvc.yaml out of step: a warning, nothing committed; under
    `dvc repro` itself: nothing (DVC writes its own lock)."""
    from pipelines.dvc_lock import sync_dvc_lock

    path = write_params(tmp_path, dict(TINY_PARAMS, tracking={"enabled": False}))
    params = load_params(path)
    assert sync_dvc_lock(params, ["dataset@toyworld"]).skipped == "no .dvc folder"
    (tmp_path / ".dvc").mkdir()
    monkeypatch.setenv("OVML_DVC", sys.executable)  # never run: nothing gets that far
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    got = sync_dvc_lock(params, ["dataset@toyworld"])
    assert got.committed == [] and "out of step" in (got.warning or "")
    (tmp_path / "dvc.yaml").write_text(dvc_yaml(params))
    got = sync_dvc_lock(params, ["dataset@toyworld"])  # never run: not fresh
    assert got.committed == [] and got.skipped == "no fresh stage to commit"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert "dvc repro" in (sync_dvc_lock(params, ["dataset@toyworld"]).skipped or "")


@pytest.mark.slow
def test_dvc_repro_is_incremental(tmp_path):
    ws = tmp_path / "ws"
    params = dict(TINY_PARAMS, tracking={"enabled": False})
    # a corpus stage and its one consumer, so that a corpus change is seen to rerun only them
    params["corpora"] = {"comc-sentences": {"kind": "comc-sentences", "n_sentences": 200}}
    params["variants"] = {
        **TINY_PARAMS["variants"],
        "comc": {"method": "comc", "epochs": 2, "threads": 1},
    }
    params["tables"] = {
        "tiny": {
            **TINY_PARAMS["tables"]["tiny"],
            "rows": [*TINY_PARAMS["tables"]["tiny"]["rows"], "comc"],
        }
    }
    write_params(ws, params)
    (ws / "pipelines").symlink_to(REPO / "pipelines")  # code deps are repo-relative paths
    (ws / "dvc.yaml").write_text(dvc_yaml(load_params(ws / "params.yaml")))
    subprocess.run([dvc_binary(), "init", "--no-scm", "-q"], cwd=ws, check=True)

    first = _repro(ws)
    assert set(first) == set(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])
    assert _repro(ws) == []

    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["variants"]["clip_zeroshot-single"]["prompts"] = "pool"
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert sorted(_repro(ws)) == [
        "cell__toyworld__clip_zeroshot-single",
        "report__all",
        "table__tiny",
    ]
    assert (ws / "results/cells/toyworld/clip_zeroshot-single/metrics.json").exists()

    raw["corpora"]["comc-sentences"]["n_sentences"] = 260  # the corpus and what reads it
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert sorted(_repro(ws)) == [
        "cell__toyworld__comc",
        "corpus__toyworld__comc-sentences",
        "report__all",
        "table__tiny",
    ]
    assert _repro(ws) == []
