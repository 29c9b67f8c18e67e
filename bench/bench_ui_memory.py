"""Memory of the MLflow UI as `ovml ui` starts it, with and without MLflow's job runner
(issue 22 item 7): resident set size (RSS, psutil) summed over the server's process tree,
and the number of processes, each measured --settle seconds after /health answers (the
job runner and its huey consumers start after the server does).

    python bench/bench_ui_memory.py [--settle 15] [--workdir DIR]

Prints one line per setting: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true (MLflow's default)
and =false (what `ovml ui` sets), and the ratio of the two totals.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.cli import wait_until_serving  # noqa: E402
from tests.browser import free_port  # noqa: E402


def tree_rss(pid: int) -> tuple[int, float, list[str]]:
    """(processes, summed RSS in MiB, their command lines) of ``pid`` and its children."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    rss, cmds = 0, []
    for p in procs:
        try:
            rss += p.memory_info().rss
            cmds.append(" ".join(p.cmdline())[:100])
        except psutil.NoSuchProcess:
            continue
    return len(cmds), rss / 2**20, cmds


def measure(job_execution: bool, workdir: Path, settle: float) -> tuple[int, float, list[str]]:
    port = free_port()
    log = workdir / f"mlflow-jobs-{job_execution}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_execution).lower()}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri"]
    cmd += [f"sqlite:///{workdir / 'mlflow.db'}", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_serving("MLflow UI", f"http://127.0.0.1:{port}/health", proc, log, 600)
        time.sleep(settle)
        return tree_rss(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        totals = {}
        for job_execution in (True, False):
            n, mib, cmds = measure(job_execution, workdir, args.settle)
            totals[job_execution] = mib
            print(
                f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION={str(job_execution).lower():5s}: "
                f"{n} processes, {mib:.0f} MiB RSS"
            )
            for c in cmds:
                print(f"    {c}")
        print(f"ratio (job runner on / off): {totals[True] / totals[False]:.2f}")


if __name__ == "__main__":
    main()
