"""A cell under torchrun: every rank trains in DDP, rank 0 alone writes the cell folder,
the stage stamp and the MLflow run (two gloo processes on the CPU)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_params
from pipelines.graph import STAMP, build_graph
from pipelines.runner import run_stage

REPO = Path(__file__).resolve().parent.parent

QKS_TINY = {
    "method": "qks",
    "n_queries": 2,
    "n_layers": 1,
    "heads": 4,
    "dropout": 0.0,
    "train": {"epochs": 1, "batch_size": 32, "lr": 1e-3, "threads": 1},
}


@pytest.fixture
def workspace(tiny_workspace, tmp_path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(
        tiny_workspace.parent, ws, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")
    )
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["variants"]["qks-tiny"] = QKS_TINY
    raw["tables"]["tiny"]["rows"].append("qks-tiny")
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    return ws / "params.yaml"


def test_torchrun_cell_writes_once_from_rank_zero(workspace):
    """The documented command, for real: torchrun with two CPU processes (gloo)."""
    import mlflow

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc-per-node=2",
        f"--master-port={port}",
        "-m",
        "pipelines.cli",
        "stage",
        "cell",
        "toyworld",
        "qks-tiny",
        "--params",
        str(workspace),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        cmd, env=env, cwd=workspace.parent, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    params = load_params(workspace)
    cell = params.path("results") / "cells" / "toyworld" / "qks-tiny"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["meta"]["fit"]["epochs"] == 1 and metrics["meta"]["fit"]["world_size"] == 2
    assert (cell / STAMP).exists()  # rank 0 stamped the stage
    assert not [p for p in cell.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    mlflow.set_tracking_uri(params.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["ovml/toyworld"], output_format="list")
    assert [r.info.run_name for r in runs] == ["qks-tiny"]  # one run, not one per rank
    assert metrics["meta"]["mlflow_run_id"] == runs[0].info.run_id


def test_only_cell_stages_run_under_torchrun(workspace, monkeypatch):
    params = load_params(workspace)
    graph = build_graph(params)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="only cell stages run under torchrun"):
        run_stage(params, graph["features@toyworld@toy-clip"], progress=False)
