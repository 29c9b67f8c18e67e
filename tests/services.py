"""Real services for the service and Ray tests, started on loopback and stopped at the
end of the session. So far: a two-node Ray cluster (`ray start`, infra/README.md step 3).
Postgres, the S3 server (moto_server) and the MLflow server are not here yet.

Sized for a shared 2-core machine: one logical CPU per Ray node, a small object store,
no log monitor; every process runs in its own session and its group is stopped at exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except RuntimeError:
            raise
        except Exception:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready within {timeout:g}s")


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and its whole group."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray children of an exited leader
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def service_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **extra}
    # a loaded machine starts the dashboard slowly (Ray gives it 60 s by default)
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DASHBOARD_STARTUP_TIMEOUT_S="240",
        RAY_agent_register_timeout_ms="120000",
        RAY_raylet_start_wait_time_s="120",
        PYTHONUNBUFFERED="1",
    )
    return env


# ------------------------------------------------------------------------------------ Ray
class RayCluster:
    """A head and worker nodes started with ``ray start --block`` on this machine, each
    with its own custom resources (so a test can tell which node ran a step)."""

    OBJECT_STORE_BYTES = 80 * 2**20
    # Each node on its own loopback address (Ray replaces 127.0.0.1 itself by the host's
    # interface address; other 127.x addresses it keeps): nothing leaves loopback.
    HEAD_IP = "127.0.0.2"

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        # Ray's unix socket paths must stay short: a temp dir right under /tmp
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ovray-", dir="/tmp"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}

    @property
    def address(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def _node_args(self, ip: str, resources: dict[str, float]) -> list[str]:
        return [
            "--block",
            "--node-ip-address", ip,
            "--num-cpus", "1",
            "--num-gpus", "0",
            "--resources", json.dumps(resources),
            "--object-store-memory", str(self.OBJECT_STORE_BYTES),
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--include-log-monitor", "false",
            "--disable-usage-stats",
        ]  # fmt: skip

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"ray-{name}.log", "ab")  # noqa: SIM115 (lives with the node)
        self.nodes[name] = subprocess.Popen(
            [str(BIN / "ray"), "start", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=service_env(),
            start_new_session=True,
        )

    def start_head(self, resources: dict[str, float], attempts: int = 3) -> None:
        """Start the head; on a starved machine Ray's raylet gives its dashboard agent 15 s
        to report its ports and aborts otherwise, so a failed start is retried."""
        for attempt in range(attempts):
            self._start_head(resources)
            try:
                self.wait_nodes(1, names=["head"])
                return
            except (RuntimeError, TimeoutError):
                stop_group(self.nodes.pop("head"))
                if attempt == attempts - 1:
                    raise
                self.dashboard_port, self.gcs_port = free_port(), free_port()

    def _start_head(self, resources: dict[str, float]) -> None:
        self._start(
            "head",
            [
                "--head",
                "--port", str(self.gcs_port),
                "--ray-client-server-port", str(free_port()),
                "--include-dashboard", "true",
                "--dashboard-host", LOOPBACK,
                "--dashboard-port", str(self.dashboard_port),
                "--temp-dir", str(self.temp_dir),
                *self._node_args(self.HEAD_IP, resources),
            ],
        )  # fmt: skip

    def start_worker(self, name: str, resources: dict[str, float], attempts: int = 3) -> None:
        """Start a worker node and wait until the head lists it (retried like the head)."""
        for attempt in range(attempts):
            before = len(self.wait_nodes(1))
            self._start(
                name,
                [
                    "--address",
                    f"{self.HEAD_IP}:{self.gcs_port}",
                    *self._node_args(f"127.0.0.{len(self.nodes) + 2}", resources),
                ],
            )
            try:
                self.wait_nodes(before + 1, names=[name])
                return
            except (RuntimeError, TimeoutError):
                stop_group(self.nodes.pop(name))
                if attempt == attempts - 1:
                    raise

    def wait_nodes(self, n: int, timeout: float = 90, names: list[str] = ()) -> list[dict]:
        """The alive nodes, once there are ``n``; fails early if a named node's
        ``ray start`` exits."""
        from pipelines.services import ServiceError, ray_nodes

        found: list[dict] = []

        def ready() -> bool:
            for name in names:
                if self.nodes[name].poll() is not None:
                    raise RuntimeError(f"ray start of node {name!r} exited")
            try:
                found[:] = ray_nodes(self.address, timeout=2)
            except ServiceError:
                return False
            return len(found) >= n

        wait_for(ready, timeout, f"{n} Ray node(s) at {self.address}")
        return found

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group (its raylet, its workers, its jobs)."""
        stop_group(self.nodes.pop(name), signal.SIGKILL)

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                stop_group(self.nodes.pop(name))
        if not os.environ.get("OVML_KEEP_RAY_TMP"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)
