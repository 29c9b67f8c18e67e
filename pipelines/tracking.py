"""MLflow helpers: one experiment per dataset (cells) and one for tables; one run per
cell, tagged with git SHA, dataset, variant, backbone and the Dagster run id.

Everything degrades to a no-op when tracking is disabled, so the library never needs a
server. The default store is a local SQLite file (params.yaml: tracking.uri).

What a run carries (see :func:`mlflow_run`):
- MLflow's own source fields (``mlflow.source.git.commit``, ``mlflow.source.name``) and
  the variant's description as the run description (``mlflow.note.content``);
- ``dagster_run_id`` and ``dagster_run_url`` when Dagster launched it (the asset passes
  its context's run id through :func:`dagster_run`, not through the environment);
- ``current``: ``yes`` on the latest finished run of a cell; a recomputed cell's
  earlier runs get ``current = no``, ``superseded_by = <run id>`` and the run name
  ``<cell> (superseded)``, so the runs table's default Run Name column tells them apart;
- a dataset input (name ``<dataset>/<split>``, the split file's digest, its path), which
  fills the runs table's Dataset column;
- ``ovml.host`` / ``ovml.pid``: a run left RUNNING by a killed process on this host is
  marked KILLED when the next run starts in its experiment.

Experiments carry ``mlflow.experimentKind = custom_model_development``, but MLflow 3.17's
UI ignores that tag: its GenAI / model-training switch decides (GenAI unless the URL says
``workflowType=machine_learning`` or the user flipped the switch in that browser), and no
server option changes that default. Every URL ovml prints or links to carries the
model-training choice (:data:`ML_VIEW`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import REPO_ROOT, Params
from pipelines.io import pid_alive
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

    @property
    def experiment_id(self) -> str | None:
        return self.run.info.experiment_id if self.run is not None else None

    def log_figure(self, figure: Any, name: str) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_figure(figure, name)

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


EXPERIMENT_KIND = "custom_model_development"  # the MLflow UI opens such experiments on runs

_DAGSTER_RUN: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "ovml_dagster_run", default=None
)


def _set_tracking_uri(mlflow: Any, uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect on ``$MLFLOW_TRACKING_URI``.

    MLflow writes the URI into the process environment, and the environment wins over
    params (MLflow's own convention, README): left there, one workspace's URI would leak
    into every later run of the same process (Dagster's, a notebook's, a test session's)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@contextlib.contextmanager
def dagster_run(run_id: str, url: str | None = None) -> Iterator[None]:
    """Tag the MLflow runs started inside this block with a Dagster run (id and UI link)."""
    token = _DAGSTER_RUN.set((run_id, url))
    try:
        yield
    finally:
        _DAGSTER_RUN.reset(token)


def mlflow_ui_url() -> str:
    """Base URL of the MLflow UI (``ovml ui`` sets OVML_MLFLOW_UI_URL for Dagster)."""
    return os.environ.get("OVML_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


# MLflow 3's UI has a global GenAI / model-training switch (GenAI by default); links
# carry the model-training choice so they open on runs, not on traces
ML_VIEW = "workflowType=machine_learning"


def run_url(experiment_id: str, run_id: str, base: str | None = None) -> str:
    return f"{base or mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def experiments_url(base: str | None = None) -> str:
    return f"{base or mlflow_ui_url()}/#/experiments?{ML_VIEW}"


def experiment_url(experiment_id: str, base: str | None = None) -> str:
    """The experiment's runs table (the model-training view, not the GenAI overview)."""
    return f"{base or mlflow_ui_url()}/#/experiments/{experiment_id}/runs?{ML_VIEW}"


SUPERSEDED = " (superseded)"  # appended to the name of a run a newer run of its cell replaced


@dataclass(frozen=True)
class DatasetInput:
    """What a run read, as MLflow's Dataset column shows it: ``name`` (``<dataset>/<split>``),
    the ``digest`` of the split's file and its ``path`` (the source)."""

    name: str
    path: Path
    digest: str


def dataset_input(name: str, path: Path) -> DatasetInput:
    """Describe a split file for :func:`mlflow_run` (digest: sha256 of its bytes, 16 hex)."""
    import hashlib

    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file of dataset input {name!r} is missing")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return DatasetInput(name=name, path=path.resolve(), digest=h.hexdigest()[:16])


def _log_dataset_input(mlflow: Any, ds: DatasetInput) -> None:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers the local source class twice
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        source = resolve_dataset_source(ds.path.as_uri())
    mlflow.log_input(MetaDataset(source, name=ds.name, digest=ds.digest), context="evaluation")


def describe(description: str, dagster_url: str | None) -> str:
    """The run description (markdown, ``mlflow.note.content``): the variant's text and,
    when Dagster launched the run, a link to that Dagster run."""
    parts = [redact(description)] if description else []
    if dagster_url:
        parts.append(f"Launched by [Dagster run {dagster_url.rsplit('/', 1)[-1]}]({dagster_url}).")
    return "\n\n".join(parts)


def _experiment(params: Params, name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND:
            mlflow.MlflowClient().set_experiment_tag(
                exp.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND
            )
        return exp.experiment_id
    # a tracking server keeps the artifacts where it was told (--artifacts-destination,
    # proxied: mlflow-artifacts:/); a local store keeps them next to the workspace
    artifacts = None
    if not params.tracking_uri().startswith(("http://", "https://")):
        artifacts = (params.root / "mlartifacts" / name.replace("/", "_")).as_uri()
    return mlflow.create_experiment(
        name, artifact_location=artifacts, tags={"mlflow.experimentKind": EXPERIMENT_KIND}
    )


def mark_killed_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED the runs of this host left RUNNING by a process that no longer exists."""
    host = socket.gethostname()
    killed = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = run.data.tags
        pid = tags.get("ovml.pid", "")
        if tags.get("ovml.host") != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not pid_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, "killed_reason", f"process {pid} on {host} ended")
            killed.append(run.info.run_id)
    return killed


def supersede(client: Any, experiment_id: str, run_name: str, current_id: str) -> list[str]:
    """Mark this run ``current = yes`` and the earlier finished runs of the same name
    ``current = no, superseded_by = <current_id>``, renamed ``<name> (superseded)``."""
    old = []
    for run in client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and tags.current = 'yes'",
        max_results=1000,
    ):
        if run.info.run_id != current_id:
            client.set_tag(run.info.run_id, "current", "no")
            client.set_tag(run.info.run_id, "superseded_by", current_id)
            client.update_run(run.info.run_id, name=f"{run_name}{SUPERSEDED}")
            old.append(run.info.run_id)
    client.set_tag(current_id, "current", "yes")
    return old


@contextlib.contextmanager
def mlflow_run(
    params: Params,
    experiment: str,
    run_name: str,
    *,
    tags: dict[str, str],
    run_params: dict[str, Any],
    description: str = "",
    source: str = "",
    system_metrics: bool = False,
    dataset: DatasetInput | None = None,
) -> Iterator[Tracker]:
    """Start an MLflow run (or a no-op tracker when tracking is disabled).

    ``description`` becomes the run's description, ``source`` its source name (the
    stage command), ``dataset`` its dataset input; ``system_metrics`` samples CPU / memory (and GPU with pynvml) while
    the run is open. On success the run becomes its name's current run (:func:`supersede`).
    """
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
    _set_tracking_uri(mlflow, uri)
    client = mlflow.MlflowClient()
    try:
        exp_id = _experiment(params, experiment)
    except Exception as err:  # MlflowException, sqlalchemy, requests: one redacted line
        raise TrackingError(
            f"MLflow tracking at {redact(uri)}: {redact(str(err)).splitlines()[0][:300]}"
        ) from None
    mark_killed_runs(client, exp_id)
    sha = git_sha(params.root)
    all_tags = {
        "git_sha": sha,
        "mlflow.source.git.commit": sha,
        "mlflow.source.name": source or f"ovml {experiment} {run_name}",
        "mlflow.source.type": "LOCAL",
        "ovml.host": socket.gethostname(),
        "ovml.pid": str(os.getpid()),
        **{k: redact(str(v)) for k, v in tags.items()},
    }
    dagster = _DAGSTER_RUN.get()
    if dagster is not None:
        all_tags["dagster_run_id"] = dagster[0]
        if dagster[1]:
            all_tags["dagster_run_url"] = dagster[1]
    if note := describe(description, dagster[1] if dagster else None):
        all_tags["mlflow.note.content"] = note
    with mlflow.start_run(
        experiment_id=exp_id,
        run_name=run_name,
        tags=all_tags,
        log_system_metrics=system_metrics and _have_psutil(),
    ) as run:
        flat = {k: redact(str(v))[:500] for k, v in _flatten(run_params).items()}
        for i in range(0, len(flat), 100):
            mlflow.log_params(dict(list(flat.items())[i : i + 100]))
        if dataset is not None:
            _log_dataset_input(mlflow, dataset)
        yield Tracker(run)
    supersede(client, exp_id, run_name, run.info.run_id)


def _have_psutil() -> bool:
    import importlib.util

    return importlib.util.find_spec("psutil") is not None
