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
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

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

CODE_DEPS = ("pipelines/train.py", "pipelines/methods/qks.py")

MKT_TRAIN = TrainConfig(epochs=10, batch_size=64, lr=1e-5, optimizer="adamw", input_mode="images")


class Config(MethodConfig):
    """The image tower trains (images mode); the classifier is the frozen text side."""

    prompts: Literal["single", "pool"] = "pool"
    objective: Literal["ranking", "classification"] = "ranking"
    margin: Annotated[float, Field(gt=0)] = 1.0
    scale: Annotated[float, Field(gt=0)] = 1.0  # classification: logits = scale * cosine
    train: TrainConfig = MKT_TRAIN


class ClipFTModule(TrainModule):
    input_mode = "images"

    def __init__(self, cfg: Config, ctx: CellContext):
        super().__init__()
        self.cfg = cfg
        self.tower = ImageTower(ctx.backbone, trainable=True)
        self.register_buffer("text", ctx.label_embeddings(cfg.prompts).float().cpu().clone())
        self.n_seen = ctx.n_seen

    def forward(self, batch: Batch, *, seen_only: bool = True) -> torch.Tensor:
        if batch.pixels is None:
            raise ValueError("CLIP-FT fine-tunes the image encoder: it needs images-mode batches")
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
