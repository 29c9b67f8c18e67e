"""LiT alignment of two pretrained towers (Zhai et al., "LiT: Zero-Shot Transfer with
Locked-image text Tuning", CVPR 2022): the backbone stage's pre-training recipe ``lit``.

The image tower (all of it, or all but its last ``unlocked_image_groups`` layer groups)
and the text tower stay frozen; the two linear projections into the joint space, the
temperature and any unlocked image groups are trained with CLIP's symmetric InfoNCE
loss (Radford et al. 2021, Eq. in Fig. 3; open_clip's ``ClipLoss``) on (image, caption)
pairs. LiT's finding is that a locked, pretrained image tower transfers best ("Lu", the
image tower locked and the text side trained); here the text tower is pretrained and
locked too (LiT's "LU" / "Lu" grid, Table 1), so only the heads learn: what the CPU budget
allows, and what keeps MiniLM's knowledge of words that no caption contains.

Frozen outputs are computed once, where that is exact: the images have no augmentation
and the frozen layers run in eval mode (BatchNorm's stored statistics, no dropout), so
the frozen image prefix maps each image to one fixed tensor (the pooled 1280-d feature
when everything is locked, the input of the first unlocked group otherwise), and the
frozen text tower maps each distinct caption to one mean-pooled 384-d vector (padding to
each batch's longest caption changes nothing: pad tokens are masked out of attention
and of the mean). Training then runs on those tensors (seconds, not minutes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipelines.vlp.pretrain import contrastive_train
from pipelines.vlp.towers import build_tower_clip, save_aligned


@dataclass
class LitResult:
    losses: list[float]
    seconds: float
    seconds_frozen: float  # computing the frozen outputs
    n_images: int
    n_captions: int


def image_stages(trunk: torch.nn.Module) -> list[torch.nn.Module]:
    """A timm EfficientNet's ``forward_features`` as its layer groups, in order (the groups
    of timm's ``group_matcher``: stem, each block, head)."""
    stem = torch.nn.Sequential(trunk.conv_stem, trunk.bn1)
    blocks = [b for stage in trunk.blocks for b in stage]
    head = torch.nn.Sequential(trunk.conv_head, trunk.bn2)
    return [stem, *blocks, head]


def split_image_tower(visual, unlocked: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(frozen prefix, trainable suffix) of a TimmModel tower; the suffix ends in the
    pooled feature (before the projection)."""
    stages = image_stages(visual.trunk)
    if not 0 <= unlocked < len(stages):
        raise ValueError(f"unlocked_image_groups must be in [0, {len(stages) - 1}], got {unlocked}")
    cut = len(stages) - unlocked
    pool = torch.nn.Sequential(visual.trunk.global_pool)  # SelectAdaptivePool2d(flatten)
    prefix = torch.nn.Sequential(*stages[:cut], *([pool] if unlocked == 0 else []))
    suffix = torch.nn.Sequential(*stages[cut:], pool) if unlocked else torch.nn.Identity()
    return prefix, suffix


@torch.no_grad()
def frozen_image_outputs(
    backbone, prefix: torch.nn.Module, images: np.ndarray, batch_size: int, progress: bool
) -> torch.Tensor:
    out = []
    bar = tqdm(total=len(images), desc="LiT: frozen image tower", disable=not progress)
    for i in range(0, len(images), batch_size):
        x = backbone.uint8_to_tensor(np.asarray(images[i : i + batch_size]))
        out.append(prefix(x).float().cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out)


@torch.no_grad()
def frozen_text_outputs(
    text_tower, hf_tokenizer, texts: list[str], context_length: int, batch_size: int, progress
) -> torch.Tensor:
    """Mean-pooled outputs of the frozen HF text tower (before its projection), batches of
    similar length padded to their longest caption."""
    device = next(text_tower.parameters()).device
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(texts), text_tower.config.hidden_size)
    bar = tqdm(total=len(texts), desc="LiT: frozen text tower", disable=not progress)
    for i in range(0, len(texts), batch_size):
        idx = order[i : i + batch_size]
        enc = hf_tokenizer(
            [texts[j] for j in idx],
            padding="longest",
            truncation=True,
            max_length=context_length,
            return_tensors="pt",
        ).to(device)
        hidden = text_tower.transformer(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        )
        out[torch.from_numpy(idx)] = text_tower.pooler(hidden, enc["attention_mask"]).float().cpu()
        bar.update(len(idx))
    bar.close()
    return out


def align_lit(
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
    unlocked_image_groups: int = 0,
    init_temperature: float = 0.07,
    embed_dim: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    feature_batch_size: int = 256,
    progress: bool = True,
    on_epoch=None,
    recipe_record: dict | None = None,
) -> LitResult:
    """Align ``model_name``'s packaged towers on (image, caption) pairs, save to out_dir.

    images: (N, H, W, 3) uint8; captions: N lists of alternative captions (one drawn per
    image and epoch, as :func:`pipelines.vlp.pretrain.pretrain_clip` draws them).
    """
    from pipelines.vlp.backbone import Backbone

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    clip, tokenizer, record = build_tower_clip(model_name, embed_dim=embed_dim, device=dev)
    bb = Backbone(model_name, clip, tokenizer, None, dev)
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    prefix, suffix = split_image_tower(clip.visual, unlocked_image_groups)

    start = time.time()
    img_in = frozen_image_outputs(bb, prefix, images, feature_batch_size, progress)
    texts = sorted({t for caps in captions for t in caps})
    text_index = {t: i for i, t in enumerate(texts)}
    cap_idx = [np.array([text_index[t] for t in caps]) for caps in captions]
    txt_in = frozen_text_outputs(
        clip.text, tokenizer.tokenizer, texts, tokenizer.context_length, 512, progress
    )
    seconds_frozen = time.time() - start

    img_proj, txt_proj = clip.visual.head.proj, clip.text.proj
    clip.logit_scale.data.fill_(math.log(1.0 / init_temperature))
    trained = [img_proj.weight, txt_proj.weight, clip.logit_scale, *suffix.parameters()]
    for p in trained:
        p.requires_grad_(True)
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    n = len(images)

    def batch_outputs(idx: np.ndarray):
        caps = [int(cap_idx[i][rng.integers(len(cap_idx[i]))]) for i in idx]
        img_f = F.normalize(img_proj(suffix(img_in[idx].to(dev))), dim=-1)
        txt_f = F.normalize(txt_proj(txt_in[caps].to(dev)), dim=-1)
        return img_f, txt_f, clip.logit_scale.exp()

    losses = contrastive_train(
        batch_outputs,
        decay,
        no_decay,
        clip.logit_scale,
        n=n,
        rng=rng,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        desc=f"LiT alignment ({model_name})",
        progress=progress,
        on_epoch=on_epoch,
    )
    for p in clip.parameters():
        p.requires_grad_(False)
    seconds = time.time() - start
    record["alignment"] = {
        "recipe": "lit",
        **(recipe_record or {}),
        "unlocked_image_groups": unlocked_image_groups,
        "n_images": n,
        "n_distinct_captions": len(texts),
        "epoch_losses": losses,
        "temperature": float(1.0 / clip.logit_scale.exp()),
        "seconds": seconds,
        "seconds_frozen_outputs": seconds_frozen,
    }
    save_aligned(
        clip.cpu(),
        model_name,
        record,
        out_dir,
        extra={"epoch_losses": losses, "seconds": seconds, "n_images": n},
    )
    return LitResult(losses, seconds, seconds_frozen, n, len(texts))


def align_backbone(params, backbone: str, images, captions, out: Path, *, progress: bool = True):
    """The backbone stage for ``pretrain: {recipe: lit}``: :func:`align_lit` with the recipe
    of ``params.backbones[backbone]``, tracked as one MLflow run (as the tiny CLIP's is)."""
    from pipelines.tracking import mlflow_run
    from pipelines.vlp.backbone import resolve_device

    cfg = params.backbones[backbone]
    pre = cfg.pretrain
    with mlflow_run(
        params,
        "backbones",
        backbone,
        tags={"backbone": backbone, "stage": "pretrain", "recipe": "lit"},
        run_params=cfg.model_dump(mode="json"),
        description=f"{cfg.model}: pretrained towers aligned (LiT) on {pre.dataset} captions",
        source=f"ovml stage backbone {backbone}",
        system_metrics=True,
    ) as tracker:
        res = align_lit(
            cfg.model,
            images,
            captions,
            out,
            epochs=pre.epochs,
            batch_size=pre.batch_size,
            lr=pre.lr,
            weight_decay=pre.weight_decay,
            warmup_steps=pre.warmup_steps,
            unlocked_image_groups=pre.unlocked_image_groups,
            init_temperature=pre.init_temperature,
            embed_dim=pre.embed_dim,
            seed=params.seed,
            device=str(resolve_device(params.device)),
            feature_batch_size=cfg.batch_size,
            progress=progress,
            on_epoch=lambda epoch, loss: tracker.log_metrics({"pretrain_loss": loss}, step=epoch),
            recipe_record={"dataset": pre.dataset, **pre.model_dump(mode="json")},
        )
        tracker.log_metrics(
            {"pretrain_seconds": res.seconds, "frozen_outputs_seconds": res.seconds_frozen}
        )
        for f in ("open_clip_config.json", "towers.json"):
            tracker.log_artifact(out / f)
    return out
