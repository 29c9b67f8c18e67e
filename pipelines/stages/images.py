"""Stage kind ``images``: ``<data>/<dataset>-images/chunk-NNNN/``, downloaded shards and
their ledger, for a real dataset whose entry has ``download:``. An entry whose
``images:`` folder is another entry's downloads reads that entry's stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import Need, Stage, rel

KIND = "images"


def request(params: Any, need: Need) -> None:
    return None  # asked for by datasets (pipelines/stages/dataset.py) and features


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage | None:
    from pipelines.workspace import download_owner

    (ds,) = key
    if params.datasets[ds].download is None:
        other = download_owner(params, ds)  # `images:` = another entry's downloads
        return declare(params, (other,), need) if other is not None else None
    return Stage(
        KIND,
        key,
        (need("dataset", ds),),
        rel(params, "data", f"{ds}-images"),
        (f"datasets.{ds}.download",),
        ("pipelines/data/download.py",),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.cells import download_dataset_images

    return download_dataset_images(params, *stage.key, progress=progress)


def describe(folder: Path) -> dict[str, Any]:
    return {}
