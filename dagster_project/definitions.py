"""Dagster entry point: `dagster dev -m dagster_project.definitions` (or `ovml ui`).

Thin by design: assets and checks are generated from params.yaml's graph and call the
pipelines library; no science lives here.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.assets import build_assets
from dagster_project.checks import build_checks
from dagster_project.resources import Compute, MlflowTracking, OvmlParams


def build_definitions(params_path: str | None = None) -> dg.Definitions:
    ovml = OvmlParams(params_path=params_path) if params_path else OvmlParams()
    params = ovml.load()
    assets = build_assets(params)
    demo = (
        dg.define_asset_job(
            "demo",
            selection=dg.AssetSelection.assets(
                *[dg.AssetKey(["table", t]) for t in params.demo_tables]
            ).upstream(),
            description="everything the demo tables need",
        )
        if params.demo_tables
        else None
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=build_checks(params),
        jobs=[demo] if demo else [],
        resources={"ovml": ovml, "mlflow": MlflowTracking.from_env(), "compute": Compute()},
    )


defs = build_definitions()
