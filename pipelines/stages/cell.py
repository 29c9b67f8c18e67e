"""Stage kind ``cell``: ``<results>/cells/<dataset>/<variant>/``, one method variant
trained (if it trains) and scored on one dataset: metrics.json, scores.npz, weights.
A seeded cell (``qks@s1``) reads its own seed, not the top-level ``seed``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config_core import method_code_deps, split_seed
from pipelines.stages.spec import LIBRARY_CODE, Need, Stage, read_json_dict, rel, written

KIND = "cell"
CELL_CODE = (
    "pipelines/cells.py",
    "pipelines/evaluate.py",
    "pipelines/metrics.py",
    "pipelines/methods/base.py",
    "pipelines/vlp/prompts.py",
)


def method_code(method: str) -> tuple[str, ...]:
    """A method's file and its ``CODE_DEPS`` (read with ast: no import, no torch)."""
    return (f"pipelines/methods/{method}.py", *method_code_deps(method))


def request(params: Any, need: Need) -> None:
    for ds, var in params.cells:
        need(KIND, ds, var)


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    from pipelines.relations import cell_relations
    from pipelines.text.config import cell_corpora

    ds, var = key
    bb = params.backbone_for(ds, var)
    ups = [need("dataset", ds), need("features", ds, bb)]
    if (b := need("backbone", bb)) is not None:
        ups.append(b)
    base, seed = split_seed(var)
    ups += [need("corpus", ds, name) for name in cell_corpora(params, base).values()]
    if (graph := cell_relations(params, base)) is not None:  # one graph, shared by cells
        ups.append(need("relations", ds, bb, graph.name))
    return Stage(
        KIND,
        key,
        tuple(ups),
        rel(params, "results", "cells", ds, var),
        (
            *(("seed",) if seed is None else ()),
            f"variants.{base}",
            f"datasets.{ds}.eval",
            *written(params, f"datasets.{ds}.features.mode"),
        ),
        (*LIBRARY_CODE, *CELL_CODE, *method_code(params.variants[base].method)),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.cells import run_cell

    return run_cell(params, *stage.key, progress=progress, from_scratch=from_scratch)


def describe(folder: Path) -> dict[str, Any]:
    m = read_json_dict(folder / "metrics.json")
    meta: dict[str, Any] = {}
    for task in ("zsl", "gzsl"):
        for k, v in m.get(task, {}).items():
            meta[f"{task} {k}"] = float(v)
    info = m.get("meta", {})
    for k in ("method", "backbone", "seconds_fit", "seconds_predict"):
        meta[k] = info.get(k)
    meta["mlflow_run_id"] = info.get("mlflow_run_id")
    meta["mlflow_experiment_id"] = info.get("mlflow_experiment_id")
    graph = (info.get("fit") or {}).get("relation_graph")  # C2SRT's IST graph
    if graph:
        hood = "\n".join(f"- {k} <- {', '.join(v)}" for k, v in graph["neighbourhoods"].items())
        meta["relation_graph"] = {
            "type": "md",
            "value": f"{graph['n_edges']} edges; in-degree {graph['in_degree_histogram']}; "
            f"out-degree of seen labels {graph['out_degree_histogram']}\n\n{hood}",
        }
    return meta
