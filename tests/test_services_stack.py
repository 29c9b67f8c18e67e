"""The shared services of infra/README.md step 2, for real, on loopback: Postgres
(Debian's package, `make postgres`), an S3 server (moto_server), the MLflow tracking
server on Postgres with its artifacts on the S3 bucket, Dagster's instance storage on
Postgres, and a DVC remote on the same bucket.

`ovml demo`'s table is run through them by Dagster (the `demo` job); then its MLflow
runs are on the server and their artifacts in the bucket, Dagster's run and events are
in Postgres, and after `dvc push`, a fresh `git clone` and `dvc pull`, `dvc repro`
recomputes nothing. No secret (the Postgres password, the S3 secret key) is in any
output or log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_params
from pipelines.graph import STAMP, dvc_yaml
from tests.conftest import REPO, TINY_PARAMS, dvc_binary, write_params
from tests.services import BIN, mlflow_server, postgres, s3_server, service_env

pytestmark = pytest.mark.slow

BUCKET = "ovml"
CELLS = {"random", "clip_zeroshot", "clip_zeroshot-single"}
GIT_ID = {
    "GIT_AUTHOR_NAME": "ovml test",
    "GIT_AUTHOR_EMAIL": "test@ovml.invalid",
    "GIT_COMMITTER_NAME": "ovml test",
    "GIT_COMMITTER_EMAIL": "test@ovml.invalid",
}


class Stack:
    def __init__(self, pg, s3, tracking_uri: str, log_dir: Path):
        self.pg, self.s3, self.tracking_uri, self.log_dir = pg, s3, tracking_uri, log_dir
        self.outputs: list[str] = []  # every command's output, checked for secrets

    @property
    def secrets(self) -> list[str]:
        return [self.pg.password, self.s3.env["AWS_SECRET_ACCESS_KEY"]]

    def env(self, **extra: str) -> dict[str, str]:
        env = service_env(**self.s3.env, **GIT_ID, OVML_DVC=dvc_binary(), TQDM_DISABLE="1", **extra)
        env.pop("OVML_PARAMS", None)
        env.pop("MLFLOW_TRACKING_URI", None)  # params.yaml's tracking.uri decides
        return env

    def run(self, cmd: list[str], cwd: Path, timeout: float = 300, **extra: str) -> str:
        res = subprocess.run(
            cmd,
            cwd=cwd,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out = res.stdout + res.stderr
        self.outputs.append(out)
        assert res.returncode == 0, f"{cmd}:\n{out[-4000:]}"
        return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Postgres (databases dagster and mlflow), moto_server with a bucket, and the MLflow
    server on both, started once for the module (logs in a tmp dir)."""
    log_dir = tmp_path_factory.mktemp("services-logs")
    with (
        postgres(log_dir, databases=("dagster", "mlflow")) as pg,
        s3_server(log_dir, bucket=BUCKET) as s3,
        mlflow_server(
            log_dir,
            backend_uri=pg.url("mlflow", driver="psycopg2"),
            artifacts_destination=f"s3://{BUCKET}/mlartifacts",
            env={**s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint},
        ) as tracking_uri,
    ):
        yield Stack(pg, s3, tracking_uri, log_dir)


def _dagster_yaml(stack: Stack) -> dict:
    return {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": stack.pg.user,
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                    "hostname": stack.pg.host,
                    "port": stack.pg.port,
                    "db_name": "dagster",
                    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3
                    "scheme": "postgresql+psycopg2",
                }
            }
        },
        "telemetry": {"enabled": False},
    }


def _output_hashes(ws: Path) -> dict[str, str]:
    from pipelines.io import sha256_file

    return {
        str(p.relative_to(ws)): sha256_file(p)
        for top in ("data", "models", "features", "results")
        for p in sorted((ws / top).rglob("*"))
        if p.is_file() and p.name != ".gitignore"  # git's (DVC writes them), not outputs
    }


def _records(ws: Path) -> dict[str, str]:
    return {
        rec["stage"]: rec["finished_at"]
        for p in sorted(ws.rglob(STAMP))
        if ".dvc" not in p.parts
        for rec in [json.loads(p.read_text())]
    }


@pytest.fixture(scope="module")
def demo_run(stack, tmp_path_factory):
    """A git + DVC workspace (the tiny params, tracking on the MLflow server) whose demo
    table was run by Dagster's `demo` job on the Postgres instance."""
    root = tmp_path_factory.mktemp("stack")
    ws, home = root / "ws", root / "dagster_home"
    params = json.loads(json.dumps(TINY_PARAMS))
    params["tracking"] = {"enabled": True, "uri": stack.tracking_uri}
    path = write_params(ws, params)
    (ws / "pipelines").symlink_to(REPO / "pipelines")  # code deps are repo-relative paths
    (ws / "dvc.yaml").write_text(dvc_yaml(load_params(path)))
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_dagster_yaml(stack)))
    stack.run(["git", "init", "-q", "-b", "main"], ws)
    stack.run([dvc_binary(), "init", "-q"], ws)
    stack.run(["git", "add", "-A"], ws)
    stack.run(["git", "commit", "-q", "-m", "workspace"], ws)

    out = stack.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "dagster_project.definitions", "-j", "demo"],
        ws,
        timeout=600,
        OVML_PARAMS=str(path),
        DAGSTER_HOME=str(home),
        DAGSTER_PG_PASSWORD=stack.pg.password,
    )
    assert "RUN_SUCCESS" in out, out[-3000:]
    return ws, home


def test_demo_through_mlflow_server_and_dagster_on_postgres(stack, demo_run):
    """The demo's MLflow runs are on the server (Postgres), their artifacts objects in the
    bucket (proxied: the Dagster process had no route to S3 but the server's), none in
    the workspace; Dagster's run and its materialisations are rows in Postgres."""
    import mlflow
    import psycopg2

    ws, home = demo_run
    client = mlflow.MlflowClient(tracking_uri=stack.tracking_uri)
    exps = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([e.experiment_id for e in exps], max_results=1000)
    assert {r.data.tags.get("variant") for r in runs} >= CELLS, [r.data.tags for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags.get("dagster_run_id") for r in runs)  # launched by Dagster
    keys = set(stack.s3.keys("mlartifacts/"))
    logged = 0
    for run in runs:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        for art in client.list_artifacts(run.info.run_id):
            if art.is_dir:
                continue
            key = f"mlartifacts/{run.info.experiment_id}/{run.info.run_id}/artifacts/{art.path}"
            assert key in keys, (key, sorted(keys)[:20])
            logged += 1
    assert logged >= len(CELLS)  # each cell logs at least its metrics.json
    assert not (ws / "mlartifacts").exists() and not (ws / "mlflow.db").exists()

    conn = psycopg2.connect(stack.pg.url("dagster"), connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs")
            dagster_runs = cur.fetchall()
            cur.execute(
                "SELECT asset_key FROM event_logs WHERE dagster_event_type = "
                "'ASSET_MATERIALIZATION'"
            )
            assets = {json.loads(k)[0] for (k,) in cur.fetchall()}  # '["cells", ...]'
    finally:
        conn.close()
    assert [s for _, s in dagster_runs] == ["SUCCESS"], dagster_runs
    assert {r.data.tags["dagster_run_id"] for r in runs} == {dagster_runs[0][0]}
    assert {"cells", "table"} <= assets, assets
    assert not list(home.rglob("*.db")), list(home.rglob("*.db"))  # no SQLite storage


def test_dvc_push_clone_pull_repro_recomputes_nothing(stack, demo_run, tmp_path):
    ws, _ = demo_run
    dvc = dvc_binary()
    stack.run([dvc, "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc"], ws)
    stack.run([dvc, "remote", "modify", "s3", "endpointurl", stack.s3.endpoint], ws)
    out = stack.run([str(BIN / "ovml"), "dvc-commit", "--params", "params.yaml"], ws)
    assert "committed" in out, out
    stack.run(["git", "add", "-A"], ws)
    stack.run(["git", "commit", "-q", "-m", "outputs: dvc.lock"], ws)
    tracked = stack.run(["git", "ls-files"], ws).split()
    assert "dvc.lock" in tracked
    assert not [f for f in tracked if f.startswith(("data/", "models/", "results/"))
                and not f.endswith(".gitignore")], tracked  # fmt: skip
    assert not any(s in (ws / ".dvc/config").read_text() for s in stack.secrets)

    stack.run([dvc, "push"], ws, timeout=300)
    built = _output_hashes(ws)
    pushed = stack.s3.keys("dvc/")
    assert len(pushed) >= len(built) > 10, (len(pushed), len(built))

    clone = tmp_path / "clone"
    stack.run(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    assert not _output_hashes(clone) and not _records(clone)  # git has no output
    # the demo's table and what it needs: a plain `dvc pull` also wants report__all's
    # output, which the demo never builds (and fails on it)
    stack.run([dvc, "pull", "--with-deps", "table__tiny"], clone, timeout=300)
    assert _output_hashes(clone) == built
    records = _records(clone)
    assert records == _records(ws) and len(records) == 7  # dataset .. table

    out = stack.run([dvc, "repro", "table__tiny"], clone, timeout=300)
    assert "Running stage" not in out, out
    assert "up to date" in out, out
    assert _records(clone) == records and _output_hashes(clone) == built


def test_no_secret_in_outputs_or_logs(stack, demo_run):
    """Runs last (file order): every command's output and every service log."""
    logs = [p.read_text(errors="replace") for p in stack.log_dir.glob("*.log")]
    assert len(logs) >= 3 and stack.outputs
    for text in [*stack.outputs, *logs]:
        for secret in stack.secrets:
            assert secret not in text
