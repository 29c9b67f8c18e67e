"""`ovml ui` starts the Dagster and MLflow UIs on localhost and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser import free_port, wait_ok


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
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("ovml ui did not stop within 60 s of SIGINT")
    assert f"http://127.0.0.1:{d_port}" in out and f"http://127.0.0.1:{m_port}" in out
    for port in (d_port, m_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after stop"
