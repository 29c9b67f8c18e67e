"""Cells as assets: one asset per (dataset, variant), partitioned by training seed.

Each asset's upstreams are exactly what its cells read (every seed of a variant reads
the same backbone, features, corpora and relation graphs), so Dagster's staleness of a
cell is the staleness of its own inputs, not of the union of a dataset's variants. A
variant that a table trains over ``seeds`` has one partition per seed (``s0``, ``s1``,
...: the cell ``<variant>@s<seed>``); a variant trained once has no partitions. Where
one table shows a variant over seeds and another shows it once on the same dataset, the
single cell is the partition ``single``. The UI groups a dataset's cell assets as
``cells_<dataset>``.
"""

from __future__ import annotations

import re

import dagster as dg

from pipelines.config_core import seeded, split_seed
from pipelines.graph import Stage

SEED_PARTITION_PREFIX = "s"
SINGLE_PARTITION = "single"


def cell_asset_path(dataset: str, variant: str) -> list[str]:
    """``cells/<dataset>/<variant without its seed>``."""
    return ["cells", dataset, split_seed(variant)[0]]


def variant_cells(graph: dict[str, Stage], stage: Stage) -> list[Stage]:
    """Every cell stage of ``stage``'s asset: its variant's cells on its dataset."""
    dataset, base = stage.key[0], split_seed(stage.key[1])[0]
    return [
        st
        for st in graph.values()
        if st.kind == "cell" and st.key[0] == dataset and split_seed(st.key[1])[0] == base
    ]


def seed_partition(graph: dict[str, Stage], stage: Stage) -> str | None:
    """The partition of a cell stage: ``qks@s1`` -> ``s1``; an unseeded cell has none,
    unless the same variant also has seeded cells on that dataset (then ``single``)."""
    seed = split_seed(stage.key[1])[1]
    if seed is not None:
        return f"{SEED_PARTITION_PREFIX}{seed}"
    seeded_too = any(split_seed(st.key[1])[1] is not None for st in variant_cells(graph, stage))
    return SINGLE_PARTITION if seeded_too else None


def cell_of_partition(dataset: str, base: str, partition: str | None) -> str:
    """The stage name a cell asset's partition stands for (the inverse of the above)."""
    if partition is None or partition == SINGLE_PARTITION:
        return f"cell@{dataset}@{base}"
    if not re.fullmatch(rf"{SEED_PARTITION_PREFIX}\d+", partition):
        raise ValueError(f"cells/{dataset}/{base}: {partition!r} is not a seed partition (s<N>)")
    return f"cell@{dataset}@{seeded(base, int(partition[len(SEED_PARTITION_PREFIX) :]))}"


def cell_group(dataset: str) -> str:
    """Dagster group names are identifiers: ``cells_iconworld_lit``."""
    return "cells_" + re.sub(r"[^A-Za-z0-9_]", "_", dataset)


def cells_by_variant(graph: dict[str, Stage]) -> dict[tuple[str, str], list[Stage]]:
    """Cell stages grouped by (dataset, variant without its seed), in graph order."""
    out: dict[tuple[str, str], list[Stage]] = {}
    for stage in graph.values():
        if stage.kind == "cell":
            dataset, variant = stage.key
            out.setdefault((dataset, split_seed(variant)[0]), []).append(stage)
    return out


def seed_partitions(
    graph: dict[str, Stage], stages: list[Stage]
) -> dg.StaticPartitionsDefinition | None:
    """One partition per seed of a variant's cells (and ``single`` for its unseeded
    cell, if any); None for a variant trained once."""
    parts = [seed_partition(graph, st) for st in stages]
    if all(p is None for p in parts):
        return None
    seeds = sorted((p for p in parts if p != SINGLE_PARTITION), key=lambda p: int(p[1:]))
    return dg.StaticPartitionsDefinition(
        ([SINGLE_PARTITION] if SINGLE_PARTITION in parts else []) + seeds
    )
