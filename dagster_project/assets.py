"""Assets built from the pipeline graph (pipelines/graph.py); each one runs the same
stage the CLI and dvc.yaml run and describes it with the same stage record.

Asset keys: dataset/<ds>, backbone/<bb>, features/<ds>/<bb>, corpus/<ds>/<name>,
relations/<ds>/<bb>/<graph> (C2SRT's category graph), cells/<ds>/<variant> (partitioned
by training seed where a table trains it over seeds; grouped as ``cells_<ds>``),
table/<name>. Each asset depends on exactly what its stages read, so a cell is stale only
when its own inputs are (dagster_project/partitions.py). Each asset's code_version is its
stage's own params and code (pipelines.graph.code_version; a cell asset's is shared by
its seeds) and its data version the digest of its recorded outputs,
so the UI marks an asset stale when its params or code changed or an upstream's outputs
did (as ``ovml list`` does); a materialisation of a fresh stage reuses the files on
disk unless run config says ``force: true``.

Where stages run: tables (light: JSON in, markdown/CSV/PNG out) run in the run's own
process; datasets, backbones, features and cells (torch) run in a child process,
``python -m pipelines.cli stage KIND KEY...``, exactly the command dvc.yaml runs, so a
training cell is isolated and the run process never imports torch. A table depends on
exactly the cells (partitions) it shows.
"""

import json
import os
import subprocess
import sys
from typing import Any

import dagster as dg

from dagster_project.partitions import (
    cell_group,
    cell_of_partition,
    cells_by_variant,
    seed_partitions,
)
from dagster_project.records import (
    asset_key,
    cell_asset_code_version,
    code_version,
    dagster_ui_url,
    partition_of,
    to_dagster_metadata,
)
from dagster_project.resources import Compute, MlflowTracking, OvmlParams
from dagster_project.tags import stage_tags
from pipelines.config import Params
from pipelines.dvc_lock import sync_dvc_lock
from pipelines.graph import Stage, build_graph, is_fresh, outputs_digest, stage_inputs, write_stamp
from pipelines.records import load_record

__all__ = ["asset_key", "build_assets", "StageConfig"]


class StageConfig(dg.Config):
    force: bool = False


def dagster_run_url(run_id: str) -> str:
    return f"{dagster_ui_url()}/runs/{run_id}"


def _overrides(params: Params) -> dict[str, Any]:
    """What the resources changed in params, for the child process (through its
    environment, never its command line: a tracking URI may hold a credential)."""
    return {
        "device": params.device,
        "num_threads": params.num_threads,
        "tracking": params.tracking.model_dump(mode="json"),
    }


def run_stage_in_child(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    params_path: str,
    params: Params,
    stage: Stage,
) -> None:
    """``ovml stage KIND KEY...`` in a child process, tagged with this Dagster run."""
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "stage",
        stage.kind,
        *stage.key,
        "--params",
        params_path,
        "--dagster-run-id",
        context.run.run_id,
        "--dagster-run-url",
        dagster_run_url(context.run.run_id),
        "--rerun",  # Dagster has decided to run it (stale, or `force`)
    ]
    env = {
        **os.environ,
        "OVML_STAGE_OVERRIDES": json.dumps(_overrides(params)),
        "TQDM_DISABLE": "1",
    }
    context.log.info(f"running {stage.name}: {stage.cmd}")
    res = subprocess.run(
        cmd, cwd=params.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sys.stdout.write(res.stdout)  # the step's captured stdout in the UI
    if res.returncode != 0:
        tail = "\n".join(res.stdout.splitlines()[-30:])
        raise dg.Failure(
            description=f"{stage.cmd} exited with {res.returncode}",
            metadata={"output (tail)": dg.MetadataValue.md(f"```\n{tail}\n```")},
        )


def run_table_in_process(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    params: Params,
    graph: dict[str, Stage],
    stage: Stage,
) -> None:
    from pipelines.records import stage_view
    from pipelines.tables import render_table
    from pipelines.tracking import dagster_run

    inputs = stage_inputs(params, graph, stage.name)  # taken before the run
    with (
        dagster_run(context.run.run_id, dagster_run_url(context.run.run_id)),
        stage_view("dagster", context.run.run_id),
    ):
        render_table(params, *stage.key)
        write_stamp(params, graph, stage.name, inputs=inputs)


def _materialize(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    ovml: OvmlParams,
    mlflow: MlflowTracking,
    compute: Compute,
    stage_name: str,
) -> dg.MaterializeResult:
    params = compute.apply(mlflow.apply(ovml.load()))
    graph = build_graph(params)
    stage = graph[stage_name]
    reused = not config.force and is_fresh(params, graph, stage_name)
    if reused:
        context.log.info(f"{stage_name} is up to date; reusing {stage.out}")
    elif stage.kind == "table":
        run_table_in_process(context, params, graph, stage)
    else:
        # a cell's bad option fails in the child (`ovml stage` checks its variant), naming
        # the key in the failure's output: checking it here would import torch in this run
        run_stage_in_child(context, ovml.params_path, params, stage)
    lock = sync_dvc_lock(params, [stage_name])  # so that `dvc repro` finds it fresh
    if lock.warning:
        context.log.warning(lock.warning)
    record = load_record(params.root, stage.out) or {}
    meta = to_dagster_metadata(record.get("metadata") or {}, record)
    meta["reused"] = reused
    return dg.MaterializeResult(
        metadata=meta,
        data_version=dg.DataVersion(outputs_digest(record)),
    )


def build_assets(params: Params) -> list[dg.AssetsDefinition]:
    graph = build_graph(params)
    assets: list[dg.AssetsDefinition] = []
    for stage in graph.values():
        if stage.kind == "images":
            assets.append(_images_asset(params, graph, stage))
        elif stage.kind != "cell":
            assets.append(_single_asset(params, graph, stage))
    for (dataset, variant), stages in cells_by_variant(graph).items():
        assets.append(_cell_asset(params, graph, dataset, variant, stages))
    return assets


def _deps(graph: dict[str, Stage], stages: list[Stage]) -> list[dg.AssetDep]:
    """Upstream assets; a seeded cell asset is depended on by exactly the seeds used."""
    keys: dict[dg.AssetKey, list[str]] = {}
    for st in stages:
        for d in st.deps:
            up = graph[d]
            parts = keys.setdefault(asset_key(up), [])
            part = partition_of(graph, up)
            if part is not None and part not in parts:
                parts.append(part)
    return [
        dg.AssetDep(k, partition_mapping=dg.SpecificPartitionsPartitionMapping(parts))
        if parts
        else dg.AssetDep(k)
        for k, parts in keys.items()
    ]


def _single_asset(params: Params, graph: dict[str, Stage], stage: Stage) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(stage),
        deps=_deps(graph, [stage]),
        group_name=stage.kind,
        code_version=code_version(params, graph, stage.name),
        description=f"`{stage.cmd}` → {stage.out}",
        kinds={"python"} if stage.kind == "table" else {"pytorch"},
        op_tags=stage_tags(params, stage.kind),
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: StageConfig,
        ovml: OvmlParams,
        mlflow: MlflowTracking,
        compute: Compute,
    ) -> dg.MaterializeResult:
        return _materialize(context, config, ovml, mlflow, compute, stage.name)

    return _asset


def _images_asset(params: Params, graph: dict[str, Stage], stage: Stage) -> dg.AssetsDefinition:
    """Image download, one partition per manifest chunk, retried with backoff: a rerun
    resumes from the chunk's ledger (ok rows are never fetched again)."""
    dataset = stage.key[0]
    download = params.datasets[dataset].download
    assert download is not None
    chunks = dg.StaticPartitionsDefinition([f"{i:04d}" for i in range(download.chunks)])

    @dg.asset(
        key=asset_key(stage),
        deps=_deps(graph, [stage]),
        group_name="images",
        partitions_def=chunks,
        description=f"images of {dataset} downloaded into {stage.out}/chunk-NNNN (shards + ledger)",
        retry_policy=dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL),
        kinds={"python"},
        op_tags=stage_tags(params, stage.kind),
    )
    def _asset(context: dg.AssetExecutionContext, ovml: OvmlParams) -> dg.MaterializeResult:
        from pipelines.cells import download_dataset_images
        from pipelines.data.download import summarize_ledger

        p = ovml.load()
        chunk = int(context.partition_key)
        out = download_dataset_images(p, dataset, chunk, progress=False)
        g = build_graph(p)
        if (out / "summary.json").exists():
            write_stamp(p, g, stage.name, view="dagster", run_id=context.run.run_id)
        summary = summarize_ledger(out / f"chunk-{chunk:04d}").to_dict()
        meta = {f"n_{k}": int(v) for k, v in summary["counts"].items() if v}
        meta["fraction_available"] = float(summary.get("fraction_available", 0.0))
        return dg.MaterializeResult(metadata=meta)

    return _asset


def _cell_asset(
    params: Params, graph: dict[str, Stage], dataset: str, variant: str, stages: list[Stage]
) -> dg.AssetsDefinition:
    """The cells of one variant on one dataset: one partition per training seed (none
    for a variant trained once); its upstreams are what those cells read, no more."""
    partitions = seed_partitions(graph, stages)
    what = "one partition per seed" if partitions is not None else "one cell"
    first = stages[0]

    @dg.asset(
        key=asset_key(first),
        deps=_deps(graph, stages),
        group_name=cell_group(dataset),
        partitions_def=partitions,
        code_version=cell_asset_code_version(params, graph, stages),
        description=f"`{first.cmd}` → {first.out} ({what})",
        kinds={"pytorch"},
        retry_policy=dg.RetryPolicy(max_retries=1),
        op_tags=stage_tags(params, first.kind),
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: StageConfig,
        ovml: OvmlParams,
        mlflow: MlflowTracking,
        compute: Compute,
    ) -> dg.MaterializeResult:
        part = context.partition_key if context.has_partition_key else None
        return _materialize(
            context, config, ovml, mlflow, compute, cell_of_partition(dataset, variant, part)
        )

    return _asset
