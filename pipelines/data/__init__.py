"""Datasets: one module per dataset, plus the prepared-dataset contract (prepared.py).

``prepare_dataset(source, release_dir, out_dir, **options)`` dispatches to the module of
a real dataset (nus_wide, open_images, coco, coco_all, voc); toyworld is generated, not prepared.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

REAL_DATASETS = {
    "nus-wide": "nus_wide",
    "open-images-v4": "open_images",
    "coco-zsl": "coco",
    "coco": "coco_all",
    "voc2007": "voc",
}


def prepare_options(source: str) -> list[str]:
    """The ``-o KEY=VALUE`` options a dataset module's ``prepare`` accepts."""
    module = importlib.import_module(f"pipelines.data.{REAL_DATASETS[source]}")
    sig = inspect.signature(module.prepare)
    return [
        n for n, p in list(sig.parameters.items())[2:] if p.kind is inspect.Parameter.KEYWORD_ONLY
    ] or list(sig.parameters)[2:]


def check_out_dir(release_dir: Path, out_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse an output folder that would destroy data: one that is, or contains, the
    release, or that holds files no prepare wrote (unless ``overwrite``: then only the
    prepare's own files are replaced, the others stay)."""
    from pipelines.data.prepared import foreign_files

    release, out = Path(release_dir).resolve(), Path(out_dir).resolve()
    if out == release or release.is_relative_to(out):
        raise ValueError(
            f"--out {out_dir} {'is' if out == release else 'contains'} the release "
            f"{release_dir}: choose a separate folder for the prepared dataset"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir} is a file: give a folder")
    if overwrite:
        return
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise FileExistsError(
            f"--out {out_dir} holds {len(foreign)} file(s) a prepare did not write ({shown}); "
            "choose an empty folder, or pass --overwrite (only the prepare's own files are "
            "replaced; the others stay)"
        )


def prepare_dataset(
    source: str, release_dir: Path, out_dir: Path, *, overwrite: bool = False, **options: Any
):
    """Parse an official release into the prepared-dataset contract. Writes only its own
    files into ``out_dir`` (each atomically); see :func:`check_out_dir` for what it refuses."""
    if source not in REAL_DATASETS:
        raise ValueError(f"unknown dataset source {source!r} (known: {', '.join(REAL_DATASETS)})")
    if not Path(release_dir).is_dir():
        raise FileNotFoundError(
            f"{release_dir}: release folder not found (the official {source} files go here)"
        )
    valid = prepare_options(source)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown {source} option(s) {', '.join(unknown)} (valid: {', '.join(valid)})"
        )
    images_dir = options.get("images_dir")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise FileNotFoundError(f"images_dir={images_dir}: no such folder")
    check_out_dir(Path(release_dir), Path(out_dir), overwrite=overwrite)
    module = importlib.import_module(f"pipelines.data.{REAL_DATASETS[source]}")
    return module.prepare(Path(release_dir), Path(out_dir), **options)
