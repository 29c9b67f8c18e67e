"""Real services for the service and Ray tests, started on loopback and stopped at the
end of the session: a two-node Ray cluster (`ray start`, infra/README.md step 3), and the
shared services of infra/README.md step 2: Postgres (Debian's package, `make postgres`),
an S3 server (moto_server) and the MLflow tracking server on both.

Sized for a shared 2-core machine: one logical CPU per Ray node, a small object store,
no log monitor; every process runs in its own session and its group is stopped at exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


# ------------------------------------------------------------- Postgres, S3, MLflow server
def _log(log_dir: Path, name: str):
    return open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 (lives with the process)


def _popen(cmd: list[str], log_dir: Path, name: str, env: dict[str, str], **kw):
    with _log(log_dir, name) as log:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            **kw,
        )


def _tail(log_dir: Path, name: str, n: int = 3000) -> str:
    path = log_dir / f"{name}.log"
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def wait_service(
    up: Callable[[], bool], timeout: float, what: str, proc, log_dir: Path, log: str
) -> None:
    """``wait_for`` a started service; a failure carries the tail of its log. ``up`` may
    raise ServiceError (pipelines/services.py) for "not yet"."""
    from pipelines.services import ServiceError

    def ready() -> bool:
        try:
            return up()
        except ServiceError:  # a RuntimeError, which wait_for would pass on
            return False

    try:
        wait_for(ready, timeout, what, proc)
    except (RuntimeError, TimeoutError) as err:
        raise RuntimeError(f"{err}\n{_tail(log_dir, log)}") from None


def pg_bin() -> Path:
    """Debian's Postgres binaries (`make postgres` installs the package)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    which = shutil.which("initdb")
    if which:
        return Path(which).parent
    raise FileNotFoundError("initdb not found: run `make postgres` (Debian's postgresql)")


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    host: str = LOOPBACK

    def url(self, db: str, *, driver: str = "", password: str | None = None) -> str:
        """``driver="psycopg2"`` for SQLAlchemy (2.1 defaults ``postgresql://`` to
        psycopg 3, which is not installed)."""
        pw = self.password if password is None else password
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{pw}@{self.host}:{self.port}/{db}"


@contextlib.contextmanager
def postgres(
    log_dir: Path, databases: tuple[str, ...] = (), timeout: float = 90
) -> Iterator[Postgres]:
    """A throwaway Postgres cluster: ``initdb`` in a tmp dir, ``postgres`` on loopback and
    a free port (its unix socket in the tmp dir), password auth over TCP, ``databases``
    created; stopped (fast shutdown) and removed at the end. As root, initdb and postgres
    run as the ``postgres`` user (they refuse to run as root)."""
    import psycopg2

    log_dir.mkdir(parents=True, exist_ok=True)
    bindir = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="ovpg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    pw = Postgres(port=free_port(), user="ovml", password="pg-" + secrets.token_hex(8))
    pwfile = root / "pwfile"
    pwfile.write_text(pw.password + "\n")
    if as_user:
        os.chown(pwfile, pg.pw_uid, pg.pw_gid)
    pwfile.chmod(0o600)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    with _log(log_dir, "initdb") as log:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(root / "data"), "-U", pw.user,
             f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=peer",
             "-E", "UTF8", "--no-sync"],
            stdout=log, stderr=subprocess.STDOUT, env=env, check=True, timeout=timeout,
        )  # fmt: skip
    pwfile.unlink()
    proc = _popen(
        [*as_user, str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(pw.port),
         "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={root}",
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
         "-c", "max_connections=60", "-c", "shared_buffers=32MB"],
        log_dir, "postgres", env,
    )  # fmt: skip
    try:
        from pipelines.services import check_postgres

        def up() -> bool:
            check_postgres(pw.url("postgres"), timeout=3)
            return True

        wait_service(up, timeout, f"Postgres at {LOOPBACK}:{pw.port}", proc, log_dir, "postgres")
        if databases:
            conn = psycopg2.connect(pw.url("postgres"), connect_timeout=10)
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in databases:
                    cur.execute(f'CREATE DATABASE "{db}"')
            conn.close()
        yield pw
    finally:
        stop_group(proc, signal.SIGINT)  # fast shutdown: no waiting for clients
        shutil.rmtree(root, ignore_errors=True)


def s3_env(access_key: str = "ovml-test", secret: str | None = None) -> dict[str, str]:
    """Dummy AWS credentials for moto (in the environment only, never in a config file);
    no instance-metadata lookup (it would leave loopback)."""
    return {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret or "s3-" + secrets.token_hex(8),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]  # the credentials its clients use

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        ):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out


@contextlib.contextmanager
def s3_server(log_dir: Path, bucket: str = "ovml", timeout: float = 60) -> Iterator[S3Server]:
    """moto_server on a free loopback port, with one bucket (in memory; gone at the end)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = service_env(**s3_env())
    proc = _popen([str(BIN / "moto_server"), "-H", LOOPBACK, "-p", str(port)], log_dir, "moto", env)
    try:
        server = S3Server(f"http://{LOOPBACK}:{port}", bucket, {k: env[k] for k in s3_env()})
        from pipelines.services import check_s3

        def up() -> bool:
            with _env(server.env):
                check_s3(server.endpoint, timeout=3)
            return True

        wait_service(up, timeout, f"S3 server at {server.endpoint}", proc, log_dir, "moto")
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        stop_group(proc, timeout=2)  # a test server: no state worth a graceful stop


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def mlflow_server(
    log_dir: Path, backend_uri: str, artifacts_destination: str, env: dict[str, str],
    timeout: float = 240,
) -> Iterator[str]:  # fmt: skip
    """``mlflow server`` on a free loopback port with its runs in ``backend_uri`` (passed
    as $MLFLOW_BACKEND_STORE_URI, so its password is not on the command line) and its
    artifacts proxied to ``artifacts_destination`` (``env``: the S3 credentials and
    $MLFLOW_S3_ENDPOINT_URL). Yields the tracking URI. One worker: a 2-core machine."""
    import httpx

    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://{LOOPBACK}:{port}"
    proc = _popen(
        [str(BIN / "mlflow"), "server", "--artifacts-destination", artifacts_destination,
         "--host", LOOPBACK, "--port", str(port), "--workers", "1"],
        log_dir, "mlflow-server",
        service_env(MLFLOW_BACKEND_STORE_URI=backend_uri, **env),
        cwd=log_dir,
    )  # fmt: skip
    try:

        def up() -> bool:
            return httpx.get(f"{uri}/health", timeout=3).status_code == 200

        # a first start migrates the Postgres schema (slow on a loaded machine)
        wait_service(up, timeout, f"MLflow server at {uri}", proc, log_dir, "mlflow-server")
        yield uri
    finally:
        stop_group(proc, timeout=2)  # its state is in Postgres and S3
