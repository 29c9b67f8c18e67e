"""Contrastive pre-training of the tiny CLIP on toyworld captions (CLIP's InfoNCE loss).

The result is saved as an open_clip ``local-dir`` folder (config JSON + safetensors), so
the same :func:`pipelines.vlp.backbone.create_backbone` code path loads it as any other
checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.loss import ClipLoss
from tqdm.auto import tqdm

from pipelines.vlp.backbone import create_backbone, save_open_clip_dir


@dataclass
class PretrainResult:
    losses: list[float]
    seconds: float
    n_images: int


def pretrain_clip(
    model_name: str,
    images: np.ndarray,
    captions: list[list[str]],
    out_dir: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    on_epoch=None,
) -> PretrainResult:
    """Train ``model_name`` from scratch on (image, caption) pairs and save it to out_dir.

    images: (N, H, W, 3) uint8; captions: N lists of alternative captions (one is drawn
    per image and epoch). Augmentation: random horizontal flips.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bb = create_backbone(model_name, "none", device=device)
    model = bb.model
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    n = len(images)

    def batch_outputs(idx: np.ndarray):
        idx = np.sort(idx)
        batch = np.asarray(images[idx])
        flip = rng.random(len(idx)) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        texts = [captions[i][int(rng.integers(len(captions[i])))] for i in idx]
        return model(bb.uint8_to_tensor(batch), bb.tokenize(texts))[:3]

    start = time.time()
    losses = contrastive_train(
        batch_outputs,
        decay,
        no_decay,
        model.logit_scale,
        n=n,
        rng=rng,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        desc="pre-training tiny CLIP",
        progress=progress,
        on_epoch=on_epoch,
    )
    model.eval()
    seconds = time.time() - start
    save_open_clip_dir(
        model,
        model_name,
        out_dir,
        extra={"ovml": {"epoch_losses": losses, "seconds": seconds, "n_images": n}},
    )
    return PretrainResult(losses, seconds, n)


def contrastive_train(
    batch_outputs: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    decay: list[torch.nn.Parameter],
    no_decay: list[torch.nn.Parameter],
    logit_scale: torch.nn.Parameter,
    *,
    n: int,
    rng: np.random.Generator,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    desc: str,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """CLIP's contrastive training loop, shared by the tiny CLIP's pre-training and LiT's
    alignment (pipelines/vlp/lit.py): AdamW (betas 0.9/0.98, eps 1e-6; weight decay on
    ``decay`` only), linear warm-up then cosine decay of the learning rate, CLIP's
    symmetric InfoNCE loss (open_clip's ``ClipLoss``) on ``batch_outputs(idx)`` =
    ``(image features, text features, logit scale)`` of the images ``idx`` (a fresh
    permutation of ``n`` each epoch), ``logit_scale`` clamped to [0, log 100] after each
    step as in CLIP. Returns the mean loss of each epoch."""
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total - warmup_steps)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    loss_fn = ClipLoss()
    losses: list[float] = []
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(n)
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = loss_fn(*batch_outputs(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                logit_scale.clamp_(0, math.log(100))
            loss_value = loss.item()
            epoch_loss += loss_value
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_value:.3f}")
        losses.append(epoch_loss / steps_per_epoch)
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    bar.close()
    return losses
