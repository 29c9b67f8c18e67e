"""The workspace: where each stage's outputs live and how to read them back.

Below the stages (pipelines/stages/*) and above the science: the report, agreement,
plans, capacity estimates and the DVC lock read results through here, never through
the stage modules that write them. Reading a backbone, a corpus or a cell's metrics
imports its library only when called (torch for a backbone); module import is light.

Also the output hashing every view shares: :func:`hash_outputs` (what a stage record
holds), :func:`check_outputs` (did a recorded file change) and :func:`outputs_digest`
(one hash of a record's outputs: the upstream part of a downstream fingerprint, and
Dagster's data version).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Params
from pipelines.io import read_json, sha256_file
from pipelines.stages.spec import STAMP

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from pipelines.vlp.backbone import Backbone


# ------------------------------------------------------------------------------ images
def images_root(params: Params, dataset: str) -> Path | None:
    """Where a dataset's images are: the download stage's folder, ``images:``, or None."""
    cfg = params.datasets[dataset]
    if cfg.download is not None:
        return params.path("data") / f"{dataset}-images"
    if cfg.images:
        path = Path(cfg.images)
        return path if path.is_absolute() else params.root / path
    return None


def download_owner(params: Params, dataset: str) -> str | None:
    """The other dataset entry whose download stage fills this entry's ``images:`` folder
    (``nus-wide-81`` reads ``data/nus-wide-images``: the same release, another label set),
    or None."""
    cfg = params.datasets[dataset]
    if cfg.download is not None or not cfg.images:
        return None
    path = Path(cfg.images)
    path = (path if path.is_absolute() else params.root / path).resolve()
    for other, ocfg in params.datasets.items():
        folder = (params.path("data") / f"{other}-images").resolve()
        if other != dataset and ocfg.download is not None and folder == path:
            return other
    return None


def download_summary_path(params: Params, dataset: str) -> Path:
    """Beside the images folder (a DVC metrics file may not sit inside an output)."""
    return params.path("data") / f"{dataset}-images.summary.json"


# ---------------------------------------------------------------------------- backbone
def backbone_weights(params: Params, backbone: str) -> str:
    cfg = params.backbones[backbone]
    if cfg.weights == "pretrain":
        return f"dir:{params.path('models') / backbone}"
    if cfg.weights.startswith("file:"):
        path = Path(cfg.weights.removeprefix("file:"))
        return f"file:{path if path.is_absolute() else params.root / path}"
    return cfg.weights


def load_backbone(params: Params, backbone: str) -> Backbone:
    """The backbone with its declared weights; weights that cannot be loaded are an error
    naming the file and the stage (or params key) that provides them, never a random tower."""
    from pipelines.vlp.backbone import create_backbone, resolve_device

    cfg = params.backbones[backbone]
    try:
        return create_backbone(
            cfg.model,
            backbone_weights(params, backbone),
            device=resolve_device(params.device),
            precision=cfg.precision,
            name=backbone,
            quick_gelu=cfg.quick_gelu,
        )
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as err:
        if cfg.weights == "pretrain":
            fix = (
                f"it is made by stage backbone@{backbone}: rebuild it with "
                f"`ovml stage backbone {backbone}` (or any `ovml run` that needs it)"
            )
        else:
            fix = f"check backbones.{backbone}.weights ({cfg.weights!r}) in params.yaml"
        raise FileNotFoundError(f"backbone {backbone!r}: {err}; {fix}") from err


# ------------------------------------------------------------------------------ corpus
def load_corpus(params: Params, dataset: str, name: str) -> pl.DataFrame:
    """The corpus stage ``corpus@<dataset>@<name>``'s rows (pipelines/text/corpora.py)."""
    from pipelines.text.corpora import load_corpus as read_corpus

    return read_corpus(params, dataset, name)


# -------------------------------------------------------------------------------- cell
def cell_dir(params: Params, dataset: str, variant: str) -> Path:
    return params.path("results") / "cells" / dataset / variant


def load_cell_metrics(params: Params, dataset: str, variant: str) -> dict[str, Any] | None:
    path = cell_dir(params, dataset, variant) / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path}: unreadable ({err}); it is an output of stage cell@{dataset}@{variant}: "
            f"rebuild it with `ovml run {dataset} {variant} --force`"
        ) from None
    if not isinstance(metrics, dict):
        raise ValueError(
            f"{path}: not a metrics object; rebuild it with `ovml run {dataset} {variant} --force`"
        )
    return metrics


def load_cell_scores(params: Params, dataset: str, variant: str) -> np.ndarray:
    from pipelines.io import load_npz

    return load_npz(cell_dir(params, dataset, variant) / "scores.npz")["scores"]


# ------------------------------------------------------------------------ stage records
def read_stage_record(root: Path, out: str) -> dict[str, Any] | None:
    """The stage record ``root / out / .ovml-stage.json`` (None if absent or unreadable)."""
    try:
        rec = read_json(root / out / STAMP)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def outputs_digest(record: dict[str, Any] | None) -> str:
    """One hash of the ``(relpath, sha256)`` pairs a stage record holds ("none" without
    one): byte-identical outputs give the same digest whatever their mtimes. Dagster's
    data version of the stage's asset."""
    outputs = record.get("outputs") if record else None
    if not isinstance(outputs, dict):
        return "none"
    pairs = sorted(
        (k, v.get("sha256") if isinstance(v, dict) else None) for k, v in outputs.items()
    )
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _output_files(out_dir: Path) -> list[Path]:
    """Every regular file under a stage's output (the record itself excluded)."""
    if out_dir.is_file():
        return [out_dir]
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != STAMP)


def hash_outputs(out_dir: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {"size", "mtime_ns", "sha256"}}`` of every file a stage left in its folder."""
    files: dict[str, dict[str, Any]] = {}
    for path in _output_files(out_dir):
        st = path.stat()
        rel = path.name if out_dir.is_file() else str(path.relative_to(out_dir))
        files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}
    return files


def check_outputs(
    out_dir: Path, outputs: dict[str, Any], *, deep: bool = False
) -> list[tuple[str, str]]:
    """Files of ``out_dir`` that differ from a record's ``outputs``: ``[(relpath, why)]``.

    Fast path: a file whose size and mtime_ns match the record is taken as unchanged; a
    file whose mtime moved (a copy, a ``touch``) is hashed, and only a different sha256
    counts. ``deep`` hashes every file whatever its mtime.
    """
    bad: list[tuple[str, str]] = []
    for rel, want in outputs.items():
        path = out_dir if out_dir.is_file() else out_dir / rel
        if not path.is_file():
            bad.append((rel, "missing"))
            continue
        st = path.stat()
        if st.st_size != want.get("size"):
            bad.append((rel, f"changed (size {want.get('size')} -> {st.st_size} bytes)"))
            continue
        moved = deep or st.st_mtime_ns != want.get("mtime_ns")
        if moved and sha256_file(path) != want.get("sha256"):
            bad.append((rel, "changed (content differs from the record's sha256)"))
    return bad
