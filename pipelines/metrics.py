"""Multi-label ranking metrics: per-class mAP, BiAM's pooled Open Images mAP, P/R/F1@K.

A functional core in the style of ``torchmetrics.functional``: stateless functions over
a whole score matrix, no I/O, no framework state.

Conventions shared by every function here
-----------------------------------------
``scores``
    Real-valued array of shape ``(N, C)`` (N images, C classes of the *evaluated block*:
    the unseen columns for ZSL, seen + unseen columns for GZSL). numpy arrays and torch
    tensors are accepted; a CPU tensor is viewed through ``Tensor.numpy()`` without a
    copy (bfloat16 tensors are converted to float32, GPU tensors are moved to the CPU).
    C- and Fortran-ordered (and other strided) arrays are accepted and never copied as a
    whole: the work is done column-block-wise or row-block-wise. float16 scores are
    widened to float32 and integer scores to float64, block by block (exact for
    integers up to 2**53).
``labels``
    Integer array of the same shape with +1 = positive, -1 = (verified) negative and
    0 = unknown. Float arrays are accepted when every value is exactly -1, 0 or +1.
    Boolean arrays are rejected: a 0/1 matrix would silently turn every negative into
    "unknown".
``keep_images``
    ``"all"`` keeps every row. ``"with_positive"`` drops the rows that have no +1 in the
    evaluated block of columns (RCNn/QKS/ZS-SDL, and BiAM on Open Images, do this;
    BiAM/MKT keep all NUS-WIDE images). Dropping happens before anything else, for every
    metric of the call.
Results
    Every metric is returned in percent (0-100).

Speed
-----
Per-class AP needs, for each positive, the number of annotated items scoring at least
as high. Sorting every column (what a per-class sklearn loop does) is slow at Open
Images scale (125,436 x 7,586), all the more as numpy's float sort is slow on some CPUs.
Here, per block of 64 columns (a thread pool runs the blocks; numpy releases the GIL):

* sparse blocks (mostly 0 = unknown): the annotated entries are gathered and ranked
  with one sort of 64-bit keys (column, order-preserving score bits, label bit), all
  columns of the block at once (``_coo_ap_float32``);
* dense blocks: the block is transposed tile by tile; per column the distinct positive
  scores ``u`` are sorted and every annotated item is mapped to ``#{u <= x}`` by a
  monotone bucket lookup table plus a few branch-free binary-search rounds, then
  histogrammed (``_RankCounter``). The counts are exact integers: only the
  monotonicity of the float bucket function is relied upon, so ties, signed zeros and
  infinities are exact.

P/R/F1@K uses, per row block, a lower bound on each row's K-th largest score (the K-th
largest of 64 group maxima) to keep ~K candidates per row, then one sort of 64-bit keys
(row, score descending, column) gives the exact top-K under the documented tie rule.
Hot loops reuse thread-local scratch buffers (fresh large allocations page-fault).
Float labels are converted to int8 once (a copy of the label matrix); scores are never
copied as a whole.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "BiamPooledAP",
    "PerClassAP",
    "average_precision",
    "biam_pooled_ap",
    "evaluate_block",
    "mean_average_precision",
    "per_class_ap",
    "precision_recall_f1_at_k",
    "precision_recall_f1_at_ks",
]

ZeroPositive = Literal["zero", "nan", "skip"]
KeepImages = Literal["all", "with_positive"]
MapVariant = Literal["per_class", "biam_pooled"]

_ZERO_POSITIVE = ("zero", "nan", "skip")
_KEEP_IMAGES = ("all", "with_positive")
_MAP_VARIANTS = ("per_class", "biam_pooled")

# Tuning knobs (module-level so tests can force each code path).
#: Columns with fewer annotated items than this use a plain sort; others use counting.
_COUNTING_MIN_ITEMS = 4096
#: Up to this many distinct positive values, items are counted by direct comparisons.
_DIRECT_MAX_DISTINCT = 8
#: A column block is gathered sparsely below this fraction of annotated entries.
_SPARSE_MAX_FRACTION = 0.05
#: Gather a globally sparse matrix in one row-wise pass (else: column blocks only).
_SPARSE_ROWWISE = True
#: Columns per block of the per-class AP thread pool.
_COLUMN_BLOCK = 64
#: Rows per block for row-wise passes (label summary, top-k).
_ROW_BLOCK = 4096
#: Items per chunk inside the counter (bounds temporary memory).
_COUNT_CHUNK = 1 << 20
#: BiAM pooled: build a compressed row store of annotated entries up to this many entries.
_BIAM_MAX_STORED = 1 << 27


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """View a numpy array or torch tensor as a numpy array, copying only when unavoidable."""
    if isinstance(x, np.ndarray):
        return x
    torch = sys.modules.get("torch")  # a tensor implies torch is imported already
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        if t.is_conj():
            t = t.resolve_conj()
        return t.numpy()
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """Floating dtype in which scores are compared (exact widening of the input)."""
    if dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize <= 4 else np.dtype(dtype)
    if dtype.kind in "iu":
        return np.dtype(np.float64)
    raise TypeError(f"scores must be a real (float or integer) array, got dtype {dtype}")


def _default_threads(num_threads: int | None) -> int:
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        return int(num_threads)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _check_option(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class _Prepared:
    """Validated inputs plus the per-row positive counts, shared by all metrics of a call."""

    scores: np.ndarray
    labels: np.ndarray
    work_dtype: np.dtype
    row_pos: np.ndarray  # (N,) number of +1 per row over the evaluated block
    keep: np.ndarray | None  # (N,) bool, None = all rows kept
    num_threads: int

    @property
    def n_rows(self) -> int:
        return self.scores.shape[0]

    @property
    def n_cols(self) -> int:
        return self.scores.shape[1]

    @property
    def n_images(self) -> int:
        return self.n_rows if self.keep is None else int(np.count_nonzero(self.keep))

    @property
    def dropped(self) -> np.ndarray | None:
        return None if self.keep is None else np.flatnonzero(~self.keep)


def _label_range_error(lo: Any, hi: Any) -> ValueError:
    return ValueError(
        "labels must contain only +1 (positive), -1 (negative) and 0 (unknown); "
        f"found values in [{lo}, {hi}]"
    )


def _prepare(
    scores: Any, labels: Any, keep_images: str, num_threads: int | None = None
) -> _Prepared:
    _check_option(keep_images, _KEEP_IMAGES, "keep_images")
    s = _to_numpy(scores, "scores")
    y = _to_numpy(labels, "labels")
    if s.ndim != 2 or y.ndim != 2 or s.shape != y.shape:
        raise ValueError(
            "scores and labels must be 2-D arrays of the same shape (N images, C classes); "
            f"got scores {s.shape} and labels {y.shape}"
        )
    work = _work_dtype(s.dtype)
    if y.dtype.kind == "b":
        raise ValueError(
            "labels must be +1/-1/0 integers (0 = unknown), not booleans: a 0/1 matrix "
            "would mark every negative as unknown"
        )
    if y.dtype.kind == "f":
        finite_ok = True
        for r0 in range(0, y.shape[0], _ROW_BLOCK):
            blk = y[r0 : r0 + _ROW_BLOCK]
            if not np.all((blk == 1) | (blk == 0) | (blk == -1)):
                finite_ok = False
                break
        if not finite_ok:
            raise ValueError(
                "labels must contain only +1 (positive), -1 (negative) and 0 (unknown); "
                "found other values (non-integer or NaN)"
            )
        y = y.astype(np.int8)
    elif y.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {y.dtype}")
    nthreads = _default_threads(num_threads)
    n = y.shape[0]
    row_pos = np.zeros(n, dtype=np.int32)
    bounds = [(r0, min(r0 + _ROW_BLOCK, n)) for r0 in range(0, n, _ROW_BLOCK)]

    def summarize(rng: tuple[int, int]) -> tuple[Any, Any]:
        r0, r1 = rng
        blk = y[r0:r1]
        if blk.size == 0:
            return 0, 0
        lo, hi = blk.min(), blk.max()
        if lo < -1 or hi > 1:
            return lo, hi
        pos = (blk == 1).view(np.uint8)
        np.add.reduce(pos, axis=1, dtype=np.int32, out=row_pos[r0:r1])
        return lo, hi

    for lo, hi in _map_threads(summarize, bounds, nthreads):
        if lo < -1 or hi > 1:
            raise _label_range_error(lo, hi)
    keep = None
    if keep_images == "with_positive":
        keep = row_pos > 0
        if keep.all():
            keep = None
    return _Prepared(s, y, work, row_pos, keep, nthreads)


def _map_threads(fn, items: Sequence[Any], num_threads: int) -> list[Any]:
    """``[fn(i) for i in items]`` on a thread pool; the first exception is re-raised.

    Always runs in pool threads (even with one worker) so that their thread-local scratch
    buffers are released when the pool shuts down.
    """
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(num_threads, len(items)))) as pool:
        futures = [pool.submit(fn, it) for it in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


_tls = threading.local()


def _scratch(name: str, shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """A reusable thread-local buffer.

    Hot loops allocate many same-sized temporaries; fresh large allocations are mmapped
    and page-faulted every time, which costs more than the arithmetic. Callers must not
    hold two live buffers under the same name.
    """
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = int(np.prod(shape))
    store = _tls.__dict__.setdefault("buffers", {})
    key = (name, np.dtype(dtype).str)
    buf = store.get(key)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 4096), dtype=dtype)
        store[key] = buf
    return buf[:n].reshape(shape)


def _transposed(a: np.ndarray, j0: int, j1: int, dtype: np.dtype) -> np.ndarray:
    """``a[:, j0:j1].T`` as a C-contiguous ``(j1 - j0, N)`` array of ``dtype``.

    A view when ``a`` is column-major with the right dtype; otherwise a thread-local
    scratch copy, made in two stages (contiguous row tile, then an in-cache transpose),
    which is several times faster than numpy's strided transpose of a tall block.
    """
    view = a[:, j0:j1].T
    if view.dtype == dtype and view.flags.c_contiguous:
        return view
    out = _scratch("transposed", view.shape, dtype)
    if view.flags.c_contiguous:
        out[...] = view
        return out
    n, b = a.shape[0], j1 - j0
    step = 2048
    tile = _scratch("tile", (step, b), dtype)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        t = tile[: r1 - r0]
        t[...] = a[r0:r1, j0:j1]
        out[:, r0:r1] = t.T
    return out


# --------------------------------------------------------------------------------------
# Exact "how many items score >= each positive" counting
# --------------------------------------------------------------------------------------


def _nan_error(what: str) -> ValueError:
    return ValueError(
        f"scores contain NaN among the annotated (+1/-1) entries of {what}, which has "
        "positives: its AP is undefined. Fix the model outputs (or mark those labels 0)."
    )


def _distinct(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and their multiplicities."""
    n = sorted_values.size
    if n == 0:
        return sorted_values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    mult = np.diff(np.append(starts, n))
    return sorted_values[starts], mult


def _has_nan(x: np.ndarray) -> bool:
    # A sum is a cheap SIMD pass; only when it is NaN (NaN present, or inf - inf) look closer.
    s = np.add.reduce(x, axis=None)
    return bool(s != s) and bool(np.isnan(x).any())


class _RankCounter:
    """Exact histogram of ``#{u <= x}`` over streamed items ``x``.

    ``u`` holds the sorted distinct positive scores. For each item, ``j(x) = #{u <= x}``
    is found as follows: a bucket index ``b(x) = trunc(clip(x * inv + off, 0, M + 1))``
    (monotone non-decreasing in ``x`` because IEEE multiplication by a positive constant,
    addition, clipping and truncation are all monotone) gives the first candidate
    ``lut[b] = #{u : b(u) < b(x)}``; every ``u`` in a lower bucket is ``<= x`` and every
    ``u`` in a higher bucket is ``> x``, so ``j(x)`` lies in
    ``[lut[b], lut[b] + count[b]]`` and a fixed number of branch-free binary-search
    rounds (``ceil(log2(max count + 1))``) finds it exactly. ``u`` is padded with NaN,
    which compares false, so the search never runs past the end. Only the *speed*
    depends on how evenly the buckets split ``u``; the result never does.
    """

    def __init__(self, u: np.ndarray, what: str) -> None:
        self.u = u
        self.what = what
        nu = u.size
        self.hist = np.zeros(nu + 1, dtype=np.int64)
        self.direct = nu <= _DIRECT_MAX_DISTINCT
        self.fallback = False
        if self.direct:
            return
        dt = u.dtype.type
        finite = u[np.isfinite(u)]
        lo = float(finite[0]) if finite.size else 0.0
        hi = float(finite[-1]) if finite.size else 0.0
        scale = hi - lo if hi > lo else max(abs(lo), 1.0)
        m = int(min(max(8 * nu, 16), 1 << 22))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            inv = dt(m / scale)
            off = dt(1.5) - dt(lo) * inv
        if not (np.isfinite(inv) and inv > 0 and np.isfinite(off)):
            self.fallback = True
            return
        self.inv, self.off = inv, off
        self.top = dt(m + 1)
        t = np.empty(nu, dtype=u.dtype)
        pb = np.empty(nu, dtype=np.intp)
        self._buckets(u, t, pb)
        counts = np.bincount(pb, minlength=m + 2)
        lut = np.zeros(m + 2, dtype=np.intp)
        np.cumsum(counts[:-1], out=lut[1:])
        self.lut = lut
        rounds = max(1, math.ceil(math.log2(int(counts.max()) + 1)))
        self.steps = [1 << r for r in range(rounds - 1, -1, -1)]
        self.u_pad = np.concatenate((u, np.full(1 << rounds, np.nan, dtype=u.dtype)))

    def _buckets(self, x: np.ndarray, t: np.ndarray, out: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(x, self.inv, out=t)
            t += self.off
            np.clip(t, self.u.dtype.type(0), self.top, out=t)
        if _has_nan(t):  # NaN survives the clip; everything else is finite here
            raise _nan_error(self.what)
        np.copyto(out, t, casting="unsafe")  # truncation toward zero, t >= 0

    def add(self, x: np.ndarray) -> None:
        """Count items ``x`` (any shape; all of them annotated)."""
        self.hist += self.counts(x)

    def counts(self, x: np.ndarray) -> np.ndarray:
        """Histogram of ``j(x)`` over items ``x`` (thread-safe: no state is modified)."""
        x = x.reshape(-1)
        hist = np.zeros(self.u.size + 1, dtype=np.int64)
        for c0 in range(0, x.size, _COUNT_CHUNK):
            hist += self._count(x[c0 : c0 + _COUNT_CHUNK])
        return hist

    def _count(self, x: np.ndarray) -> np.ndarray:
        u = self.u
        n = x.size
        if self.direct:
            if _has_nan(x):
                raise _nan_error(self.what)
            # ge[i] = #{x >= u_i}; j(x) > i  <=>  x >= u_i, so the histogram is a difference.
            ok = _scratch("ok", n, bool)
            ge = np.zeros(u.size + 1, dtype=np.int64)
            for i, v in enumerate(u):
                ge[i] = np.count_nonzero(np.greater_equal(x, v, out=ok))
            hist = np.empty(u.size + 1, dtype=np.int64)
            hist[0] = n - ge[0]
            hist[1:] = ge[:-1] - ge[1:]
            return hist
        if self.fallback:
            if _has_nan(x):
                raise _nan_error(self.what)
            j = np.searchsorted(u, x, side="right")
        else:
            t = _scratch("t", n, u.dtype)
            probe = _scratch("probe", n, np.intp)
            j = _scratch("j", n, np.intp)
            ok = _scratch("ok", n, bool)
            self._buckets(x, t, probe)
            self.lut.take(probe, out=j, mode="clip")
            for step in self.steps:
                if step == 1:
                    p = j
                else:
                    p = probe
                    np.add(j, step - 1, out=p)
                self.u_pad.take(p, out=t, mode="clip")
                np.less_equal(t, x, out=ok)
                if step == 1:  # ~50% true: a branch-free add beats a masked one
                    np.add(j, ok, out=j)
                else:  # mostly false: the masked add is cheap
                    np.add(j, step, out=j, where=ok)
        return np.bincount(j, minlength=u.size + 1)

    def all_ge(self) -> np.ndarray:
        """``#{items x : x >= u_i}`` for each distinct value ``u_i``."""
        suffix = np.cumsum(self.hist[::-1])[::-1]
        return suffix[1:]


def _all_ge_sorted(x: np.ndarray, u: np.ndarray, what: str) -> np.ndarray:
    sx = np.sort(x)
    if sx.size and sx[-1] != sx[-1]:  # NaN sorts last
        raise _nan_error(what)
    return x.size - np.searchsorted(sx, u, side="left")


def _ap_from_counts(u_mult: np.ndarray, all_ge: np.ndarray) -> float:
    """AP (fraction) from multiplicities of the distinct positive values and ``#{x >= u}``.

    Precision at a tied group of positives with score ``u`` is
    ``#{positives >= u} / #{annotated >= u}`` (all tied items counted together), which is
    the step-wise precision/recall sum of ``sklearn.metrics.average_precision_score``.
    """
    n = int(u_mult.sum())
    pos_ge = n - (np.cumsum(u_mult) - u_mult)
    return float(np.sum(u_mult * (pos_ge / all_ge)) / n)


def _ap_values(x: np.ndarray, pv: np.ndarray, what: str) -> float:
    """AP (fraction) of items ``x`` (all annotated) whose positives have scores ``pv``."""
    sp = np.sort(pv)
    if sp[-1] != sp[-1]:
        raise _nan_error(what)
    u, mult = _distinct(sp)
    if x.size < _COUNTING_MIN_ITEMS:
        all_ge = _all_ge_sorted(x, u, what)
    else:
        counter = _RankCounter(u, what)
        counter.add(x)
        all_ge = counter.all_ge()
    return _ap_from_counts(mult, all_ge)


# --------------------------------------------------------------------------------------
# Per-class AP
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerClassAP:
    """Per-class AP with the counts needed to report how it was computed.

    Attributes:
        ap: ``(C,)`` float64, percent. Classes without a positive (among kept images)
            hold 0 under ``zero_positive="zero"`` and NaN under ``"nan"``/``"skip"``.
        n_positive: ``(C,)`` number of +1 labels per class among kept images.
        n_annotated: ``(C,)`` number of +1/-1 labels per class among kept images.
        n_images: number of images kept (after ``keep_images``).
        zero_positive: the policy used for classes without positives.
    """

    ap: np.ndarray
    n_positive: np.ndarray
    n_annotated: np.ndarray
    n_images: int
    zero_positive: str

    @property
    def n_classes(self) -> int:
        return int(self.ap.shape[0])

    @property
    def n_classes_without_positive(self) -> int:
        return int(np.count_nonzero(self.n_positive == 0))

    @property
    def mean(self) -> float:
        """mAP in percent under the policy: "zero" and "nan" average over all C classes
        (so "nan" yields NaN as soon as one class has no positive); "skip" averages over
        classes with at least one positive. NaN when nothing is left to average."""
        vals = self.ap[self.n_positive > 0] if self.zero_positive == "skip" else self.ap
        return float(np.mean(vals)) if vals.size else float("nan")


def _take2d(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``a[rows, cols]`` through a flat ``take`` when ``a`` is contiguous (much faster)."""
    if a.flags.c_contiguous:
        return a.reshape(-1).take(rows * a.shape[1] + cols)
    if a.flags.f_contiguous:
        return a.reshape(-1, order="F").take(rows + cols * a.shape[0])
    return a[rows, cols]


def _float32_order_keys(x: np.ndarray) -> np.ndarray:
    """uint32 keys with the order of the float32 values (-0.0 and +0.0 equal; no NaN)."""
    bits = (x + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 == +0.0
    flip = (np.uint32(0) - (bits >> np.uint32(31))) | np.uint32(0x80000000)
    return bits ^ flip


def _coo_ap_float32(
    cols: np.ndarray, x: np.ndarray, is_pos: np.ndarray, b: int
) -> tuple[np.ndarray, np.ndarray]:
    """AP fractions of ``b`` columns from their annotated entries (any order), vectorized.

    One sort of 64-bit keys (column, order-preserving score bits, label bit) puts each
    column's items in ascending score order, negatives before positives within a tie.
    For a positive at sorted position ``i``, with ``s`` the start of its run of equal
    (column, score) and ``e`` the end of its column: ``#annotated >= score = e - s`` and
    ``#positives >= score`` = positives in ``[s, e)``.
    """
    n_pos = np.bincount(cols[is_pos], minlength=b).astype(np.int64)
    key = (cols.astype(np.uint64) << np.uint64(33)) | (
        _float32_order_keys(x).astype(np.uint64) << np.uint64(1)
    )
    key |= is_pos.astype(np.uint64)
    key.sort()
    e = key.size
    lbit = (key & np.uint64(1)).astype(bool)
    val = key >> np.uint64(1)
    run = np.empty(e, dtype=bool)
    run[0] = True
    np.not_equal(val[1:], val[:-1], out=run[1:])
    run_start = np.maximum.accumulate(np.where(run, np.arange(e), 0))
    col = (key >> np.uint64(33)).astype(np.intp)
    ends = np.cumsum(np.bincount(col, minlength=b))
    p = np.flatnonzero(lbit)
    cp = np.cumsum(lbit, dtype=np.int64)  # positives in [0, i]
    s0 = run_start[p]
    end_p = ends[col[p]]
    all_ge = end_p - s0
    pos_ge = cp[end_p - 1] - (cp[s0] - lbit[s0])
    ap = np.bincount(col[p], weights=pos_ge / all_ge, minlength=b)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = ap / n_pos
    ap[n_pos == 0] = np.nan
    return ap, n_pos


def _coo_ap(
    cols: np.ndarray, x: np.ndarray, is_pos: np.ndarray, b: int, j0: int
) -> tuple[np.ndarray, np.ndarray]:
    """AP fractions of ``b`` columns from annotated entries ``(cols, x, is_pos)``."""
    n_pos = np.bincount(cols[is_pos], minlength=b).astype(np.int64)
    if _has_nan(x):
        bad = np.unique(cols[np.isnan(x)])
        bad = bad[n_pos[bad] > 0]
        if bad.size:
            raise _nan_error(f"class {j0 + int(bad[0])}")
    if x.dtype == np.float32 and x.size:
        return _coo_ap_float32(cols, x, is_pos, b)
    ap = np.full(b, np.nan)
    order = np.argsort(cols, kind="stable")
    cols, x, is_pos = cols[order], x[order], is_pos[order]
    bounds = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=b), out=bounds[1:])
    for c in np.flatnonzero(n_pos):
        lo, hi = bounds[c], bounds[c + 1]
        xs = x[lo:hi]
        ap[c] = _ap_values(xs, xs[is_pos[lo:hi]], f"class {j0 + c}")
    return ap, n_pos


def _ap_block(prep: _Prepared, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw AP fractions (NaN = no positive), positives and annotations of columns j0:j1."""
    n, b = prep.n_rows, j1 - j0
    ap = np.full(b, np.nan)
    dropped = prep.dropped
    lb = prep.labels[:, j0:j1]
    ann = lb != 0
    if dropped is not None:
        ann[dropped] = False
    total = int(np.count_nonzero(ann))
    if total == 0:
        return ap, np.zeros(b, dtype=np.int64), np.zeros(b, dtype=np.int64)
    n_kept = prep.n_images
    if total <= _SPARSE_MAX_FRACTION * b * n:
        # Sparse: gather the annotated entries (row-major order: cache-friendly).
        rows, cols = np.divmod(np.flatnonzero(ann), b)
        is_pos = _take2d(prep.labels, rows, cols + j0) == 1
        x = _take2d(prep.scores, rows, cols + j0)
        if x.dtype != prep.work_dtype:
            x = x.astype(prep.work_dtype)
        n_ann = np.bincount(cols, minlength=b).astype(np.int64)
        ap, n_pos = _coo_ap(cols, x, is_pos, b, j0)
        return ap, n_pos, n_ann
    # Dense: count against columns of a transposed copy of the block.
    st = _transposed(prep.scores, j0, j1, prep.work_dtype)
    full = total == n_kept * b
    mask = lb == 1 if full else ann
    if full and dropped is not None:
        mask[dropped] = False
    rows, cols = np.divmod(np.flatnonzero(mask), b)
    order = np.argsort(cols.astype(np.uint16) if b <= 1 << 16 else cols, kind="stable")
    rows, cols = rows[order], cols[order]
    counts = np.bincount(cols, minlength=b).astype(np.int64)
    bounds = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    vals = _take2d(st, cols, rows)
    if full:
        # Every kept entry is annotated: only the positives needed locating.
        n_pos, n_ann = counts, np.full(b, n_kept, dtype=np.int64)
        for c in np.flatnonzero(n_pos):
            x = st[c] if dropped is None else st[c][prep.keep]
            ap[c] = _ap_values(x, vals[bounds[c] : bounds[c + 1]], f"class {j0 + c}")
        return ap, n_pos, n_ann
    is_pos = _take2d(prep.labels, rows, cols + j0) == 1
    n_ann = counts
    n_pos = np.bincount(cols[is_pos], minlength=b).astype(np.int64)
    for c in np.flatnonzero(n_pos):
        lo, hi = bounds[c], bounds[c + 1]
        xs = vals[lo:hi]
        ap[c] = _ap_values(xs, xs[is_pos[lo:hi]], f"class {j0 + c}")
    return ap, n_pos, n_ann


def _sparse_entries(prep: _Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Annotated entries of kept rows as ``(flat index, score, is_positive)``, row-major.

    One threaded pass over contiguous row blocks (much cheaper than scanning tall column
    blocks). Returns None as soon as a row block is not sparse, so that dense or mixed
    matrices go through the column-block path instead.
    """
    n, c = prep.n_rows, prep.n_cols
    limit = 2 * _SPARSE_MAX_FRACTION
    sample = prep.labels[:: max(1, n // 1024)]
    if np.count_nonzero(sample != 0) > limit * sample.size:
        return None

    def chunk(r0: int):
        r1 = min(r0 + _ROW_BLOCK, n)
        ann = prep.labels[r0:r1] != 0
        if prep.keep is not None:
            ann[~prep.keep[r0:r1]] = False
        if np.count_nonzero(ann) > limit * ann.size:
            return None
        flat = np.flatnonzero(ann)
        rows, cols = np.divmod(flat, c)
        rows += r0
        x = _take2d(prep.scores, rows, cols)
        is_pos = _take2d(prep.labels, rows, cols) == 1
        flat += r0 * c
        return flat, x.astype(prep.work_dtype, copy=False), is_pos

    parts = _map_threads(chunk, list(range(0, n, _ROW_BLOCK)), prep.num_threads)
    if not parts or any(p is None for p in parts):
        return None
    flat = np.concatenate([p[0] for p in parts])
    if flat.size > _SPARSE_MAX_FRACTION * n * c:
        return None
    return flat, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _per_class_sparse(
    prep: _Prepared, entries: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw per-class AP fractions, positives and annotations from the sparse entries."""
    flat, x, is_pos = entries
    c = prep.n_cols
    cols = flat % c
    order = np.argsort(cols.astype(np.uint16) if c <= 1 << 16 else cols, kind="stable")
    cols, x, is_pos = cols[order], x[order], is_pos[order]
    n_ann = np.bincount(cols, minlength=c).astype(np.int64)
    bounds = np.zeros(c + 1, dtype=np.int64)
    np.cumsum(n_ann, out=bounds[1:])
    width = 4 * _COLUMN_BLOCK
    blocks = [(j0, min(j0 + width, c)) for j0 in range(0, c, width)]

    def block(jj: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        j0, j1 = jj
        lo, hi = bounds[j0], bounds[j1]
        return _coo_ap(cols[lo:hi] - j0, x[lo:hi], is_pos[lo:hi], j1 - j0, j0)

    results = _map_threads(block, blocks, prep.num_threads)
    ap = np.concatenate([r[0] for r in results])
    n_pos = np.concatenate([r[1] for r in results])
    return ap, n_pos, n_ann


def _per_class_from_prepared(prep: _Prepared, zero_positive: str) -> PerClassAP:
    _check_option(zero_positive, _ZERO_POSITIVE, "zero_positive")
    c = prep.n_cols
    entries = _sparse_entries(prep) if c and _SPARSE_ROWWISE else None
    if entries is not None:
        ap, n_pos, n_ann = _per_class_sparse(prep, entries)
        ap = ap * 100.0
    else:
        blocks = [(j0, min(j0 + _COLUMN_BLOCK, c)) for j0 in range(0, c, _COLUMN_BLOCK)]
        results = _map_threads(lambda jj: _ap_block(prep, *jj), blocks, prep.num_threads)
        if results:
            ap = np.concatenate([r[0] for r in results]) * 100.0
            n_pos = np.concatenate([r[1] for r in results])
            n_ann = np.concatenate([r[2] for r in results])
        else:
            ap = np.zeros(0)
            n_pos = np.zeros(0, dtype=np.int64)
            n_ann = np.zeros(0, dtype=np.int64)
    if zero_positive == "zero":
        ap[n_pos == 0] = 0.0
    return PerClassAP(ap, n_pos, n_ann, prep.n_images, zero_positive)


def per_class_ap(
    scores: Any,
    labels: Any,
    *,
    zero_positive: ZeroPositive = "zero",
    keep_images: KeepImages = "all",
    num_threads: int | None = None,
) -> PerClassAP:
    """Per-class non-interpolated AP with counts (see :func:`average_precision`).

    Returns a :class:`PerClassAP`; its ``mean`` is the per-class mAP and
    ``n_classes_without_positive`` what metrics.json should record next to it.
    """
    prep = _prepare(scores, labels, keep_images, num_threads)
    return _per_class_from_prepared(prep, zero_positive)


def average_precision(
    scores: Any,
    labels: Any,
    *,
    zero_positive: ZeroPositive = "zero",
    keep_images: KeepImages = "all",
    num_threads: int | None = None,
) -> np.ndarray:
    """Per-class non-interpolated average precision, in percent.

    For class ``c``, only images whose label for ``c`` is +1 or -1 take part (0 = unknown
    is excluded). With ``P`` the set of those with +1::

        AP_c = 100 / |P| * sum_{p in P} #{q in P : s_q >= s_p} / #{annotated i : s_i >= s_p}

    i.e. the mean over positives of the precision at the positive's rank, where **tied
    scores form one threshold**: every item tied with a positive counts as ranked
    before it (positives and negatives alike). This equals
    ``sklearn.metrics.average_precision_score`` on the ±1 subset, including ties (up to
    floating-point summation order: ~1e-13 in percent).

    Args:
        scores: ``(N, C)`` real scores (numpy or torch; see the module docstring).
        labels: ``(N, C)`` +1/-1/0 labels.
        zero_positive: classes without any positive: ``"zero"`` gives them AP 0 (the
            reference code counts them as 0), ``"nan"`` gives NaN, ``"skip"`` gives NaN in
            this vector and excludes them from the mean in :func:`mean_average_precision`.
        keep_images: ``"all"`` or ``"with_positive"`` (drop images without a +1 in the
            block first).
        num_threads: worker threads over column blocks (default: usable CPU cores).

    Returns:
        ``(C,)`` float64 array of AP in percent.

    Raises:
        ValueError: shape mismatch, labels outside {-1, 0, 1}, or a NaN score among the
            annotated entries of a class that has positives (NaNs elsewhere, e.g. where
            the label is 0, are ignored).
    """
    return per_class_ap(
        scores,
        labels,
        zero_positive=zero_positive,
        keep_images=keep_images,
        num_threads=num_threads,
    ).ap


# --------------------------------------------------------------------------------------
# BiAM's pooled Open Images AP
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiamPooledAP:
    """Result of :func:`biam_pooled_ap`.

    Attributes:
        ap: ``(C,)`` pooled AP per class in percent; NaN where the pooled set has no
            positive (BiAM stores 0 there; it never matters for the weighted mean,
            because such a class has weight 0).
        weight: ``(C,)`` number of kept images with +1 for the class (BiAM's
            ``imgs_per_label``).
        n_annotated_images: ``(C,)`` number of kept images with a ±1 label for the class.
        n_images: number of images kept.
    """

    ap: np.ndarray
    weight: np.ndarray
    n_annotated_images: np.ndarray
    n_images: int

    @property
    def weighted_map(self) -> float:
        """BiAM's reported mAP ("WEIGHTED ... AP"), percent; NaN without positives."""
        total = int(self.weight.sum())
        if total == 0:
            return float("nan")
        ap = np.where(self.weight > 0, self.ap, 0.0)
        return float(np.sum(self.weight * ap) / total)

    @property
    def mean_annotated(self) -> float:
        """BiAM's unweighted "AP on N classes" line for its seen/GZSL blocks: mean over
        classes with at least one annotated kept image, a class without pooled positive
        counting 0. (Its ZSL line averages over all columns instead.)"""
        sel = self.n_annotated_images > 0
        if not sel.any():
            return float("nan")
        return float(np.mean(np.nan_to_num(self.ap[sel], nan=0.0)))


def biam_pooled_ap(
    scores: Any,
    labels: Any,
    *,
    keep_images: KeepImages = "all",
    num_threads: int | None = None,
) -> BiamPooledAP:
    """BiAM's Open Images "mAP" (``evaluate_openimages.py`` + ``util_openimages.compute_AP``).

    BiAM (Narayan et al., ICCV 2021, github.com/akshitac8/BiAM; MKT's Open Images numbers
    come from the same code) computes, for a block of columns (ZSL: the 400 unseen;
    GZSL: 7,186 seen + 400 unseen):

    1. Keep only the images with at least one +1 in the block (``temp = clamp(lab, 0,
       1).sum(1).nonzero()``). Pass ``keep_images="with_positive"`` to reproduce this;
       the option is honoured as given so that one call uses one image policy.
    2. For each class ``c``: take the kept rows ``R_c`` whose label for ``c`` is nonzero,
       and **pool every annotated (image, class) pair of those rows over all columns of
       the block** (``prediction[R_c][mask]`` with ``mask = labels[R_c].abs() == 1``).
       The positives of this pooled ranking are all its +1 pairs, of any class.
       ``AP_c`` = sum over those positives of the precision at their rank in the pooled
       list sorted by descending score, divided by their number. If the pooled set has
       no positive, BiAM leaves ``AP_c = 0``.
    3. Report ``sum_c n_c * AP_c / sum_c n_c`` with ``n_c`` = number of kept images with
       +1 for ``c`` (``imgs_per_label``; printed as "WEIGHTED ... AP", the number in
       BiAM's and MKT's tables; BiAM's paper log shows e.g. GZSL 0.8527 weighted vs
       0.8189 unweighted). BiAM drops, for its seen and GZSL blocks, the columns without
       any annotation first; that changes neither the pooled sets nor this value.

    Differences from the original, by design: ties are counted together, as in
    :func:`average_precision` (BiAM takes the order ``torch.sort`` happens to return for
    tied scores, so its value is then implementation-defined; without ties both agree);
    counts are exact integers and precisions float64 (BiAM: float32 cumsums on the GPU,
    ~1e-6 relative); results are in percent (BiAM prints fractions).

    Semantics were checked against the code of akshitac8/BiAM (``util_openimages.py``,
    ``evaluate_openimages.py``); the repository history holds several revisions of those
    files and only one was read, so an earlier revision might have differed.

    Cost is proportional to the total pooled size ``sum_c sum_{i in R_c} #annotated(i)``
    (BiAM's loop does the same work); classes with identical ``R_c`` (e.g. every class of
    a fully annotated block) share one computation.
    """
    prep = _prepare(scores, labels, keep_images, num_threads)
    return _biam_from_prepared(prep)


def _biam_columns(
    prep: _Prepared, j0: int, j1: int
) -> tuple[np.ndarray, np.ndarray, list[bytes | None], dict[bytes, np.ndarray]]:
    """Per class of columns j0:j1: positives and annotated kept images, and the identity
    of its annotated-row set ``R_c`` (b"all" = every kept row; packed masks otherwise)."""
    b = j1 - j0
    keep = prep.keep
    n_kept = prep.n_images
    lt = _transposed(prep.labels, j0, j1, prep.labels.dtype)
    weight = np.zeros(b, dtype=np.int64)
    n_ann = np.zeros(b, dtype=np.int64)
    sigs: list[bytes | None] = []
    packed: dict[bytes, np.ndarray] = {}
    for k in range(b):
        lab = lt[k]
        ann = lab != 0
        pos = lab == 1
        if keep is not None:
            ann &= keep
            pos &= keep
        weight[k] = np.count_nonzero(pos)
        n_ann[k] = np.count_nonzero(ann)
        if n_ann[k] == 0:
            sigs.append(None)
        elif n_ann[k] == n_kept:
            sigs.append(b"all")
        else:
            bits = np.packbits(ann)
            sig = hashlib.blake2b(bits.tobytes(), digest_size=16).digest()
            packed.setdefault(sig, bits)
            sigs.append(sig)
    return weight, n_ann, sigs, packed


def _biam_from_prepared(prep: _Prepared) -> BiamPooledAP:
    n, c = prep.n_rows, prep.n_cols
    blocks = [(j0, min(j0 + _COLUMN_BLOCK, c)) for j0 in range(0, c, _COLUMN_BLOCK)]
    results = _map_threads(lambda jj: _biam_columns(prep, *jj), blocks, prep.num_threads)
    weight = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int64)
    n_ann_img = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int64)
    groups: dict[bytes, list[int]] = {}
    packed: dict[bytes, np.ndarray] = {}
    for (j0, _), (_, _, sigs, pk) in zip(blocks, results, strict=True):
        packed.update(pk)
        for k, sig in enumerate(sigs):
            if sig is not None:
                groups.setdefault(sig, []).append(j0 + k)
    ap = np.full(c, np.nan)
    if not groups:
        return BiamPooledAP(ap, weight, n_ann_img, prep.n_images)
    all_kept = np.arange(n) if prep.keep is None else np.flatnonzero(prep.keep)

    def rows_of(sig: bytes) -> np.ndarray:
        if sig == b"all":
            return all_kept
        return np.flatnonzero(np.unpackbits(packed[sig], count=n))

    # Annotated entries per kept row decide between a compressed row store and streaming.
    row_ann = np.zeros(n, dtype=np.int64)
    for r0 in range(0, n, _ROW_BLOCK):
        blk = prep.labels[r0 : r0 + _ROW_BLOCK] != 0
        row_ann[r0 : r0 + blk.shape[0]] = np.count_nonzero(blk, axis=1)
    if prep.keep is not None:
        row_ann[~prep.keep] = 0
    keys = list(groups)
    inner = prep.num_threads if len(keys) < prep.num_threads else 1
    if int(row_ann.sum()) <= _BIAM_MAX_STORED:
        store = _RowStore(prep, row_ann)

        def pooled(sig: bytes) -> float:
            x, is_pos = store.gather(rows_of(sig))
            if not is_pos.any():
                return float("nan")
            return _ap_values(x, x[is_pos], f"the BiAM pooled set of class {groups[sig][0]}")

    else:

        def pooled(sig: bytes) -> float:
            what = f"the BiAM pooled set of class {groups[sig][0]}"
            return _biam_streamed(prep, rows_of(sig), what, inner)

    values = _map_threads(pooled, keys, prep.num_threads)
    for sig, v in zip(keys, values, strict=True):
        ap[groups[sig]] = v * 100.0
    return BiamPooledAP(ap, weight, n_ann_img, prep.n_images)


class _RowStore:
    """Compressed rows: the annotated entries of each kept row (scores and +1 flags)."""

    def __init__(self, prep: _Prepared, row_ann: np.ndarray) -> None:
        n, c = prep.n_rows, prep.n_cols
        self.ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(row_ann, out=self.ptr[1:])
        self.values = np.empty(int(self.ptr[-1]), dtype=prep.work_dtype)
        self.is_pos = np.empty(int(self.ptr[-1]), dtype=bool)
        keep = prep.keep
        for r0 in range(0, n, _ROW_BLOCK):
            r1 = min(r0 + _ROW_BLOCK, n)
            ann = prep.labels[r0:r1] != 0
            if keep is not None:
                ann[~keep[r0:r1]] = False
            rows, cols = np.divmod(np.flatnonzero(ann), c)
            rows += r0
            a, b = self.ptr[r0], self.ptr[r1]
            self.values[a:b] = _take2d(prep.scores, rows, cols)
            self.is_pos[a:b] = _take2d(prep.labels, rows, cols) == 1

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = self.ptr[rows]
        lengths = self.ptr[rows + 1] - starts
        total = int(lengths.sum())
        if total == self.values.size:
            return self.values, self.is_pos
        offsets = np.zeros(rows.size, dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        idx = np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)
        return self.values.take(idx), self.is_pos.take(idx)


def _biam_streamed(prep: _Prepared, rows: np.ndarray, what: str, num_threads: int) -> float:
    """Pooled AP over the annotated entries of ``rows``, streamed from the full matrix."""
    chunks = [rows[r0 : r0 + _ROW_BLOCK] for r0 in range(0, rows.size, _ROW_BLOCK)]

    def load(rr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab = prep.labels[rr]
        sc = prep.scores[rr].astype(prep.work_dtype, copy=False)
        return sc, lab

    def positives(rr: np.ndarray) -> np.ndarray:
        sc, lab = load(rr)
        return sc[lab == 1]

    sp = np.sort(np.concatenate(_map_threads(positives, chunks, num_threads)))
    if sp.size == 0:
        return float("nan")
    if sp[-1] != sp[-1]:
        raise _nan_error(what)
    u, mult = _distinct(sp)
    counter = _RankCounter(u, what)

    def count(rr: np.ndarray) -> np.ndarray:
        sc, lab = load(rr)
        return counter.counts(sc if np.count_nonzero(lab) == lab.size else sc[lab != 0])

    counter.hist = np.sum(_map_threads(count, chunks, num_threads), axis=0)
    return _ap_from_counts(mult, counter.all_ge())


# --------------------------------------------------------------------------------------
# mAP front door
# --------------------------------------------------------------------------------------


def mean_average_precision(
    scores: Any,
    labels: Any,
    *,
    variant: MapVariant = "per_class",
    zero_positive: ZeroPositive = "zero",
    keep_images: KeepImages = "all",
    num_threads: int | None = None,
) -> float:
    """Mean average precision in percent.

    Args:
        variant: ``"per_class"``: mean of :func:`average_precision` over classes, with
            ``zero_positive`` deciding what classes without positives contribute
            (``"zero"``: 0, ``"nan"``: the mean is NaN, ``"skip"``: left out).
            ``"biam_pooled"``: BiAM's positive-count-weighted pooled AP
            (:func:`biam_pooled_ap`); ``zero_positive`` is irrelevant there (such
            classes have weight 0).
        keep_images: ``"all"`` or ``"with_positive"``.
        num_threads: worker threads (default: usable CPU cores).
    """
    _check_option(variant, _MAP_VARIANTS, "variant")
    _check_option(zero_positive, _ZERO_POSITIVE, "zero_positive")
    prep = _prepare(scores, labels, keep_images, num_threads)
    if variant == "biam_pooled":
        return _biam_from_prepared(prep).weighted_map
    return _per_class_from_prepared(prep, zero_positive).mean


# --------------------------------------------------------------------------------------
# P / R / F1 at K
# --------------------------------------------------------------------------------------


def _check_ks(ks: int | Iterable[int], n_cols: int, *, allow_empty: bool = False) -> list[int]:
    if isinstance(ks, (int, np.integer)):
        ks = [int(ks)]
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > n_cols:
            raise ValueError(f"k={k} exceeds the number of classes in the block ({n_cols})")
        out.append(int(k))
    if not out and not allow_empty:
        raise ValueError("at least one k is required")
    return out


def _rank_candidates(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sort candidates by (row, score descending, column ascending); return rows, cols."""
    if vals.dtype == np.float32 and n_cols <= 1 << 16 and (rows.size == 0 or rows[-1] < 1 << 16):
        desc = ~_float32_order_keys(vals)  # ascending key == descending score
        key = (rows.astype(np.uint64) << np.uint64(48)) | (desc.astype(np.uint64) << np.uint64(16))
        key |= cols.astype(np.uint64)
        key.sort()
        return (key >> np.uint64(48)).astype(np.intp), (key & np.uint64(0xFFFF)).astype(np.intp)
    order = np.lexsort((cols, -vals, rows))
    return rows[order], cols[order]


def _nan_rows_error(row_ids: np.ndarray, bad_rows: np.ndarray) -> ValueError:
    return ValueError(
        f"scores contain NaN (first in row {int(row_ids[bad_rows[0]])}); "
        "the top-k ranking is undefined"
    )


def _topk_chunk(s: np.ndarray, lab: np.ndarray, ks: list[int], row_ids: np.ndarray) -> np.ndarray:
    """Hits of each k over the rows of one chunk (see :func:`precision_recall_f1_at_k`)."""
    r, c = s.shape
    kmax = max(ks)
    groups = max(64, 2 * kmax)
    if c >= 4 * groups:
        # Lower bound on each row's kmax-th largest score: the kmax-th largest of the
        # group maxima (kmax distinct elements are at least that large). Only scores
        # >= the bound can be in the top-kmax; typically ~kmax + 5 per row survive.
        starts = np.linspace(0, c, groups + 1).astype(np.intp)[:-1]
        gmax = np.maximum.reduceat(s, starts, axis=1)
        if np.isnan(gmax).any():  # NaN propagates through maximum
            raise _nan_rows_error(row_ids, np.flatnonzero(np.isnan(gmax).any(axis=1)))
        thr = np.partition(gmax, groups - kmax, axis=1)[:, groups - kmax]
        mask = _scratch("topk_mask", s.shape, bool)
        np.greater_equal(s, thr[:, None], out=mask)
        rows, cols = np.divmod(np.flatnonzero(mask), c)
    else:
        if np.isnan(s).any():
            raise _nan_rows_error(row_ids, np.flatnonzero(np.isnan(s).any(axis=1)))
        rows, cols = np.divmod(np.arange(r * c, dtype=np.intp), c)
    vals = _take2d(s, rows, cols)
    rows, cols = _rank_candidates(rows, cols, vals, c)
    starts = np.zeros(r + 1, dtype=np.intp)
    np.cumsum(np.bincount(rows, minlength=r), out=starts[1:])
    rank = np.arange(rows.size, dtype=np.intp) - starts[rows]
    sel = rank < kmax
    rank = rank[sel]
    hit = _take2d(lab, rows[sel], cols[sel]) == 1
    hit_rank = rank[hit]
    return np.array([np.count_nonzero(hit_rank < k) for k in ks], dtype=np.int64)


def _topk_hits(prep: _Prepared, ks: list[int]) -> tuple[dict[int, int], int]:
    """Hits of the top-k of every kept image, for each k, and the number of kept images."""
    n = prep.n_rows
    step = 2048

    def chunk(r0: int) -> tuple[np.ndarray, int]:
        r1 = min(r0 + step, n)
        s = prep.scores[r0:r1]
        lab = prep.labels[r0:r1]
        row_ids = np.arange(r0, r1)
        if prep.keep is not None and not prep.keep[r0:r1].all():
            sel = np.flatnonzero(prep.keep[r0:r1])
            s, lab, row_ids = s[sel], lab[sel], row_ids[sel]
        if s.shape[0] == 0:
            return np.zeros(len(ks), dtype=np.int64), 0
        s = s.astype(prep.work_dtype, copy=False)
        return _topk_chunk(s, lab, ks, row_ids), s.shape[0]

    results = _map_threads(chunk, list(range(0, n, step)), prep.num_threads)
    total = np.sum([h for h, _ in results], axis=0) if results else np.zeros(len(ks), np.int64)
    return {k: int(total[i]) for i, k in enumerate(ks)}, int(sum(m for _, m in results))


def _prf_from_hits(hits: int, n_images: int, k: int, n_pos: int) -> tuple[float, float, float]:
    p = 100.0 * hits / (n_images * k) if n_images else float("nan")
    r = 100.0 * hits / n_pos if n_pos else float("nan")
    if math.isnan(p) or math.isnan(r):
        f1 = float("nan")
    else:
        f1 = 0.0 if p + r == 0 else 2.0 * p * r / (p + r)
    return p, r, f1


def _prf_from_prepared(prep: _Prepared, ks: list[int]) -> dict[int, tuple[float, float, float]]:
    hits, n_images = _topk_hits(prep, ks)
    row_pos = prep.row_pos if prep.keep is None else prep.row_pos[prep.keep]
    n_pos = int(row_pos.sum(dtype=np.int64))
    return {k: _prf_from_hits(hits[k], n_images, k, n_pos) for k in ks}


def precision_recall_f1_at_ks(
    scores: Any,
    labels: Any,
    ks: Iterable[int],
    *,
    keep_images: KeepImages = "all",
    num_threads: int | None = None,
) -> dict[int, tuple[float, float, float]]:
    """:func:`precision_recall_f1_at_k` for several K in one pass: ``{k: (P, R, F1)}``."""
    prep = _prepare(scores, labels, keep_images, num_threads)
    return _prf_from_prepared(prep, _check_ks(ks, prep.n_cols))


def precision_recall_f1_at_k(
    scores: Any,
    labels: Any,
    k: int,
    *,
    keep_images: KeepImages = "all",
    num_threads: int | None = None,
) -> tuple[float, float, float]:
    """Micro-averaged precision, recall and F1 of each image's top-``k`` predictions.

    Every image predicts its ``k`` highest-scoring columns of the block, whatever their
    labels (a prediction on a 0 = unknown label is simply not a hit). Over the kept
    images::

        P  = 100 * hits / (n_images * k)
        R  = 100 * hits / (number of +1 labels of the kept images)
        F1 = 2 P R / (P + R)        (0 when P + R == 0)

    Ties: columns are ranked by (score descending, column index ascending), so among
    tied scores at the cut the lowest column indices are predicted. (BiAM/MKT use
    ``torch.topk``, whose choice among tied scores is unspecified; without ties at the
    cut both agree.)

    Returns ``(P, R, F1)`` in percent; P is NaN without images, R is NaN without
    positives, and F1 is NaN when either is.

    Raises:
        ValueError: shape mismatch, labels outside {-1, 0, 1}, ``k`` not in
            ``1..C``, or a NaN score in a kept image.
    """
    return precision_recall_f1_at_ks(
        scores, labels, [k], keep_images=keep_images, num_threads=num_threads
    )[k]


# --------------------------------------------------------------------------------------
# One-call evaluation of a block
# --------------------------------------------------------------------------------------


def evaluate_block(
    scores: Any,
    labels: Any,
    ks: int | Iterable[int] = (3, 5),
    *,
    map_variant: MapVariant | Sequence[MapVariant] = "per_class",
    zero_positive: ZeroPositive = "zero",
    keep_images: KeepImages = "all",
    num_threads: int | None = None,
) -> dict[str, float | int]:
    """All metrics of one evaluated block (ZSL: unseen columns; GZSL: seen + unseen).

    Labels are validated and the image filter is computed once for every metric.

    Args:
        ks: the K of P/R/F1@K (NUS-WIDE and COCO: 3, 5; Open Images: 10, 20); may be
            empty (mAP only).
        map_variant: a variant name or a sequence of names. ``"mAP"`` holds the first
            (the table's primary convention); ``"biam_pooled"``, whenever requested, is
            also reported under ``"mAP_biam"`` (BiAM/MKT's Open Images number, see
            :func:`biam_pooled_ap`). E.g. ``("per_class", "biam_pooled")`` gives the
            per-class mAP under ``"mAP"`` and BiAM's under ``"mAP_biam"``.
        zero_positive, keep_images, num_threads: as in :func:`mean_average_precision`.

    Returns:
        ``{"mAP": .., "P@3": .., "R@3": .., "F1@3": .., ..., ["mAP_biam": ..,]
        "n_images": .., "n_classes": .., "n_classes_without_positive": ..}``: metrics in
        percent, then the counts to record next to them (``n_classes_without_positive``
        counts classes without a +1 among the kept images).
    """
    variants = [map_variant] if isinstance(map_variant, str) else list(map_variant)
    if not variants:
        raise ValueError("map_variant must name at least one of " + str(list(_MAP_VARIANTS)))
    for v in variants:
        _check_option(v, _MAP_VARIANTS, "map_variant")
    _check_option(zero_positive, _ZERO_POSITIVE, "zero_positive")
    prep = _prepare(scores, labels, keep_images, num_threads)
    k_list = _check_ks(ks, prep.n_cols, allow_empty=True)
    maps: dict[str, float] = {}
    n_without = None
    if "per_class" in variants:
        pc = _per_class_from_prepared(prep, zero_positive)
        maps["per_class"] = pc.mean
        n_without = pc.n_classes_without_positive
    if "biam_pooled" in variants:
        biam = _biam_from_prepared(prep)
        maps["biam_pooled"] = biam.weighted_map
        if n_without is None:  # same definition: no +1 among kept images
            n_without = int(np.count_nonzero(biam.weight == 0))
    out: dict[str, float | int] = {"mAP": maps[variants[0]]}
    if k_list:
        for k, (p, r, f1) in _prf_from_prepared(prep, k_list).items():
            out[f"P@{k}"], out[f"R@{k}"], out[f"F1@{k}"] = p, r, f1
    if "biam_pooled" in maps:
        out["mAP_biam"] = maps["biam_pooled"]
    out["n_images"] = prep.n_images
    out["n_classes"] = prep.n_cols
    out["n_classes_without_positive"] = n_without
    return out


# ------------------------------------------------------------- hierarchical pairs (RCNn)
def complete_parents(labels: Any, pairs: Any) -> np.ndarray:
    """RCNn §4.5: add each positive's missing parent classes to the ground truth.

    ``pairs`` (E, 2) int: hierarchy edges (child column, parent column) of the evaluated
    block. Completion follows the edges transitively (a parent added is itself completed).
    Returns a bool (N, C) matrix of positives; 0 (unknown) and -1 count as not positive.
    """
    lab = _to_numpy(labels, "labels")
    pos = np.asarray(lab) == 1
    e = _check_pairs(pairs, pos.shape[1])
    for _ in range(pos.shape[1]):
        before = int(pos.sum())
        for child, parent in e:
            pos[:, parent] |= pos[:, child]
        if int(pos.sum()) == before:
            break
    return pos


def _check_pairs(pairs: Any, n_cols: int) -> np.ndarray:
    e = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if e.size and (e.min() < 0 or e.max() >= n_cols):
        raise ValueError(f"hierarchy pairs index columns outside 0..{n_cols - 1}")
    if e.size and (e[:, 0] == e[:, 1]).any():
        raise ValueError("a hierarchy pair links a class to itself")
    return e


def _top_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's top-k columns (score descending, ties to the lower column, as P/R/F1@K)."""
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; the top-k ranking is undefined")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def hierarchical_pair_metrics(
    scores: Any,
    labels: Any,
    pairs: Any,
    *,
    k_pairs: int = 10,
    k_labels: int = 5,
    complete: bool = True,
) -> dict[str, float | int]:
    """RCNn Figure 5: pairwise recall of hierarchical pairs at top-``k_pairs``, and
    label-level precision / recall at top-``k_labels``, in percent.

    A hierarchical pair (c, p) of ``pairs`` is *in the ground truth* of an image when both
    c and p are positive there, after :func:`complete_parents` when ``complete``; it is
    *predicted* when both are among the image's top-``k_pairs`` scores. Pairwise recall =
    predicted GT pairs / GT pairs, summed over images. Label-level P@k / R@k are micro over
    images against the same (completed) ground truth, as :func:`precision_recall_f1_at_k`.
    ``n_pairs_raw`` counts the GT pairs before completion (the paper's "before
    complement" bars), ``n_pairs`` after.
    """
    s = np.asarray(_to_numpy(scores, "scores"), dtype=np.float64)
    lab = np.asarray(_to_numpy(labels, "labels"))
    if s.shape != lab.shape:
        raise ValueError(f"scores {s.shape} and labels {lab.shape} differ in shape")
    for name, k in (("k_pairs", k_pairs), ("k_labels", k_labels)):
        if not 0 < k <= s.shape[1]:
            raise ValueError(f"{name} = {k} must be in 1..{s.shape[1]}")
    e = _check_pairs(pairs, s.shape[1])
    raw = lab == 1
    pos = complete_parents(lab, e) if complete else raw
    gt_raw = raw[:, e[:, 0]] & raw[:, e[:, 1]]
    gt = pos[:, e[:, 0]] & pos[:, e[:, 1]]
    top = _top_mask(s, k_pairs)
    hit_pairs = gt & top[:, e[:, 0]] & top[:, e[:, 1]]
    n_pairs = int(gt.sum())
    top_l = _top_mask(s, k_labels)
    hits = int((top_l & pos).sum())
    n_pos = int(pos.sum())
    return {
        f"pair_recall@{k_pairs}": 100.0 * int(hit_pairs.sum()) / n_pairs if n_pairs else 0.0,
        f"P@{k_labels}": 100.0 * hits / (len(s) * k_labels) if len(s) else 0.0,
        f"R@{k_labels}": 100.0 * hits / n_pos if n_pos else 0.0,
        "n_pairs": n_pairs,
        "n_pairs_raw": int(gt_raw.sum()),
        "n_images": int(len(s)),
    }
