"""GPU benchmark of the real feature path, prepared to run in one call (prints and writes
figures; not a test, never in CI). ``bench/gpu/run.sh`` runs it under an 8-minute limit.

Four figures on one device, into one JSON (``--out``):

1. ``features``: ViT-B/16 with random weights in bf16 (``create_backbone(...,
   precision="bf16")``) through the project's feature path: synthetic 224 px JPEG images
   in the downloader's webdataset shards (``ledger.parquet`` + ``shards/*.tar``), read by
   :class:`pipelines.data.images.ShardImages`, decoded by DataLoader workers, encoded and
   written as a feature cache by :func:`pipelines.vlp.features.extract_features`. Images/s,
   and ``images/s x 17.6 GFLOP / peak``: 17.6 G is ViT-B/16's per-image count at 224 px as
   usually quoted (fvcore's, which counts a multiply-add once), and the peak is the GPU's
   dense bf16 tensor-core rate from :data:`PEAK_BF16_TFLOPS` (NVIDIA's datasheets, without
   sparsity), matched on ``torch.cuda.get_device_name()``. A ratio near 0.5 is thus the
   tensor cores' full rate.
2. ``qks_cached``: one QKS epoch (the paper's m = 12, L = 7) trained by the shared trainer
   on the feature cache of 1., streamed from its memory-mapped shards (bf16 autocast on
   CUDA). Images/s of the epoch.
3. ``qks_online``: the same epoch with ``feature_mode: online`` (issue 20 item 3): the
   frozen backbone encodes the JPEG shards inside the training loop. Images/s.
4. ``eval``: Open Images GZSL scale (125,000 test images x 7,586 labels by default): the
   score matrix computed on the GPU (image features @ label embeddings), then
   :func:`pipelines.evaluate.evaluate_scores` (mAP per class and BiAM's pooled mAP,
   P/R/F1@10,20) on it, as a cell does; the metrics run on the CPU (numpy), so the figure
   says where the time goes.

``--smoke``: the same path on the CPU at toy size (the tiny ViT, 32 images, QKS at m = 2, L = 1,
a 600 x 60 score matrix) in seconds; the test suite runs it (tests/test_bench_gpu.py).

Example::

    bench/gpu/run.sh                      # on a GPU node: results/bench-gpu/gpu.json
    python bench/gpu/bench_gpu.py --smoke --out /tmp/gpu-smoke.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

# dense (no sparsity) bf16 tensor-core peaks in TFLOPS, from NVIDIA's product datasheets;
# keys are matched as substrings of torch.cuda.get_device_name(), the first match wins
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.4,  # H200 SXM (H200 NVL: 835)
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # H100 SXM
    "A100": 312.0,
    "L40S": 362.05,
    "A10G": 70.0,
    "L4": 121.0,
}
GFLOP_PER_IMAGE = 17.6  # ViT-B/16 at 224 px, as quoted in issue 20


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def write_jpeg_shards(root: Path, n: int, size: int, seed: int, per_shard: int = 1000) -> list:
    """``n`` random JPEG images of ``size`` px in the downloader's layout; their ids."""
    import polars as pl
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    rows, ids = [], [f"img{i:07d}" for i in range(n)]
    for s in range(0, n, per_shard):
        shard = f"shard-{s // per_shard:05d}.tar"
        with tarfile.open(root / "shards" / shard, "w") as tar:
            for image_id in ids[s : s + per_shard]:
                # smooth random colour fields (JPEG sizes like photos', not like noise)
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                info = tarfile.TarInfo(f"{image_id}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
                rows.append({"image_id": image_id, "status": "ok", "shard": shard, "key": image_id})
    pl.DataFrame(rows).write_parquet(root / "ledger.parquet")
    return ids


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_features(args, device, work: Path) -> tuple[dict, object, object]:
    import torch

    from pipelines.data.images import ShardImages
    from pipelines.vlp.backbone import create_backbone
    from pipelines.vlp.features import extract_features, stored_bytes

    t0 = time.time()
    ids = write_jpeg_shards(work / "images", args.images, args.image_size, seed=0)
    jpeg_s = time.time() - t0
    images = ShardImages(work / "images", np.asarray(ids))
    torch.manual_seed(0)
    bb = create_backbone(args.model, device=device, precision=args.precision)
    # warm-up (kernels, cudnn autotune) on a few images, outside the timed pass
    warm = min(len(images), args.batch_size)
    extract_features(
        bb,
        images.subset(np.arange(len(images)) < warm),
        work / "warm",
        batch_size=warm,
        progress=False,
    )
    _sync(device)
    t0 = time.time()
    extract_features(
        bb,
        images,
        work / "features" / "train",
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=False,
    )
    _sync(device)
    seconds = time.time() - t0
    ips = args.images / seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = peak_tflops(name) if device.type == "cuda" else None
    out = {
        "model": args.model,
        "precision": args.precision,
        "images": args.images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "jpeg_write_seconds": round(jpeg_s, 2),
        "seconds": round(seconds, 3),
        "images_per_s": round(ips, 1),
        "cache_bytes": stored_bytes(work / "features" / "train"),
        "peak_bf16_tflops": peak,
        "gflop_per_image": GFLOP_PER_IMAGE,
        "ratio_to_peak": None if peak is None else round(ips * GFLOP_PER_IMAGE / (peak * 1e3), 4),
    }
    return out, bb, images


def _qks_context(bb, images, work: Path, device, mode: str, n_labels: int):
    from pipelines.data.prepared import Label, LabelSpace
    from pipelines.methods.base import CellContext
    from pipelines.vlp.features import load_features

    rng = np.random.default_rng(0)
    n = len(images)
    n_seen = n_labels - max(1, n_labels // 10)
    labels = np.where(rng.random((n, n_labels)) < 0.05, 1, -1).astype(np.int8)
    labels[:, n_seen:] = 0
    space = LabelSpace(
        [Label(f"concept{j}", f"concept{j}") for j in range(n_seen)],
        [Label(f"concept{j}", f"concept{j}") for j in range(n_seen, n_labels)],
    )
    return CellContext(
        dataset="synthetic",
        variant=f"qks-{mode}",
        label_space=space,
        train_labels=labels,
        test_labels=labels[:0],
        backbone_name=bb.name,
        device=device,
        seed=0,
        workdir=work / f"cell-{mode}",
        load_backbone=lambda: bb,
        load_features=lambda split: load_features(work / "features" / split),
        open_images=lambda split: images,
        progress=False,
        feature_mode=mode,
    )


def bench_qks(args, bb, images, device, work: Path, mode: str) -> dict:
    from pipelines.methods.qks import QKS, Config

    ctx = _qks_context(bb, images, work, device, mode, args.labels)
    cfg = Config(
        n_queries=args.qks_queries,
        n_layers=args.qks_layers,
        train={
            "epochs": 1,
            "batch_size": args.qks_batch_size,
            "lr": 1e-5,
            "resume": False,
            "num_workers": args.workers,
        },
    )
    t0 = time.time()
    summary = QKS(cfg).fit(ctx)
    _sync(device)
    epoch = summary["history"][0]["epoch_seconds"]
    return {
        "mode": mode,
        "images": len(images),
        "labels": args.labels,
        "batch_size": args.qks_batch_size,
        "m": cfg.n_queries,
        "L": cfg.n_layers,
        "epoch_seconds": epoch,
        "fit_seconds": round(time.time() - t0, 2),
        "images_per_s": round(len(images) / epoch, 1),
    }


def bench_eval(args, device) -> dict:
    import torch
    import torch.nn.functional as F

    from pipelines.config import EvalConfig
    from pipelines.evaluate import evaluate_scores

    n, c, d = args.eval_images, args.eval_labels, 512
    n_seen = c - max(1, c // 18)  # Open Images v4: 7,186 seen + 400 unseen
    gen = torch.Generator(device=device).manual_seed(0)
    feats = F.normalize(torch.randn(n, d, device=device, generator=gen), dim=-1).half()
    text = F.normalize(torch.randn(c, d, device=device, generator=gen), dim=-1).half()
    rng = np.random.default_rng(0)
    labels = np.zeros((n, c), np.int8)  # ~ Open Images' density: a few positives per image
    rows = np.repeat(np.arange(n), 8)
    labels[rows, rng.integers(0, c, len(rows))] = -1
    labels[rows[::2], rng.integers(0, c, len(rows) // 2)] = 1
    _sync(device)
    t0 = time.time()
    scores = torch.empty(n, c, dtype=torch.float32)
    for i in range(0, n, 8192):
        scores[i : i + 8192] = (feats[i : i + 8192] @ text.T).float().cpu()
    _sync(device)
    score_s = time.time() - t0
    cfg = EvalConfig(
        top_k=args.top_k, keep_images="with_positive", extra_map_variants=["biam_pooled"]
    )
    t0 = time.time()
    res = evaluate_scores(scores.numpy(), labels, n_seen, cfg)
    metric_s = time.time() - t0
    return {
        "images": n,
        "labels": c,
        "seen": n_seen,
        "score_seconds": round(score_s, 3),
        "metrics_seconds": round(metric_s, 2),
        "gzsl_mAP": res["gzsl"].get("mAP"),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (seconds)")
    ap.add_argument("--out", default="results/bench-gpu/gpu.json")
    ap.add_argument("--workdir", default=None, help="scratch (default: a /tmp folder, deleted)")
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--skip", nargs="*", default=[], choices=["cached", "online", "eval"])
    args = ap.parse_args(argv)
    import torch

    if args.smoke:
        device = torch.device("cpu")
        args.model, args.image_size, args.images, args.workers = "ovml-tiny-vit", 64, 32, 0
        args.batch_size, args.qks_batch_size, args.labels = 16, 16, 20
        args.eval_images, args.eval_labels, args.precision = 600, 60, "bf16"
        args.qks_queries, args.qks_layers, args.top_k = 2, 1, [2, 3]
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke for the CPU path")
        device = torch.device("cuda")
        args.model, args.image_size, args.precision = "ViT-B-16", 224, "bf16"
        args.batch_size, args.qks_batch_size, args.labels = 512, 64, 7586
        args.eval_images, args.eval_labels = 125_000, 7586
        args.qks_queries, args.qks_layers, args.top_k = 12, 7, [10, 20]
        torch.backends.cuda.matmul.allow_tf32 = True
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ovml-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "smoke": args.smoke,
        "torch": torch.__version__,
    }
    try:
        t_all = time.time()
        figures["features"], bb, images = bench_features(args, device, work)
        print("features", json.dumps(figures["features"]), flush=True)
        for mode in ("cached", "online"):
            if mode not in args.skip:
                key = f"qks_{mode}"
                figures[key] = bench_qks(args, bb, images, device, work, mode)
                print(key, json.dumps(figures[key]), flush=True)
        if "eval" not in args.skip:
            figures["eval"] = bench_eval(args, device)
            print("eval", json.dumps(figures["eval"]), flush=True)
        figures["total_seconds"] = round(time.time() - t_all, 1)
        figures["peak_rss_gib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
        )
        if device.type == "cuda":
            figures["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    from pipelines.io import write_json

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, figures)
    print(f"wrote {out}")
    return figures


if __name__ == "__main__":
    main()
