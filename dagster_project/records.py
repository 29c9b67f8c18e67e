"""Stage records (pipelines/records.py) as Dagster asset materialisations.

Whatever view ran a stage (``ovml demo``, ``dvc repro``, Dagster), its record in
``<out>/.ovml-stage.json`` carries the same metadata; here it becomes the metadata of an
``AssetMaterialization`` whose data version is the digest of the stage's recorded
outputs and whose code version is the stage's own params and code (the record's
``code_version``), with each upstream's output digest as its input data version: the
rule of ``ovml list`` (pipelines/graph.py), so the catalog shows what exists and
whether it is fresh as the CLI and DVC see it.

:func:`reconcile` reports the records the instance does not know yet, through
``DagsterInstance.report_runless_asset_event``. ``ovml ui`` calls it before the UI
starts, and the ``stage_records`` sensor calls it while the UI runs (a CLI or DVC run
shows up within its interval). A record is known when the latest materialisation of its
asset (partition) has the same ``finished_at``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_project.partitions import cell_asset_path, seed_partition, variant_cells
from pipelines.config import Params
from pipelines.graph import Stage, build_graph, outputs_digest
from pipelines.graph import code_version as stage_code_version
from pipelines.records import load_record
from pipelines.tracking import experiment_url, run_url

DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
INPUT_DATA_VERSION_PREFIX = "dagster/input_data_version"
INPUT_EVENT_POINTER_PREFIX = "dagster/input_event_pointer"


def dagster_ui_url() -> str:
    """Base URL of the Dagster UI (``ovml ui`` sets OVML_DAGSTER_UI_URL)."""
    return os.environ.get("OVML_DAGSTER_UI_URL", "http://127.0.0.1:3000").rstrip("/")


def asset_key(stage: Stage) -> dg.AssetKey:
    """``<kind>/<key...>``; a cell is ``cells/<dataset>/<variant>`` (its seed is the
    partition: dagster_project/partitions.py)."""
    if stage.kind == "cell":
        return dg.AssetKey(cell_asset_path(*stage.key))
    return dg.AssetKey([stage.kind, *stage.key])


def partition_of(graph: dict[str, Stage], stage: Stage) -> str | None:
    """The partition a stage is of its asset: a seeded cell's seed, else None."""
    return seed_partition(graph, stage) if stage.kind == "cell" else None


def code_version(params: Params, graph: dict[str, Stage], name: str) -> str:
    """The asset's code version: the stage's own params and code, not its upstream's.
    A cell asset's is its variant's, the same for every seed (partition): the stage's
    name, which carries the seed, is replaced by the asset's key."""
    stage = graph[name]
    if stage.kind != "cell":
        return stage_code_version(params, graph, name)[:16]
    return cell_asset_code_version(params, graph, variant_cells(graph, stage))


def cell_asset_code_version(params: Params, graph: dict[str, Stage], stages: list[Stage]) -> str:
    """The code version of the asset of one variant's cells ``stages`` (all its seeds):
    each stage's, with its name (which carries the seed) replaced by the asset's key."""
    label = asset_key(stages[0]).to_user_string()
    # seeds of a variant read the same params and code: hash each distinct reading once
    distinct = {(st.params, st.code, st.extra_deps): st.name for st in stages}
    versions = sorted(
        {stage_code_version(params, graph, name, label=label) for name in distinct.values()}
    )
    if len(versions) == 1:
        return versions[0][:16]
    # a variant shown both once (reading the top-level seed) and over seeds
    return hashlib.sha256("".join(versions).encode()).hexdigest()[:16]


def reported_code_version(
    params: Params, graph: dict[str, Stage], stage: Stage, record: dict[str, Any]
) -> str:
    """The code version a record's materialisation carries: the asset's current one
    when the record was made with the stage's current params and code, else the
    recorded one (which no asset has: the UI shows "code version changed", as
    ``ovml list`` shows the stage stale)."""
    recorded = recorded_code_version(record)
    if stage.kind == "cell" and recorded == stage_code_version(params, graph, stage.name)[:16]:
        return code_version(params, graph, stage.name)
    return recorded


def recorded_code_version(record: dict[str, Any]) -> str:
    """The code version a record was made with (a record from before ``code_version``
    was kept gives its fingerprint, which no asset has: it shows as stale)."""
    return str(record.get("code_version") or record["fingerprint"])[:16]


def _png_markdown(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{path.name}](data:image/png;base64,{data})"


def _table(entry: dict[str, Any]) -> dg.TableMetadataValue:
    columns = entry["columns"]
    types = {
        c: "float" if any(isinstance(r.get(c), float) for r in entry["rows"]) else "string"
        for c in columns
    }
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({c: r.get(c) for c in columns if r.get(c) is not None})
            for r in entry["rows"]
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, types[c]) for c in columns]),
    )


def round_sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (3.9604666666666666 -> 3.96), for display."""
    if not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.{digits}g}")


def to_dagster_metadata(meta: dict[str, Any], record: dict[str, Any] | None = None) -> dict:
    """A stage record's JSON metadata as Dagster metadata values (links, tables, plots)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, dict):
            kind = value.get("type")
            if kind == "path":
                out[key] = dg.MetadataValue.path(value["value"])
            elif kind == "table":
                out[key] = _table(value)
            elif kind == "image" and Path(value["value"]).is_file():
                out[key] = dg.MetadataValue.md(_png_markdown(Path(value["value"])))
            continue
        if isinstance(value, float):
            out[key] = round_sig(value)
        elif isinstance(value, bool | int | str):
            out[key] = value
    if meta.get("mlflow_run_id") and meta.get("mlflow_experiment_id"):
        out["mlflow_run"] = dg.MetadataValue.url(
            run_url(str(meta["mlflow_experiment_id"]), str(meta["mlflow_run_id"]))
        )
        out["mlflow_experiment"] = dg.MetadataValue.url(
            experiment_url(str(meta["mlflow_experiment_id"]))
        )
    if record is not None:
        out["view"] = str(record.get("view") or "cli")
        out["finished_at"] = str(record.get("finished_at") or "")
        if record.get("run_id") and record.get("view") == "dagster":
            out["dagster_run"] = dg.MetadataValue.url(f"{dagster_ui_url()}/runs/{record['run_id']}")
    return out


def _input_tags(
    instance: dg.DagsterInstance, params: Params, graph: dict[str, Stage], stage: Stage
) -> dict[str, str]:
    """Provenance of the inputs, as a Dagster run records it: each upstream asset's data
    version and the storage id of its latest materialisation (of the partitions used),
    so the UI can tell fresh from stale for a reported stage too."""
    versions: dict[dg.AssetKey, str] = {}
    pointers: dict[dg.AssetKey, int] = {}
    for dep in stage.deps:
        up = graph[dep]
        key, part = asset_key(up), partition_of(graph, up)
        rec = load_record(params.root, up.out)
        if rec is not None:
            versions[key] = outputs_digest(rec)
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[part] if part else None),
            limit=1,
        ).records
        if found:
            pointers[key] = max(pointers.get(key, 0), found[0].storage_id)
    tags = {f"{INPUT_DATA_VERSION_PREFIX}/{k.to_user_string()}": v for k, v in versions.items()}
    tags.update(
        {f"{INPUT_EVENT_POINTER_PREFIX}/{k.to_user_string()}": str(v) for k, v in pointers.items()}
    )
    return tags


def materialization(
    params: Params,
    graph: dict[str, Stage],
    stage: Stage,
    record: dict[str, Any],
    instance: dg.DagsterInstance | None = None,
    description: str | None = None,
) -> dg.AssetMaterialization:
    """The materialisation a stage record stands for (what a Dagster run would emit),
    with its inputs' provenance when ``instance`` is given."""
    tags = {
        DATA_VERSION_TAG: outputs_digest(record),
        CODE_VERSION_TAG: reported_code_version(params, graph, stage, record),
    }
    if instance is not None:
        tags.update(_input_tags(instance, params, graph, stage))
    return dg.AssetMaterialization(
        asset_key=asset_key(stage),
        partition=partition_of(graph, stage),
        description=description
        or f"reported from the stage record ({record.get('view', 'cli')} run)",
        metadata=to_dagster_metadata(record.get("metadata") or {}, record),
        tags=tags,
    )


def _latest_finished_at(
    instance: dg.DagsterInstance, graph: dict[str, Stage], stage: Stage
) -> str | None:
    part = partition_of(graph, stage)
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=asset_key(stage), asset_partitions=[part] if part is not None else None
        ),
        limit=1,
    )
    if not result.records:
        return None
    mat = result.records[0].asset_materialization
    value = mat.metadata.get("finished_at") if mat is not None else None
    return getattr(value, "value", value)


def _run_in_progress(instance: dg.DagsterInstance, run_id: str | None) -> bool:
    run = instance.get_run_by_id(run_id) if run_id else None
    return run is not None and not run.is_finished


def pending_stages(instance: dg.DagsterInstance, params: Params) -> list[str]:
    """Stages (in run order) whose record the instance has not seen."""
    graph = build_graph(params)
    names = []
    for name, stage in graph.items():
        if stage.kind == "images":
            continue
        record = load_record(params.root, stage.out)
        if record is None or not record.get("finished_at"):
            continue
        if _latest_finished_at(instance, graph, stage) == record["finished_at"]:
            continue
        if record.get("view") == "dagster" and _run_in_progress(instance, record.get("run_id")):
            continue  # its own run reports it when the step ends
        names.append(name)
    return names


def reconcile(instance: dg.DagsterInstance, params: Params) -> list[str]:
    """Report every unseen stage record to the instance, upstream first (so each
    report points at its inputs' materialisations); returns the stages reported."""
    graph = build_graph(params)
    reported = []
    for name in pending_stages(instance, params):
        record = load_record(params.root, graph[name].out)
        if record is None:
            continue
        report_at(
            instance,
            materialization(params, graph, graph[name], record, instance),
            record.get("finished_at"),
        )
        reported.append(name)
    return reported


def report_at(
    instance: dg.DagsterInstance, mat: dg.AssetMaterialization, finished_at: str | None
) -> None:
    """Report ``mat`` as a runless event stamped with the stage's own ``finished_at``
    (what ``report_runless_asset_event`` does, but at the time the stage ran, not now)."""
    from datetime import datetime

    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    try:
        timestamp = datetime.fromisoformat(str(finished_at)).timestamp()
    except ValueError:
        instance.report_runless_asset_event(mat)  # no usable time: now
        return
    instance.report_dagster_event(
        DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            event_specific_data=StepMaterializationData(mat),
            job_name=RUNLESS_JOB_NAME,
        ),
        run_id=RUNLESS_RUN_ID,
        timestamp=timestamp,
    )
