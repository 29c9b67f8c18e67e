"""MLflow helpers: one experiment per dataset (cells) and one for tables; one run per
cell, tagged with git SHA, dataset, variant, backbone and the Dagster run id.

Everything degrades to a no-op when tracking is disabled, so the library never needs a
server. The default store is a local SQLite file (params.yaml: tracking.uri).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.config import REPO_ROOT, Params
from pipelines.redact import redact

log = logging.getLogger(__name__)

SERVER_TIMEOUT_S = 5.0  # how long an http(s) tracking server gets to answer before a run


class TrackingError(RuntimeError):
    """The tracking server cannot be used (message already redacted, one line)."""


def check_tracking_server(uri: str, timeout: float = SERVER_TIMEOUT_S) -> None:
    """Fail fast, in one clear line, when an http(s) tracking URI does not answer.

    MLflow's own client retries for minutes before raising a traceback holding the URI,
    credentials included; any HTTP answer (even 401 or 404) counts as reachable here."""
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as err:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is unreachable ({type(err).__name__} "
            f"within {timeout:g}s); start it, fix MLFLOW_TRACKING_URI / tracking.uri, or run "
            "without tracking (tracking.enabled: false, or OVML_TRACKING=0)"
        ) from None


def git_sha(root: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """A thin wrapper around one active MLflow run (or nothing)."""

    def __init__(self, run: Any | None):
        self.run = run

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_artifact(str(path))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _experiment(params: Params, name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = params.root / "mlartifacts" / name.replace("/", "_")
    return mlflow.create_experiment(name, artifact_location=artifacts.as_uri())


@contextlib.contextmanager
def mlflow_run(
    params: Params,
    experiment: str,
    run_name: str,
    *,
    tags: dict[str, str],
    run_params: dict[str, Any],
) -> Iterator[Tracker]:
    """Start an MLflow run (or a no-op tracker when tracking is disabled)."""
    if not params.tracking.enabled or os.environ.get("OVML_TRACKING", "1") == "0":
        yield Tracker(None)
        return
    import mlflow

    from pipelines.redact import install

    install()  # MLflow's own log lines and tracebacks may quote the URI
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = params.tracking_uri()
    check_tracking_server(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    mlflow.set_tracking_uri(uri)
    try:
        exp_id = _experiment(params, experiment)
    except Exception as err:  # MlflowException, sqlalchemy, requests: one redacted line
        raise TrackingError(
            f"MLflow tracking at {redact(uri)}: {redact(str(err)).splitlines()[0][:300]}"
        ) from None
    all_tags = {"git_sha": git_sha(params.root), **{k: redact(str(v)) for k, v in tags.items()}}
    if run_id := os.environ.get("DAGSTER_RUN_ID"):
        all_tags["dagster_run_id"] = run_id
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags) as run:
        flat = {k: redact(str(v))[:500] for k, v in _flatten(run_params).items()}
        for i in range(0, len(flat), 100):
            mlflow.log_params(dict(list(flat.items())[i : i + 100]))
        yield Tracker(run)
