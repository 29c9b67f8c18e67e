"""Render a table: the declared cells' metrics, with published numbers beside them.

Outputs in ``<results>/tables/<name>/``: table.md (what a person reads), table.csv and
table.json (machines), mAP.png (a bar chart per task). Missing cells render as "—" and
are listed, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Params, row_cells
from pipelines.io import atomic_path, write_json, write_text


def default_metrics(params: Params, dataset: str) -> list[str]:
    ks = params.datasets[dataset].eval.top_k
    return ["mAP", *[f"{m}@{k}" for k in ks for m in ("P", "R", "F1")]]


def load_cell_metrics(params: Params, dataset: str, variant: str) -> dict[str, Any] | None:
    """A cell's metrics.json (read here, not through pipelines.cells: a table is a light
    stage and must not import torch)."""
    path = params.path("results") / "cells" / dataset / variant / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _published(tab: Any) -> dict[str, Any]:
    """published[variant][dataset][task][metric]: the table's own numbers over those of
    its transcribed paper table (``paper:``, pipelines/published/)."""
    published = dict(tab.published)
    if tab.paper is not None:
        from pipelines.published import published_by_variant

        published = {**published_by_variant(tab.paper), **published}
    return published


def table_rows(params: Params, name: str) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    tab = params.tables[name]
    if tab.seeds is not None:
        return _seeded_rows(params, name)
    published = _published(tab)
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    columns: list[str] = []
    for ds in tab.datasets:
        metrics = tab.metrics or default_metrics(params, ds)
        for m in metrics:
            if m not in columns:
                columns.append(m)
        for variant in [v for d, v in params.table_cells(name) if d == ds]:
            cell = load_cell_metrics(params, ds, variant)
            if cell is None:
                missing.append(f"{ds}/{variant}")
            for task in tab.tasks:
                row: dict[str, Any] = {"dataset": ds, "variant": variant, "task": task.upper()}
                got = (cell or {}).get(task, {})
                pub = published.get(variant, {}).get(ds, {}).get(task, {})
                for m in metrics:
                    row[m] = got.get(m)
                    row[f"{m} (paper)"] = pub.get(m)
                if cell is not None:
                    row["images"] = cell["meta"]["counts"].get(task, {}).get("images")
                rows.append(row)
    return columns, rows, missing


def _seeded_rows(params: Params, name: str) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    tab = params.tables[name]
    published = _published(tab)
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    columns: list[str] = []
    for ds in tab.datasets:
        metrics = tab.metrics or default_metrics(params, ds)
        columns += [m for m in metrics if m not in columns]
        pub_ds = tab.published_dataset or ds
        for variant in tab.rows:
            cells = {}
            for cell in row_cells(tab, variant):
                got = load_cell_metrics(params, ds, cell)
                if got is None:
                    missing.append(f"{ds}/{cell}")
                else:
                    cells[cell] = got
            for task in tab.tasks:
                row: dict[str, Any] = {"dataset": ds, "variant": variant, "task": task.upper()}
                pub = published.get(variant, {}).get(pub_ds, {}).get(task, {})
                for m in metrics:
                    vals = [
                        c[task][m] for c in cells.values() if c.get(task, {}).get(m) is not None
                    ]
                    row[m], row[f"{m} std"] = mean_std(vals)
                    row[f"{m} (paper)"] = pub.get(m)
                row["seeds"] = len(cells)
                if cells:
                    first = next(iter(cells.values()))
                    row["images"] = first["meta"]["counts"].get(task, {}).get("images")
                rows.append(row)
    return columns, rows, missing


def fmt_cell(row: dict[str, Any], metric: str) -> str:
    """``mean ± std`` for a seeded row, the value otherwise (published number not included)."""
    v = row.get(metric)
    if v is None:
        return "—"
    std = row.get(f"{metric} std")
    return f"{v:.1f} ± {std:.1f}" if std is not None else f"{v:.1f}"


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.1f}"


def to_markdown(
    params: Params, name: str, columns: list[str], rows: list[dict[str, Any]], missing: list[str]
) -> str:
    tab = params.tables[name]
    has_pub = any(r.get(f"{m} (paper)") is not None for r in rows for m in columns)
    head = ["Dataset", "Method", "Task", *columns, "Images"]
    lines = [f"### {tab.title}", ""]
    if tab.source:
        lines += [f"Reproduces: {tab.source}", ""]
    if has_pub:
        where = f" on {tab.published_dataset}, a reference" if tab.published_dataset else ""
        lines += [f"Cells read `reproduced (paper{where})`.", ""]
    if tab.seeds is not None:
        lines += [f"Mean ± std over seeds {tab.seeds} (one cell per seed).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = []
        for m in columns:
            cell = fmt_cell(r, m)
            if r.get(f"{m} (paper)") is not None:
                cell += f" ({_fmt(r[f'{m} (paper)'])})"
            vals.append(cell)
        images = r.get("images")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["dataset"],
                    r["variant"],
                    r["task"],
                    *vals,
                    "—" if images is None else str(images),
                ]
            )
            + " |"
        )
    if missing:
        lines += ["", f"Missing cells (not yet computed): {', '.join(missing)}"]
    ev = {ds: params.datasets[ds].eval for ds in tab.datasets}
    notes = "; ".join(
        f"{ds}: mAP={e.map_variant}, zero-positive classes={e.zero_positive}, "
        f"images={e.keep_images}"
        for ds, e in ev.items()
    )
    lines += ["", f"Metrics in %. Evaluation: {notes}."]
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    fig = map_figure(rows)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def map_figure(rows: list[dict[str, Any]]):
    """One horizontal bar per row and task: our mAP (± its std over seeds as an error bar,
    where the row has one), the paper's number as a red reference line, with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 + 2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = [r for r in rows if r["task"] == task]
        labels = [
            r["variant"]
            if len({x["dataset"] for x in rows}) == 1
            else f"{r['dataset']}/{r['variant']}"
            for r in sub
        ]
        vals = [r.get("mAP") or 0.0 for r in sub]
        stds = [r.get("mAP std") for r in sub]
        has_std = any(s is not None for s in stds)
        ax.barh(
            labels,
            vals,
            color="tab:blue",
            label="reproduced (± std over seeds)" if has_std else "reproduced",
            xerr=[s or 0.0 for s in stds] if has_std else None,
            error_kw={"ecolor": "black", "capsize": 3, "lw": 1},
        )
        labelled = False
        for i, p in enumerate(r.get("mAP (paper)") for r in sub):
            if p is not None:
                ax.plot(
                    [p, p],
                    [i - 0.4, i + 0.4],
                    color="tab:red",
                    lw=2,
                    label=None if labelled else "paper (published)",
                )
                labelled = True
        ax.set_title(f"{task} mAP (%)")
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize="x-small")
    fig.tight_layout()
    return fig


def render_table(params: Params, name: str) -> Path:
    """Write the table's files atomically and log them to MLflow; return the folder."""
    from pipelines.tracking import mlflow_run

    columns, rows, missing = table_rows(params, name)
    out = params.path("results") / "tables" / name
    md = to_markdown(params, name, columns, rows, missing)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        write_text(tmp / "table.md", md)
        write_json(
            tmp / "table.json", {"name": name, "columns": columns, "rows": rows, "missing": missing}
        )
        buf = io.StringIO()
        fields = list(rows[0]) if rows else ["dataset", "variant", "task"]
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_text(tmp / "table.csv", buf.getvalue())
        if rows:
            _plot(tmp / "mAP.png", rows)
    with mlflow_run(
        params,
        "tables",
        name,
        tags={"table": name},
        run_params={"table": name},
        description=params.tables[name].title,
        source=f"ovml stage table {name}",
    ) as tracker:
        for f in sorted(out.iterdir()):
            if not f.name.startswith("."):
                tracker.log_artifact(f)
    return out
