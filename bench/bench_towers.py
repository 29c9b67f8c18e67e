"""What the packaged towers (icon-lit: EfficientNet-Lite0 + MiniLM) cost on this CPU.

Prints, measured in one run at the given threads: the frozen image tower's forward per
image (what the feature cache and LiT's frozen outputs pay), a training step through the
whole image tower (forward + backward, what CLIP-FT and C2SRT's student pay per train
image and epoch) and its ratio to the forward, the text tower per caption, and the scratch
tiny CLIP ResNet's forward for comparison.

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
            texts = [f"a photo of a dog, a red apple and a sailboat number {i}" for i in range(256)]
            rows.append((
                "icon-lit (MiniLM): text tower, per caption",
                per_item(lambda bb=bb, t=texts: bb.encode_text(t), len(texts), args.repeats),
            ))  # fmt: skip
    ref = rows[0][1]
    print(f"{args.threads} thread(s), batch {args.batch}, {args.size} px input; ms per item")
    for what, ms in rows:
        print(f"{what:52s} {ms:8.2f} ms  {ms / ref:6.2f}x the towers' forward")


if __name__ == "__main__":
    main()
