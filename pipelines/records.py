"""Stage records: what a stage run leaves behind, whichever view ran it (CLI, DVC, Dagster).

The record is the stamp file ``<out>/.ovml-stage.json`` written by
:func:`pipelines.graph.write_stamp`::

    {"stage", "fingerprint", "code_version", "inputs": {upstream: output digest},
     "outputs": {...}, "metadata": {...},
     "finished_at": iso8601, "view": "cli" | "dvc" | "dagster", "run_id": str | null}

This module owns ``metadata`` (:func:`stage_metadata`, the one function every view uses
to describe a stage's output), ``view`` (:func:`current_view`) and ``run_id``. The
Dagster side (dagster_project/records.py) turns a record into an asset materialisation,
so what the CLI or ``dvc repro`` built shows in the Dagster UI with the same metadata.

Metadata values are JSON: numbers, strings, booleans, or a typed entry
``{"type": "path" | "table" | "md" | "image", ...}`` that a view may render natively.
Only JSON files written by the stages are read here: no torch, no MLflow, no Dagster.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
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


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_metadata(root: Path, kind: str, out: str) -> dict[str, Any]:
    """Describe a stage's output folder ``root / out`` (``kind`` is the stage kind)."""
    folder = root / out
    meta: dict[str, Any] = {"path": {"type": "path", "value": str(folder)}}
    if kind == "dataset":
        info = _read(folder / "meta.json")
        meta.update({f"n_{k}": v for k, v in info.get("counts", {}).items()})
        meta.update({"n_seen": info.get("n_seen"), "n_unseen": info.get("n_unseen")})
    elif kind == "backbone":
        info = _read(folder / "open_clip_config.json").get("ovml", {})
        losses = info.get("epoch_losses", [])
        meta.update(
            {
                "epochs": len(losses) or None,
                "final_loss": losses[-1] if losses else None,
                "seconds": info.get("seconds"),
                "mlflow_run_id": info.get("mlflow_run_id"),
                "mlflow_experiment_id": info.get("mlflow_experiment_id"),
            }
        )
        towers = _read(folder / "towers.json")  # packaged towers (pipelines/vlp/towers.py)
        for side in ("image", "text"):
            if side in towers:
                src = towers[side]
                meta[f"{side} tower"] = f"{src.get('package')}=={src.get('version')}"
                for rel, digest in src.get("sha256", {}).items():
                    meta[f"{side} sha256 {rel}"] = digest
    elif kind == "features" and folder.is_dir():
        for split_dir in sorted(p for p in folder.iterdir() if (p / "index.json").exists()):
            idx = _read(split_dir / "index.json")
            meta[f"n_{split_dir.name}"] = idx.get("n")
            meta["dim"], meta["n_patches"] = idx.get("dim"), idx.get("n_patches")
    elif kind == "corpus" and folder.is_dir():
        from pipelines.text import dagster_metadata

        meta.update(dagster_metadata(folder, lambda text: {"type": "md", "value": text}))
    elif kind == "relations" and folder.is_dir():
        from pipelines.relations import stage_metadata as relations_metadata

        meta.update(relations_metadata(folder))
    elif kind == "cell":
        m = _read(folder / "metrics.json")
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
    elif kind == "table":
        tab = _read(folder / "table.json")
        if tab:
            meta["table"] = {"type": "table", "columns": _table_columns(tab), "rows": _rows(tab)}
            meta["missing cells"] = len(tab.get("missing", []))
            for r in tab.get("rows", []):  # numbers for the asset's Plots tab
                if r.get("mAP") is not None:
                    meta[f"{r['dataset']}/{r['variant']} {r['task']} mAP"] = float(r["mAP"])
        if (folder / "mAP.png").exists():
            meta["plot"] = {"type": "image", "value": str(folder / "mAP.png")}
        if (folder / "table.md").exists():
            meta["table.md"] = {"type": "path", "value": str(folder / "table.md")}
    return {k: v for k, v in meta.items() if v is not None}


def _table_columns(tab: dict[str, Any]) -> list[str]:
    return ["dataset", "variant", "task", *tab.get("columns", [])]


def _rows(tab: dict[str, Any]) -> list[dict[str, Any]]:
    cols = _table_columns(tab)
    return [
        {c: round(r[c], 2) if isinstance(r.get(c), float) else r.get(c) for c in cols}
        for r in tab.get("rows", [])
    ]


def load_record(root: Path, out: str) -> dict[str, Any] | None:
    """The stage record in ``root / out``, or None (no run yet, or unreadable)."""
    from pipelines.graph import STAMP

    rec = _read(root / out / STAMP)
    return rec if rec.get("fingerprint") else None
