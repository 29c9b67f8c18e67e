"""Per-image cost of the real grid's frozen towers, counted (not timed): the figures
pipelines/capacity.py plans with.

For each image tower of params.real.yaml (ViT-B-16, ViT-B-32, RN50, RN101, torchvision's
VGG19 trunk) and each CLIP text tower, one forward pass of one input runs on PyTorch's meta
device (shapes only: nothing is allocated or computed) under ``FlopCounterMode`` and a
dispatch mode that records every op's output size. Prints, per tower:

- GFLOP per image (2 x multiply-accumulates of matmuls and convolutions, as
  ``torch.utils.flop_counter`` counts them) and per prompt for the text towers;
- parameters (millions);
- the largest single op output (MB per image, fp32): the inference working set is a few
  of these;
- the sum of all op outputs (MB per image, fp32): an upper bound on what training keeps
  for the backward pass.

Nothing here is timed, so the figures do not depend on the machine's load. Example::

    python bench/bench_flops.py            # every tower
    python bench/bench_flops.py --json     # one JSON object, for pipelines/capacity.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIP_TOWERS = ("ViT-B-16", "ViT-B-32", "RN50", "RN101")


class OutputBytes(TorchDispatchMode):
    """Largest and total bytes of the tensors every op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                n = t.numel() * t.element_size()
                self.largest = max(self.largest, n)
                self.total += n
        return out


def count(module: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    flops, sizes = FlopCounterMode(display=False), OutputBytes()
    with torch.no_grad(), flops, sizes:
        module(x)
    return {
        "gflop": flops.get_total_flops() / 1e9,
        "params_m": sum(p.numel() for p in module.parameters()) / 1e6,
        "largest_output_mb": sizes.largest / 1e6,
        "sum_outputs_mb": sizes.total / 1e6,
    }


def clip_costs(model: str) -> dict[str, dict[str, float]]:
    import open_clip

    with torch.device("meta"):
        clip = open_clip.create_model(model, device="meta")
        size = clip.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        image = count(clip.visual, torch.zeros(1, 3, size, size))
        tokens = torch.zeros(1, clip.context_length, dtype=torch.long)
        text = count(_TextOnly(clip), tokens)
    return {"image": {**image, "input_size": size}, "text": text}


class _TextOnly(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, tokens):
        return self.clip.encode_text(tokens)

    def parameters(self, recurse: bool = True):  # the text tower's own, not the image tower's
        skip = {id(p) for p in self.clip.visual.parameters()}
        return (p for p in self.clip.parameters() if id(p) not in skip)


def vgg_costs(arch: str = "vgg19") -> dict[str, dict[str, float]]:
    import torchvision

    with torch.device("meta"):
        trunk = getattr(torchvision.models, arch)().features[:-1]
        return {"image": {**count(trunk, torch.zeros(1, 3, 224, 224)), "input_size": 224}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    costs = {m: clip_costs(m) for m in CLIP_TOWERS}
    costs["torchvision:vgg19"] = vgg_costs()
    if args.json:
        print(json.dumps(costs, indent=2))
        return
    print(f"{'tower':26s} {'GFLOP':>8s} {'params M':>9s} {'max out MB':>11s} {'sum out MB':>11s}")
    for model, towers in costs.items():
        for kind, c in towers.items():
            unit = "/image" if kind == "image" else "/prompt"
            print(
                f"{model + ' ' + kind + unit:26s} {c['gflop']:8.2f} {c['params_m']:9.1f} "
                f"{c['largest_output_mb']:11.2f} {c['sum_outputs_mb']:11.1f}"
            )


if __name__ == "__main__":
    main()
