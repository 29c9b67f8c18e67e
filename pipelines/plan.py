"""A dry run of the graph: every stage a params file declares and what it needs from the
outside world before it can run (a release folder, a weights file, an API key, network),
without running anything. ``ovml plan -p params.real.yaml`` prints it; the report uses
:func:`cell_needs` to say why a cell is "not computed".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.config import Params
from pipelines.graph import Stage, build_graph, is_fresh
from pipelines.needs import (  # noqa: F401 (re-exported)
    cell_needs,
    corpus_needs,
    dataset_needs,
    images_needs,
    variant_needs,
    weights_needs,
)


@dataclass
class PlannedStage:
    name: str
    kind: str
    out: str
    fresh: bool
    needs: list[str] = field(default_factory=list)  # unmet outside requirements
    has: list[str] = field(default_factory=list)  # met ones, for the reader
    waits_on: list[str] = field(default_factory=list)  # blocked stages upstream

    @property
    def ready(self) -> bool:
        return not self.needs and not self.waits_on

    @property
    def state(self) -> str:
        if self.fresh:
            return "fresh"
        return "blocked" if self.needs else ("waits" if self.waits_on else "ready")


def plan(params: Params) -> list[PlannedStage]:
    """Every stage of the graph, in run order, with what it needs. Runs nothing."""
    graph = build_graph(params)
    out: dict[str, PlannedStage] = {}
    for name, st in graph.items():  # run order: upstream stages are planned first
        need, has = _stage_needs(params, st)
        fresh = is_fresh(params, graph, name)
        waits = sorted(
            {
                w
                for dep in st.deps
                if not out[dep].fresh
                for w in ([dep] if out[dep].needs else out[dep].waits_on)
            }
        )
        out[name] = PlannedStage(name, st.kind, st.out, fresh, need, has, [] if fresh else waits)
    return list(out.values())


@dataclass
class TablePlan:
    name: str
    paper: str | None
    cells: list[tuple[str, str]]
    pending: list[str]  # variants the paper's rows name that are not declared yet
    published_only: int  # rows of baselines nobody implements here


def table_plans(params: Params) -> list[TablePlan]:
    """Per table: its cells, and the paper rows that wait for a variant or print only."""
    from pipelines.published import published_table

    plans = []
    for name, tab in params.tables.items():
        pending: dict[str, None] = {}
        only = 0
        if tab.paper:
            pub = published_table(tab.paper)
            for r in pub.rows:
                names = [v for ds in pub.datasets for v in r.variants_on(ds, pub.tasks())]
                if not names:
                    only += 1
                for v in names:
                    if v not in params.variants:
                        pending[v] = None
        plans.append(TablePlan(name, tab.paper, params.table_cells(name), list(pending), only))
    return plans


def _stage_needs(params: Params, st: Stage) -> tuple[list[str], list[str]]:
    if st.kind == "dataset":
        return dataset_needs(params, st.key[0])
    if st.kind == "images":
        return images_needs(params, st.key[0])
    if st.kind == "features":
        n1, h1 = weights_needs(params, st.key[1])
        if params.datasets[st.key[0]].download is not None:  # the images stage fetches them
            return n1, h1
        n2, h2 = images_needs(params, st.key[0])
        return n1 + n2, h1 + h2
    if st.kind == "relations":  # the label text embeddings rank and tie-break the graph
        return weights_needs(params, st.key[1])
    if st.kind == "backbone":
        return [], [f"pre-trained here on {params.backbones[st.key[0]].pretrain.dataset}"]  # type: ignore[union-attr]
    if st.kind == "cell":
        return variant_needs(params, st.key[1])
    if st.kind == "corpus":
        return corpus_needs(params, st.key[1])
    return [], []
