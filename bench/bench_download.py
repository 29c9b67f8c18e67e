"""Benchmark: pipelines.data.download vs img2dataset on the same local fault-injecting server.

    python bench/bench_download.py                      # 2,000 URLs, 64 concurrent requests
    python bench/bench_download.py --img2dataset-bin /tmp/i2d-venv/bin/img2dataset

The server (tests/fault_server.py) runs in its own process and serves a mix of good JPEGs,
dead links (404, redirect to the Flickr placeholder), slow answers, flaky 503s and a few
URLs that hang past the timeout. Both downloaders run as subprocesses with the same
concurrency, timeout and retry budget, and are timed end to end (start-up included); each
gets its own URL set (a query suffix), so the flaky routes fail the same way for both.
img2dataset is optional: install it in a separate venv (it pins webdataset<0.3 and
pandas<3, which would downgrade this project's), e.g.::

    uv venv /tmp/i2d-venv && uv pip install --python /tmp/i2d-venv/bin/python img2dataset
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MIX = {  # share of URLs per kind
    "good": 0.80,
    "dead404": 0.06,
    "placeholder": 0.04,
    "slow": 0.05,
    "flaky": 0.04,
    "hang": 0.01,
}


def _serve(queue: mp.Queue, image_size: tuple[int, int]) -> None:
    from fault_server import FaultServer

    srv = FaultServer(image_size=image_size, image_pool=64).start()
    queue.put(srv.base_url)
    while True:
        time.sleep(3600)


def make_urls(
    base: str, n: int, tag: str, slow_delay: float, seed: int, mix: dict[str, float] = MIX
) -> pl.DataFrame:
    rng = random.Random(seed)
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=n)
    paths = {
        "good": "/good/{i}?run={tag}",
        "dead404": "/status/404/{i}?run={tag}",
        "placeholder": "/redirect_placeholder/{i}?run={tag}",
        "slow": "/slow/{i}?delay=" + str(slow_delay) + "&run={tag}",
        "flaky": "/flaky/{i}?fails=1&run={tag}",
        "hang": "/slow/{i}?delay=30&run={tag}",
    }
    urls = [base + paths[k].format(i=i, tag=tag) for i, k in enumerate(kinds)]
    return pl.DataFrame({"image_id": [f"img{i:06d}" for i in range(n)], "url": urls, "kind": kinds})


def run_ours(manifest: Path, out: Path, args: argparse.Namespace) -> dict:
    code = f"""
import json, time
from pipelines.data.download import DownloadConfig, download_images
cfg = DownloadConfig(connect_timeout={args.timeout}, read_timeout={args.timeout},
                     total_timeout={args.timeout * 3}, max_retries={args.retries},
                     backoff_base=0.2, per_host_connections={args.workers}, shard_size=1000)
s = download_images({str(manifest)!r}, {str(out)!r}, workers={args.workers}, config=cfg,
                    progress=False)
print("RESULT", json.dumps(s.to_dict()))
"""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"our downloader failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    summary = json.loads(line[7:])
    return {
        "wall_s": wall,
        "ok": summary["ok"],
        "inner_s": summary["elapsed_s"],
        "counts": {k: v for k, v in summary["counts"].items() if v},
    }


def run_img2dataset(binary: str, manifest: Path, out: Path, args: argparse.Namespace) -> dict:
    procs = min(2, os.cpu_count() or 1)
    cmd = [
        binary,
        "--url_list",
        str(manifest),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--processes_count",
        str(procs),
        "--thread_count",
        str(max(1, args.workers // procs)),
        "--resize_mode",
        "no",
        "--timeout",
        str(int(args.timeout)),
        "--retries",
        str(args.retries),
        "--number_sample_per_shard",
        "1000",
        "--extract_exif",
        "False",
        "--enable_wandb",
        "False",
        "--disallowed_header_directives",
        "[]",
        "--compute_hash",
        "sha256",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"img2dataset failed:\n{proc.stderr[-3000:]}")
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return {"wall_s": wall, "ok": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="URLs per downloader")
    ap.add_argument("--workers", type=int, default=64, help="concurrent requests (both)")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds (both)")
    ap.add_argument("--retries", type=int, default=1, help="extra attempts (both)")
    ap.add_argument("--slow-delay", type=float, default=0.5)
    ap.add_argument("--image-size", default="320x240", help="served JPEG size WxH")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--mix",
        default=None,
        help="URL kinds and weights, e.g. good=1 (default: "
        + ",".join(f"{k}={v}" for k, v in MIX.items())
        + ")",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the median is kept")
    ap.add_argument(
        "--img2dataset-bin",
        default=None,
        help="img2dataset executable (default: on PATH or /tmp/i2d-venv/bin)",
    )
    ap.add_argument("--skip-img2dataset", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    binary = args.img2dataset_bin or shutil.which("img2dataset")
    if binary is None and Path("/tmp/i2d-venv/bin/img2dataset").exists():
        binary = "/tmp/i2d-venv/bin/img2dataset"
    w, h = (int(x) for x in args.image_size.split("x"))
    mix = MIX
    if args.mix:
        mix = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
        unknown = set(mix) - set(MIX)
        if unknown:
            ap.error(f"unknown URL kind(s) {sorted(unknown)}; choose from {sorted(MIX)}")

    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    server = ctx.Process(target=_serve, args=(queue, (w, h)), daemon=True)
    server.start()
    runs: dict[str, list[dict]] = {"ours": [], "img2dataset": []}
    run_i2d = bool(binary) and not args.skip_img2dataset
    try:
        base = queue.get(timeout=30)
        with tempfile.TemporaryDirectory(prefix="bench-dl-") as tmp:
            tmp_path = Path(tmp)
            for rep in range(args.repeat):  # alternate, so both see the same machine load
                df = make_urls(base, args.n, f"ours{rep}", args.slow_delay, args.seed, mix)
                if rep == 0:
                    drawn = Counter(df["kind"].to_list())
                    print(
                        f"{args.n} URLs per run: "
                        + ", ".join(f"{k}={v}" for k, v in sorted(drawn.items()))
                    )
                df.drop("kind").write_parquet(tmp_path / f"ours{rep}.parquet")
                r = run_ours(tmp_path / f"ours{rep}.parquet", tmp_path / f"out-ours{rep}", args)
                runs["ours"].append(r)
                print(f"[{rep}] ours:        {r}", flush=True)
                if run_i2d:
                    df2 = make_urls(base, args.n, f"i2d{rep}", args.slow_delay, args.seed, mix)
                    df2.select("url").write_parquet(tmp_path / f"i2d{rep}.parquet")
                    r = run_img2dataset(
                        binary, tmp_path / f"i2d{rep}.parquet", tmp_path / f"out-i2d{rep}", args
                    )
                    runs["img2dataset"].append(r)
                    print(f"[{rep}] img2dataset: {r}", flush=True)
            if not run_i2d:
                print("img2dataset: not run (pass --img2dataset-bin PATH)")
    finally:
        server.terminate()
        server.join(5)

    print()
    results: dict[str, dict] = {"n": args.n, "workers": args.workers, "mix": mix}
    for name, rs in runs.items():
        if not rs:
            continue
        walls = sorted(r["wall_s"] for r in rs)
        median = walls[len(walls) // 2]
        results[name] = {"runs": rs, "median_wall_s": median, "images_per_s": args.n / median}
        print(
            f"{name:12s} {args.n / median:8.1f} rows/s  (median of {len(rs)}: {median:.2f} s "
            f"wall; {rs[0]['ok']} ok of {args.n})"
        )
    if runs["img2dataset"]:
        ratio = results["ours"]["images_per_s"] / results["img2dataset"]["images_per_s"]
        results["ratio_ours_over_img2dataset"] = ratio
        print(f"ratio ours / img2dataset: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
