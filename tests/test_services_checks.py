"""Bad input past one machine: an unreachable Ray head, Postgres or S3 endpoint (nothing
listening, or a server that accepts and never answers) is one error line within 10 s
naming the service and its address, credentials masked; the per-stage-kind resources of
params.yaml ``execution`` reject unknown kinds and keys."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from pydantic import ValidationError

from pipelines.execution import ExecutionConfig, infeasible, stage_op_tags
from pipelines.services import ServiceError, check_postgres, check_ray_head, check_s3

SECRET = "hunter2-s3cret"


@contextlib.contextmanager
def _port(silent: bool):
    """A loopback port with nothing behind it (refused) or a listener that never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if silent:
        sock.listen(16)  # the kernel completes the handshake; no byte ever comes back
    else:
        sock.close()
    try:
        yield port
    finally:
        sock.close()


def _one_line_error(call, *names: str) -> str:
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as err:
        call()
    took = time.monotonic() - t0
    msg = str(err.value)
    assert took < 10, f"took {took:.1f}s"
    assert "\n" not in msg and SECRET not in msg, msg
    for name in names:
        assert name in msg, msg
    return msg


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "silent"])
def test_unreachable_ray_head(silent):
    with _port(silent) as port:
        address = f"http://admin:{SECRET}@127.0.0.1:{port}"
        msg = _one_line_error(
            lambda: check_ray_head(address), "Ray head", f"127.0.0.1:{port}", "admin:***@"
        )
        assert "ray start --head" in msg


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "silent"])
def test_unreachable_postgres(silent):
    with _port(silent) as port:
        url = f"postgresql://dagster:{SECRET}@127.0.0.1:{port}/dagster"
        _one_line_error(
            lambda: check_postgres(url, "Dagster instance storage (Postgres)"),
            "Dagster instance storage (Postgres)",
            f"127.0.0.1:{port}",
            "dagster:***@",
        )


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "silent"])
def test_unreachable_s3(silent, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with _port(silent) as port:
        endpoint = f"http://127.0.0.1:{port}"
        _one_line_error(lambda: check_s3(endpoint, "ovml-dvc"), "S3 endpoint", f"127.0.0.1:{port}")


def test_ray_executor_fails_at_start_naming_the_head():
    """The executor itself checks the head before it builds a step handler."""
    from types import SimpleNamespace

    from dagster_project.executors import ovml_ray_executor

    with _port(False) as port:
        address = f"http://127.0.0.1:{port}"
        init = SimpleNamespace(executor_config={"address": address})
        t0 = time.monotonic()
        with pytest.raises(ServiceError, match=rf"Ray head {address} is unreachable"):
            ovml_ray_executor.executor_creation_fn(init)
        assert time.monotonic() - t0 < 10


def test_stage_kinds_resources_and_gpu_feasibility():
    ex = ExecutionConfig(resources={"table": {"cpus": 2}})
    assert stage_op_tags(ex, "table")["dagster-ray/config"]["num_cpus"] == 2
    assert stage_op_tags(ex, "table")["dagster-ray/config"]["num_gpus"] == 0
    assert stage_op_tags(ex, "cell")["dagster-ray/config"]["num_gpus"] == 1
    with pytest.raises(ValidationError, match="unknown stage kind"):
        ExecutionConfig(resources={"cells": {"gpus": 1}})
    with pytest.raises(ValidationError):
        ExecutionConfig(resources={"cell": {"gpu": 1}})  # misspelt key
    cpu_nodes = [{"CPU": 8.0, "memory": 64 * 2**30}]
    why = infeasible(ex.resources_for("cell"), cpu_nodes)
    assert why and "the cluster has no GPU" in why and "1 GPU" in why
    assert infeasible(ex.resources_for("table"), cpu_nodes) is None
    assert infeasible(ex.resources_for("cell"), [{**cpu_nodes[0], "GPU": 1.0}]) is None
