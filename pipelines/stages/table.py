"""Stage kind ``table``: ``<results>/tables/<table>/``, table.md/.csv/.json and a plot
of the cells one ``tables:`` entry names (pipelines/tables.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.stages.spec import LIBRARY_CODE, Need, Stage, read_json_dict, rel

KIND = "table"


def request(params: Any, need: Need) -> None:
    for name in params.tables:
        need(KIND, name)


def declare(params: Any, key: tuple[str, ...], need: Need) -> Stage:
    (name,) = key
    tab = params.tables[name]
    published = (f"pipelines/published/{tab.paper.split('/')[0]}.yaml",) if tab.paper else ()
    return Stage(
        KIND,
        key,
        tuple(f"cell@{ds}@{row}" for ds, row in params.table_cells(name)),
        rel(params, "results", "tables", name),
        (f"tables.{name}",),
        (*LIBRARY_CODE, "pipelines/tables.py", *published),
    )


def run(params: Any, stage: Stage, *, progress: bool = True, from_scratch: bool = False) -> Any:
    from pipelines.tables import render_table

    return render_table(params, *stage.key)


def describe(folder: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    tab = read_json_dict(folder / "table.json")
    if tab:
        meta["table"] = {"type": "table", "columns": _columns(tab), "rows": _rows(tab)}
        meta["missing cells"] = len(tab.get("missing", []))
        for r in tab.get("rows", []):  # numbers for the asset's Plots tab
            if r.get("mAP") is not None:
                meta[f"{r['dataset']}/{r['variant']} {r['task']} mAP"] = float(r["mAP"])
    if (folder / "mAP.png").exists():
        meta["plot"] = {"type": "image", "value": str(folder / "mAP.png")}
    if (folder / "table.md").exists():
        meta["table.md"] = {"type": "path", "value": str(folder / "table.md")}
    return meta


def _columns(tab: dict[str, Any]) -> list[str]:
    return ["dataset", "variant", "task", *tab.get("columns", [])]


def _rows(tab: dict[str, Any]) -> list[dict[str, Any]]:
    cols = _columns(tab)
    return [
        {c: round(r[c], 2) if isinstance(r.get(c), float) else r.get(c) for c in cols}
        for r in tab.get("rows", [])
    ]
