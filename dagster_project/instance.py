"""The Dagster instance `ovml ui` starts: its home (dagster.yaml) and the stage records
reported to it before the UI opens (dagster_project/records.py)."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config import Params

TEMPLATE = Path(__file__).with_name("dagster.yaml")


def prepare_dagster_home(home: Path) -> Path:
    """Create ``home`` with ovml's dagster.yaml unless it already has one (never
    overwritten: a user's own instance config wins). Returns the dagster.yaml path."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        from pipelines.io import write_text

        text = TEMPLATE.read_text(encoding="utf-8").replace("@DAGSTER_HOME@", str(home.resolve()))
        write_text(target, text)
    nux = home / ".nux" / "nux.yaml"  # the UI's newsletter sign-up dialog: seen, not shown
    if not nux.exists():
        from pipelines.io import write_text

        nux.parent.mkdir(exist_ok=True)
        write_text(nux, "seen: 1\n")
    return target


def report_stage_records(
    params: Params, home: Path, env: dict[str, str] | None = None
) -> list[str]:
    """Report to the instance in ``home`` every stage record it has not seen."""
    import dagster as dg

    from dagster_project.records import reconcile

    for k in ("OVML_MLFLOW_UI_URL", "OVML_DAGSTER_UI_URL"):  # the URLs metadata links to
        if env and k in env:
            os.environ[k] = env[k]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return reconcile(instance, params)
