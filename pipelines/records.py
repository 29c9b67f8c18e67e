"""Stage records: what a stage run leaves behind, whichever view ran it (CLI, DVC, Dagster).

The record is the stamp file ``<out>/.ovml-stage.json`` (format: pipelines/stages/spec.py)
written by :func:`pipelines.graph.write_stamp`::

    {"stage", "fingerprint", "code_version", "inputs": {upstream: output digest},
     "outputs": {...}, "metadata": {...},
     "finished_at": iso8601, "view": "cli" | "dvc" | "dagster", "run_id": str | null}

This module owns ``metadata`` (:func:`stage_metadata`, the one function every view uses
to describe a stage's output, from each kind's ``describe``), ``view`` (:func:`current_view`) and ``run_id``. The
Dagster side (dagster_project/records.py) turns a record into an asset materialisation,
so what the CLI or ``dvc repro`` built shows in the Dagster UI with the same metadata.

Metadata values are JSON: numbers, strings, booleans, or a typed entry
``{"type": "path" | "table" | "md" | "image", ...}`` that a view may render natively.
Only JSON files written by the stages are read here: no torch, no MLflow, no Dagster.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VIEWS = ("cli", "dvc", "dagster")

_VIEW: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "ovml_stage_view", default=None
)


@contextlib.contextmanager
def stage_view(view: str, run_id: str | None = None) -> Iterator[None]:
    """Records written inside this block say ``view`` ran them, in run ``run_id``."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    token = _VIEW.set((view, run_id))
    try:
        yield
    finally:
        _VIEW.reset(token)


def current_run_id() -> str | None:
    got = _VIEW.get()
    return got[1] if got else None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def current_view() -> str:
    """``dvc`` when ``dvc repro`` runs the command (it sets DVC_ROOT / DVC_STAGE for its
    stage commands), else ``cli``; Dagster sets ``dagster`` with :func:`stage_view`."""
    if (got := _VIEW.get()) is not None:
        return got[0]
    if os.environ.get("DVC_STAGE") or os.environ.get("DVC_ROOT"):
        return "dvc"
    return "cli"


def stage_metadata(root: Path, kind: str, out: str) -> dict[str, Any]:
    """Describe a stage's output folder ``root / out``: its path, and what its kind's
    module says of it (``describe``, pipelines/stages/<kind>.py)."""
    from pipelines.stages.kinds import stage_kind

    folder = root / out
    meta: dict[str, Any] = {"path": {"type": "path", "value": str(folder)}}
    meta.update(stage_kind(kind).describe(folder))
    return {k: v for k, v in meta.items() if v is not None}


def load_record(root: Path, out: str) -> dict[str, Any] | None:
    """The stage record in ``root / out``, or None (no run yet, or unreadable)."""
    from pipelines.stages.spec import STAMP, read_json_dict

    rec = read_json_dict(root / out / STAMP)
    return rec if rec.get("fingerprint") else None
