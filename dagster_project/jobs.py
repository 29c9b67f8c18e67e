"""The ``demo`` job (exactly what ``make demo`` computes) and the ``stage_records``
sensor (CLI and DVC runs show up in the catalog while the UI runs)."""

import dagster as dg

from dagster_project.records import materialization, pending_stages, reconcile
from dagster_project.resources import OvmlParams
from pipelines.config import Params


def demo_job(params: Params) -> dg.JobDefinition:
    """One run of ``ovml demo``: the demo tables and every stage they need (and nothing
    else: not the other cells of the dataset, not the backbones only other tables use),
    each reused when fresh. Every stage it ran or reused is materialised, cells as
    their seed's partition."""
    tables = ", ".join(params.demo_tables)

    @dg.op(
        name="ovml_demo",
        description=f"`ovml demo`: the demo tables ({tables}) and their upstream stages",
    )
    def ovml_demo(context: dg.OpExecutionContext, ovml: OvmlParams) -> None:
        from dagster_project.assets import dagster_run_url
        from pipelines.graph import build_graph
        from pipelines.records import load_record, stage_view
        from pipelines.runner import run_stage, run_stages
        from pipelines.tracking import dagster_run

        p = ovml.load()
        graph = build_graph(p)
        done: list[str] = []

        def event(name: str, what: str) -> None:
            context.log.info(f"{name}: {'up to date, reused' if what == 'fresh' else 'running'}")
            done.append(name)

        def emit() -> None:
            for name in done:
                record = load_record(p.root, graph[name].out)
                if record is not None:
                    context.log_event(
                        materialization(
                            p,
                            graph,
                            graph[name],
                            record,
                            context.instance,
                            description=f"`ovml demo` in this run: {record.get('view')} record",
                        )
                    )

        try:
            with (
                dagster_run(context.run.run_id, dagster_run_url(context.run.run_id)),
                stage_view("dagster", context.run.run_id),
            ):
                run_stages(
                    p,
                    [f"table@{t}" for t in p.demo_tables],
                    lambda pp, st: run_stage(pp, st, progress=False),
                    on_event=event,
                )
        finally:
            emit()

    @dg.job(name="demo", description=f"what `make demo` computes: {tables}")
    def _demo() -> None:
        ovml_demo()

    return _demo


def stage_records_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="stage_records",
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="reports stage records written by the CLI or `dvc repro` as materialisations",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        params = OvmlParams().load()
        if not pending_stages(context.instance, params):
            return dg.SkipReason("every stage record is known to Dagster")
        # reported one by one, upstream first, so each points at its inputs' events
        reported = reconcile(context.instance, params)
        return dg.SkipReason(f"reported {len(reported)} stage record(s): {', '.join(reported)}")

    return _sensor
