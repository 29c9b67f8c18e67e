"""Op tags of a stage's steps, shared by the assets (dagster_project/assets.py) and the
executors (dagster_project/executors.py), which import each other's nothing else."""

from __future__ import annotations

from typing import Any

from pipelines.config import Params
from pipelines.execution import stage_op_tags


def stage_tags(params: Params, kind: str) -> dict[str, Any]:
    """Op tags for every step of ``kind`` (both executors' resources; a function of the
    kind alone, so assets split or renamed keep them)."""
    return stage_op_tags(params.execution, kind)
