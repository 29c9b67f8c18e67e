"""Training-step cost of the two toyworld image towers: the tiny ViT (toy-clip) and the
tiny CLIP ResNet (toy-clip-rn, Epsilon Table 6's CNN row).

Times forward + backward of each random-init image tower on the same random batch, in the
same run, and prints the ResNet / ViT ratio (prints figures; not a test).

Example::

    python bench/bench_backbones.py --batch 256 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.vlp.backbone import create_backbone  # noqa: E402

MODELS = ("ovml-tiny-vit", "ovml-tiny-rn")


def step_seconds(model: str, pixels: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward pass of the image tower (one warm-up)."""
    visual = create_backbone(model).model.visual.train()
    visual(pixels).sum().backward()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        visual(pixels).sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    pixels = torch.randn(args.batch, 3, 64, 64)
    secs = {m: step_seconds(m, pixels, args.repeats) for m in MODELS}
    for m, s in secs.items():
        print(f"{m:15s} {s:.3f} s per forward+backward of {args.batch} images")
    print(f"ratio ResNet / ViT: {secs['ovml-tiny-rn'] / secs['ovml-tiny-vit']:.2f}x")


if __name__ == "__main__":
    main()
