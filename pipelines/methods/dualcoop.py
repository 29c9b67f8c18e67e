"""DualCoOp: dual prompts for multi-label recognition (Sun et al., "DualCoOp: Fast
Adaptation to Multi-Label Recognition with Limited Annotations", NeurIPS 2022; reference
code sunxm2357/DualCoOp).

The paper is not in ../shared/papers; its parts are cited by section as the citing papers
(QKS Table 1, RCNn Tables 1-2, CoMC Table 2) and the reference code describe them.

- *Dual learnable prompts* (Sec. 3.2): for every label c a positive prompt
  [SOT, p_1 .. p_N, name_c, ".", EOT] and a negative one [SOT, n_1 .. n_N, name_c, ".",
  EOT], the contexts learnt, the name's token embeddings fixed, both through the frozen
  text tower (:class:`LearnedContext`). ``csc: false`` (default, and the only setting
  that transfers to unseen labels): one context pair shared by every label; ``csc: true``
  one pair per label (the partial-label variant; unseen labels keep their initial context).
  Contexts start at N(0, 0.02) (reference ``MLCPromptLearner``, no ``*_PROMPT_INIT``).
- *Class-specific region feature aggregation* (Sec. 3.3, the paper's Eq. for
  s_c = Σ_j softmax_j(s^+_{c,j} / T) s_{c,j}): each local token f_j of the frozen image
  tower (CLIP-ResNet: the attention pool's value / output projections per cell, ViT: the
  projected patches; :func:`pipelines.vlp.backbone.resnet_tokens`) is compared with both
  prompts, s^±_{c,j} = λ cos(f_j, t^±_c); the positive similarities give each label its
  own softmax weights over the regions, and those weights aggregate both the positive and
  the negative similarities (:func:`region_aggregation`). The reference sets λ = 20 and
  multiplies the aggregate by 5 (``DualCoop.forward``): ``region_scale`` and
  ``logit_scale``.
- *Loss* (Sec. 3.4): ASL (Ridnik et al. 2021) on the softmax over each label's
  (negative, positive) pair, p_c = softmax(s^-_c, s^+_c)_+, with γ+ = 1, γ- = 2 and
  clipping 0.05 (reference ``AsymmetricLoss``: summed over images and labels, times
  ``loss_w``), over the annotated seen labels (0 = unknown is ignored).
- *Scores*: p_c, stored as its logit s^+_c - s^-_c (the same order, no float saturation).

ZSL / GZSL (reference ``train_zsl.py``, README): trained on the seen labels of the train
images with the frozen RN50 at 224 px, N = 64 context tokens per prompt, SGD lr 0.002 with
cosine decay over 50 epochs, batch 32, ``loss_w`` 0.01; unseen labels are scored with the
learnt shared contexts and their own names.

Deviations, made explicit:
- The image tower is frozen (the reference's defaults ``FINETUNE_BACKBONE`` /
  ``FINETUNE_ATTN`` = False), so training reads the feature cache; the reference's random
  resized crops and flips are not applied to cached features.
- No warm-up epoch (the shared trainer steps its cosine once per epoch).
- The reference's optional per-batch sampling of seen classes (``--num_train_cls``) is not
  implemented: every seen label is scored every step (its README leaves it unset).
- Dassl's SGD defaults (momentum 0.9, weight decay 5e-4) are taken as the reference's.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pipelines.methods.base import CellContext, Method, MethodConfig
from pipelines.methods.qks import TextTower
from pipelines.train import (
    Batch,
    TrainConfig,
    Trainer,
    TrainModule,
    method_fingerprint,
    trainable_state,
)

CODE_DEPS = ("pipelines/train.py", "pipelines/methods/qks.py")

# Reference ZSL settings (README train_zsl.py, configs/models/rn50_ep50.yaml, Dassl's SGD).
ZSL_TRAIN = TrainConfig(
    epochs=50,
    batch_size=32,
    lr=2e-3,
    weight_decay=5e-4,
    optimizer="sgd",
    momentum=0.9,
    schedule="cosine",
    input_mode="features",
)


class Config(MethodConfig):
    """Defaults are the reference's ZSL settings (N = 64 tokens per prompt, shared
    contexts, λ = 20, aggregate x 5, ASL γ- = 2, γ+ = 1, clip 0.05, loss_w 0.01)."""

    n_ctx: Annotated[int, Field(ge=1)] = 64
    csc: bool = False  # class-specific contexts (no transfer to unseen labels)
    region_scale: Annotated[float, Field(gt=0)] = 20.0  # λ: cosine -> region logit
    logit_scale: Annotated[float, Field(gt=0)] = 5.0  # aggregate multiplier
    gamma_pos: Annotated[float, Field(ge=0)] = 1.0
    gamma_neg: Annotated[float, Field(ge=0)] = 2.0
    clip: Annotated[float, Field(ge=0, lt=1)] = 0.05
    loss_weight: Annotated[float, Field(gt=0)] = 0.01  # reference --loss_w (ZSL)
    train: TrainConfig = ZSL_TRAIN

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.train.input_mode == "images":
            raise ValueError(
                "train.input_mode: DualCoOp keeps the image tower frozen and reads the "
                "feature cache: use 'auto' or 'features'"
            )
        return self


# ------------------------------------------------------------------------ the prompts
class LearnedContext(nn.Module):
    """CoOp-style label prompts [SOT, ctx_1 .. ctx_N, name, ".", EOT] through the frozen
    text tower, the N context vectors learnt (shared by all labels, or one set per label
    with ``class_specific``), the rest fixed token embeddings. Returns unit-norm (C, D).

    Shared by DualCoOp (its positive and negative prompts) and TaI-DPT (its global and
    local prompts, pipelines/methods/tai_dpt.py)."""

    def __init__(
        self,
        tower: TextTower,
        tokenize,
        names: list[str],
        n_ctx: int,
        *,
        class_specific: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.tower = tower  # frozen; may be shared between several LearnedContexts
        tokens = tokenize([" ".join(["X"] * n_ctx) + f" {n}." for n in names]).cpu()
        eot = tokens.argmax(dim=-1)
        if int(eot.min()) < n_ctx + 2:
            raise ValueError(
                f"n_ctx = {n_ctx}: the prompt does not fit the text tower's "
                f"{tokens.shape[1]} tokens with a label name"
            )
        width = tower.token_embedding.embedding_dim
        shape = (len(names), n_ctx, width) if class_specific else (n_ctx, width)
        self.context = nn.Parameter(torch.randn(*shape, generator=generator) * 0.02)
        with torch.no_grad():
            base = tower.token_embedding(tokens.to(tower.token_embedding.weight.device))
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("base", base.detach().float().clone(), persistent=False)
        self.n_ctx = n_ctx
        self._eval_cache: torch.Tensor | None = None

    def train(self, mode: bool = True) -> LearnedContext:
        self._eval_cache = None
        return super().train(mode)

    def encode(self, n_labels: int) -> torch.Tensor:
        base = self.base[:n_labels]
        ctx = self.context if self.context.dim() == 3 else self.context.unsqueeze(0)
        ctx = ctx[:n_labels].expand(n_labels, -1, -1).to(base.dtype)
        embeds = torch.cat([base[:, :1], ctx, base[:, 1 + self.n_ctx :]], dim=1)
        dtype = self.tower.token_embedding.weight.dtype
        out = self.tower(self.tokens[:n_labels], embeds.to(dtype))
        return F.normalize(out.float(), dim=-1)

    def forward(self, n_labels: int) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.encode(n_labels)
        if self._eval_cache is None or self._eval_cache.shape[0] != n_labels:
            self._eval_cache = self.encode(n_labels)
        return self._eval_cache


# ---------------------------------------------------------------- region aggregation
def region_aggregation(
    weight_logits: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-specific aggregation over regions: Σ_j softmax_j(w_{b,j,c}) v_{b,j,c}.

    ``weight_logits`` and ``values`` (B, J, C) or values (B, J, C, K) for K score maps
    aggregated with the same weights (DualCoOp: the positive and negative similarities
    with the positive prompt's weights); ``mask`` (B, J) True where a region exists
    (TaI-DPT's padded caption tokens). Float32."""
    w = weight_logits.float()
    if mask is not None:
        w = w.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    w = torch.softmax(w, dim=1)
    if values.dim() == 4:
        w = w.unsqueeze(-1)
    v = values.float()
    if mask is not None:
        v = v.masked_fill(~mask.view(*mask.shape, *([1] * (v.dim() - 2))), 0.0)
    return (w * v).sum(dim=1)


def dual_logits(
    patches: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    region_scale: float = 20.0,
    logit_scale: float = 5.0,
) -> torch.Tensor:
    """(B, J, D) local tokens, (C, D) positive / negative prompts -> (B, 2, C) logits
    [negative, positive] (reference ``DualCoop.forward``): region logits λ cos(f_j, t^±_c),
    aggregated with the softmax of the positive ones over regions, times ``logit_scale``."""
    with torch.autocast(patches.device.type, enabled=False):
        f = F.normalize(patches.float(), dim=-1)
        s_pos = region_scale * torch.einsum("bjd,cd->bjc", f, F.normalize(pos.float(), dim=-1))
        s_neg = region_scale * torch.einsum("bjd,cd->bjc", f, F.normalize(neg.float(), dim=-1))
        agg = region_aggregation(s_pos, torch.stack([s_neg, s_pos], dim=-1))  # (B, C, 2)
        return logit_scale * agg.permute(0, 2, 1)


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_pos: float = 1.0,
    gamma_neg: float = 2.0,
    clip: float = 0.05,
    eps: float = 1e-6,
) -> torch.Tensor:
    """DualCoOp's ASL on the (negative, positive) softmax (reference ``AsymmetricLoss``):
    p = softmax over the pair, q = its negative part shifted by ``clip`` (capped at 1);
    -Σ [y log p + (1 - y) log q] (1 - p_t)^γ, the focusing weight without gradient, summed
    over the annotated labels (targets +1 / -1; 0 = unknown is ignored)."""
    prob = torch.softmax(logits.float(), dim=1)
    known = targets != 0
    p_pos, p_neg = prob[:, 1][known], prob[:, 0][known]
    y = (targets[known] > 0).to(prob.dtype)
    if clip > 0:
        p_neg = (p_neg + clip).clamp(max=1)
    loss = y * torch.log(p_pos.clamp(min=eps)) + (1 - y) * torch.log(p_neg.clamp(min=eps))
    if gamma_pos > 0 or gamma_neg > 0:
        with torch.no_grad():
            pt = p_pos * y + p_neg * (1 - y)
            w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * w
    return -loss.sum()


# ------------------------------------------------------------------------------ module
class DualCoOpModule(TrainModule):
    input_mode = "features"
    feature_parts = ("patches",)

    def __init__(self, cfg: Config, ctx: CellContext):
        super().__init__()
        self.cfg = cfg
        self.n_seen, self.n_labels = ctx.n_seen, ctx.n_labels
        bb = ctx.backbone
        if not hasattr(bb.model, "token_embedding") or bb.tokenizer is None:
            raise TypeError(
                f"{bb.name}: DualCoOp learns prompt contexts: it needs an open_clip text "
                "tower with token embeddings"
            )
        tower = TextTower(bb.model, trainable=False)
        names = ctx.label_space.names()
        gen = torch.Generator().manual_seed(ctx.seed)
        self.pos = LearnedContext(
            tower, bb.tokenize, names, cfg.n_ctx, class_specific=cfg.csc, generator=gen
        )
        self.neg = LearnedContext(
            tower, bb.tokenize, names, cfg.n_ctx, class_specific=cfg.csc, generator=gen
        )

    def forward(self, batch: Batch, *, seen_only: bool = True) -> torch.Tensor:
        if batch.patches is None:
            raise ValueError("DualCoOp reads the cached local tokens (features mode)")
        n = self.n_seen if seen_only else self.n_labels
        return dual_logits(
            batch.patches, self.pos(n), self.neg(n), self.cfg.region_scale, self.cfg.logit_scale
        )

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """log p_+ - log p_- = s^+ - s^-: the order of the positive softmax."""
        return outputs[:, 1] - outputs[:, 0]

    def loss(self, outputs, targets):
        c = self.cfg
        return c.loss_weight * asymmetric_loss(outputs, targets, c.gamma_pos, c.gamma_neg, c.clip)


class DualCoOp(Method):
    Config = Config

    def __init__(self, config: Config):
        super().__init__(config)
        self.module: DualCoOpModule | None = None
        self.trainer: Trainer | None = None

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg: Config = self.config
        self.module = DualCoOpModule(cfg, ctx)
        self.trainer = Trainer(cfg.train, ctx, fingerprint=method_fingerprint(self.module, cfg))
        result = self.trainer.fit(self.module)
        return {
            **result.summary(),
            "backbone": ctx.backbone_name,
            "n_ctx": cfg.n_ctx,
            "csc": cfg.csc,
        }

    def predict(self, ctx: CellContext) -> np.ndarray:
        if self.module is None or self.trainer is None:
            raise RuntimeError("DualCoOp.predict before fit")
        return self.trainer.predict(self.module, "test")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.module) if self.module is not None else {}


METHOD = DualCoOp
