"""Cells as partitions: one partitioned asset per dataset, one partition per variant."""

from __future__ import annotations

import dagster as dg

from pipelines.config import Params


def variants_of(params: Params, dataset: str) -> list[str]:
    return [v for ds, v in params.cells if ds == dataset]


def cell_partitions(params: Params, dataset: str) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(variants_of(params, dataset))
