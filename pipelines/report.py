"""The report: every paper table, reproduced beside published, as one static HTML page
plus Markdown (``<results>/report/index.html``, ``report.md``, ``report.json``, ``plots/``).

For each table of the params file (and every transcribed table it does not declare):

* rows of the paper in the paper's order, each with a status: *reproduced* (its cell is
  computed), *analogue* (a toyworld/iconworld variant stands for it), *not computed:
  needs X* (what :mod:`pipelines.plan` finds missing), *pending* (its method's variant
  is not declared yet), *published only* (a baseline nobody implements here) or
  *figure only* (the paper prints the numbers only in an image);
* per metric: ours, the paper's, Δ = ours − paper; mean ± std over seeds where a cell
  has seed folders (``<variant>@s<seed>``, issue 9's layout);
* images a cell used against the paper's counts, and the evaluation protocol. Real
  tables are re-evaluated from each cell's stored scores under *the table's* protocol
  (kept images, mAP variant, K): metrics change without retraining. Analogues use the
  dataset's own evaluation (metrics.json as computed);
* plots: mAP ours vs paper, ablation lines over the swept hyper-parameter (m, L, M, α,
  λ …) as the papers draw them, per-class AP of the unseen labels, PR curves (unseen).

The report reads whatever cells exist and computes nothing else; logged to MLflow as an
artefact of the ``report`` run in the ``tables`` experiment.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Params
from pipelines.io import atomic_path, load_npz, read_json, write_json, write_text
from pipelines.published import PublishedRow, PublishedTable, all_tables, published_table

PLOT_ROWS = 8  # PR curves per table


# --------------------------------------------------------------------------- cell results
@dataclass
class CellEval:
    """One cell's metrics under a table's protocol: {(dataset, task, metric): [per seed]}."""

    dataset: str
    variant: str
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (task, metric)
    images: dict[str, int] = field(default_factory=dict)
    seeds: int = 0
    unseen_ap: np.ndarray | None = None  # per-class AP (%) of the unseen labels, first seed
    unseen_names: list[str] = field(default_factory=list)
    pr: tuple[np.ndarray, np.ndarray] | None = None  # micro PR curve over the unseen block


def _seed_dirs(params: Params, dataset: str, variant: str) -> list[Path]:
    base = params.path("results") / "cells" / dataset
    dirs = [base / variant] + sorted(base.glob(f"{glob_escape(variant)}@s*"))
    return [d for d in dirs if (d / "metrics.json").exists()]


def glob_escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def _labels_for(params: Params, dataset: str, image_ids: np.ndarray):
    from pipelines.data.prepared import PreparedDataset

    ds = PreparedDataset.load(params.path("data") / dataset)
    test = ds.splits["test"]
    index = {str(i): n for n, i in enumerate(test.image_ids)}
    rows = np.array([index[str(i)] for i in image_ids], dtype=np.int64)
    labels = test.labels
    dense = labels[rows] if isinstance(labels, np.ndarray) else labels.to_dense(rows)
    names = [lab.name for lab in (*ds.label_space.seen, *ds.label_space.unseen)]
    return np.asarray(dense, dtype=np.int8), ds.label_space.n_seen, names


def evaluate_cell(
    params: Params, dataset: str, variant: str, pub: PublishedTable | None, *, curves: bool
) -> CellEval | None:
    """Metrics of a cell (all its seeds) under ``pub``'s protocol, or as stored when
    ``pub`` is None (analogues). None when the cell has not been computed."""
    from pipelines.metrics import evaluate_block, per_class_ap

    dirs = _seed_dirs(params, dataset, variant)
    if not dirs:
        return None
    res = CellEval(dataset, variant, seeds=len(dirs))
    for n, d in enumerate(dirs):
        stored = read_json(d / "metrics.json")
        meta = stored.get("meta", {})
        for k in ("n_train_images", "n_test_images"):
            if k in meta:
                res.images[k.removeprefix("n_").removesuffix("_images")] = int(meta[k])
        need_scores = pub is not None or (curves and n == 0)
        loaded = None
        if need_scores and (d / "scores.npz").exists():
            arrays = load_npz(d / "scores.npz")
            try:
                labels, n_seen, names = _labels_for(params, dataset, arrays["image_ids"])
                loaded = (arrays["scores"].astype(np.float32), labels, n_seen, names)
            except (FileNotFoundError, KeyError):
                loaded = None
        if pub is None or loaded is None:
            tasks = [t for t in stored if t != "meta" and isinstance(stored[t], dict)]
            blocks = {t: t for t in tasks}
            if pub is not None:  # stored metrics under the paper's task names
                blocks.update({t: pub.protocol.block_for(dataset, t) for t in pub.tasks()})
            for task, block in blocks.items():
                for metric, v in stored.get(block, {}).items():
                    res.values.setdefault((task, metric), []).append(float(v))
        else:
            scores, labels, n_seen, _ = loaded
            proto = pub.protocol
            for task in pub.tasks():
                block = proto.block_for(dataset, task)
                cols = slice(n_seen, None) if block == "zsl" else slice(0, None)
                if block == "standard" and n_seen < labels.shape[1]:
                    continue  # unseen labels: not the standard multi-label task
                s, y = scores[:, cols], labels[:, cols]
                if y.shape[1] == 0:
                    continue
                ks = [k for k in proto.top_k if k <= y.shape[1]]
                out = evaluate_block(
                    s, y, ks, map_variant=proto.map_for(dataset), keep_images=proto.keep_images
                )
                for metric, v in out.items():
                    if metric == "mAP" or "@" in metric:
                        res.values.setdefault((task, metric), []).append(float(v))
                res.images[f"test ({task}, kept)"] = int(out["n_images"])
        if curves and n == 0 and loaded is not None:
            scores, labels, n_seen, names = loaded
            s, y = scores[:, n_seen:], labels[:, n_seen:]
            if y.shape[1]:
                keep = "with_positive" if pub and pub.protocol.keep_images != "all" else "all"
                res.unseen_ap = per_class_ap(s, y, keep_images=keep).ap
                res.unseen_names = names[n_seen:]
                res.pr = pr_curve(s, y)
    return res


def pr_curve(scores: np.ndarray, labels: np.ndarray, points: int = 200):
    """Micro-averaged precision/recall over every annotated (image, label) pair."""
    known = labels != 0
    s, pos = scores[known], labels[known] == 1
    if not pos.any():
        return None
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(pos[order])
    n = np.arange(1, len(order) + 1)
    precision, recall = tp / n, tp / pos.sum()
    pick = np.unique(np.linspace(0, len(order) - 1, min(points, len(order))).astype(int))
    return precision[pick], recall[pick]


def _stat(vals: list[float] | None) -> tuple[float | None, float | None]:
    if not vals:
        return None, None
    arr = np.asarray(vals, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


# ----------------------------------------------------------------------------- the table
@dataclass
class ReportRow:
    label: str
    variant: str | None
    status: str
    dataset: str
    task: str
    cells: dict[str, dict[str, Any]]  # metric -> {ours, std, paper, delta}
    images: dict[str, int] = field(default_factory=dict)


@dataclass
class ReportTable:
    key: str  # params table name, or "<paper>/<table>" when not declared
    title: str
    source: str
    kind: str  # "reproduced" | "analogue" | "published only" | "ours"
    protocol: str
    metrics: list[str]
    rows: list[ReportRow]
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    evals: dict[tuple[str, str], CellEval] = field(default_factory=dict)
    sweep: tuple[str, dict[str, float]] | None = None


def _protocol_text(pub: PublishedTable | None, params: Params, datasets: list[str]) -> str:
    if pub is None:
        parts = []
        for ds in datasets:
            e = params.datasets[ds].eval
            parts.append(
                f"{ds}: images={e.keep_images}, mAP={e.map_variant}, K={e.top_k}, "
                f"zero-positive classes={e.zero_positive} (the dataset's evaluation)"
            )
        return "; ".join(parts)
    p = pub.protocol
    maps = (
        p.map_variant
        if isinstance(p.map_variant, str)
        else ", ".join(f"{d}: {v}" for d, v in p.map_variant.items())
    )
    text = (
        f"task {pub.task}; images={p.keep_images} "
        f"({'drop images with no positive in the block' if p.keep_images != 'all' else 'keep every test image'}); "
        f"mAP={maps}; K={p.top_k}"
    )
    return text + (f". {p.note}" if p.note else "")


def _cell_status(
    params: Params, ds: str, variant: str, ev: CellEval | None, analogue: bool | None
) -> str:
    """analogue: True (toyworld stands for a paper row), False (reproduced), None (ours)."""
    from pipelines.needs import cell_needs

    if ev is not None:
        seeds = f", {ev.seeds} seeds" if ev.seeds > 1 else ""
        word = {True: "analogue", False: "reproduced", None: "computed"}[analogue]
        return word + seeds
    needs = cell_needs(params, ds, variant)
    return "not computed: needs " + "; ".join(needs) if needs else "not computed yet (`ovml run`)"


def _metric_cells(
    metrics: list[str],
    ev: CellEval | None,
    task: str,
    published: dict[str, float | None],
    *,
    compare: bool = True,
) -> dict[str, dict[str, Any]]:
    """compare=False (analogues): the paper's number is shown, no Δ (other data)."""
    out = {}
    for m in metrics:
        ours, std = _stat(ev.values.get((task, m)) if ev else None)
        paper = published.get(m)
        delta = None if ours is None or paper is None or not compare else ours - paper
        out[m] = {"ours": ours, "std": std, "paper": paper, "delta": delta}
    return out


def build_table(
    params: Params, name: str | None, ref: str | None, cache: dict[Any, CellEval | None]
) -> ReportTable:
    """One report table: a params table (``name``) or an undeclared published one (``ref``)."""
    tab = params.tables[name] if name is not None else None
    ref = ref or (tab.paper if tab else None)
    pub = published_table(ref) if ref else None
    datasets = list(tab.datasets) if tab else list(pub.datasets if pub else [])
    real = pub is not None and any(ds in pub.datasets for ds in datasets)
    analogue = pub is not None and not real
    if pub is not None and pub.columns:
        metrics, tasks = pub.metrics(), pub.tasks()
    else:
        metrics = list(tab.metrics) if tab and tab.metrics else ["mAP", "F1@3", "F1@5"]
        tasks = pub.task.split("+") if pub is not None else list(tab.tasks if tab else [])
    source = tab.source if tab and tab.source else ""
    if pub is not None:
        from pipelines.published import source_of

        source = source_of(ref) + (f" (analogue on {', '.join(datasets)})" if analogue else "")
    if tab is None:
        kind = "published only"
    elif pub is None:
        kind = "ours (no paper table)"
    else:
        kind = "analogue" if analogue else "reproduced"
    out = ReportTable(
        key=name or ref or "",
        title=tab.title if tab else (pub.title if pub else ""),
        source=source,
        kind=kind,
        protocol=_protocol_text(pub if real else None, params, datasets)
        if tab
        else _protocol_text(pub, params, []),
        metrics=metrics,
        rows=[],
    )
    if pub is not None and pub.figure_only:
        out.notes.append("published: figure only (the paper prints these numbers only in an image)")
    if tab is None:
        out.notes.append(
            "not declared in this params file: published numbers only "
            "(params.real.yaml declares every paper table)"
        )

    def cell(ds: str, variant: str) -> CellEval | None:
        key = (ds, variant, ref if real else None)
        if key not in cache:
            cache[key] = evaluate_cell(params, ds, variant, pub if real else None, curves=True)
        ev = cache[key]
        if ev is not None:
            out.evals[(ds, variant)] = ev
        return ev

    declared = set(params.table_cells(name)) if name is not None else set()
    used: set[tuple[str, str]] = set()
    # 1. the paper's rows, in its order: (our dataset, the paper's dataset) pairs
    if pub is not None:
        if analogue:
            pairs = [(ds, pd) for ds in datasets for pd in pub.datasets]
        else:
            # a table may show one of its paper table's datasets (the others: other tables)
            pairs = [(pd, pd) for pd in pub.datasets if tab is None or pd in tab.datasets]
        matched = {row: v for v, row in (tab.match.items() if tab else [])}
        for prow in pub.rows:
            nums = pub.row_numbers(prow)
            for ds, pd in pairs:
                for task in tasks:
                    variant = matched.get(prow.row) if analogue else prow.variant_for(pd, task)
                    if nums and not any(d == pd and t == task for d, t, _ in nums):
                        continue  # the paper prints nothing for this dataset and task
                    published = {m: v for (d, t, m), v in nums.items() if d == pd and t == task}
                    status, ev = _row_status(
                        params, ds, variant, prow, declared, cell, analogue, tab, pub
                    )
                    if variant and ev is not None:
                        used.add((ds, variant))
                    out.rows.append(
                        ReportRow(
                            prow.row,
                            variant,
                            status,
                            ds if ds == pd else f"{ds} (paper: {pd})",
                            task,
                            _metric_cells(metrics, ev, task, published, compare=not analogue),
                            dict(ev.images) if ev else {},
                        )
                    )
    # 2. our rows that no paper row stands for (extra variants, analogues without a match)
    if tab is not None:
        for ds, variant in params.table_cells(name):
            if (ds, variant) in used or variant in tab.match:
                continue
            if real and any(variant in prow.variants_on(ds, tasks) for prow in pub.rows):  # type: ignore[union-attr]
                continue
            ev = cell(ds, variant)
            for task in tasks:
                out.rows.append(
                    ReportRow(
                        variant,
                        variant,
                        _cell_status(params, ds, variant, ev, analogue if pub else None),
                        ds,
                        task,
                        _metric_cells(metrics, ev, task, {}),
                        dict(ev.images) if ev else {},
                    )
                )
    # sweep (ablation figure): x per variant
    xs: dict[str, float] = {}
    if tab is not None and tab.x:
        xs = dict(tab.x)
    elif pub is not None and pub.sweep is not None and real:
        xs = dict(pub.sweep.rows)
    if xs:
        out.sweep = (pub.sweep.name if pub is not None and pub.sweep else "x", xs)
    if pub is not None and real:
        paper_images = _paper_images(ref)
        if paper_images:
            out.notes.append(f"the paper's images: {paper_images}")
        for ds in datasets:
            summary = params.path("data") / f"{ds}-images.summary.json"
            if summary.exists():
                sm = read_json(summary)
                out.notes.append(
                    f"{ds}: downloaded {sm['counts'].get('ok', 0):,} of {sm['total']:,} images "
                    f"({100 * sm['fraction_available']:.1f}%)"
                )
    return out


def _paper_images(ref: str) -> str:
    """Image counts the papers state (QKS Section 4.1; shared/data/README.md)."""
    return {
        "qks/table1": "161,789 train / 107,859 test (the official NUS-WIDE lists)",
        "qks/table2": "7,987,856 train / 110,066 test downloaded (of ~9M / 125,436)",
    }.get(ref, "")


def _row_status(params, ds, variant, prow: PublishedRow, declared, cell, analogue, tab, pub):
    fig = " (published: figure only)" if pub.figure_only else ""
    if variant is None:
        return ("published only" + (" (no analogue here)" if analogue else "") + fig), None
    if tab is None:
        return f"not declared in this params file (variant {variant!r}){fig}", None
    if variant not in params.variants:
        return f"pending: variant {variant!r} is not declared yet{fig}", None
    if ds not in params.datasets:
        return f"not computed: needs a dataset entry {ds!r} (no preparer yet){fig}", None
    if ds not in tab.datasets:
        return f"dataset {ds!r} is not among this table's datasets{fig}", None
    if (ds, variant) not in declared and not analogue:
        return f"variant {variant!r} is not among this table's cells{fig}", None
    ev = cell(ds, variant)
    return _cell_status(params, ds, variant, ev, analogue) + fig, ev


# --------------------------------------------------------------------------------- plots
def _plots(table: ReportTable, folder: Path, slug: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    groups = sorted({(r.dataset, r.task) for r in table.rows})
    # 1. mAP: ours vs paper
    if "mAP" in table.metrics and any(r.cells["mAP"]["ours"] is not None for r in table.rows):
        fig, axes = plt.subplots(1, len(groups), figsize=(3 + 3 * len(groups), 3.4), squeeze=False)
        for ax, (ds, task) in zip(axes[0], groups, strict=True):
            sub = [r for r in table.rows if (r.dataset, r.task) == (ds, task)]
            y = np.arange(len(sub))
            ours = [r.cells["mAP"]["ours"] or 0.0 for r in sub]
            err = [r.cells["mAP"]["std"] or 0.0 for r in sub]
            ax.barh(y, ours, xerr=err, color="tab:blue", label="ours")
            for i, r in enumerate(sub):
                if r.cells["mAP"]["paper"] is not None:
                    ax.plot(
                        [r.cells["mAP"]["paper"]] * 2, [i - 0.4, i + 0.4], color="tab:red", lw=2
                    )
            ax.set_yticks(y, [r.label for r in sub], fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{ds} {task} mAP (%): ours (bars), paper (red)", fontsize=8)
        fig.tight_layout()
        files.append(_save(fig, folder, f"{slug}-map.png"))
    # 2. ablation lines over the swept hyper-parameter
    if table.sweep is not None:
        name, xs = table.sweep
        tasks = sorted({r.task for r in table.rows})
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
        drawn = False
        for ax, task in zip(axes[0], tasks, strict=True):
            for m in [m for m in ("mAP", "F1@3", "F1@5") if m in table.metrics] + ["AVG"]:
                pts = []
                for (_ds, variant), ev in table.evals.items():
                    if variant not in xs:
                        continue
                    if m == "AVG":
                        vals = [_stat(ev.values.get((task, k)))[0] for k in ("mAP", "F1@3", "F1@5")]
                        v = None if None in vals else float(np.mean(vals))  # QKS Fig. 3's AVG
                    else:
                        v = _stat(ev.values.get((task, m)))[0]
                    if v is not None:
                        pts.append((xs[variant], v))
                if pts:
                    pts.sort()
                    style = {"color": "tab:red", "lw": 2} if m == "AVG" else {}
                    ax.plot(*zip(*pts, strict=True), marker="o", label=m, **style)
                    drawn = True
            ax.set_xlabel(name)
            ax.set_title(f"{task.upper()} (ours)", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        if drawn:
            files.append(_save(fig, folder, f"{slug}-sweep.png"))
        else:
            plt.close(fig)
    # 3. per-class AP of the unseen labels, for the last computed row
    evs = [ev for ev in table.evals.values() if ev.unseen_ap is not None]
    if evs:
        ev = evs[-1]
        ap = np.nan_to_num(ev.unseen_ap)
        order = np.argsort(-ap)
        n = len(order)
        fig, ax = plt.subplots(figsize=(max(5.0, min(16.0, 0.18 * n + 2)), 3.4))
        ax.bar(np.arange(n), ap[order], color="tab:green")
        if n <= 90:
            ax.set_xticks(
                np.arange(n), [ev.unseen_names[i] for i in order], rotation=90, fontsize=6
            )
        ax.set_ylabel("AP (%)")
        ax.set_title(f"per-class AP of the unseen labels: {ev.dataset}/{ev.variant}", fontsize=9)
        fig.tight_layout()
        files.append(_save(fig, folder, f"{slug}-unseen-ap.png"))
    # 4. PR curves (unseen block)
    curves = [ev for ev in table.evals.values() if ev.pr is not None][:PLOT_ROWS]
    if curves:
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        for ev in curves:
            precision, recall = ev.pr  # type: ignore[misc]
            ax.plot(recall, precision, label=f"{ev.dataset}/{ev.variant}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("PR curves, unseen labels (micro)", fontsize=9)
        ax.legend(fontsize=6)
        fig.tight_layout()
        files.append(_save(fig, folder, f"{slug}-pr.png"))
    return files


def _save(fig, folder: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / name, dpi=90)
    plt.close(fig)
    return f"plots/{name}"


# ------------------------------------------------------------------------------- render
def _num(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _cell_text(c: dict[str, Any]) -> str:
    ours = _num(c["ours"]) + (f" ± {c['std']:.1f}" if c["std"] is not None else "")
    if c["paper"] is None:
        return ours
    delta = "" if c["delta"] is None else f" (Δ {c['delta']:+.1f})"
    return f"{ours} / {_num(c['paper'])}{delta}"


def _images_text(images: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in images.items()) or "—"


def to_markdown(tables: list[ReportTable], params_file: str) -> str:
    lines = [
        "# ovml report: reproduced beside published",
        "",
        f"Params: `{params_file}`. Cells read `ours / paper (Δ = ours − paper)`, metrics in %; "
        "`ours ± std` over seeds where a cell has several.",
        "",
    ]
    for t in tables:
        lines += [f"## {t.key}: {t.title}", "", f"- source: {t.source or '—'}", f"- kind: {t.kind}"]
        lines += [f"- protocol: {t.protocol or '—'}"] + [f"- {n}" for n in t.notes] + [""]
        head = ["Row", "Variant", "Status", "Dataset", "Task", *t.metrics, "Images (ours)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in t.rows:
            vals = [_cell_text(r.cells[m]) for m in t.metrics]
            lines.append(
                "| "
                + " | ".join(
                    [r.label, r.variant or "—", r.status, r.dataset, r.task.upper(), *vals]
                    + [_images_text(r.images)]
                )
                + " |"
            )
        lines += [""] + [f"![{p}]({p})" for p in t.plots] + [""]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
td.l,th.l{text-align:left} tr.pub td{color:#666} .pos{color:#0a6e0a} .neg{color:#b00020}
.status{font-size:11px;max-width:22rem;text-align:left} img{max-width:100%;margin:4px}
section{border-top:2px solid #ddd;padding-top:.4rem} .meta{font-size:12px;color:#444}
"""


def to_html(tables: list[ReportTable], params_file: str) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ovml report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ovml report: reproduced beside published</h1>",
        f"<p class='meta'>Params: <code>{e(params_file)}</code>. Each metric: ours / paper "
        "(Δ = ours − paper), in %; ours ± std over seeds where a cell has several.</p>",
        "<nav><ul>",
        *[
            f"<li><a href='#{e(_slug(t.key))}'>{e(t.key)}</a>: {e(t.title)} ({e(t.kind)})</li>"
            for t in tables
        ],
        "</ul></nav>",
    ]
    for t in tables:
        parts += [
            f"<section id='{e(_slug(t.key))}'><h2>{e(t.key)}: {e(t.title)}</h2>",
            f"<p class='meta'>source: {e(t.source or '—')}<br>kind: {e(t.kind)}<br>"
            f"protocol: {e(t.protocol or '—')}" + "".join(f"<br>{e(n)}" for n in t.notes) + "</p>",
            "<table><thead><tr><th class='l'>Row</th><th class='l'>Variant</th>"
            "<th class='l'>Status</th><th class='l'>Dataset</th><th class='l'>Task</th>",
            *[f"<th>{e(m)}</th>" for m in t.metrics],
            "<th class='l'>Images (ours)</th></tr></thead><tbody>",
        ]
        for r in t.rows:
            cls = " class='pub'" if r.status.startswith(("published", "pending", "not")) else ""
            tds = []
            for m in t.metrics:
                c = r.cells[m]
                d = c["delta"]
                span = (
                    ""
                    if d is None
                    else f" <span class='{'pos' if d >= 0 else 'neg'}'>(Δ {d:+.1f})</span>"
                )
                ours = _num(c["ours"]) + (f" ± {c['std']:.1f}" if c["std"] is not None else "")
                paper = "" if c["paper"] is None else f" / {_num(c['paper'])}"
                tds.append(f"<td>{e(ours)}{e(paper)}{span}</td>")
            parts.append(
                f"<tr{cls}><td class='l'>{e(r.label)}</td><td class='l'>{e(r.variant or '—')}</td>"
                f"<td class='status'>{e(r.status)}</td><td class='l'>{e(r.dataset)}</td>"
                f"<td class='l'>{e(r.task.upper())}</td>{''.join(tds)}"
                f"<td class='l'>{e(_images_text(r.images))}</td></tr>"
            )
        parts.append("</tbody></table>")
        parts += [f"<img src='{e(p)}' alt='{e(p)}'>" for p in t.plots]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-")


def report_tables(params: Params) -> list[ReportTable]:
    """The params file's tables, then every transcribed table none of them reproduces."""
    cache: dict[Any, CellEval | None] = {}
    tables = [build_table(params, name, None, cache) for name in params.tables]
    real_covered = {
        t.paper
        for t in params.tables.values()
        if t.paper and any(ds in published_table(t.paper).datasets for ds in t.datasets)
    }
    for ref in all_tables():
        if ref not in real_covered:
            tables.append(build_table(params, None, ref, cache))
    return tables


def build_report(
    params: Params, out: Path | None = None, *, log: bool = True, params_file: str = ""
) -> Path:
    """Write the report folder atomically (and log it to MLflow); return the folder."""
    tables = report_tables(params)
    out = out or params.path("results") / "report"
    params_file = params_file or str(params.root)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for t in tables:
            if t.evals:
                t.plots = _plots(t, tmp / "plots", _slug(t.key))
        write_text(tmp / "report.md", to_markdown(tables, params_file))
        write_text(tmp / "index.html", to_html(tables, params_file))
        write_json(
            tmp / "report.json",
            {
                "tables": [
                    {
                        "key": t.key,
                        "title": t.title,
                        "source": t.source,
                        "kind": t.kind,
                        "protocol": t.protocol,
                        "notes": t.notes,
                        "metrics": t.metrics,
                        "plots": t.plots,
                        "rows": [r.__dict__ for r in t.rows],
                    }
                    for t in tables
                ]
            },
        )
    if log:
        from pipelines.tracking import mlflow_run

        with mlflow_run(
            params,
            "tables",
            "report",
            tags={"table": "report"},
            run_params={"tables": len(tables)},
        ) as tracker:
            for f in ("index.html", "report.md", "report.json"):
                tracker.log_artifact(out / f)
            if (out / "plots").exists():
                for f in sorted((out / "plots").iterdir()):
                    tracker.log_artifact(f)
    return out
