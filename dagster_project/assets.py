"""Assets built from the pipeline graph (pipelines/graph.py); each one calls
pipelines.cells.run_stage, the same function the CLI and dvc.yaml call.

Asset keys: dataset/<ds>, backbone/<bb>, features/<ds>/<bb>, corpus/<ds>/<name>,
cells/<ds> (partitioned by variant), table/<name>. Each asset's code_version is its stage fingerprint, so the UI
marks assets whose params or code changed; a materialisation of a fresh stage reuses
the files on disk unless run config says ``force: true``.
"""

import base64
import json
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_project.partitions import cell_partitions
from dagster_project.resources import Compute, MlflowTracking, OvmlParams
from pipelines.config import Params
from pipelines.graph import Stage, build_graph, fingerprint, is_fresh, write_stamp


class StageConfig(dg.Config):
    force: bool = False


def asset_key(stage: Stage) -> dg.AssetKey:
    if stage.kind == "cell":
        return dg.AssetKey(["cells", stage.key[0]])
    return dg.AssetKey([stage.kind, *stage.key])


def _png_markdown(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{path.name}](data:image/png;base64,{data})"


def _metadata(params: Params, stage: Stage, reused: bool) -> dict[str, Any]:
    out = params.root / stage.out
    meta: dict[str, Any] = {"path": dg.MetadataValue.path(str(out)), "reused": reused}
    if stage.kind == "dataset" and (out / "meta.json").exists():
        info = json.loads((out / "meta.json").read_text())
        meta.update({f"n_{k}": v for k, v in info.get("counts", {}).items()})
        meta.update({"n_seen": info.get("n_seen"), "n_unseen": info.get("n_unseen")})
    elif stage.kind == "backbone" and (out / "open_clip_config.json").exists():
        info = json.loads((out / "open_clip_config.json").read_text()).get("ovml", {})
        losses = info.get("epoch_losses", [])
        meta.update(
            {
                "epochs": len(losses),
                "final_loss": losses[-1] if losses else None,
                "seconds": info.get("seconds"),
            }
        )
    elif stage.kind == "features":
        for split_dir in sorted(p for p in out.iterdir() if (p / "index.json").exists()):
            idx = json.loads((split_dir / "index.json").read_text())
            meta[f"n_{split_dir.name}"] = idx["n"]
            meta["dim"], meta["n_patches"] = idx["dim"], idx["n_patches"]
    elif stage.kind == "corpus" and (out / "meta.json").exists():
        from pipelines.text import dagster_metadata

        meta.update(dagster_metadata(out, dg.MetadataValue.md))
    elif stage.kind == "cell" and (out / "metrics.json").exists():
        m = json.loads((out / "metrics.json").read_text())
        for task in ("zsl", "gzsl"):
            for k, v in m.get(task, {}).items():
                meta[f"{task} {k}"] = float(v)
        meta["mlflow_run_id"] = str(m["meta"].get("mlflow_run_id"))
        graph = (m["meta"].get("fit") or {}).get("relation_graph")  # C2SRT's IST graph
        if graph:
            hood = "\n".join(f"- {k} <- {', '.join(v)}" for k, v in graph["neighbourhoods"].items())
            meta["relation_graph"] = dg.MetadataValue.md(
                f"{graph['n_edges']} edges; in-degree {graph['in_degree_histogram']}; "
                f"out-degree of seen labels {graph['out_degree_histogram']}\n\n{hood}"
            )
    elif stage.kind == "table" and (out / "table.md").exists():
        md = (out / "table.md").read_text()
        if (out / "mAP.png").exists():
            md += "\n" + _png_markdown(out / "mAP.png")
        meta["table"] = dg.MetadataValue.md(md)
    return {k: v for k, v in meta.items() if v is not None}


def _materialize(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    ovml: OvmlParams,
    mlflow: MlflowTracking,
    compute: Compute,
    stage_name: str,
) -> dg.MaterializeResult:
    from pipelines.cells import run_stage

    params = compute.apply(mlflow.apply(ovml.load()))
    graph = build_graph(params)
    stage = graph[stage_name]
    reused = not config.force and is_fresh(params, graph, stage_name)
    if reused:
        context.log.info(f"{stage_name} is up to date; reusing {stage.out}")
    else:
        context.log.info(f"running {stage_name}")
        fp = fingerprint(params, graph, stage_name)
        run_stage(params, stage, progress=False)
        write_stamp(params, graph, stage_name, fp)
    return dg.MaterializeResult(
        metadata=_metadata(params, stage, reused),
        data_version=dg.DataVersion(fingerprint(params, graph, stage_name)),
    )


def build_assets(params: Params) -> list[dg.AssetsDefinition]:
    graph = build_graph(params)
    assets: list[dg.AssetsDefinition] = []
    cells_by_dataset: dict[str, list[Stage]] = {}
    for name, stage in graph.items():
        if stage.kind == "cell":
            cells_by_dataset.setdefault(stage.key[0], []).append(stage)
            continue
        if stage.kind == "images":
            assets.append(_images_asset(params, graph, stage))
            continue
        assets.append(_single_asset(params, graph, stage))
        del name
    for dataset, stages in cells_by_dataset.items():
        assets.append(_cells_asset(params, graph, dataset, stages))
    return assets


def _deps(graph: dict[str, Stage], stages: list[Stage]) -> list[dg.AssetKey]:
    keys: dict[dg.AssetKey, None] = {}
    for st in stages:
        for d in st.deps:
            keys[asset_key(graph[d])] = None
    return list(keys)


def _single_asset(params: Params, graph: dict[str, Stage], stage: Stage) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(stage),
        deps=_deps(graph, [stage]),
        group_name=stage.kind,
        code_version=fingerprint(params, graph, stage.name)[:16],
        description=f"`{stage.cmd}` → {stage.out}",
        kinds={"python"},
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
    )
    def _asset(context: dg.AssetExecutionContext, ovml: OvmlParams) -> dg.MaterializeResult:
        from pipelines.cells import download_dataset_images
        from pipelines.data.download import summarize_ledger

        p = ovml.load()
        chunk = int(context.partition_key)
        out = download_dataset_images(p, dataset, chunk, progress=False)
        g = build_graph(p)
        if (out / "summary.json").exists():
            write_stamp(p, g, stage.name)
        summary = summarize_ledger(out / f"chunk-{chunk:04d}").to_dict()
        meta = {f"n_{k}": int(v) for k, v in summary["counts"].items() if v}
        meta["fraction_available"] = float(summary.get("fraction_available", 0.0))
        return dg.MaterializeResult(metadata=meta)

    return _asset


def _cells_asset(
    params: Params, graph: dict[str, Stage], dataset: str, stages: list[Stage]
) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["cells", dataset]),
        deps=_deps(graph, stages),
        group_name="cells",
        partitions_def=cell_partitions(params, dataset),
        description=f"cells of {dataset}: one partition per variant (results/cells/{dataset}/<variant>)",
        kinds={"pytorch"},
        retry_policy=dg.RetryPolicy(max_retries=1),
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: StageConfig,
        ovml: OvmlParams,
        mlflow: MlflowTracking,
        compute: Compute,
    ) -> dg.MaterializeResult:
        return _materialize(
            context, config, ovml, mlflow, compute, f"cell@{dataset}@{context.partition_key}"
        )

    return _asset
