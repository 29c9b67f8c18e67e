"""Memory and speed of one QKS epoch streamed from feature caches of growing size
(prints figures; not a test).

For each N (default 5k, 20k, 80k images) it writes synthetic features in the project's
own format (pipelines/vlp/features.py ``write_feature_cache``: fp16 shards of 4,096
images, 49 patch tokens of 512 dims, global embeddings, ``index.json``), then trains QKS
for one epoch on them through the shared trainer (``Trainer.fit``: the data fingerprint
streamed over every shard, then shuffled DataLoader batches read from the memory-mapped
shards). Writing and training each run in a fresh subprocess, so the peak RSS printed
(``ru_maxrss`` of the training process: code, torch, the model, labels and every page of
the store it held) is that N's alone. The cache is deleted after each N.

Prints one row per N (store size on disk, peak RSS, images/s over the epoch) and a last
line ``peak RSS growth 5k->80k: X%``. Targets (issue 20): at most 25 %, and throughput
within 20 % of constant. ``--no-release`` trains without releasing the shards' pages
after each read (what a plain memory map does), to show what that release buys.

The backbone is a random-init ViT with 512-d embeddings and 7 x 7 patches at 224 px
(bench/model_configs/bench-thin-b32.json: one thin layer per tower; QKS only reads it
for the label embeddings and the patch count). QKS runs with ``--queries``/``--layers``
(default 4 / 1, lighter than the paper's m = 12, L = 7, so that the epoch measures the
reading more than the model; ``--paper`` for the paper's). Labels: ``--labels`` columns
(81, NUS-WIDE's concepts; the dense int8 label matrix, N x C bytes, also grows with N).

Example::

    python bench/bench_scale.py                       # 5k, 20k, 80k under /tmp
    python bench/bench_scale.py --sizes 2000 4000 --dir features/bench-scale
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCH = Path(__file__).resolve().parent
MODEL = "bench-thin-b32"
P, D = 49, 512


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------ subprocesses
def write_store(out: Path, n: int, seed: int) -> dict:
    import torch

    from pipelines.vlp.features import write_feature_cache

    gen = torch.Generator().manual_seed(seed)
    step = 1024

    def rows():
        for i in range(0, n, step):
            k = min(step, n - i)
            g = torch.nn.functional.normalize(torch.randn(k, D, generator=gen), dim=-1)
            yield {"global": g, "patches": torch.randn(k, P, D, generator=gen).half()}

    t0 = time.time()
    info = write_feature_cache(
        out / "train", rows(), image_ids=[f"im{i}" for i in range(n)], backbone_name=MODEL
    )
    return {"n": n, "shards": len(info["shards"]), "write_seconds": round(time.time() - t0, 2)}


def train_epoch(store: Path, n: int, args: argparse.Namespace) -> dict:
    import numpy as np
    import open_clip
    import torch

    if args.no_release:
        import mmap

        del mmap.MADV_DONTNEED  # the store then keeps every page it read mapped
    torch.set_num_threads(args.threads)
    from pipelines.data.prepared import Label, LabelSpace
    from pipelines.methods.base import CellContext
    from pipelines.methods.qks import QKS, Config
    from pipelines.vlp.backbone import create_backbone
    from pipelines.vlp.features import load_features

    open_clip.add_model_config(BENCH / "model_configs")
    torch.manual_seed(0)
    backbone = create_backbone(MODEL)
    rng = np.random.default_rng(0)
    n_seen = args.labels - max(1, args.labels // 10)
    labels = np.where(rng.random((n, args.labels)) < 0.05, 1, -1).astype(np.int8)
    labels[:, n_seen:] = 0
    space = LabelSpace(
        [Label(f"concept{j}", f"concept{j}") for j in range(n_seen)],
        [Label(f"concept{j}", f"concept{j}") for j in range(n_seen, args.labels)],
    )
    work = Path(tempfile.mkdtemp(prefix="bench-scale-work-"))
    ctx = CellContext(
        dataset="synthetic",
        variant="qks-bench",
        label_space=space,
        train_labels=labels,
        test_labels=labels[:0],
        backbone_name=MODEL,
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        seed=0,
        workdir=work,
        load_backbone=lambda: backbone,
        load_features=lambda split: load_features(store / split),
        open_images=lambda split: None,
        progress=False,
    )
    queries, layers = (12, 7) if args.paper else (args.queries, args.layers)
    cfg = Config(
        n_queries=queries,
        n_layers=layers,
        train={"epochs": 1, "batch_size": args.batch_size, "lr": 1e-4, "resume": False},
    )
    t0 = time.time()
    try:
        summary = QKS(cfg).fit(ctx)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    epoch = summary["history"][0]["epoch_seconds"]
    return {
        "n": n,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "epoch_seconds": epoch,
        "fit_seconds": round(time.time() - t0, 2),
        "images_per_s": round(n / epoch, 1),
        "labels_mib": round(labels.nbytes / 2**20, 1),
        "queries": queries,
        "layers": layers,
    }


def _child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, *extra, *_shared_flags(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _shared_flags(args: argparse.Namespace) -> list[str]:
    flags = [
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--labels",
        str(args.labels),
        "--queries",
        str(args.queries),
        "--layers",
        str(args.layers),
    ]
    return (
        flags + (["--paper"] if args.paper else []) + (["--no-release"] if args.no_release else [])
    )


# ------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 80000])
    ap.add_argument("--dir", default=None, help="where the caches go (default: a /tmp folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--labels", type=int, default=81)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--paper", action="store_true", help="QKS at m = 12, L = 7")
    ap.add_argument("--no-release", action="store_true")
    ap.add_argument("--_write", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_train", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._write is not None:
        print(json.dumps(write_store(Path(args._store), args._write, seed=args._write)))
        return
    if args._train is not None:
        print(json.dumps(train_epoch(Path(args._store), args._train, args)))
        return

    root = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="ovml-bench-scale-", dir=root))
    rows = []
    try:
        for n in args.sizes:
            store = base / f"n{n}"
            w = _child(args, "--_write", str(n), "--_store", str(store))
            size = sum(f.stat().st_size for f in (store / "train").glob("shard-*"))
            r = _child(args, "--_train", str(n), "--_store", str(store))
            shutil.rmtree(store)  # what this run wrote, before the next N
            rows.append({**w, **r, "store_gib": round(size / 2**30, 2)})
            print(
                f"N={n:>6}: store {size / 2**30:5.2f} GiB in {w['shards']:>2} shards | "
                f"peak RSS {r['peak_rss_mib']:7.1f} MiB | {r['images_per_s']:7.1f} images/s "
                f"(epoch {r['epoch_seconds']:.1f} s; fit incl. data digest {r['fit_seconds']:.1f} s)",
                flush=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    first, last = rows[0], rows[-1]
    speeds = [r["images_per_s"] for r in rows]
    print(
        f"QKS m={first['queries']} L={first['layers']}, batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.labels} labels; "
        f"pages released after each read: {not args.no_release}"
    )
    print(f"throughput max/min: {max(speeds) / min(speeds):.2f} (target <= 1.20)")
    growth = 100 * (last["peak_rss_mib"] / first["peak_rss_mib"] - 1)
    print(
        f"peak RSS growth {first['n'] // 1000}k->{last['n'] // 1000}k: {growth:.1f}%"
        f" (+{last['peak_rss_mib'] - first['peak_rss_mib']:.0f} MiB; target <= 25%)"
    )


if __name__ == "__main__":
    main()
