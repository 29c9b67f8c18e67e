"""CLIP-FT: CLIP's image encoder fine-tuned on the seen labels, with the frozen prompt
embeddings of every label as the classifier (MKT's baseline, He et al. 2023; printed in
Epsilon Table 5 and RCNn Table 2).

The score of label i for an image is the cosine similarity between the fine-tuned image
embedding and the label's frozen text embedding (prompt pool averaged, QKS Eq. 2), times
a scale; unseen labels are scored the same way with their frozen embeddings, which is what
makes the fine-tuned model open-vocabulary. The loss is MKT's ranking loss over the seen
labels (margin 1 on cosine scores; ``objective: classification`` gives the sigmoid
cross-entropy of QKS Eq. 7 instead). Training runs end to end from images on the shared
trainer (pipelines/train.py); the text tower never trains.

It reads no local tokens, so nothing changes on a CNN tower: the fine-tuned image
encoder is the whole tower (for ``icon-lit``'s timm EfficientNet-Lite0: trunk and linear
projection), its pooled embedding scored against the frozen label embeddings.

``unlocked_groups: k`` (a declared CPU deviation, not MKT's setting) trains only the last
``k`` layer groups of a timm CNN tower (pipelines/vlp/lit.py ``image_stages``: stem, each
block, head) and its projection; the rest stays frozen, as in MKT's own stage 1, which
fine-tunes the last layer groups of the tower. The frozen prefix's output for each train
image is computed once and reused every epoch (:class:`PartialTower`): exact, since the
images have no augmentation and the frozen layers run in eval mode. On 8,000 images at
128 px a whole-tower epoch costs minutes on two cores; a suffix epoch seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipelines.methods.base import CellContext, Method, MethodConfig
from pipelines.methods.qks import classification_loss, ranking_loss
from pipelines.train import (
    Batch,
    ImageTower,
    TrainConfig,
    Trainer,
    TrainModule,
    method_fingerprint,
    trainable_state,
)

CODE_DEPS = ("pipelines/train.py", "pipelines/methods/qks.py", "pipelines/vlp/lit.py")

MKT_TRAIN = TrainConfig(epochs=10, batch_size=64, lr=1e-5, optimizer="adamw", input_mode="images")


class Config(MethodConfig):
    """The image tower trains (images mode); the classifier is the frozen text side."""

    prompts: Literal["single", "pool"] = "pool"
    objective: Literal["ranking", "classification"] = "ranking"
    margin: Annotated[float, Field(gt=0)] = 1.0
    scale: Annotated[float, Field(gt=0)] = 1.0  # classification: logits = scale * cosine
    unlocked_groups: Annotated[int, Field(ge=0)] | None = None  # None: the whole tower trains
    train: TrainConfig = MKT_TRAIN


class PartialTower(nn.Module):
    """A timm CNN tower split into a frozen prefix and a trainable suffix + projection.

    The prefix runs without gradients in eval mode; in training, its output for a train row
    is kept (keyed by the row index) and reused in later epochs. Out of training mode (the
    trainer's validation and test predictions, whose row indices name other splits) nothing
    is kept or reused.
    """

    def __init__(self, visual: nn.Module, unlocked: int):
        super().__init__()
        import copy

        from pipelines.vlp.lit import split_image_tower

        if not hasattr(visual, "trunk") or not hasattr(visual, "head"):
            raise TypeError(
                f"CLIP-FT unlocked_groups needs a timm CNN image tower (icon-lit); this backbone's "
                f"tower is {type(visual).__name__}: drop unlocked_groups to fine-tune all of it"
            )
        visual = copy.deepcopy(visual)
        self.prefix, self.suffix = split_image_tower(visual, unlocked)
        self.prefix.requires_grad_(False).eval()
        self.proj = visual.head
        self._kept: dict[int, torch.Tensor] = {}

    def train(self, mode: bool = True) -> PartialTower:
        super().train(mode)
        self.prefix.eval()
        return self

    @torch.no_grad()
    def frozen(self, pixels: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The prefix's output; memoised per train row while training."""
        if not self.training or index is None:
            return self.prefix(pixels)
        rows = [int(i) for i in index]
        if all(r in self._kept for r in rows):
            return torch.stack([self._kept[r] for r in rows]).to(pixels.device)
        out = self.prefix(pixels)
        self._kept.update({r: o.detach().cpu() for r, o in zip(rows, out, strict=True)})
        return out

    def forward(self, pixels: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm global embeddings (B, D)."""
        return F.normalize(self.proj(self.suffix(self.frozen(pixels, index))), dim=-1)


class ClipFTModule(TrainModule):
    input_mode = "images"

    def __init__(self, cfg: Config, ctx: CellContext):
        super().__init__()
        self.cfg = cfg
        if cfg.unlocked_groups is None:
            self.tower: nn.Module = ImageTower(ctx.backbone, trainable=True)
        else:
            self.tower = PartialTower(ctx.backbone.model.visual, cfg.unlocked_groups)
        self.register_buffer("text", ctx.label_embeddings(cfg.prompts).float().cpu().clone())
        self.n_seen = ctx.n_seen

    def forward(self, batch: Batch, *, seen_only: bool = True) -> torch.Tensor:
        if batch.pixels is None:
            raise ValueError("CLIP-FT fine-tunes the image encoder: it needs images-mode batches")
        if isinstance(self.tower, PartialTower):
            image = self.tower(batch.pixels, batch.index)
        else:
            image, _ = self.tower(batch.pixels)
        text = self.text[: self.n_seen] if seen_only else self.text
        return image.float() @ F.normalize(text, dim=-1).T  # cosine (image is unit-norm)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.cfg.objective == "ranking":
            return ranking_loss(outputs, targets, self.cfg.margin)
        return classification_loss(self.cfg.scale * outputs, targets)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.tower.parameters() if p.requires_grad], "lr": lr}]


class ClipFT(Method):
    Config = Config

    def __init__(self, config: Config):
        super().__init__(config)
        self.module: ClipFTModule | None = None
        self.trainer: Trainer | None = None

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg: Config = self.config
        self.module = ClipFTModule(cfg, ctx)
        self.trainer = Trainer(cfg.train, ctx, fingerprint=method_fingerprint(self.module, cfg))
        result = self.trainer.fit(self.module)
        return {**result.summary(), "backbone": ctx.backbone_name, "objective": cfg.objective}

    def predict(self, ctx: CellContext) -> np.ndarray:
        if self.module is None or self.trainer is None:
            raise RuntimeError("CLIP-FT.predict before fit")
        return self.trainer.predict(self.module, "test")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.module) if self.module is not None else {}


METHOD = ClipFT
