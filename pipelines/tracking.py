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

log = logging.getLogger(__name__)


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

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(params.tracking_uri())
    exp_id = _experiment(params, experiment)
    all_tags = {"git_sha": git_sha(params.root), **tags}
    if run_id := os.environ.get("DAGSTER_RUN_ID"):
        all_tags["dagster_run_id"] = run_id
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags) as run:
        flat = {k: str(v)[:500] for k, v in _flatten(run_params).items()}
        for i in range(0, len(flat), 100):
            mlflow.log_params(dict(list(flat.items())[i : i + 100]))
        yield Tracker(run)
