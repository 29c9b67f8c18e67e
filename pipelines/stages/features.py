"""Stage kind ``features``: ``<features>/<dataset>/<backbone>/``, the frozen backbone's
feature cache of every split (pipelines/vlp/features.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import LIBRARY_CODE, Need, Stage, read_json_dict, rel, written

KIND = "features"


def request(params: Any, need: Need) -> None:
    return None  # asked for by cells


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    ds, bb = key
    ups = [need("dataset", ds)]
    ups += [up for up in (need("images", ds), need("backbone", bb)) if up is not None]
    return Stage(
        KIND,
        key,
        tuple(ups),
        rel(params, "features", ds, bb),
        (
            f"backbones.{bb}.model",
            f"backbones.{bb}.weights",
            f"backbones.{bb}.quick_gelu",
            f"datasets.{ds}.images",
            f"datasets.{ds}.transform",
            *written(params, f"datasets.{ds}.features.patches"),
        ),
        (
            *LIBRARY_CODE,
            "pipelines/vlp/features.py",
            "pipelines/vlp/backbone.py",
            "pipelines/data/images.py",
        ),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.cells import build_features

    return build_features(params, *stage.key, progress=progress)


def describe(folder: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if not folder.is_dir():
        return meta
    for split_dir in sorted(p for p in folder.iterdir() if (p / "index.json").exists()):
        idx = read_json_dict(split_dir / "index.json")
        meta[f"n_{split_dir.name}"] = idx.get("n")
        meta["dim"], meta["n_patches"] = idx.get("dim"), idx.get("n_patches")
    return meta
