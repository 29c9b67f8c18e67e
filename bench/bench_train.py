"""Epoch time of the shared trainer from cached features vs end to end from images.

Same method, same data, same frozen backbone: ``input_mode: features`` reads the
frozen-backbone cache (pipelines/vlp/features.py) while ``input_mode: images`` runs the
image tower on every batch. Prints the mean epoch time of each and their ratio
(prints figures; not a test).

Uses a workspace's toyworld cell (params.yaml; the dataset, backbone and features are
built on first use) or, with ``--synthetic``, random images through a random-init tiny ViT.

Example::

    python bench/bench_train.py --variant qks --epochs 2
    python bench/bench_train.py --synthetic --images 512
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import load_params, method_class  # noqa: E402


def workspace_context(params_path: str, dataset: str, variant: str, workdir: Path):
    from pipelines.cells import make_context, setup_torch
    from pipelines.config import Params
    from pipelines.runner import run_stages

    params: Params = load_params(params_path)
    setup_torch(params)
    bb = params.backbone_for(dataset, variant)
    from pipelines.runner import run_stage

    run_stages(params, [f"features@{dataset}@{bb}"], lambda p, st: run_stage(p, st, progress=False))
    return params, make_context(params, dataset, variant, workdir, progress=False)


def synthetic_context(n_images: int, workdir: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tests.test_train import fake_context

    return fake_context(workdir, n_train=n_images, n_test=64)


def time_mode(method_name: str, options: dict, ctx, mode: str, epochs: int) -> tuple[float, float]:
    """(mean epoch seconds, final train loss) with ``train.input_mode = mode``."""
    cls = method_class(method_name)
    train = {**options.get("train", {}), "input_mode": mode, "epochs": epochs, "resume": False}
    method = cls(cls.Config.model_validate({**options, "train": train}))
    torch.manual_seed(0)
    summary = method.fit(ctx)
    times = [h["epoch_seconds"] for h in summary["history"]]
    return sum(times) / len(times), summary["history"][-1]["train_loss"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    ap.add_argument("--dataset", default="toyworld")
    ap.add_argument("--variant", default="qks")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--synthetic",
        action="store_true",
        help="random images, random-init tiny ViT (no workspace)",
    )
    ap.add_argument(
        "--images", type=int, default=512, help="--synthetic: number of training images"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.synthetic:
            ctx = synthetic_context(args.images, work)
            method, options = (
                "qks",
                {"n_queries": 12, "n_layers": 7, "train": {"batch_size": 64, "lr": 1e-4}},
            )
        else:
            params, ctx = workspace_context(args.params, args.dataset, args.variant, work)
            var = params.variants[args.variant]
            method, options = var.method, var.options
        n = len(ctx.train_labels)
        print(
            f"method={method} variant={args.variant if not args.synthetic else 'synthetic'} "
            f"train_images={n} epochs={args.epochs} "
            f"threads={options.get('train', {}).get('threads') or torch.get_num_threads()} device={ctx.device}"
        )
        results = {}
        for mode in ("features", "images"):
            ctx.workdir = work / mode
            t0 = time.time()
            results[mode] = time_mode(method, options, ctx, mode, args.epochs)
            print(
                f"  {mode:8s}: {results[mode][0]:7.2f} s/epoch  ({n / results[mode][0]:8.0f} img/s)  "
                f"final loss {results[mode][1]:.4f}  [wall {time.time() - t0:.1f}s]"
            )
        ratio = results["images"][0] / results["features"][0]
        print(f"end-to-end / cached-features epoch time: {ratio:.1f}x")


if __name__ == "__main__":
    main()
