"""QKS: Query-Based Knowledge Sharing (Zhu et al.), Sections 3-4 of ../shared/papers/qks.md.

A frozen VLP model encodes the image into spatial features, projected to d (Eq. 1), and
each label into a prompt-pool text embedding (Eq. 2). m learnable, label-agnostic query
tokens are updated by L Transformer-decoder layers: self-attention among the queries
(Eq. 3), cross-attention to the spatial features (Eq. 4) and an FFN (Eq. 5); learned
position encodings are added to queries and keys only ("the tilde" of Eq. 3-4). The score
of label i is the largest unnormalised inner product between its embedding and the m
query tokens (Eq. 6), trained with a sigmoid classification loss over the annotated seen
labels (Eq. 7). Ablations: unfreezing the vision and/or text encoder (Table 3, end to end),
single prompt / CoOp prompt tuning / prompt pool (Table 4), ranking vs classification
(Table 5), m and L (Figure 3).

The equations write the residual updates without normalisation; the layers here follow
the DETR / Query2Label decoder QKS builds on (post-norm LayerNorm after each residual).

On a CNN tower the spatial features of Eq. 1 are the cells of the last feature map in
the joint space (pipelines/vlp/backbone.py ``image_tokens``): CLIP's ResNets give each
cell through the attention pool's value and output projections, a timm CNN with average
pooling (``icon-lit``'s EfficientNet-Lite0) each cell through the same linear projection
as the pooled feature, so the tokens average to the global embedding. At 128 px that is
4 x 4 = 16 tokens where ViT-B/16 gives 196 patch tokens; the decoder's cross-attention
(Eq. 4) reads them unchanged.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from pydantic import Field, model_validator
from torch import nn

from pipelines.methods.base import CellContext, Method, MethodConfig, check_heads
from pipelines.train import (
    Batch,
    ImageTower,
    TrainConfig,
    Trainer,
    TrainModule,
    compact_annotated,
    features_or_tower,
    method_fingerprint,
    trainable_state,
)
from pipelines.vlp.prompts import fill, templates

CODE_DEPS = ("pipelines/train.py",)

# The paper names AdamW but no weight decay; with 0 AdamW is plain Adam, so the paper
# setting takes AdamW's own default (torch.optim.AdamW: 0.01).
PAPER_TRAIN = TrainConfig(
    epochs=10,
    batch_size=64,
    lr=1e-5,
    weight_decay=0.01,
    optimizer="adamw",
    schedule="plateau",
    gamma=0.1,
)


class Config(MethodConfig):
    """Defaults are the paper's NUS-WIDE settings (Section 4.1: m = 12, L = 7, AdamW,
    batch 64, lr 1e-5 divided by 10 on plateau; Open Images: m = 22, L = 8). Neither the
    number of epochs nor the weight decay is given in the paper: 10 epochs and AdamW's
    default decay 0.01 (0 would make AdamW plain Adam). toyworld variants set their own
    ``train:`` block."""

    n_queries: Annotated[int, Field(ge=1)] = 12  # m
    n_layers: Annotated[int, Field(ge=1)] = 7  # L
    heads: Annotated[int, Field(ge=1)] = 8
    ffn_mult: Annotated[int, Field(ge=1)] = 4
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    prompts: Literal["single", "pool", "tuning"] = "pool"  # Table 4
    n_ctx: Annotated[int, Field(ge=1)] = 4  # prompt tuning: learnable context vectors
    objective: Literal["classification", "ranking"] = "classification"  # Table 5
    margin: Annotated[float, Field(gt=0)] = 1.0  # ranking loss margin
    unfreeze_vision: bool = False  # Table 3 (trains end to end from images)
    unfreeze_text: bool = False  # Table 3 (label embeddings through the text tower, with gradients)
    encoder_lr_scale: Annotated[float, Field(gt=0)] = 1.0  # lr multiplier for unfrozen VLP encoders
    train: TrainConfig = PAPER_TRAIN

    def check_backbone(self, embed_dim: int) -> None:
        check_heads(self.heads, embed_dim)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.train.input_mode == "features" and self.unfreeze_vision:
            raise ValueError(
                "unfreeze_vision trains the image encoder: input_mode must be 'auto' or 'images'"
            )
        return self


# ------------------------------------------------------------------------ decoder (Eq. 3-5)
class DecoderLayer(nn.Module):
    """One knowledge-extraction layer: Eq. 3 (self-attention), Eq. 4 (cross-attention), Eq. 5 (FFN).

    Position encodings are added to the queries and keys, never to the values.
    """

    def __init__(self, d: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * d, d)
        )
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop1, self.drop2, self.drop3 = (
            nn.Dropout(dropout),
            nn.Dropout(dropout),
            nn.Dropout(dropout),
        )

    def forward(
        self, q: torch.Tensor, q_pos: torch.Tensor, f: torch.Tensor, f_pos: torch.Tensor
    ) -> torch.Tensor:
        qk = q + q_pos
        q = self.norm1(q + self.drop1(self.self_attn(qk, qk, q, need_weights=False)[0]))  # Eq. 3
        q = self.norm2(
            q + self.drop2(self.cross_attn(q + q_pos, f + f_pos, f, need_weights=False)[0])
        )  # Eq. 4
        return self.norm3(q + self.drop3(self.ffn(q)))  # Eq. 5


class KnowledgeExtractor(nn.Module):
    """Section 3.4: m label-agnostic query tokens Q_0 refined by L decoder layers into Q_L."""

    def __init__(
        self,
        d: int,
        n_patches: int,
        m: int,
        n_layers: int,
        heads: int,
        ffn_mult: int,
        dropout: float,
    ):
        super().__init__()
        self.proj = nn.Linear(d, d)  # Eq. 1: spatial features -> d
        self.queries = nn.Parameter(torch.randn(m, d))  # Q_0, randomly initialised
        self.query_pos = nn.Parameter(torch.randn(m, d))  # learned query position encodings
        self.spatial_pos = nn.Parameter(
            torch.randn(n_patches, d) * 0.02
        )  # learned spatial position encodings
        self.layers = nn.ModuleList(
            DecoderLayer(d, heads, ffn_mult, dropout) for _ in range(n_layers)
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, P, D) spatial features -> (B, m, d) query tokens Q_L."""
        f = self.proj(patches)
        b = f.shape[0]
        q = self.queries.unsqueeze(0).expand(b, -1, -1)
        q_pos = self.query_pos.unsqueeze(0).expand(b, -1, -1)
        f_pos = self.spatial_pos.unsqueeze(0)
        for layer in self.layers:
            q = layer(q, q_pos, f, f_pos)
        return q


def max_over_queries(queries: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 6: s_i = max_j <t_i, q_j>; queries (B, m, d), labels (C, d) -> (B, C).

    Always in float32, autocast or not: bf16 keeps about three significant digits, and over
    100k test images the ties that creates change mAP and the top-K."""
    with torch.autocast(queries.device.type, enabled=False):
        return torch.einsum("bmd,cd->bmc", queries.float(), labels.float()).amax(dim=1)


def classification_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 7: -sum_{p in Y} log s(s_p) - sum_{n not in Y} log(1 - s(s_n)), over annotated seen
    labels (targets +1 / -1; 0 = unknown is ignored), averaged over the images of the batch."""
    known = (targets != 0).to(scores.dtype)
    bce = F.binary_cross_entropy_with_logits(
        scores, (targets > 0).to(scores.dtype), reduction="none"
    )
    return (bce * known).sum(dim=1).mean()


def ranking_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    margin: float = 1.0,
    reduction: Literal["pair_mean", "sum"] = "pair_mean",
) -> torch.Tensor:
    """The pairwise hinge max(0, margin - s_p + s_n) over every (positive p, negative n)
    pair of an image's annotated labels, on cosine scores.

    ``pair_mean`` (QKS Table 5's ranking baseline): mean over an image's pairs, then over
    images; an image without a pair counts 0. ``sum`` (C2SRT Eq. 11 as printed): the sum
    over images and pairs, so an image weighs by its number of pairs."""
    scores, targets = compact_annotated(scores, targets)
    pos = (targets > 0).to(scores.dtype)
    neg = (targets < 0).to(scores.dtype)
    hinge = (margin - scores.unsqueeze(2) + scores.unsqueeze(1)).clamp(min=0)  # [b, p, n]
    pair = pos.unsqueeze(2) * neg.unsqueeze(1)
    per_image = (hinge * pair).sum(dim=(1, 2))
    if reduction == "sum":
        return per_image.sum()
    if reduction != "pair_mean":
        raise ValueError(f"ranking_loss: reduction {reduction!r} is not 'pair_mean' or 'sum'")
    return (per_image / pair.sum(dim=(1, 2)).clamp(min=1)).mean()


# ----------------------------------------------------------------------------- label side
class TextTower(nn.Module):
    """The VLP text encoder (a copy), run from token embeddings so context vectors can be
    learned (CoOp) and/or its weights trained (Table 3). Mirrors open_clip ``encode_text``."""

    def __init__(self, clip: nn.Module, trainable: bool):
        super().__init__()
        self.token_embedding = copy.deepcopy(clip.token_embedding)
        self.positional_embedding = copy.deepcopy(clip.positional_embedding)
        self.transformer = copy.deepcopy(clip.transformer)
        self.ln_final = copy.deepcopy(clip.ln_final)
        self.text_projection = copy.deepcopy(clip.text_projection)
        self.register_buffer(
            "attn_mask",
            clip.attn_mask.clone() if clip.attn_mask is not None else None,
            persistent=False,
        )
        self.pool_type = getattr(clip, "text_pool_type", "argmax")
        self.eos_id = getattr(clip, "text_eos_id", None)
        self.trainable = trainable
        self.requires_grad_(trainable)

    def forward(self, tokens: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(tokens) if embeds is None else embeds
        n = self._used_length(tokens)
        tokens, x = tokens[:, :n], x[:, :n]
        x = x + self.positional_embedding[:n]
        mask = self.attn_mask[:n, :n] if self.attn_mask is not None else None
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection if self.text_projection is not None else x

    def _used_length(self, tokens: torch.Tensor) -> int:
        """With a causal mask and end-of-text pooling, positions after the last end-of-text
        token cannot change the output: drop them (exact, and ~3x less work on short prompts)."""
        if self.attn_mask is None or self.pool_type != "argmax":
            return tokens.shape[1]
        return int(tokens.argmax(dim=-1).max()) + 1


class LabelEncoder(nn.Module):
    """Label embeddings t_i (C, d), seen labels first.

    - frozen text tower, single / pool prompts: the ctx's frozen embeddings (Eq. 2);
    - prompt tuning: n_ctx learnable context vectors replace the template words in front of
      the label name, passed through the (frozen or trainable) text tower (CoOp);
    - unfrozen text tower: single / pool prompts re-encoded with gradients every step.
    Each template embedding is normalised, averaged over the pool and normalised again.
    """

    def __init__(self, cfg: Config, ctx: CellContext):
        super().__init__()
        self.kind = cfg.prompts
        self.n_seen = ctx.n_seen
        self.dynamic = cfg.prompts == "tuning" or cfg.unfreeze_text
        self._eval_cache: torch.Tensor | None = None
        if not self.dynamic:
            self.register_buffer(
                "fixed", ctx.label_embeddings(cfg.prompts).float().cpu(), persistent=False
            )
            return
        bb = ctx.backbone
        self.tower = TextTower(bb.model, trainable=cfg.unfreeze_text)
        names = ctx.label_space.names()
        if cfg.prompts == "tuning":
            texts = [" ".join(["X"] * cfg.n_ctx) + f" {n}." for n in names]
            self.n_templates = 1
            self.ctx_vectors = nn.Parameter(self._init_context(bb, cfg.n_ctx))
        else:
            temps = templates(cfg.prompts)
            texts = [fill(t, n) for n in names for t in temps]
            self.n_templates = len(temps)
        self.register_buffer("tokens", bb.tokenize(texts).cpu(), persistent=False)

    def _init_context(self, bb, n_ctx: int) -> torch.Tensor:
        """CoOp's initialisation: the embeddings of "a photo of a" when n_ctx = 4, else N(0, 0.02)."""
        if n_ctx == 4:
            tok = bb.tokenize(["a photo of a"]).cpu()
            with torch.no_grad():
                return self.tower.token_embedding(tok)[0, 1 : 1 + n_ctx].clone().float()
        return torch.randn(n_ctx, self.tower.token_embedding.embedding_dim) * 0.02

    def train(self, mode: bool = True) -> LabelEncoder:
        self._eval_cache = None
        return super().train(mode)

    def _encode(self, n_labels: int) -> torch.Tensor:
        tokens = self.tokens[: n_labels * self.n_templates]
        if self.kind == "tuning":
            emb = self.tower.token_embedding(tokens)
            ctx = self.ctx_vectors.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
            emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + ctx.shape[1] :]], dim=1)
            out = self.tower(tokens, emb)
        else:
            out = self.tower(tokens)
        out = F.normalize(out.float(), dim=-1).view(n_labels, self.n_templates, -1).mean(dim=1)
        return F.normalize(out, dim=-1)

    def forward(self, seen_only: bool) -> torch.Tensor:
        if not self.dynamic:
            return self.fixed[: self.n_seen] if seen_only else self.fixed
        n = self.n_seen if seen_only else self.tokens.shape[0] // self.n_templates
        if self.training or torch.is_grad_enabled():
            return self._encode(n)
        if self._eval_cache is None or self._eval_cache.shape[0] != n:
            self._eval_cache = self._encode(n)
        return self._eval_cache


# -------------------------------------------------------------------------------- module
class QKSModule(TrainModule):
    def __init__(self, cfg: Config, ctx: CellContext):
        super().__init__()
        self.cfg = cfg
        bb = ctx.backbone
        images = cfg.unfreeze_vision or cfg.train.input_mode == "images"
        self.input_mode = "images" if images else "features"
        self.tower = ImageTower(bb, trainable=cfg.unfreeze_vision) if images else None
        d = bb.embed_dim
        cfg.check_backbone(d)
        n_patches = bb.n_local_tokens()  # ViT patches, CLIP-ResNet or timm CNN cells
        self.extractor = KnowledgeExtractor(
            d, n_patches, cfg.n_queries, cfg.n_layers, cfg.heads, cfg.ffn_mult, cfg.dropout
        )
        self.labels = LabelEncoder(cfg, ctx)

    def forward(self, batch: Batch, *, seen_only: bool = True) -> dict[str, torch.Tensor]:
        _, patches = features_or_tower(batch, self.tower)
        return {"queries": self.extractor(patches.float()), "labels": self.labels(seen_only)}

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        q = outputs["queries"]
        if self.cfg.objective == "ranking":  # ranking learning lives on the unit hypersphere
            q = F.normalize(q, dim=-1)
        return max_over_queries(q, outputs["labels"].to(q.dtype))

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        scores = self.scores(outputs).float()
        if self.cfg.objective == "ranking":
            return ranking_loss(scores, targets, self.cfg.margin)
        return classification_loss(scores, targets)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        enc_lr = lr * self.cfg.encoder_lr_scale
        encoders = [
            p
            for m in (self.tower, getattr(self.labels, "tower", None))
            if m is not None
            for p in m.parameters()
            if p.requires_grad
        ]
        enc_ids = {id(p) for p in encoders}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in enc_ids]
        return [{"params": rest, "lr": lr}, {"params": encoders, "lr": enc_lr}]


class QKS(Method):
    Config = Config

    def __init__(self, config: Config):
        super().__init__(config)
        self.module: QKSModule | None = None
        self.trainer: Trainer | None = None

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg: Config = self.config
        self.module = QKSModule(cfg, ctx)
        self.trainer = Trainer(cfg.train, ctx, fingerprint=method_fingerprint(self.module, cfg))
        result = self.trainer.fit(self.module)
        return {
            **result.summary(),
            "backbone": ctx.backbone_name,
            "prompts": cfg.prompts,
            "objective": cfg.objective,
            "frozen": {"vision": not cfg.unfreeze_vision, "text": not cfg.unfreeze_text},
        }

    def predict(self, ctx: CellContext) -> np.ndarray:
        if self.module is None or self.trainer is None:
            raise RuntimeError("QKS.predict before fit")
        return self.trainer.predict(self.module, "test")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.module) if self.module is not None else {}


METHOD = QKS
