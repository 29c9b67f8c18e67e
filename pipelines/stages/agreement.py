"""Stage kind ``agreement``: ``<results>/agreement/<name>/``, a method's seeds against
its paper's reference row (pipelines/agreement.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config_core import seeded
from pipelines.stages.spec import LIBRARY_CODE, Need, Stage, rel

KIND = "agreement"


def request(params: Any, need: Need) -> None:
    for name in params.agreement:
        need(KIND, name)


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    (name,) = key
    agr = params.agreement[name]
    ups = tuple(f"cell@{agr.dataset}@{seeded(v, s)}" for v in agr.variants() for s in agr.seeds)
    return Stage(
        KIND,
        key,
        ups,
        rel(params, "results", "agreement", name),
        (f"agreement.{name}",),
        (*LIBRARY_CODE, "pipelines/agreement.py"),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.agreement import render_agreement

    return render_agreement(params, *stage.key)


def describe(folder: Path) -> dict[str, Any]:
    return {}
