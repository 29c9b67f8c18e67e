"""Asset checks: a cell's metrics are complete and in range; a table has no missing cell."""

import json

import dagster as dg

from dagster_project.partitions import cell_asset_path
from dagster_project.resources import OvmlParams
from pipelines.config import Params
from pipelines.config_core import split_seed


def build_checks(params: Params) -> list[dg.AssetChecksDefinition]:
    checks = []
    for dataset, variant in sorted({(ds, split_seed(v)[0]) for ds, v in params.cells}):
        checks.append(_cell_check(dataset, variant))
    for name in params.tables:
        checks.append(_table_check(name))
    return checks


def _cell_check(dataset: str, variant: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(cell_asset_path(dataset, variant)),
        name="metrics_in_range",
        description="every computed cell (seed) has ZSL and GZSL metrics in [0, 100]",
    )
    def _check(ovml: OvmlParams) -> dg.AssetCheckResult:
        params = ovml.load()
        bad, done = [], 0
        for ds, cell in params.cells:
            path = params.path("results") / "cells" / ds / cell / "metrics.json"
            if (ds, split_seed(cell)[0]) != (dataset, variant) or not path.exists():
                continue
            done += 1
            m = json.loads(path.read_text())
            for task in ("zsl", "gzsl"):
                vals = m.get(task)
                if not vals or any(not (0.0 <= float(v) <= 100.0) for v in vals.values()):
                    bad.append(f"{cell}/{task}")
        return dg.AssetCheckResult(
            passed=not bad, metadata={"cells_checked": done, "bad": ", ".join(bad)}
        )

    return _check


def _table_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(["table", name]),
        name="complete",
        description="the table has every declared cell",
    )
    def _check(ovml: OvmlParams) -> dg.AssetCheckResult:
        params = ovml.load()
        path = params.path("results") / "tables" / name / "table.json"
        if not path.exists():
            return dg.AssetCheckResult(passed=False, metadata={"reason": "table not rendered"})
        missing = json.loads(path.read_text()).get("missing", [])
        return dg.AssetCheckResult(passed=not missing, metadata={"missing": ", ".join(missing)})

    return _check
