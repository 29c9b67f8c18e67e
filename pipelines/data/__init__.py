"""Datasets: one module per dataset, plus the prepared-dataset contract (prepared.py).

``prepare_dataset(source, release_dir, out_dir, **options)`` dispatches to the module of
a real dataset (nus_wide, open_images, coco, voc); toyworld is generated, not prepared.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

REAL_DATASETS = {
    "nus-wide": "nus_wide",
    "open-images-v4": "open_images",
    "coco-zsl": "coco",
    "voc2007": "voc",
}


def prepare_dataset(source: str, release_dir: Path, out_dir: Path, **options: Any):
    """Parse an official release into the prepared-dataset contract (atomically)."""
    if source not in REAL_DATASETS:
        raise ValueError(f"unknown dataset source {source!r} (known: {', '.join(REAL_DATASETS)})")
    if not Path(release_dir).is_dir():
        raise FileNotFoundError(
            f"{release_dir}: release folder not found (the official {source} files go here)"
        )
    module = importlib.import_module(f"pipelines.data.{REAL_DATASETS[source]}")
    return module.prepare(Path(release_dir), Path(out_dir), **options)
