"""Figures a cell logs to its MLflow run: per-class AP of the unseen labels and the
micro-averaged precision-recall curve of the ZSL and GZSL blocks.

Computed from the cell's test scores and labels (+1 / -1 / 0 = unknown, ignored), with
the same per-class AP as metrics.json (pipelines/metrics.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.evaluate import task_columns
from pipelines.metrics import per_class_ap

MAX_BARS_PER_END = 30


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Micro-averaged (precision, recall) over every annotated (image, label) pair,
    thresholds at each distinct score from high to low."""
    mask = labels != 0
    s, y = scores[mask].astype(np.float64), labels[mask] == 1
    if y.sum() == 0:
        return np.array([1.0]), np.array([0.0])
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each tie group
    tp, n = tp[last], last + 1
    return tp / n, tp / y.sum()


def per_class_ap_figure(
    scores: np.ndarray, labels: np.ndarray, n_seen: int, names: list[str], zero_positive: str
) -> Any:
    """Horizontal bars: AP (%) of each unseen label, sorted, with the ZSL mAP marked (the
    30 lowest and 30 highest when there are more than 60 unseen labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = task_columns(n_seen, labels.shape[1])["zsl"]
    res = per_class_ap(scores[:, cols], labels[:, cols], zero_positive=zero_positive)
    ap = np.nan_to_num(res.ap, nan=0.0)
    order = np.argsort(ap)
    if len(order) > 2 * MAX_BARS_PER_END:  # many unseen labels: the lowest and the highest
        order = np.r_[order[:MAX_BARS_PER_END], order[-MAX_BARS_PER_END:]]
    unseen = names[cols]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.18 * len(order) + 1)))
    ax.barh([unseen[i] for i in order], ap[order], color="tab:blue")
    ax.axvline(float(np.nanmean(res.ap)), color="tab:red", lw=1.5, label="ZSL mAP")
    ax.set_xlabel("AP (%)")
    ax.set_title("per-class AP, unseen labels")
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def pr_curve_figure(scores: np.ndarray, labels: np.ndarray, n_seen: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    drawn: set[tuple[int, int]] = set()
    for task, cols in task_columns(n_seen, labels.shape[1]).items():
        if cols.stop > cols.start and (cols.start, cols.stop) not in drawn:  # "all" = GZSL here
            drawn.add((cols.start, cols.stop))
            p, r = pr_curve(scores[:, cols], labels[:, cols])
            ax.plot(r, p, label=task.upper())
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall (micro)")
    ax.legend()
    fig.tight_layout()
    return fig


def log_cell_figures(
    tracker: Any,
    scores: np.ndarray,
    labels: np.ndarray,
    n_seen: int,
    names: list[str],
    zero_positive: str = "zero",
) -> None:
    """Log both figures to the tracker's run (no-op when tracking is off)."""
    if getattr(tracker, "run", None) is None:
        return
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    for name, fig in (
        (
            "per_class_ap_unseen.png",
            per_class_ap_figure(scores, labels, n_seen, names, zero_positive),
        ),
        ("pr_curve.png", pr_curve_figure(scores, labels, n_seen)),
    ):
        tracker.log_figure(fig, name)
        plt.close(fig)
