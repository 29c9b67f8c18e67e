"""Dagster entry point: `dagster dev -m dagster_project.definitions` (or `ovml ui`).

Thin by design: assets and checks are generated from params.yaml's graph and call the
pipelines library; no science lives here. Loading these definitions imports no torch,
no open_clip and no method implementation (params are loaded without validating the
method configs, which each cell does when it runs), so the UI, every run and every
check start in about a second (bench/bench_ui.py).
"""

from __future__ import annotations

import dagster as dg

from dagster_project.assets import build_assets
from dagster_project.checks import build_checks
from dagster_project.executors import demo_steps_job, executor_for
from dagster_project.jobs import demo_job, stage_records_sensor
from dagster_project.resources import Compute, MlflowTracking, OvmlParams


def build_definitions(params_path: str | None = None) -> dg.Definitions:
    ovml = OvmlParams(params_path=params_path) if params_path else OvmlParams()
    params = ovml.load()
    return dg.Definitions(
        assets=build_assets(params),
        asset_checks=build_checks(params),
        jobs=[demo_job(params), demo_steps_job(params)] if params.demo_tables else [],
        sensors=[stage_records_sensor()],
        resources={"ovml": ovml, "mlflow": MlflowTracking.from_env(), "compute": Compute()},
        # params.yaml execution.executor: in_process by default (light stages run in the
        # run's process, torch stages in a child process: dagster_project/assets.py);
        # multiprocess, or ray (one Ray job per step): dagster_project/executors.py
        executor=executor_for(params),
    )


defs = build_definitions()
