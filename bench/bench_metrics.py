"""Benchmark of pipelines.metrics at Open Images GZSL scale (prints figures; not a test).

Generates random float32 scores and +1/-1/0 labels (sparse: ``--positive-rate``
positives, ``--negative-rate`` explicit negatives, the rest unknown; dense: every
non-positive is -1), then times:

* per-class mAP (``per_class_ap``),
* P/R/F1 at ``--ks`` (``precision_recall_f1_at_ks``),
* the full GZSL evaluation (``evaluate_block``: mAP + P/R/F1 at every K),
* optionally BiAM's pooled mAP (``--biam``),
* sklearn's ``average_precision_score`` loop on ``--sklearn-classes`` classes,
  extrapolated to all classes, and the max |ours - sklearn| on those classes.

Example::

    python bench/bench_metrics.py --images 125436 --classes 7586 --positive-rate 0.003
    python bench/bench_metrics.py --quick
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import metrics  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def make_scores(n: int, c: int, seed: int, order: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, c), dtype=np.float32, order=order)
    step = 8192
    for r0 in range(0, n, step):
        out[r0 : r0 + step] = rng.random((min(step, n - r0), c), dtype=np.float32)
    return out


def make_labels(
    n: int, c: int, pos_rate: float, neg_rate: float, dense: bool, seed: int, order: str
) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    out = np.empty((n, c), dtype=np.int8, order=order)
    step = 8192
    for r0 in range(0, n, step):
        u = rng.random((min(step, n - r0), c), dtype=np.float32)
        blk = np.where(u < pos_rate, 1, -1 if dense else 0).astype(np.int8)
        if not dense:
            blk[(u >= pos_rate) & (u < pos_rate + neg_rate)] = -1
        out[r0 : r0 + step] = blk
    return out


def sklearn_loop(scores: np.ndarray, labels: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.full(cols.size, np.nan)
    for i, c in enumerate(cols):
        y = labels[:, c]
        m = y != 0
        if (y[m] == 1).any():
            out[i] = 100.0 * average_precision_score(y[m] == 1, scores[m, c])
    return out


def timed(fn):
    t0 = time.perf_counter()
    c0 = time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def run_variant(args: argparse.Namespace, scores: np.ndarray, dense: bool) -> None:
    n, c = scores.shape
    name = (
        "dense (all non-positive = -1)"
        if dense
        else (f"sparse ({args.positive_rate:.2%} +1, {args.negative_rate:.2%} -1, rest 0)")
    )
    print(f"\n=== labels: {name}, keep_images={args.keep_images} ===")
    labels, t_gen, _ = timed(
        lambda: make_labels(
            n, c, args.positive_rate, args.negative_rate, dense, args.seed, args.order
        )
    )
    print(f"generated labels in {t_gen:.1f} s")
    kw = {"keep_images": args.keep_images, "num_threads": args.threads}

    pc, t_ap, cpu_ap = timed(lambda: metrics.per_class_ap(scores, labels, **kw))
    print(
        f"per-class mAP        {pc.mean:8.4f}   {t_ap:7.2f} s wall  {cpu_ap:7.2f} s cpu   "
        f"({pc.n_classes_without_positive} classes without positives, "
        f"{pc.n_images} images)"
    )
    prf, t_prf, cpu_prf = timed(
        lambda: metrics.precision_recall_f1_at_ks(
            scores, labels, args.ks, keep_images=args.keep_images, num_threads=args.threads
        )
    )
    figures = "  ".join(f"P/R/F1@{k} {p:.3f}/{r:.3f}/{f:.3f}" for k, (p, r, f) in prf.items())
    print(f"P/R/F1 at {args.ks}: {t_prf:7.2f} s wall  {cpu_prf:7.2f} s cpu   {figures}")
    res, t_all, cpu_all = timed(
        lambda: metrics.evaluate_block(scores, labels, args.ks, zero_positive="zero", **kw)
    )
    print(
        f"full GZSL evaluation (evaluate_block: mAP + P/R/F1@{args.ks}): "
        f"{t_all:.2f} s wall, {cpu_all:.2f} s cpu; mAP={res['mAP']:.4f}"
    )
    if args.biam:
        bi, t_bi, cpu_bi = timed(lambda: metrics.biam_pooled_ap(scores, labels, **kw))
        print(
            f"BiAM pooled mAP      {bi.weighted_map:8.4f}   {t_bi:7.2f} s wall  {cpu_bi:7.2f} s cpu"
        )

    rng = np.random.default_rng(args.seed + 2)
    cols = np.sort(rng.choice(c, size=min(args.sklearn_classes, c), replace=False))
    ref, t_sk, _ = timed(lambda: sklearn_loop(scores, labels, cols))
    ours = np.where(pc.n_positive[cols] > 0, pc.ap[cols], np.nan)
    if args.keep_images == "all":
        both = ~np.isnan(ref)
        diff = float(np.max(np.abs(ours[both] - ref[both]))) if both.any() else 0.0
        same_nan = bool(np.array_equal(np.isnan(ours), np.isnan(ref)))
        print(
            f"sklearn loop on {cols.size} classes: {t_sk:.2f} s -> {t_sk * c / cols.size:.1f} s "
            f"extrapolated to {c}; max |ours - sklearn| = {diff:.3g} (same NaN set: {same_nan})"
        )
    else:
        print(f"sklearn loop on {cols.size} classes: {t_sk:.2f} s (comparison needs keep=all)")
    print(f"speed-up of per-class AP over sklearn: {t_sk * c / cols.size / t_ap:.1f}x")
    print(f"peak RSS so far: {peak_rss_gib():.2f} GiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=125436)
    ap.add_argument("--classes", type=int, default=7586)
    ap.add_argument("--positive-rate", type=float, default=0.003)
    ap.add_argument("--negative-rate", type=float, default=0.01)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--sklearn-classes", type=int, default=100)
    ap.add_argument(
        "--variants", nargs="+", choices=["sparse", "dense"], default=["sparse", "dense"]
    )
    ap.add_argument("--keep-images", choices=["all", "with_positive"], default="all")
    ap.add_argument("--order", choices=["C", "F"], default="C", help="memory order of inputs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--biam", action="store_true", help="also time BiAM's pooled mAP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20,000 x 1,000, 20 sklearn classes")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.classes, args.sklearn_classes = 20000, 1000, 20

    n, c = args.images, args.classes
    print(
        f"{n} images x {c} classes, float32 scores ({n * c * 4 / 2**30:.2f} GiB), "
        f"order={args.order}, threads={args.threads or metrics._default_threads(None)}"
    )
    average_precision_score([0, 1], [0.1, 0.9])  # warm sklearn up outside the timings
    scores, t_gen, _ = timed(lambda: make_scores(n, c, args.seed, args.order))
    print(f"generated scores in {t_gen:.1f} s")
    for v in args.variants:
        run_variant(args, scores, dense=v == "dense")
    print(f"\npeak RSS: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
