"""A cell's MLflow figures: the PR curve matches scikit-learn's; both figures render."""

from __future__ import annotations

import numpy as np


def test_pr_curve_matches_sklearn_on_annotated_pairs():
    from sklearn.metrics import precision_recall_curve

    from pipelines.cell_plots import pr_curve

    rng = np.random.default_rng(0)
    scores = rng.random((50, 7)).astype(np.float32).round(2)  # ties included
    labels = rng.choice([-1, 0, 1], size=(50, 7), p=[0.6, 0.2, 0.2]).astype(np.int8)
    p, r = pr_curve(scores, labels)
    mask = labels != 0
    sp, sr, _ = precision_recall_curve(labels[mask] == 1, scores[mask])
    np.testing.assert_allclose(p, sp[:-1][::-1])
    np.testing.assert_allclose(r, sr[:-1][::-1])


def test_figures_render_and_cap_bars():
    import matplotlib.pyplot as plt

    from pipelines.cell_plots import per_class_ap_figure, pr_curve_figure

    rng = np.random.default_rng(1)
    n_seen, n_unseen = 5, 80
    labels = rng.choice([-1, 1], size=(40, n_seen + n_unseen), p=[0.8, 0.2]).astype(np.int8)
    scores = rng.random(labels.shape).astype(np.float32)
    names = [f"label{i}" for i in range(n_seen + n_unseen)]
    fig = per_class_ap_figure(scores, labels, n_seen, names, "zero")
    assert len(fig.axes[0].patches) == 60  # 30 lowest + 30 highest of 80 unseen labels
    plt.close(fig)
    fig = pr_curve_figure(scores, labels, n_seen)
    assert [line.get_label() for line in fig.axes[0].lines] == ["ZSL", "GZSL"]
    plt.close(fig)
