"""Running stages: :func:`run_stage` computes one (the single entry point of the CLI,
the DVC stage commands and Dagster), :func:`run_stages` runs targets and their upstream
stages in order, skipping the fresh ones, recording each run and committing it to
``dvc.lock``. Above the graph (pipelines/graph.py), which only declares and checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pipelines.config import Params
from pipelines.graph import build_graph, stage_inputs, stage_status, upstream, write_stamp
from pipelines.stages.kinds import stage_kind
from pipelines.stages.spec import Stage


def run_stage(
    params: Params, stage: Stage, *, progress: bool = True, from_scratch: bool = False
) -> Any:
    """Compute one graph stage through its kind's module (pipelines/stages/kinds.py).
    ``from_scratch``: a training cell resumes no checkpoint (``--force``)."""
    from pipelines.capacity import check_stage_fits
    from pipelines.cells import setup_torch
    from pipelines.io import world_size

    module = stage_kind(stage.kind)
    check_stage_fits(params, stage)  # a node too small: stop before anything runs
    setup_torch(params)
    if world_size() > 1 and stage.kind != "cell":
        raise RuntimeError(
            f"{stage.name}: only cell stages run under torchrun. Build the cell's inputs in "
            "one process first (`ovml stage features DATASET BACKBONE`, or `dvc repro` of "
            "that stage), then `torchrun --nproc-per-node N -m pipelines.cli stage cell "
            "DATASET VARIANT`"
        )
    return module.run(params, stage, progress=progress, from_scratch=from_scratch)


def run_stages(
    params: Params,
    targets: Iterable[str],
    runner: Callable[[Params, Stage], Any],
    *,
    force: bool = False,
    on_event: Callable[[str, str], None] = lambda name, what: None,
    force_only: Iterable[str] = (),
    on_stale: Callable[[str, str], None] = lambda name, reason: None,
    on_dvc_lock: Callable[[Any], None] | None = None,
) -> list[str]:
    """Run targets and their upstream stages in order, skipping fresh ones. Returns ran stages.

    ``force`` reruns every stage; ``force_only`` reruns just the stages it names (their
    dependants rerun when its outputs changed, as for any stage that ran: a stage is
    checked after its upstream stages have run and recorded their outputs).
    ``on_stale(name, reason)`` says why a stage that was not forced runs.

    In a DVC workspace, every stage that ran or was reused is then committed to
    ``dvc.lock`` (also when a later stage failed), so that ``dvc repro`` finds it up to
    date (:func:`pipelines.dvc_lock.sync_dvc_lock`; ``on_dvc_lock`` gets its result)."""
    graph = build_graph(params)
    forced = set(force_only)
    ran: list[str] = []
    done: list[str] = []
    try:
        for name in upstream(graph, targets):
            if not (force or name in forced):
                fresh, reason = stage_status(params, graph, name)
                if fresh:
                    on_event(name, "fresh")
                    done.append(name)
                    continue
                on_stale(name, reason)
            on_event(name, "run")
            inputs = stage_inputs(params, graph, name)
            runner(params, graph[name])
            write_stamp(params, graph, name, inputs=inputs)
            ran.append(name)
            done.append(name)
    finally:
        _sync_dvc_lock(params, done, on_dvc_lock)
    return ran


def _sync_dvc_lock(
    params: Params, names: list[str], report: Callable[[Any], None] | None = None
) -> None:
    import logging

    from pipelines.dvc_lock import sync_dvc_lock

    result = sync_dvc_lock(params, names)
    if report is not None:
        report(result)
    elif result.warning:
        logging.getLogger(__name__).warning(result.warning)
