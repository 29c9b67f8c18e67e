"""Stage kind ``dataset``: ``<data>/<dataset>/``, the prepared dataset (+ images for the
generated worlds). Every dataset with a ``release_dir`` gets its stage (and its image
download stage), whether or not a cell reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import LIBRARY_CODE, Need, Stage, read_json_dict, rel

KIND = "dataset"


def dataset_code(source: str) -> tuple[str, ...]:
    """The files that make a dataset of ``source`` (its module, the prepared contract)."""
    from pipelines.data import REAL_DATASETS

    module = REAL_DATASETS.get(source, source)
    extra: tuple[str, ...] = ()
    if source == "iconworld":
        extra = (
            "pipelines/data/iconworld_vocab.py",
            "pipelines/data/reference_lists/iconworld/wordnet.json",
        )
    if source == "coco":  # coco_all.py reads the instances files with coco.py's reader
        extra = ("pipelines/data/coco.py",)
    return (f"pipelines/data/{module}.py", "pipelines/data/prepared.py", *extra)


def request(params: Any, need: Need) -> None:
    for ds, cfg in params.datasets.items():  # every configured release gets its stages
        if cfg.release_dir is not None:
            need(KIND, ds)
            need("images", ds)


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    (ds,) = key
    cfg = params.datasets[ds]
    return Stage(
        KIND,
        key,
        (),
        rel(params, "data", ds),
        (f"datasets.{ds}.source", f"datasets.{ds}.options", f"datasets.{ds}.release_dir"),
        (*LIBRARY_CODE, *dataset_code(cfg.source)),
        (cfg.release_dir,) if cfg.release_dir else (),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.cells import build_dataset

    return build_dataset(params, *stage.key, progress=progress)


def describe(folder: Path) -> dict[str, Any]:
    info = read_json_dict(folder / "meta.json")
    meta: dict[str, Any] = {f"n_{k}": v for k, v in info.get("counts", {}).items()}
    meta.update({"n_seen": info.get("n_seen"), "n_unseen": info.get("n_unseen")})
    return meta
