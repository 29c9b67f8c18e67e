"""A real two-node Ray cluster on this machine (head + one worker, `ray start`, each node
on its own loopback address with its own custom resource), and the demo table
materialised through Dagster's `demo_steps` job with the Ray executor: every step is a
Ray job, each lands on the node its stage kind asks for, two independent cells run at
the same time, outputs and stage records equal those of the in-process run
(`tiny_workspace`), a node lost mid-step has its step retried on a replacement node, and
a stage asking for a GPU fails at submission, naming the stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_PARAMS, write_params
from tests.services import RayCluster, service_env

# In `make test`. On the shared 2-core machine under load the head once missed 3 x 90 s;
# quiet, the three tests take ~160 s, cluster start included.
pytestmark = pytest.mark.slow

HEAD_RES = {"ovml_head": 1}
WORKER_RES = {"ovml_worker": 2}
# which node each stage kind lands on (the test's stand-in for a CPU pool and a GPU pool)
ON_HEAD = {"cpus": 0.5, "gpus": 0, "memory_gb": 0.5, "ray_resources": {"ovml_head": 0.1}}
ON_WORKER = {"cpus": 0.5, "gpus": 0, "memory_gb": 0.5, "ray_resources": {"ovml_worker": 1}}
CELLS = ["random", "clip_zeroshot", "clip_zeroshot-single"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    cluster = RayCluster(tmp_path_factory.mktemp("ray-logs"))
    try:
        cluster.start_head(HEAD_RES)
        cluster.start_worker("worker", WORKER_RES)
        yield cluster
    finally:
        cluster.stop()


def _ray_params(address: str, **resources) -> dict:
    params = json.loads(json.dumps(TINY_PARAMS))
    params["tracking"] = {"enabled": False}
    params["execution"] = {
        "executor": "ray",
        "ray": {"address": address, "health_check_interval_s": 2, "step_retries": 1},
        "resources": {
            "dataset": ON_HEAD,
            "backbone": ON_HEAD,
            "table": ON_HEAD,
            "features": ON_WORKER,
            "cell": ON_WORKER,
            **resources,
        },
    }
    return params


def _workspace(tmp_path: Path, reference: Path, params: dict) -> Path:
    """A workspace with the reference's dataset and backbone (fresh, copied with their
    records): the Ray run computes the features, the cells and the table."""
    path = write_params(tmp_path, params)
    for sub in ("data/toyworld", "models/toy-clip"):
        shutil.copytree(reference.parent / sub, tmp_path / sub)
    return path


def _dagster(params_path: Path, home: Path, *args: str, timeout: float = 420):
    home.mkdir(exist_ok=True)
    env = service_env(OVML_PARAMS=str(params_path), DAGSTER_HOME=str(home), TQDM_DISABLE="1")
    cmd = [str(Path(sys.executable).parent / "dagster"), "job", "execute"]
    cmd += ["-m", "dagster_project.definitions", "-j", "demo_steps", *args]
    return subprocess.Popen(
        cmd,
        cwd=params_path.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _jobs(address: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return [j for j in JobSubmissionClient(address).list_jobs() if j.metadata.get("dagster/op")]


def _record(root: Path, out: str) -> dict:
    return json.loads((root / out / ".ovml-stage.json").read_text())


def _differ(a, b, at: str = "") -> list[str]:
    """The key paths where two JSON values differ, each with both values (for the message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for k in sorted(a.keys() | b.keys()) for d in _differ(a.get(k), b.get(k), f"{at}.{k}")
        ]
    return [] if a == b else [f"{at}: {a!r} != {b!r}"]


def _same_outputs(ref: Path, got: Path, out: str) -> None:
    a, b = _record(ref, out), _record(got, out)
    assert a["fingerprint"] == b["fingerprint"], out
    timing = {"seconds_fit", "seconds_predict", "path"}  # and the reference's MLflow run

    def meta(r: dict) -> dict:
        return {k: v for k, v in r["metadata"].items() if k not in timing and "mlflow" not in k}

    assert meta(a) == meta(b), out
    for name, entry in a["outputs"].items():
        if name == "metrics.json":  # holds the run's timings: compared without them
            ma, mb = (json.loads((r / out / name).read_text()) for r in (ref, got))
            strip = lambda m: json.loads(  # noqa: E731
                json.dumps(m),
                object_hook=lambda d: {
                    k: v for k, v in d.items() if k not in timing and "mlflow" not in k
                },
            )
            assert strip(ma) == strip(mb), (f"{out}/{name}", _differ(strip(ma), strip(mb)))
        elif not name.endswith((".png", ".md", ".csv")) and name != "table.json":
            assert entry["sha256"] == b["outputs"][name]["sha256"], f"{out}/{name}"
    assert b["view"] == "dagster" and b["run_id"]


def test_demo_on_two_node_ray_cluster(ray_cluster, tiny_workspace, tmp_path):
    ws = tmp_path / "ws"
    path = _workspace(ws, tiny_workspace, _ray_params(ray_cluster.address))
    proc = _dagster(path, tmp_path / "home")
    out, _ = proc.communicate(timeout=420)
    assert proc.returncode == 0, out[-4000:]

    ref = tiny_workspace.parent
    for sub in ["features/toyworld/toy-clip", *[f"results/cells/toyworld/{v}" for v in CELLS]]:
        _same_outputs(ref, ws, sub)
    assert (
        json.loads((ws / "results/tables/tiny/table.json").read_text())["rows"]
        == json.loads((ref / "results/tables/tiny/table.json").read_text())["rows"]
    )

    nodes = {n["node_id"]: n for n in ray_cluster.wait_nodes(2)}
    jobs = _jobs(ray_cluster.address)
    by_op = {j.metadata["dagster/op"]: j for j in jobs}
    assert len(by_op) == len(jobs) == 7  # dataset, backbone, features, 3 cells, table
    assert all(j.status == "SUCCEEDED" for j in jobs)
    where = {op: nodes[j.driver_node_id]["resources"] for op, j in by_op.items()}
    for op, res in where.items():
        expect = "ovml_worker" if op.startswith(("stage__cell", "stage__features")) else "ovml_head"
        assert expect in res, (op, res)
    cells = sorted(
        (j.start_time, j.end_time) for op, j in by_op.items() if op.startswith("stage__cell")
    )
    overlaps = [a[1] > b[0] for a, b in zip(cells, cells[1:], strict=False)]
    assert any(overlaps), cells  # independent cells ran at the same time on the worker
    print(
        "\nRay steps:",
        {
            op: (nodes[j.driver_node_id]["ip"], (j.end_time - j.start_time) / 1000)
            for op, j in by_op.items()
        },
        "\ncell intervals (ms):",
        cells,
    )


def test_lost_node_step_is_retried_on_a_replacement(ray_cluster, tiny_workspace, tmp_path):
    """The worker dies (every process of the node, SIGKILL) while a cell's step runs:
    the step's Ray job fails, Dagster's health check sees it and submits it again; it runs
    on the replacement node and the outputs equal the in-process run's."""
    import psutil

    ws = tmp_path / "ws"
    path = _workspace(ws, tiny_workspace, _ray_params(ray_cluster.address))
    for sub in ("features/toyworld/toy-clip", "results/cells/toyworld", "results/tables"):
        ref = tiny_workspace.parent / sub
        shutil.copytree(ref, ws / sub)
    victim = ws / "results/cells/toyworld/clip_zeroshot"
    shutil.rmtree(victim)  # the one stage this run computes (besides the table)
    before = {j.submission_id for j in _jobs(ray_cluster.address)}
    proc = _dagster(path, tmp_path / "home")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            running = [
                j
                for j in _jobs(ray_cluster.address)
                if j.submission_id not in before
                and j.metadata["dagster/op"] == "stage__cell_toyworld_clip_zeroshot"
                and j.status == "RUNNING"
            ]
            if running:
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        assert running, "the cell's step never started"
        node = psutil.Process(ray_cluster.nodes["worker"].pid)
        doomed = [node, *node.children(recursive=True)]
        for p in doomed:  # the whole node: ray start, raylet, workers, the step's process
            p.kill()
        psutil.wait_procs(doomed, timeout=15)
        ray_cluster.nodes.pop("worker")
        assert not (victim / ".ovml-stage.json").exists()  # nothing half-written
        ray_cluster.start_worker("worker2", WORKER_RES)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, out[-4000:]
    attempts = [
        j
        for j in _jobs(ray_cluster.address)
        if j.submission_id not in before
        and j.metadata["dagster/op"] == "stage__cell_toyworld_clip_zeroshot"
    ]
    assert sorted(j.status for j in attempts) == ["FAILED", "SUCCEEDED"], attempts
    assert "failed health check" in out and "Ray job" in out
    _same_outputs(tiny_workspace.parent, ws, "results/cells/toyworld/clip_zeroshot")


def test_gpu_stage_on_a_cluster_without_gpus_fails_at_submission(
    ray_cluster, tiny_workspace, tmp_path
):
    ws = tmp_path / "ws"
    gpu_cell = {**ON_WORKER, "gpus": 1}
    path = _workspace(ws, tiny_workspace, _ray_params(ray_cluster.address, cell=gpu_cell))
    t0 = time.monotonic()
    proc = _dagster(path, tmp_path / "home", "-o", "stage__cell_toyworld_random")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "stage cell@toyworld@random (kind cell) cannot run on the Ray cluster" in out, out[
        -3000:
    ]
    assert "the cluster has no GPU" in out
    assert time.monotonic() - t0 < 120  # not a scheduling timeout
    assert not (ws / "results/cells/toyworld/random").exists()
    raw = yaml.safe_load(path.read_text())
    assert raw["execution"]["resources"]["cell"]["gpus"] == 1
