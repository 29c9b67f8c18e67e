"""evaluate_scores: ZSL = unseen columns, GZSL = all; metric keys; extra mAP variants."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import EvalConfig
from pipelines.evaluate import evaluate_scores
from pipelines.metrics import biam_pooled_ap, mean_average_precision, precision_recall_f1_at_k


def _data(seed=0, n=60, s=7, u=5):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, s + u), p=[0.8, 0.2])
    return rng.random((n, s + u)).astype(np.float32), labels, s


def test_tasks_use_the_right_columns():
    scores, labels, s = _data()
    m = evaluate_scores(scores, labels, s, EvalConfig(top_k=[3]))
    assert m["zsl"]["mAP"] == pytest.approx(
        mean_average_precision(scores[:, s:], labels[:, s:]), abs=1e-4
    )
    assert m["gzsl"]["mAP"] == pytest.approx(mean_average_precision(scores, labels), abs=1e-4)
    p, r, f = precision_recall_f1_at_k(scores[:, s:], labels[:, s:], 3)
    assert (m["zsl"]["P@3"], m["zsl"]["R@3"], m["zsl"]["F1@3"]) == pytest.approx(
        (p, r, f), abs=1e-4
    )
    assert set(m["gzsl"]) == {"mAP", "P@3", "R@3", "F1@3"}
    assert m["meta"]["counts"]["zsl"]["classes"] == 5


def test_extra_biam_variant_is_reported_under_its_own_name():
    scores, labels, s = _data(1)
    m = evaluate_scores(
        scores, labels, s, EvalConfig(top_k=[3], extra_map_variants=["biam_pooled"])
    )
    assert m["gzsl"]["mAP"] == pytest.approx(mean_average_precision(scores, labels), abs=1e-4)
    assert m["gzsl"]["mAP_biam"] == pytest.approx(
        biam_pooled_ap(scores, labels).weighted_map, abs=1e-4
    )


def test_shape_mismatch_is_an_error():
    scores, labels, s = _data()
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_scores(scores[:, :-1], labels, s, EvalConfig())
