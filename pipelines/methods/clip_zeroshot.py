"""Zero-shot CLIP: cosine similarity between the global image embedding and each label's
prompt embedding (single template, or the prompt pool averaged as QKS Eq. 2).
No training; the baseline every paper prints first."""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipelines.methods.base import CellContext, Method, MethodConfig


class Config(MethodConfig):
    prompts: Literal["single", "pool"] = "pool"


class ClipZeroShot(Method):
    Config = Config

    def predict(self, ctx: CellContext) -> np.ndarray:
        text = ctx.label_embeddings(self.config.prompts).float().cpu()
        image = ctx.features("test").global_.float()
        return (image @ text.T).numpy().astype(np.float32)


METHOD = ClipZeroShot
