"""Tests of pipelines.metrics against reference implementations and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pipelines import metrics as M

# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def sklearn_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class AP (percent) with sklearn on each class's ±1 subset; NaN without +1."""
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        m = labels[:, c] != 0
        y = labels[m, c] == 1
        if y.any():
            out[c] = 100.0 * average_precision_score(y, scores[m, c].astype(np.float64))
    return out


def definition_ap(x: np.ndarray, pos: np.ndarray) -> float:
    """AP (percent) straight from the definition; works with infinities (sklearn refuses)."""
    sx, sp = np.sort(x), np.sort(x[pos])
    pos_ge = sp.size - np.searchsorted(sp, sp, side="left")
    all_ge = sx.size - np.searchsorted(sx, sp, side="left")
    return 100.0 * float(np.mean(pos_ge / all_ge))


def naive_prf(scores: np.ndarray, labels: np.ndarray, k: int, keep: str = "all"):
    """Per-image python loop: top-k by (-score, column), micro P/R/F1 in percent."""
    hits = n_img = n_pos = 0
    for i in range(scores.shape[0]):
        if keep == "with_positive" and not (labels[i] == 1).any():
            continue
        n_img += 1
        n_pos += int((labels[i] == 1).sum())
        top = sorted(range(scores.shape[1]), key=lambda j: (-float(scores[i, j]), j))[:k]
        hits += sum(int(labels[i, j] == 1) for j in top)
    p = 100.0 * hits / (n_img * k)
    r = 100.0 * hits / n_pos
    return p, r, (0.0 if p + r == 0 else 2 * p * r / (p + r))


def biam_reference(scores: np.ndarray, labels: np.ndarray, keep: str = "with_positive"):
    """Direct, slow transcription of BiAM's evaluate_openimages.py + compute_AP loops.

    (numpy instead of torch; a stable descending sort, which equals BiAM on tie-free
    scores.) Returns (weighted mAP in percent, per-class AP fractions, weights).
    """
    lab_all, pred_all = labels.astype(np.int64), scores
    if keep == "with_positive":
        temp = np.flatnonzero(np.clip(lab_all, 0, 1).sum(1))  # images with positives
        lab_all, pred_all = lab_all[temp], pred_all[temp]
    imgs_per_label = np.clip(lab_all, 0, 1).sum(0)
    num_class = pred_all.shape[1]
    ap = np.zeros(num_class)
    for idx_cls in range(num_class):
        prediction = pred_all[(lab_all != 0)[:, idx_cls]]
        label = lab_all[(lab_all != 0)[:, idx_cls]]
        mask = np.abs(label) == 1
        if (label > 0).sum() == 0:
            continue
        binary_label = np.clip(label[mask], 0, 1)
        sort_idx = np.argsort(-prediction[mask], kind="stable")
        sorted_label = binary_label[sort_idx]
        tmp = (sorted_label == 1).astype(np.float64)
        tp = tmp.cumsum()
        fp = (sorted_label != 1).astype(np.float64).cumsum()
        num_pos = binary_label.sum()
        prec = tp / (tp + fp)
        ap[idx_cls] = (tmp * prec).sum() / num_pos
    weighted = 100.0 * (imgs_per_label * ap).sum() / imgs_per_label.sum()
    return weighted, ap, imgs_per_label


def random_problem(rng, n, c, pos=0.1, ann=0.5, ties=False):
    scores = rng.random((n, c)).astype(np.float32)
    if ties:
        scores = np.round(scores * 8) / 8
    u = rng.random((n, c))
    labels = np.where(u < pos, 1, np.where(u < ann, -1, 0)).astype(np.int8)
    return scores, labels


@pytest.fixture(params=["sort", "counting", "counting-direct"])
def code_path(request, monkeypatch):
    """Force the per-column AP engine: plain sort, bucketed counting, direct comparisons."""
    if request.param == "sort":
        monkeypatch.setattr(M, "_COUNTING_MIN_ITEMS", 1 << 40)
    else:
        monkeypatch.setattr(M, "_COUNTING_MIN_ITEMS", 0)
        monkeypatch.setattr(M, "_DIRECT_MAX_DISTINCT", 8 if request.param.endswith("direct") else 0)
    return request.param


@pytest.fixture(params=["sparse-rows", "sparse-blocks", "dense"])
def block_path(request, monkeypatch):
    """Force the per-class engine: one row-wise gather of a sparse matrix, sparse column
    blocks, or dense (transposed) column blocks."""
    monkeypatch.setattr(M, "_SPARSE_MAX_FRACTION", 0.0 if request.param == "dense" else 1.0)
    monkeypatch.setattr(M, "_SPARSE_ROWWISE", request.param == "sparse-rows")
    monkeypatch.setattr(M, "_COLUMN_BLOCK", 7)  # several blocks, ragged last one
    monkeypatch.setattr(M, "_ROW_BLOCK", 64)  # several row blocks
    return request.param


# --------------------------------------------------------------------------------------
# Per-class AP
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("ann", [0.3, 1.1])  # 1.1: every label is ±1
def test_ap_matches_sklearn(seed, ties, ann, code_path, block_path):
    rng = np.random.default_rng(seed)
    scores, labels = random_problem(rng, 300, 20, pos=0.08, ann=ann, ties=ties)
    labels[:, 3] = np.where(labels[:, 3] == 1, -1, labels[:, 3])  # a class without +1
    ap = M.average_precision(scores, labels, zero_positive="nan")
    ref = sklearn_ap(scores, labels)
    np.testing.assert_array_equal(np.isnan(ap), np.isnan(ref))
    np.testing.assert_allclose(ap, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_ap_layouts_and_torch(order, kind):
    rng = np.random.default_rng(7)
    scores, labels = random_problem(rng, 257, 70, pos=0.1, ann=0.6, ties=True)
    ref = sklearn_ap(scores, labels)
    s, y = np.asarray(scores, order=order), np.asarray(labels, order=order)
    if kind == "torch":
        s, y = torch.from_numpy(s), torch.from_numpy(y)
    ap = M.average_precision(s, y, zero_positive="nan")
    np.testing.assert_allclose(ap, ref, rtol=0, atol=1e-10)


def test_ap_strided_view_and_dtypes():
    rng = np.random.default_rng(8)
    scores, labels = random_problem(rng, 200, 30, ties=True)
    ref = sklearn_ap(scores, labels)
    big = np.zeros((400, 60), np.float32)
    big[::2, ::2] = scores
    ybig = np.zeros((400, 60), np.int8)
    ybig[::2, ::2] = labels
    np.testing.assert_allclose(
        M.average_precision(big[::2, ::2], ybig[::2, ::2], zero_positive="nan"), ref, atol=1e-10
    )
    for dt in (np.float16, np.float64):
        s = scores.astype(dt)
        np.testing.assert_allclose(
            M.average_precision(s, labels.astype(np.int64), zero_positive="nan"),
            sklearn_ap(s.astype(np.float64), labels),
            atol=1e-10,
        )
    s_int = (scores * 8).astype(np.int32)
    np.testing.assert_allclose(
        M.average_precision(s_int, labels, zero_positive="nan"),
        sklearn_ap(s_int.astype(np.float64), labels),
        atol=1e-10,
    )
    bf = torch.from_numpy(scores).to(torch.bfloat16)
    np.testing.assert_allclose(
        M.average_precision(bf, torch.from_numpy(labels).float(), zero_positive="nan"),
        sklearn_ap(bf.float().numpy(), labels),
        atol=1e-10,
    )


def test_ap_hand_computed():
    # Annotated: 0.9(+) 0.8(-) 0.7(+) 0.5(-); 0.6 is unknown and ignored.
    # Precisions at positives: 1/1, 2/3 -> AP = 5/6.
    s = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]], np.float32)
    y = np.array([[1], [-1], [1], [0], [-1]])
    assert M.average_precision(s, y)[0] == pytest.approx(100 * 5 / 6)
    # A positive tied with a negative at 0.9: precision there is 1/2 (tied items count
    # together), then 2/3 at 0.5 -> AP = 7/12.
    s = np.array([[0.9], [0.9], [0.5]])
    y = np.array([[-1], [1], [1]])
    assert M.average_precision(s, y)[0] == pytest.approx(100 * 7 / 12)
    # Two positives and a negative tied at 0.8 (precision 2/3 each), a positive at 0.1
    # (3/4): AP = (2/3 + 2/3 + 3/4) / 3 = 25/36.
    s = np.array([[0.8], [0.8], [0.8], [0.1]])
    y = np.array([[1], [1], [-1], [1]])
    assert M.average_precision(s, y)[0] == pytest.approx(100 * 25 / 36)


def test_zero_positive_policies_and_stats():
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.7], [0.4, 0.3, 0.2]], np.float32)
    y = np.array([[1, -1, 0], [-1, -1, 1], [-1, 0, -1]])
    # class 0: 0.9+ 0.4- 0.2- -> 100; class 1: no positive; class 2: 0.7+ 0.2- -> 100
    zero = M.per_class_ap(s, y, zero_positive="zero")
    np.testing.assert_allclose(zero.ap, [100.0, 0.0, 100.0])
    assert zero.mean == pytest.approx(200 / 3)
    assert zero.n_classes_without_positive == 1
    np.testing.assert_array_equal(zero.n_positive, [1, 0, 1])
    np.testing.assert_array_equal(zero.n_annotated, [3, 2, 2])
    assert zero.n_images == 3
    nan = M.per_class_ap(s, y, zero_positive="nan")
    assert np.isnan(nan.ap[1]) and math.isnan(nan.mean)
    skip = M.per_class_ap(s, y, zero_positive="skip")
    assert np.isnan(skip.ap[1]) and skip.mean == pytest.approx(100.0)
    assert M.mean_average_precision(s, y) == pytest.approx(200 / 3)
    assert M.mean_average_precision(s, y, zero_positive="skip") == pytest.approx(100.0)
    assert math.isnan(M.mean_average_precision(s, y, zero_positive="nan"))


@pytest.mark.parametrize("seed", [3, 4])
def test_keep_images_with_positive(seed, block_path):
    rng = np.random.default_rng(seed)
    scores, labels = random_problem(rng, 300, 12, pos=0.02, ann=0.7)
    has_pos = (labels == 1).any(1)
    assert 0 < has_pos.sum() < 300  # both kinds of images present
    got = M.per_class_ap(scores, labels, zero_positive="nan", keep_images="with_positive")
    np.testing.assert_allclose(got.ap, sklearn_ap(scores[has_pos], labels[has_pos]), atol=1e-10)
    assert got.n_images == has_pos.sum()
    all_ = M.per_class_ap(scores, labels, zero_positive="nan", keep_images="all")
    np.testing.assert_allclose(all_.ap, sklearn_ap(scores, labels), atol=1e-10)
    assert all_.n_images == 300


def test_images_without_any_positive_and_empty():
    s = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    y = -np.ones((5, 3), np.int8)
    pc = M.per_class_ap(s, y)
    assert pc.n_classes_without_positive == 3 and pc.mean == 0.0
    kept = M.per_class_ap(s, y, keep_images="with_positive", zero_positive="skip")
    assert kept.n_images == 0 and math.isnan(kept.mean)
    assert M.per_class_ap(np.zeros((0, 4)), np.zeros((0, 4), np.int8)).n_images == 0


def test_counting_engine_adversarial(monkeypatch):
    """Bucketed counting vs brute force on clustered, huge-range, tied and infinite scores."""
    rng = np.random.default_rng(11)
    n = 20000
    cases = {
        "clustered": np.concatenate([1 - rng.random(n - 50) * 1e-6, rng.random(50) * -50]),
        "huge-range": rng.standard_cauchy(n) ** 3,
        "ties": np.round(rng.random(n) * 20) / 20,
        "infinite": np.where(rng.random(n) < 0.01, np.inf, rng.random(n)),
        "signed-zero": np.where(rng.random(n) < 0.5, -0.0, 0.0) + (rng.random(n) < 0.2),
        "subnormal": rng.random(n) * 1e-42,
    }
    for name, x64 in cases.items():
        x = x64.astype(np.float32)
        if name in ("huge-range", "infinite"):
            x[rng.random(n) < 0.001] = -np.inf
        pos = rng.random(n) < 0.05
        if name == "infinite":
            pos |= np.isinf(x) & (x > 0) & (rng.random(n) < 0.5)
        y = np.where(pos, 1, -1)[:, None]
        ref = definition_ap(x, pos)
        if np.isfinite(x).all():
            assert ref == pytest.approx(sklearn_ap(x[:, None], y)[0], abs=1e-9)
        for direct in (0, 8):
            monkeypatch.setattr(M, "_DIRECT_MAX_DISTINCT", direct)
            monkeypatch.setattr(M, "_COUNTING_MIN_ITEMS", 0)
            got = M.average_precision(x[:, None], y)
            np.testing.assert_allclose(got, [ref], atol=1e-9, err_msg=name)
            u, _ = M._distinct(np.sort(x[pos]))
            counter = M._RankCounter(u, name)
            counter.add(x)
            brute = np.array([np.count_nonzero(x >= v) for v in u])
            np.testing.assert_array_equal(counter.all_ge(), brute, err_msg=name)


def lexsort_prf(scores: np.ndarray, labels: np.ndarray, k: int, keep: str = "all"):
    """Vectorised twin of naive_prf (np.lexsort per row), for larger inputs."""
    if keep == "with_positive":
        has = (labels == 1).any(1)
        scores, labels = scores[has], labels[has]
    cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top = np.lexsort((cols, -scores.astype(np.float64)), axis=-1)[:, :k]
    hits = int((np.take_along_axis(labels, top, axis=1) == 1).sum())
    p = 100.0 * hits / (scores.shape[0] * k)
    r = 100.0 * hits / int((labels == 1).sum())
    return p, r, (0.0 if p + r == 0 else 2 * p * r / (p + r))


@pytest.mark.parametrize("order", ["C", "F"])
def test_several_row_tiles_and_chunks(order, monkeypatch):
    """Inputs taller than the transpose tile / top-k chunk, with dropped images."""
    monkeypatch.setattr(M, "_COUNTING_MIN_ITEMS", 0)
    monkeypatch.setattr(M, "_SPARSE_MAX_FRACTION", 0.0)
    rng = np.random.default_rng(31)
    scores, labels = random_problem(rng, 4500, 9, pos=0.01, ann=1.1, ties=True)
    labels[:, 4] = np.where(rng.random(4500) < 0.3, 0, labels[:, 4])  # one partial column
    s, y = np.asarray(scores, order=order), np.asarray(labels, order=order)
    has = (labels == 1).any(1)
    for keep, rows in (("all", slice(None)), ("with_positive", has)):
        got = M.average_precision(s, y, keep_images=keep, zero_positive="nan")
        np.testing.assert_allclose(got, sklearn_ap(scores[rows], labels[rows]), atol=1e-10)
    wide_s, wide_y = random_problem(rng, 4500, 260, pos=0.01, ann=0.5, ties=True)
    wide_s, wide_y = np.asarray(wide_s, order=order), np.asarray(wide_y, order=order)
    for keep in ("all", "with_positive"):
        got = M.precision_recall_f1_at_ks(wide_s, wide_y, [2, 7], keep_images=keep)
        for k in (2, 7):
            assert got[k] == pytest.approx(lexsort_prf(wide_s, wide_y, k, keep), abs=1e-12)


def test_thread_count_invariance():
    rng = np.random.default_rng(12)
    scores, labels = random_problem(rng, 500, 150, pos=0.05, ann=0.4, ties=True)
    one = M.average_precision(scores, labels, num_threads=1)
    two = M.average_precision(scores, labels, num_threads=3)
    np.testing.assert_array_equal(one, two)


# --------------------------------------------------------------------------------------
# P/R/F1@K
# --------------------------------------------------------------------------------------


def test_prf_hand_computed():
    s = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1]], np.float32)
    y = np.array([[1, 0, -1, 1], [-1, 1, 1, 0], [-1, -1, -1, -1]])
    # k=2: row0 {0,2} -> 1 hit, row1 {1,2} -> 2 hits, row2 {0,1} -> 0; 4 positives
    p, r, f1 = M.precision_recall_f1_at_k(s, y, 2)
    assert (p, r, f1) == pytest.approx((50.0, 75.0, 60.0))
    # dropping row2 (no positive): P = 3/4, R = 3/4
    assert M.precision_recall_f1_at_k(s, y, 2, keep_images="with_positive") == pytest.approx(
        (75.0, 75.0, 75.0)
    )
    # k=1: hits in row0 and row1 -> P = 2/3, R = 2/4, F1 = 4/7
    assert M.precision_recall_f1_at_k(s, y, 1) == pytest.approx((200 / 3, 50.0, 400 / 7))
    # ties at the cut: lowest column indices win -> columns 0, 1 (both negatives)
    s = np.array([[0.5, 0.5, 0.5, 0.1]])
    y = np.array([[-1, -1, 1, 1]])
    assert M.precision_recall_f1_at_k(s, y, 2) == (0.0, 0.0, 0.0)
    # a prediction on an unknown label is not a hit, but still counts in P's denominator
    y = np.array([[0, 1, -1, 1]])
    assert M.precision_recall_f1_at_k(s, y, 2) == pytest.approx((50.0, 50.0, 50.0))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ncols", [6, 40, 300])  # 300 uses the group-maximum prefilter
@pytest.mark.parametrize("ties", [False, True])
def test_prf_matches_naive_loop(seed, ncols, ties):
    rng = np.random.default_rng(seed)
    scores, labels = random_problem(rng, 120, ncols, pos=0.05, ann=0.6, ties=ties)
    for keep in ("all", "with_positive"):
        got = M.precision_recall_f1_at_ks(scores, labels, [1, 3, 5], keep_images=keep)
        for k in (1, 3, 5):
            assert got[k] == pytest.approx(naive_prf(scores, labels, k, keep), abs=1e-12)


def test_prf_layouts_torch_and_float64():
    rng = np.random.default_rng(5)
    scores, labels = random_problem(rng, 100, 500, pos=0.02, ties=True)
    ref = naive_prf(scores, labels, 10)
    f_order = np.asfortranarray(scores)
    assert M.precision_recall_f1_at_k(f_order, labels, 10) == pytest.approx(ref)
    assert M.precision_recall_f1_at_k(torch.from_numpy(scores), labels, 10) == pytest.approx(ref)
    assert M.precision_recall_f1_at_k(scores.astype(np.float64), labels, 10) == pytest.approx(ref)


def test_prf_no_images_or_positives():
    s = np.random.default_rng(0).random((3, 5))
    y = -np.ones((3, 5), np.int8)
    p, r, f1 = M.precision_recall_f1_at_k(s, y, 2)
    assert p == 0.0 and math.isnan(r) and math.isnan(f1)
    p, r, f1 = M.precision_recall_f1_at_k(s, y, 2, keep_images="with_positive")
    assert math.isnan(p) and math.isnan(r) and math.isnan(f1)


# --------------------------------------------------------------------------------------
# BiAM pooled mAP
# --------------------------------------------------------------------------------------


def test_biam_hand_computed():
    s = np.array([[0.9, 0.2, 0.6], [0.4, 0.8, 0.7], [0.3, 0.5, 0.1]], np.float32)
    y = np.array([[1, -1, 0], [-1, 1, -1], [0, 1, 1]])
    # class 0 pools rows {0,1}: 0.9+ 0.8+ 0.7- 0.4- 0.2-          -> AP 1
    # class 1 pools rows {0,1,2}: 0.9+ 0.8+ 0.7- 0.5+ 0.4- 0.2- 0.1+ -> (1+1+3/4+4/7)/4
    # class 2 pools rows {1,2}: 0.8+ 0.7- 0.5+ 0.4- 0.1+          -> (1+2/3+3/5)/3
    ap1, ap2 = (2 + 3 / 4 + 4 / 7) / 4, (1 + 2 / 3 + 3 / 5) / 3
    res = M.biam_pooled_ap(s, y, keep_images="with_positive")
    np.testing.assert_allclose(res.ap, 100 * np.array([1.0, ap1, ap2]))
    np.testing.assert_array_equal(res.weight, [1, 2, 1])
    expected = 100 * (1 + 2 * ap1 + ap2) / 4
    assert res.weighted_map == pytest.approx(expected)
    assert M.mean_average_precision(s, y, variant="biam_pooled") == pytest.approx(expected)
    # the per-class AP of the same data differs: (1 + 1 + 1/2) / 3
    assert M.mean_average_precision(s, y) == pytest.approx(250 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("density", [0.04, 0.3, 1.1])
@pytest.mark.parametrize("keep", ["with_positive", "all"])
@pytest.mark.parametrize("stored", [True, False])
def test_biam_matches_reference_loop(seed, density, keep, stored, monkeypatch):
    if not stored:
        monkeypatch.setattr(M, "_BIAM_MAX_STORED", 0)  # stream from the matrix instead
    monkeypatch.setattr(M, "_COUNTING_MIN_ITEMS", 64)
    rng = np.random.default_rng(seed)
    _, labels = random_problem(rng, 150, 25, pos=0.03, ann=density)
    scores = rng.random((150, 25))  # float64: no ties, where BiAM's order is arbitrary
    assert np.unique(scores).size == scores.size
    ref, ref_ap, weight = biam_reference(scores, labels, keep)
    res = M.biam_pooled_ap(scores, labels, keep_images=keep)
    assert res.weighted_map == pytest.approx(ref, abs=1e-10)
    np.testing.assert_array_equal(res.weight, weight)
    has = ~np.isnan(res.ap)
    np.testing.assert_allclose(res.ap[has], 100 * ref_ap[has], atol=1e-10)
    assert np.all(ref_ap[~has] == 0)


def test_biam_ties_counted_together():
    rng = np.random.default_rng(9)
    scores, labels = random_problem(rng, 120, 10, pos=0.1, ann=0.5, ties=True)
    keep = (labels == 1).any(1)
    s, y = scores[keep], labels[keep]
    expected = np.zeros(10)
    for c in range(10):
        rows = y[:, c] != 0
        ps, py = s[rows], y[rows]
        m = py != 0
        if (py[m] == 1).any():
            expected[c] = average_precision_score(py[m] == 1, ps[m].astype(np.float64))
    w = (y == 1).sum(0)
    res = M.biam_pooled_ap(scores, labels, keep_images="with_positive")
    assert res.weighted_map == pytest.approx(100 * (w * expected).sum() / w.sum(), abs=1e-10)


# --------------------------------------------------------------------------------------
# evaluate_block
# --------------------------------------------------------------------------------------


def test_evaluate_block_keys_and_consistency():
    rng = np.random.default_rng(21)
    scores, labels = random_problem(rng, 200, 30, pos=0.05, ann=0.5)
    labels[:, 0] = -1
    out = M.evaluate_block(
        scores,
        labels,
        (3, 5),
        map_variant=("per_class", "biam_pooled"),
        zero_positive="skip",
        keep_images="with_positive",
    )
    assert list(out) == [
        "mAP", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5",
        "mAP_biam", "n_images", "n_classes", "n_classes_without_positive",
    ]  # fmt: skip
    kw = {"keep_images": "with_positive"}
    assert out["mAP"] == M.mean_average_precision(scores, labels, zero_positive="skip", **kw)
    biam = M.mean_average_precision(scores, labels, variant="biam_pooled", **kw)
    assert out["mAP_biam"] == biam
    p, r, f1 = M.precision_recall_f1_at_k(scores, labels, 5, **kw)
    assert (out["P@5"], out["R@5"], out["F1@5"]) == (p, r, f1)
    assert out["n_classes_without_positive"] >= 1 and out["n_classes"] == 30
    assert out["n_images"] == int((labels == 1).any(1).sum())
    only = M.evaluate_block(scores, labels, 3)
    assert "mAP_biam" not in only and "P@3" in only and "P@5" not in only
    # "mAP" always holds the primary variant; ks may be empty (mAP only)
    primary_biam = M.evaluate_block(scores, labels, [], map_variant="biam_pooled", **kw)
    assert primary_biam["mAP"] == primary_biam["mAP_biam"] == biam
    assert not any("@" in key for key in primary_biam)
    assert primary_biam["n_classes_without_positive"] == out["n_classes_without_positive"]


# --------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------


def test_bad_inputs():
    s = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    y = np.array([[1, -1, 0]] * 4)
    with pytest.raises(ValueError, match="same shape"):
        M.average_precision(s, y[:3])
    with pytest.raises(ValueError, match="same shape"):
        M.average_precision(s[0], y[0])
    with pytest.raises(ValueError, match=r"only \+1 .* found values in \[-1, 2\]"):
        M.average_precision(s, np.where(y == 1, 2, y))
    with pytest.raises(ValueError, match="non-integer or NaN"):
        M.average_precision(s, y * 0.5)
    with pytest.raises(ValueError, match="not booleans"):
        M.average_precision(s, y == 1)
    with pytest.raises(ValueError, match="keep_images"):
        M.average_precision(s, y, keep_images="some")
    with pytest.raises(ValueError, match="zero_positive"):
        M.average_precision(s, y, zero_positive="drop")
    with pytest.raises(ValueError, match="variant"):
        M.mean_average_precision(s, y, variant="macro")
    with pytest.raises(ValueError, match="exceeds the number of classes"):
        M.precision_recall_f1_at_k(s, y, 4)
    with pytest.raises(ValueError, match="positive integer"):
        M.precision_recall_f1_at_k(s, y, 0)
    with pytest.raises(ValueError, match="map_variant"):
        M.evaluate_block(s, y, 2, map_variant=())
    with pytest.raises(TypeError):
        M.average_precision("scores", y)


@pytest.mark.parametrize("engine", ["sort", "counting"])
def test_nan_scores(engine, monkeypatch):
    monkeypatch.setattr(M, "_COUNTING_MIN_ITEMS", 1 << 40 if engine == "sort" else 0)
    rng = np.random.default_rng(1)
    s, y = random_problem(rng, 50, 4, pos=0.2, ann=0.8)
    y[:, 2] = -1  # class 2 has no positive
    y[0, 1] = 0
    s2 = s.copy()
    s2[0, 1] = np.nan  # unknown label: ignored
    s2[5, 2] = np.nan  # class without positives: ignored
    np.testing.assert_allclose(M.average_precision(s2, y), M.average_precision(s, y))
    s3 = s.copy()
    row = int(np.flatnonzero(y[:, 0] == -1)[0])
    s3[row, 0] = np.nan  # a negative of class 0, which has positives
    with pytest.raises(ValueError, match="NaN .* class 0"):
        M.average_precision(s3, y)
    s4 = s.copy()
    s4[int(np.flatnonzero(y[:, 3] == 1)[0]), 3] = np.nan  # a positive
    with pytest.raises(ValueError, match="NaN .* class 3"):
        M.average_precision(s4, y)
    with pytest.raises(ValueError, match="NaN .* class 3"):
        M.average_precision(s4, y, num_threads=1)
    with pytest.raises(ValueError, match=r"NaN \(first in row 0\)"):
        M.precision_recall_f1_at_k(s2, y, 2)
    with pytest.raises(ValueError, match="NaN"):
        M.biam_pooled_ap(s3, y)
