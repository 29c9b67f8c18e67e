"""What the packaged towers (icon-lit: EfficientNet-Lite0 + MiniLM) cost on this CPU.

Prints, measured in one run at the given threads: the frozen image tower's forward per
image (what the feature cache and LiT's frozen outputs pay), a training step through the
whole image tower (forward + backward, what CLIP-FT and C2SRT's student pay per train
image and epoch) and its ratio to the forward, the same step through the last 2 layer groups
from the kept prefix (CLIP-FT's ``unlocked_groups``), the text tower per caption padded to
the context length and cut per batch (``encode_text``), and the scratch tiny CLIP ResNet's
forward for comparison.

    .venv/bin/python bench/bench_towers.py [--threads 1] [--batch 64] [--size 128]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.vlp.backbone import create_backbone


def per_item(fn, n_items: int, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / (repeats * n_items) * 1000


def partial_step(visual, x: torch.Tensor, unlocked: int):
    """CLIP-FT's ``unlocked_groups`` step: the frozen prefix's output kept, the suffix and
    projection trained (pipelines/methods/clip_ft.py PartialTower)."""
    from pipelines.methods.clip_ft import PartialTower

    tower = PartialTower(visual, unlocked).train()
    index = torch.arange(len(x))
    tower(x, index)  # the kept prefix outputs, as from the second epoch on
    opt = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-5)

    def step():
        loss = tower(x, index).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def padded_text(bb, texts: list[str]) -> torch.Tensor:
    """The text tower on ids padded to the context length (encode_text before the cut)."""
    with torch.no_grad():
        return F.normalize(bb.model.encode_text(bb.tokenize(texts)), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=128, help="the dataset's image side")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    rows = []
    for name, model in (("icon-lit (EfficientNet-Lite0)", "ovml-lite0-minilm"),
                        ("scratch tiny CLIP ResNet", "ovml-tiny-rn")):  # fmt: skip
        bb = create_backbone(model, "none")
        x = bb.uint8_to_tensor(imgs)

        def forward(bb=bb, x=x):
            with torch.no_grad():
                bb.encode_images(x)

        rows.append((f"{name}: frozen forward", per_item(forward, len(imgs), args.repeats)))
        if model == "ovml-lite0-minilm":
            visual = bb.model.visual
            visual.train()
            opt = torch.optim.AdamW(visual.parameters(), lr=1e-5)

            def step(visual=visual, x=x, opt=opt):
                loss = F.normalize(visual(x), dim=-1).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()

            rows.append(
                (f"{name}: train step, whole tower", per_item(step, len(imgs), args.repeats))
            )
            visual.eval()
            rows.append((
                f"{name}: train step, last 2 groups (CLIP-FT)",
                per_item(partial_step(visual, x, 2), len(imgs), args.repeats),
            ))  # fmt: skip
            words = [
                "a",
                "photo",
                "of",
                "a",
                "dog",
                "red",
                "apple",
                "sailboat",
                "on",
                "the",
                "beach",
                "with",
                "two",
            ]
            texts = [" ".join(words[: 3 + i % 10]) for i in range(256)]
            rows.append((
                "icon-lit (MiniLM): text tower, padded to context",
                per_item(lambda bb=bb, t=texts: padded_text(bb, t), len(texts), args.repeats),
            ))  # fmt: skip
            rows.append((
                "icon-lit (MiniLM): text tower, cut per batch",
                per_item(lambda bb=bb, t=texts: bb.encode_text(t), len(texts), args.repeats),
            ))  # fmt: skip
    ref = rows[0][1]
    print(f"{args.threads} thread(s), batch {args.batch}, {args.size} px input; ms per item")
    for what, ms in rows:
        print(f"{what:52s} {ms:8.2f} ms  {ms / ref:6.2f}x the towers' forward")


if __name__ == "__main__":
    main()
