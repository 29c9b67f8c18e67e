"""Stage kind ``report``: ``<results>/report/``, every table reproduced beside its
published numbers (pipelines/report.py); one stage, ``report@all``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import LIBRARY_CODE, Need, Stage, rel

KIND = "report"


def _papers() -> tuple[str, ...]:
    from pipelines.published import PAPERS

    return PAPERS


def request(params: Any, need: Need) -> None:
    if params.tables:
        need(KIND, "all")


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    return Stage(
        KIND,
        key,
        tuple(f"table@{name}" for name in params.tables),
        rel(params, "results", "report"),
        ("tables",),
        (
            *LIBRARY_CODE,
            "pipelines/report.py",
            "pipelines/plan.py",
            "pipelines/metrics.py",
            *(f"pipelines/published/{p}.yaml" for p in _papers()),
        ),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.report import build_report

    return build_report(params)


def describe(folder: Path) -> dict[str, Any]:
    return {}
