"""Shared services past one machine, checked before use: a Ray head (job submission), the
Postgres of Dagster's instance (or MLflow's store), an S3 endpoint (MLflow artifacts, the
DVC remote) and an MLflow tracking server.

Each ``check_*`` answers within its timeout (5 s by default) and raises
:class:`ServiceError`, one line naming the service and its address with credentials
masked (:func:`pipelines.redact.redact`), instead of the minutes of retries and the
tracebacks (URL and password included) the clients would otherwise print.
:func:`configured_services` lists what a workspace is set up to use (no CLI command
calls it yet).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.redact import redact

TIMEOUT_S = 5.0


class ServiceError(RuntimeError):
    """A service cannot be used (one line, credentials already masked)."""


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = redact(text[0]) if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _tcp_probe(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


# ----------------------------------------------------------------------------------- Ray
def check_ray_head(address: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The Ray head's job-submission server at ``address`` answers; returns its versions."""
    import httpx

    url = address if "://" in address else f"http://{address}"
    try:
        res = httpx.get(url.rstrip("/") + "/api/version", timeout=timeout)
        res.raise_for_status()
        return res.json()
    except (httpx.HTTPError, ValueError) as err:
        raise ServiceError(
            f"Ray head {redact(url)} is unreachable ({_reason(err)}, within {timeout:g}s): "
            "start it with `ray start --head`, or fix execution.ray.address / $RAY_ADDRESS"
        ) from None


def ray_nodes(address: str, timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
    """The alive nodes of the Ray cluster at ``address``: node_id, ip and total resources
    (``CPU``, ``GPU``, ``memory``, custom names), from Ray's state API over HTTP."""
    import httpx

    url = address if "://" in address else f"http://{address}"
    try:
        res = httpx.get(
            url.rstrip("/") + "/api/v0/nodes",
            params={"limit": 1000, "detail": "true"},
            timeout=timeout,
        )
        res.raise_for_status()
        rows = res.json()["data"]["result"]["result"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
        raise ServiceError(
            f"Ray head {redact(url)}: cannot list the cluster's nodes ({_reason(err)})"
        ) from None
    return [
        {
            "node_id": r["node_id"],
            "ip": r.get("node_ip"),
            "resources": {k: float(v) for k, v in (r.get("resources_total") or {}).items()},
        }
        for r in rows
        if r.get("state") == "ALIVE"
    ]


# ------------------------------------------------------------------------------ Postgres
def check_postgres(url: str, what: str = "Postgres", timeout: float = TIMEOUT_S) -> None:
    """A connection to ``url`` (``postgresql://user:pw@host:port/db``) opens."""
    import psycopg2

    try:
        conn = psycopg2.connect(url, connect_timeout=max(1, int(timeout)))
    except psycopg2.Error as err:
        raise ServiceError(
            f"{what} at {redact(url)} is unreachable ({_reason(err)}, within {timeout:g}s)"
        ) from None
    conn.close()


def dagster_storage_url(dagster_yaml: Path) -> str | None:
    """The Postgres URL of a dagster.yaml's ``storage: postgres:`` (None: not Postgres).

    Reads ``postgres_url`` or ``postgres_db`` (``username``, ``password``, ``hostname``,
    ``db_name``, ``port``; a value ``{env: NAME}`` is read from the environment)."""
    import yaml

    if not dagster_yaml.exists():
        return None
    cfg = yaml.safe_load(dagster_yaml.read_text(encoding="utf-8")) or {}
    pg = (cfg.get("storage") or {}).get("postgres")
    if not pg:
        return None

    def value(v: Any) -> str:
        if isinstance(v, dict) and "env" in v:
            return os.environ.get(v["env"], "")
        return str(v)

    if "postgres_url" in pg:
        return value(pg["postgres_url"])
    db = pg.get("postgres_db") or {}
    user, pw = value(db.get("username", "")), value(db.get("password", ""))
    auth = f"{user}:{pw}@" if pw else (f"{user}@" if user else "")
    host = value(db.get("hostname", "localhost"))
    return f"postgresql://{auth}{host}:{value(db.get('port', 5432))}/{value(db.get('db_name', ''))}"


# ------------------------------------------------------------------------------------ S3
def check_s3(endpoint: str | None, bucket: str | None = None, timeout: float = TIMEOUT_S) -> None:
    """The S3 endpoint answers (and ``bucket``, when given, exists and is readable).
    ``endpoint`` None is AWS itself; credentials come from the environment, as boto3's."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    where = redact(endpoint or "AWS S3")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": 1},  # one try, no retry
        ),
    )
    try:
        if bucket:
            client.head_bucket(Bucket=bucket)
        else:
            client.list_buckets()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        raise ServiceError(
            f"S3 endpoint {where}: bucket {bucket!r} is not usable ({code}); create it or fix "
            "the bucket name"
            if bucket
            else f"S3 endpoint {where} refused the request ({code}): check AWS_* credentials"
        ) from None
    except BotoCoreError as err:
        raise ServiceError(
            f"S3 endpoint {where} is unreachable ({_reason(err)}, within {timeout:g}s): start "
            "it or fix MLFLOW_S3_ENDPOINT_URL / the DVC remote's endpointurl"
        ) from None


def dvc_s3_remote(repo: Path) -> tuple[str, str | None] | None:
    """(``s3://bucket/path``, endpoint URL) of a DVC repo's default remote when it is S3."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read([repo / ".dvc" / "config", repo / ".dvc" / "config.local"])
    default = parser.get("core", "remote", fallback=None)
    if not default:
        return None
    section = f"'remote \"{default}\"'"
    if not parser.has_section(section):
        section = f'remote "{default}"'
    url = parser.get(section, "url", fallback="")
    if not url.startswith("s3://"):
        return None
    return url, parser.get(section, "endpointurl", fallback=None)


# -------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class Service:
    name: str  # what it is for, e.g. "Dagster instance storage (Postgres)"
    address: str  # as configured (credentials masked when shown)
    check: Any  # () -> None, raising ServiceError


def configured_services(
    ray_address: str | None,
    tracking_uri: str,
    dagster_home: Path | None,
    dvc_repo: Path | None,
) -> list[Service]:
    """Every shared service this workspace is configured to use (the laptop default,
    SQLite and local files, uses none)."""
    from pipelines.tracking import check_tracking_server

    out: list[Service] = []
    if ray_address:
        out.append(Service("Ray head", ray_address, lambda: check_ray_head(ray_address)))
    if tracking_uri.startswith(("http://", "https://")):

        def _mlflow() -> None:
            try:
                check_tracking_server(tracking_uri)
            except RuntimeError as err:
                raise ServiceError(str(err)) from None

        out.append(Service("MLflow tracking server", tracking_uri, _mlflow))
    elif tracking_uri.startswith("postgresql"):
        uri = tracking_uri
        out.append(
            Service("MLflow store (Postgres)", uri, lambda: check_postgres(uri, "MLflow store"))
        )
    if os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        ep = os.environ["MLFLOW_S3_ENDPOINT_URL"]
        out.append(Service("MLflow artifacts (S3)", ep, lambda: check_s3(ep)))
    if dagster_home is not None:
        pg = dagster_storage_url(dagster_home / "dagster.yaml")
        if pg:
            out.append(
                Service(
                    "Dagster instance storage (Postgres)",
                    pg,
                    lambda: check_postgres(pg, "Dagster instance storage (Postgres)"),
                )
            )
    if dvc_repo is not None and (remote := dvc_s3_remote(dvc_repo)):
        url, ep = remote
        bucket = urlsplit(url).netloc
        out.append(Service("DVC remote (S3)", ep or url, lambda: check_s3(ep, bucket)))
    return out
