"""Which Dagster executor runs the steps (params.yaml ``execution.executor``), the op tags
of a stage kind, and ``demo_steps``: the demo as one step per stage, so that each stage
lands where its kind's resources say (a Ray job per step, a pod per step).

- ``in_process``: every step in the run's process (the laptop; the default).
- ``multiprocess``: one process per step, at most ``multiprocess_max_concurrent`` at once.
- ``k8s``: dagster-k8s's ``k8s_job_executor``, one Kubernetes Job (pod) per step, its
  container's requests/limits from the step's ``dagster-k8s/config`` tag (infra/k8s).
- ``ray``: dagster-ray's step handler, one Ray job per step, its entrypoint resources
  from the step's ``dagster-ray/config`` tag (pipelines/execution.py). Before it submits
  anything it checks that the head answers (one line naming the address, within 5 s)
  and, per step, that some alive node can run it: a stage asking for a GPU on a cluster
  without one fails at submission, naming the stage, instead of waiting forever.

Both read the same per-kind resources (pipelines/execution.py).
"""

from __future__ import annotations

import re
import time
from typing import Any

import dagster as dg

from dagster_project.tags import stage_tags
from pipelines.config import Params
from pipelines.execution import STAGE_TAG

STAGE_NAME_TAG = "ovml/stage"


def executor_for(params: Params) -> dg.ExecutorDefinition:
    ex = params.execution
    chosen = ex.resolved_executor()
    if chosen == "in_process":
        return dg.in_process_executor
    if chosen == "multiprocess":
        return dg.multiprocess_executor.configured(
            {"max_concurrent": ex.multiprocess_max_concurrent}
        )
    if chosen == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    ray = ex.ray
    config: dict[str, Any] = {
        "address": ray.resolved_address(),
        "env_vars": ["OVML_PARAMS", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", *ray.env_vars],
        "health_check_interval_s": ray.health_check_interval_s,
    }
    if ray.max_concurrent:
        config["max_concurrent"] = ray.max_concurrent
    return ovml_ray_executor.configured(config, name="ray")


# ------------------------------------------------------------------------- Ray executor
class StageInfeasible(dg.DagsterError):
    """No node of the Ray cluster can run a stage's step (message names the stage)."""


def _step_handler_class():
    from dagster_ray.configs import RayExecutionConfig
    from dagster_ray.core.executor import RayStepHandler

    from pipelines.execution import StageResources, infeasible
    from pipelines.services import ray_nodes

    class OvmlRayStepHandler(RayStepHandler):
        """dagster-ray's handler, plus a feasibility check of each step before submission."""

        def __init__(self, address: str, **kwargs: Any):
            super().__init__(**kwargs)
            self.address = address
            self._nodes: tuple[float, list[dict[str, float]]] = (0.0, [])

        @property
        def name(self) -> str:
            return "OvmlRayStepHandler"

        def _alive_nodes(self) -> list[dict[str, float]]:
            at, nodes = self._nodes
            if time.monotonic() - at > 5 or not nodes:
                nodes = [n["resources"] for n in ray_nodes(self.address)]
                self._nodes = (time.monotonic(), nodes)
            return nodes

        def launch_step(self, step_handler_context):
            step_key = self._get_step_key(step_handler_context)
            tags = step_handler_context.step_tags[step_key]
            cfg = RayExecutionConfig.from_tags(dict(tags))
            need = StageResources(
                cpus=cfg.num_cpus or 0,
                gpus=cfg.num_gpus or 0,
                memory_gb=(cfg.memory / 2**30) if cfg.memory else None,
                ray_resources=cfg.resources or {},
            )
            why = infeasible(need, self._alive_nodes())
            if why is not None:
                stage = tags.get(STAGE_NAME_TAG) or step_key
                kind = tags.get(STAGE_TAG, "?")
                raise StageInfeasible(
                    f"stage {stage} (kind {kind}) cannot run on the Ray cluster at "
                    f"{self.address}: it {why}; change execution.resources.{kind} in "
                    "params.yaml or add such a node"
                )
            yield from super().launch_step(step_handler_context)

    return OvmlRayStepHandler


@dg.executor(
    name="ray",
    config_schema={
        "address": dg.Field(str, description="the Ray head's job-submission address"),
        "env_vars": dg.Field([str], default_value=[], is_required=False),
        "max_concurrent": dg.Field(int, is_required=False),
        "health_check_interval_s": dg.Field(int, default_value=5, is_required=False),
        "retries": dg.Field(
            dg.Selector({"enabled": {}, "disabled": {}}),
            default_value={"enabled": {}},
            is_required=False,
        ),
    },
    requirements=dg.multiple_process_executor_requirements(),
)
def ovml_ray_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """One Ray job per step (dagster-ray), with ovml's reachability and GPU checks."""
    from dagster._core.execution.retries import RetryMode
    from dagster._core.executor.step_delegating import StepDelegatingExecutor
    from ray.job_submission import JobSubmissionClient

    from pipelines.services import check_ray_head

    cfg = init_context.executor_config
    address = cfg["address"]
    check_ray_head(address)  # one line naming the address, within 5 s
    handler = _step_handler_class()(
        address=address,
        client=JobSubmissionClient(address),
        env_vars=list(cfg.get("env_vars") or []),
        runtime_env=None,
        num_cpus=None,  # per step, from its dagster-ray/config tag
        num_gpus=None,
        memory=None,
        resources=None,
    )
    return StepDelegatingExecutor(
        handler,
        retries=RetryMode.from_config(cfg.get("retries") or {"enabled": {}}),
        max_concurrent=cfg.get("max_concurrent"),
        check_step_health_interval_seconds=cfg.get("health_check_interval_s", 5),
        should_verify_step=True,
    )


# ----------------------------------------------------------------- the demo, step by step
def _op_name(stage_name: str) -> str:
    return "stage__" + re.sub(r"[^A-Za-z0-9_]", "_", stage_name)


def demo_steps_job(params: Params) -> dg.JobDefinition:
    """The demo tables and every stage they need, one op (one step) per stage, wired in
    the graph's order: on the Ray executor each stage is a Ray job, independent cells run
    at the same time, and each step asks for its kind's resources. Each step reuses its
    stage when fresh, else runs it as ``_materialize`` does for an asset (tables in the
    step's process, torch stages in a child process), then reports the stage's record as
    that asset's materialisation (a seeded cell as its seed's partition)."""
    from pipelines.graph import build_graph, upstream

    graph = build_graph(params)
    names = upstream(graph, [f"table@{t}" for t in params.demo_tables])
    retries = dg.RetryPolicy(max_retries=params.execution.ray.step_retries)
    ops: dict[str, dg.OpDefinition] = {}
    for name in names:
        stage = graph[name]
        deps = [d for d in stage.deps if d in names]
        ops[name] = dg.op(
            name=_op_name(name),
            ins={f"after_{i}": dg.In(dg.Nothing) for i in range(len(deps))},
            tags={**stage_tags(params, stage.kind), STAGE_NAME_TAG: name},
            description=f"`{stage.cmd}` → {stage.out}",
            retry_policy=retries,
            required_resource_keys={"ovml", "mlflow", "compute"},
        )(_stage_body(name))

    @dg.job(name="demo_steps", description="the demo tables, one step per stage")
    def _job() -> None:
        done: dict[str, Any] = {}
        for name in names:
            deps = [d for d in graph[name].deps if d in names]
            done[name] = ops[name](**{f"after_{i}": done[d] for i, d in enumerate(deps)})

    return _job


def _stage_body(stage_name: str):
    def _run(context) -> None:  # an OpExecutionContext; upstream steps are Nothing inputs
        from dagster_project.assets import run_stage_in_child, run_table_in_process
        from dagster_project.records import materialization
        from pipelines.graph import build_graph, is_fresh
        from pipelines.records import load_record

        res = context.resources
        params = res.compute.apply(res.mlflow.apply(res.ovml.load()))
        graph = build_graph(params)
        stage = graph[stage_name]
        if is_fresh(params, graph, stage_name):
            context.log.info(f"{stage_name} is up to date; reusing {stage.out}")
        elif stage.kind == "table":
            run_table_in_process(context, params, graph, stage)
        else:  # a cell's bad option fails in the child, naming the key (assets.py)
            run_stage_in_child(context, res.ovml.params_path, params, stage)
        record = load_record(params.root, stage.out)
        if record is None:
            raise dg.Failure(f"{stage_name} left no stage record in {stage.out}")
        context.log_event(
            materialization(
                params, graph, stage, record, context.instance, description=f"`{stage.cmd}`"
            )
        )

    return _run
