"""The one table of stage kinds: ``kind -> module`` (pipelines/stages/<kind>.py).

Every stage module has the same five names::

    KIND                          its kind
    request(params, need)         ask for the stages params wants directly (may be none)
    declare(params, key, need)    the Stage ``kind@key`` (key, output folder, params read,
                                  code files, upstream stages via ``need``), or None
    run(params, stage, ...)       compute it (imports its science only when called)
    describe(folder)              metadata of its output for the views (pipelines/records.py)

The graph (pipelines/graph.py) asks the kinds in this table's order (the order its
stages are listed in, hence dvc.yaml's). A new kind is one module plus one line here.
"""

from __future__ import annotations

from types import ModuleType

from pipelines.stages import (
    agreement,
    backbone,
    cell,
    corpus,
    dataset,
    features,
    images,
    relations,
    report,
    table,
)

KINDS: dict[str, ModuleType] = {
    module.KIND: module
    for module in (
        corpus,  # corpora asked for by name come first, as they always have
        dataset,
        images,
        backbone,
        features,
        relations,
        cell,
        table,
        report,
        agreement,
    )
}


def stage_kind(kind: str) -> ModuleType:
    """The module of a stage kind; a clear error for an unknown one."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(KINDS)})") from None
