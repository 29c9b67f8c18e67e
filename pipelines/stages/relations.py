"""Stage kind ``relations``: ``<data>/relations/<dataset>/<backbone>/<graph>/``, C2SRT's
category graph (pipelines/relations.py), one per graph that cells read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import LIBRARY_CODE, RELATIONS_CODE, Need, Stage, rel

KIND = "relations"


def request(params: Any, need: Need) -> None:
    return None  # asked for by the cells that read a graph


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    from pipelines.relations import RelationSpec

    ds, bb, name = key
    spec = RelationSpec.parse(name)
    ups = [need("dataset", ds)]
    if (b := need("backbone", bb)) is not None:
        ups.append(b)
    if spec.source == "llm":
        ups.append(need("corpus", ds, spec.corpus))
    return Stage(
        KIND,
        key,
        tuple(ups),
        rel(params, "data", "relations", ds, bb, name),
        (f"backbones.{bb}.model", f"backbones.{bb}.weights"),
        (*LIBRARY_CODE, *RELATIONS_CODE),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.relations import build_relations

    return build_relations(params, *stage.key, progress=progress)


def describe(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        return {}
    from pipelines.relations import stage_metadata

    return stage_metadata(folder)
