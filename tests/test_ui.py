"""`ovml ui` starts the Dagster and MLflow UIs on localhost and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from pipelines.cli import UIStartError, wait_until_serving
from tests.browser import free_port, wait_ok


def test_wait_until_serving_names_the_server_and_its_log(tmp_path):
    log = tmp_path / "ovml-ui-mlflow.log"
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(UIStartError, match=rf"MLflow UI did not answer .* see its log {log}"):
        wait_until_serving("MLflow UI", f"http://127.0.0.1:{port}/health", None, log, 1.0)
    assert time.monotonic() - t0 < 10
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(UIStartError, match=rf"Dagster UI exited with status 3; see its log {log}"):
        wait_until_serving("Dagster UI", f"http://127.0.0.1:{port}/", dead, log, 60)


def test_wait_until_serving_returns_once_the_server_answers(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving("test server", f"http://127.0.0.1:{port}/", server, tmp_path / "l", 60)
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        server.kill()
        server.wait()


def test_ui_serves_both_and_stops_on_sigint(tiny_workspace, tmp_path):
    d_port, m_port = free_port(), free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh")}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ovml"),
            "ui",
            "--params",
            str(tiny_workspace),
            "--dagster-port",
            str(d_port),
            "--mlflow-port",
            str(m_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        assert wait_ok(f"http://127.0.0.1:{m_port}/", deadline), "MLflow UI did not come up"
        assert wait_ok(f"http://127.0.0.1:{d_port}/server_info", deadline), (
            "Dagster UI did not come up"
        )
        time.sleep(10)  # MLflow 3.17 starts its job runner after the server answers
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        cmds = [" ".join(p.cmdline()) for p in tree if p.is_running()]
        assert not [c for c in cmds if "huey" in c or "jobs._job_runner" in c], cmds
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("ovml ui did not stop within 60 s of SIGINT")
    assert f"http://127.0.0.1:{d_port}" in out and f"http://127.0.0.1:{m_port}" in out
    # each experiment's runs table (the model-training view), printed once MLflow answers
    assert re.search(
        rf"ovml/toyworld: http://127.0.0.1:{m_port}/#/experiments/\d+/runs\?workflowType="
        "machine_learning",
        out,
    ), out
    for port in (d_port, m_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after stop"
