"""The five papers' tables and figures as data: their published numbers, with sources.

One YAML file per paper (``qks.yaml``, ``epsilon.yaml``, ``c2srt.yaml``, ``comc.yaml``,
``rcnn.yaml``), transcribed from ``../shared/papers/<paper>.md``. A table is named
``<paper>/<table>`` (``qks/table1``, ``epsilon/figure3a``). Each published row cites
the markdown lines it was read from and lists its numbers in the paper's column order;
``columns`` says what each number is, as ``[dataset:]task/metric``. tests/test_published.py
re-reads those lines and checks every number.

A row's ``variant`` names the variant of params.yaml / params.real.yaml that reproduces
it (a string: the same variant on every dataset of the table; a mapping: one per
dataset, or per ``dataset:task`` where each column of a row is another cell, as CoMC
Table 3's k-shot columns). A row without one is *published only* (a baseline nobody implements here). A
row whose variant is not declared yet is *pending*: it attaches as soon as a helper adds
a variant of that name. ``kind: figure`` marks numbers that exist only as an image in the
markdown ("published: figure only"): ours are still computed and drawn.

Tasks: ``zsl``, ``gzsl``, ``all`` (all-labels zero-shot: every label novel), ``standard``
(classic multi-label training on the labels), ``<k>-shot`` (few-shot). The protocol of a
table, not of a dataset, says which test images are kept, which mAP and which K, and which
block of a cell's metrics.json a task reads (``blocks``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

HERE = Path(__file__).resolve().parent
PAPERS = ("qks", "epsilon", "c2srt", "comc", "rcnn")

MapVariant = Literal["per_class", "biam_pooled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Protocol(_Strict):
    """How the paper evaluated this table (applied to our stored scores in the report)."""

    keep_images: Literal["all", "with_positive"] = "all"
    map_variant: MapVariant | dict[str, MapVariant] = "per_class"
    top_k: list[int] = [3, 5]
    blocks: dict[str, Literal["zsl", "gzsl", "standard"]] = {}
    """task -> metrics.json block (default: zsl -> zsl, standard -> standard, everything
    else -> gzsl). ``standard`` = every column, on a dataset without unseen labels."""
    note: str = ""

    def map_for(self, dataset: str) -> MapVariant:
        if isinstance(self.map_variant, str):
            return self.map_variant
        return self.map_variant.get(dataset, "per_class")

    def block_for(self, dataset: str, task: str) -> str:
        return self.blocks.get(f"{dataset}:{task}", self.blocks.get(task, _default_block(task)))


def _default_block(task: str) -> str:
    return task if task in ("zsl", "standard") else "gzsl"


class Sweep(_Strict):
    """An ablation drawn as lines over a hyper-parameter: variant -> x."""

    name: str
    rows: dict[str, float] = {}


class PublishedRow(_Strict):
    row: str
    lines: list[int] | None = None  # 1-based, inclusive: where the numbers are printed
    values: list[float | None] | None = None  # in ``columns`` order; None = "-" in the paper
    columns: list[str] | None = None  # a row's own columns, where it differs from the table's
    variant: str | dict[str, str] | None = None
    note: str = ""

    def variant_for(self, dataset: str, task: str | None = None) -> str | None:
        """The variant of this row on ``dataset`` (and ``task``: a ``dataset:task`` key
        wins over the ``dataset`` key)."""
        if isinstance(self.variant, dict):
            if task is not None and f"{dataset}:{task}" in self.variant:
                return self.variant[f"{dataset}:{task}"]
            return self.variant.get(dataset)
        return self.variant

    def variants_on(self, dataset: str, tasks: list[str]) -> list[str]:
        """Every variant this row names on ``dataset``, over ``tasks``, without repeats."""
        names = [self.variant_for(dataset, t) for t in [None, *tasks]]
        return list(dict.fromkeys(v for v in names if v is not None))


class PublishedTable(_Strict):
    title: str
    caption_line: int
    kind: Literal["table", "figure"] = "table"
    task: str
    datasets: list[str]
    protocol: Protocol = Protocol()
    columns: list[str]
    rows: list[PublishedRow] = []
    sweep: Sweep | None = None
    analysis: str | None = None  # a figure that is an analysis of one model, not a metric

    @property
    def figure_only(self) -> bool:
        return self.kind == "figure"

    def column_keys(self, row: PublishedRow | None = None) -> list[tuple[str, str, str]]:
        """(dataset, task, metric) of each column, in the paper's order."""
        out = []
        for col in row.columns if row is not None and row.columns else self.columns:
            ds, _, rest = col.rpartition(":")
            task, _, metric = rest.partition("/")
            out.append((ds or self.datasets[0], task, metric))
        return out

    def row_numbers(self, row: PublishedRow) -> dict[tuple[str, str, str], float | None]:
        if row.values is None:
            return {}
        return dict(zip(self.column_keys(row), row.values, strict=True))

    def tasks(self) -> list[str]:
        seen: dict[str, None] = {}
        for _, task, _ in self.column_keys():
            seen[task] = None
        return list(seen)

    def metrics(self) -> list[str]:
        seen: dict[str, None] = {}
        for _, _, metric in self.column_keys():
            seen[metric] = None
        return list(seen)

    def variants(self) -> list[tuple[str, str]]:
        """(dataset, variant) of every row and sweep point that names a variant."""
        out: dict[tuple[str, str], None] = {}
        for r in self.rows:
            for ds in self.datasets:
                for v in r.variants_on(ds, self.tasks()):
                    out[(ds, v)] = None
        if self.sweep is not None:
            for v in self.sweep.rows:
                for ds in self.datasets:
                    out[(ds, v)] = None
        return list(out)


class Paper(_Strict):
    paper: str
    file: str
    title: str
    tables: dict[str, PublishedTable]


class PublishedError(ValueError):
    pass


@functools.cache
def load_paper(paper: str) -> Paper:
    path = HERE / f"{paper}.yaml"
    if not path.exists():
        raise PublishedError(f"{path}: no transcription for paper {paper!r} (known: {PAPERS})")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        doc = Paper.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise PublishedError(
            f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    for name, tab in doc.tables.items():
        for r in tab.rows:
            if r.values is not None and len(r.values) != len(r.columns or tab.columns):
                raise PublishedError(
                    f"{path}: tables.{name} row {r.row!r}: {len(r.values)} values for "
                    f"{len(r.columns or tab.columns)} columns"
                )
    return doc


def published_table(ref: str) -> PublishedTable:
    """``"qks/table1"`` -> its PublishedTable."""
    paper, _, table = ref.partition("/")
    doc = load_paper(paper)
    if table not in doc.tables:
        raise PublishedError(
            f"{ref}: paper {paper!r} has no table {table!r} (known: {', '.join(doc.tables)})"
        )
    return doc.tables[table]


def all_tables() -> dict[str, PublishedTable]:
    return {f"{p}/{name}": t for p in PAPERS for name, t in load_paper(p).tables.items()}


def published_by_variant(ref: str) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """published[variant][dataset][task][metric], the shape of TableConfig.published, for
    the rows of ``ref`` that name a variant (printed "-" cells are left out)."""
    tab = published_table(ref)
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for row in tab.rows:
        for (ds, task, metric), v in tab.row_numbers(row).items():
            variant = row.variant_for(ds, task)
            if variant is not None and v is not None:
                out.setdefault(variant, {}).setdefault(ds, {}).setdefault(task, {})[metric] = v
    return out


def source_of(ref: str) -> str:
    paper, _, table = ref.partition("/")
    t = published_table(ref)
    label = table.replace("table", "Table ").replace("figure", "Figure ")
    return f"{load_paper(paper).title}, {label} ({t.title})"


__all__ = [
    "PAPERS",
    "Paper",
    "Protocol",
    "PublishedError",
    "PublishedRow",
    "PublishedTable",
    "Sweep",
    "all_tables",
    "load_paper",
    "published_table",
    "source_of",
]
