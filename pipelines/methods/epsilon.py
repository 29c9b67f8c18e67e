"""Epsilon (Liu et al.): comprehensive visual-semantic projection for multi-label ZSL,
../shared/papers/epsilon.md (Methods, Experiments, Supplementary).

Image tokens F (B, N, D) from a frozen backbone feed two modules:

- Group Prompts Aggregation (GPA): M learnable group prompts are encoded together with the
  image tokens by a trainable Transformer encoder and the first M outputs kept (Eq. 1-2);
  they then attend to the image tokens as queries, with F as keys and values (Eq. 3),
  giving the group semantics GrS (B, M, D).
- Global Forward Propagation (GFP): F is encoded into M feature blocks; each block goes
  through its own MLP (Eq. 4), a softmax over the tokens (Eq. 5) and a weighted sum
  (Eq. 6), giving the global semantics GoS (B, M, D).

GoS and GrS are concatenated (Eq. 7) and a linear Semantic Fuser maps them to the label
embedding size (Eq. 8): M semantic vectors S_i per image. A label's score is its largest
inner product with the M vectors. Loss (Eq. 13): the normalised RankNet loss over seen
positive/negative pairs (Eq. 9-10) weighted by the label-diversity weight (Eq. 11), plus
lambda times the variance regulariser (Eq. 12).

The paper uses an ImageNet ViT-B/16 with word-vector (GloVe) label embeddings; here the
backbone is any supported one (``backbone:`` of the variant) and the label embeddings are
a config choice: CLIP text embeddings (default, the open-vocabulary setting of this
project) or a word-vector text file (``word v1 v2 ...``, GloVe's format).

On a CNN tower (Table 6's VGG19; ``icon-lit``'s EfficientNet-Lite0) the image tokens F
are the cells of the last feature map, each through the tower's projection into the
joint space (pipelines/vlp/backbone.py ``image_tokens``: for a timm CNN with average
pooling, the pooled feature's own linear projection, so the tokens average to the global
embedding; 4 x 4 = 16 tokens at 128 px). GPA's encoder (Eq. 1-3) and GFP's blocks
(Eq. 4-6) read them as they read ViT patch tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pipelines.methods.base import CellContext, Method, MethodConfig, check_heads
from pipelines.methods.qks import classification_loss
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

CODE_DEPS = ("pipelines/train.py",)

# Implementation details: Adam, weight decay 4e-3, batch 96, lr 1e-5 halved at the 4th of 7 epochs.
PAPER_TRAIN = TrainConfig(
    epochs=7,
    batch_size=96,
    lr=1e-5,
    optimizer="adam",
    weight_decay=4e-3,
    schedule="step",
    milestones=[4],
    gamma=0.5,
)


class Config(MethodConfig):
    n_groups: Annotated[int, Field(ge=1)] = 8  # M
    lambda_reg: Annotated[float, Field(ge=0, le=1)] = 0.3  # lambda of Eq. 13
    gpa: bool = True  # Table 3
    gfp: bool = True  # Table 3
    gpa_layers: Annotated[int, Field(ge=1)] = 1  # Transformer encoder layers of Eq. 2
    heads: Annotated[int, Field(ge=1)] = 8
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    gfp_hidden: Annotated[int, Field(ge=1)] | None = None  # GFP MLP hidden width (None = D)
    # The image tokens F: the ViT's whole output sequence, class token first ("all", as the
    # paper's ViT-B/16 gives), or the patch tokens alone.
    tokens: Literal["all", "patches"] = "all"
    label_embeddings: Literal["clip", "word_vectors"] = "clip"
    prompts: Literal["single", "pool"] = "pool"  # clip label embeddings

    def check_backbone(self, embed_dim: int) -> None:
        check_heads(self.heads, embed_dim)

    word_vectors: str | None = None  # a "word v1 v2 ..." text file (GloVe format)
    oov: Literal["error", "skip", "zero"] = "error"  # words missing from the word-vector file
    # Subtract the seen labels' mean embedding (then re-normalise). The ranking loss only sees
    # score differences within an image, so a component shared by every label embedding
    # gives each image a free score offset that mixes up images at test time.
    center_labels: bool = False
    # "ranking": Eq. 9-13, the paper. "classification": a diagnostic that is not in the paper;
    # the same scores trained with sigmoid cross-entropy over the seen labels (QKS Eq. 7),
    # which, unlike RankNet, also orders images against each other for every label.
    objective: Literal["ranking", "classification"] = "ranking"
    train: TrainConfig = PAPER_TRAIN

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not (self.gpa or self.gfp):
            raise ValueError(
                "at least one of gpa / gfp must be on (they produce the semantic vectors)"
            )
        if self.label_embeddings == "word_vectors" and not self.word_vectors:
            raise ValueError(
                "label_embeddings 'word_vectors' needs word_vectors: <path to a GloVe-format file>"
            )
        return self


# ---------------------------------------------------------------------------- word vectors
def label_words(name: str) -> list[str]:
    """The words of a label name ("red fish", "snowy_ground", "t-shirt" -> words), lower-cased."""
    return [w for w in name.lower().replace("_", " ").split() if w]


def read_word_vectors(path: Path, words: set[str]) -> dict[str, np.ndarray]:
    """Vectors of ``words`` from a text file of lines ``word v1 v2 ...`` (GloVe, word2vec
    text format; a word2vec ``count dim`` header line is skipped). Only the needed lines are
    parsed, so a 400k-word file is read in one pass without loading it all."""
    out: dict[str, np.ndarray] = {}
    dim: int | None = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh):
            parts = line.rstrip("\n").rstrip().split(" ")
            if lineno == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            word = parts[0].lower()
            if word not in words or word in out:
                continue
            vec = np.asarray(parts[1:], dtype=np.float32)
            if dim is None:
                dim = len(vec)
            elif len(vec) != dim:
                raise ValueError(f"{path}:{lineno + 1}: {len(vec)} values, expected {dim}")
            out[word] = vec
    return out


def word_vector_embeddings(
    names: list[str], path: Path, oov: str = "error"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(C, d_w) unit-norm label embeddings: the mean of each label's word vectors.

    ``oov``: ``error`` raises on any missing word; ``skip`` averages the known words of a
    label (a label with none is an error); ``zero`` does the same but gives a label with no
    known word a zero vector (it then scores 0 for every image).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"word-vector file {path} does not exist")
    words = {w for n in names for w in label_words(n)}
    vectors = read_word_vectors(path, words)
    if not vectors:
        raise ValueError(f"{path}: none of the {len(words)} label words was found")
    dim = len(next(iter(vectors.values())))
    missing = sorted(words - set(vectors))
    if missing and oov == "error":
        raise ValueError(
            f"{path}: {len(missing)} label words have no vector: {missing[:20]} "
            "(set oov: skip or zero to average the known words)"
        )
    rows, empty = [], []
    for n in names:
        known = [vectors[w] for w in label_words(n) if w in vectors]
        if not known:
            if oov != "zero":
                raise ValueError(
                    f"{path}: label {n!r} has no word with a vector (oov: zero gives it a zero vector)"
                )
            empty.append(n)
            rows.append(np.zeros(dim, np.float32))
            continue
        v = np.mean(known, axis=0)
        rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
    info = {
        "source": str(path),
        "dim": dim,
        "oov": oov,
        "oov_words": missing[:50],
        "n_oov_words": len(missing),
        "labels_without_vector": empty,
    }
    return torch.from_numpy(np.stack(rows)), info


def resolve_path(path: str) -> Path:
    """Relative word-vector paths: the working directory, else the repository root."""
    from pipelines.config import REPO_ROOT

    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


# ------------------------------------------------------------------------------- modules
class GroupPromptsAggregation(nn.Module):
    """GPA, Eq. 1-3: GT^Q = Encoder([GT; F])[:M]; GrS = softmax(GT^Q F^K^T / sqrt(D)) F^V."""

    def __init__(self, d: int, m: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(m, d) * 0.02)  # GT
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, m = f.shape[0], self.prompts.shape[0]
        x = torch.cat([self.prompts.unsqueeze(0).expand(b, -1, -1), f], dim=1)  # Eq. 1
        gq = self.encoder(x)[:, :m]  # Eq. 2
        attn = torch.softmax(
            gq @ self.key(f).transpose(1, 2) / math.sqrt(f.shape[-1]), dim=-1
        )  # Eq. 3
        return attn @ self.value(f)


class GlobalForwardPropagation(nn.Module):
    """GFP, Eq. 4-6: M feature blocks FG^m = F W_m; per block W = MLP(FG) (Eq. 4), A = softmax
    over the N tokens, per channel (Eq. 5), S^m = sum_N FG^m * A (Eq. 6)."""

    def __init__(self, d: int, m: int, hidden: int):
        super().__init__()
        self.m = m
        self.blocks = nn.Linear(d, m * d)  # the M feature blocks
        self.w1 = nn.Parameter(torch.randn(m, d, hidden) / math.sqrt(d))  # M separate MLPs
        self.b1 = nn.Parameter(torch.zeros(m, 1, hidden))
        self.w2 = nn.Parameter(torch.randn(m, hidden, d) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(m, 1, d))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, n, d = f.shape
        fg = self.blocks(f).view(b, n, self.m, d).permute(0, 2, 1, 3)  # (B, M, N, D)
        w = torch.einsum("bmnd,mdh->bmnh", fg, self.w1) + self.b1
        w = torch.einsum("bmnh,mhd->bmnd", F.gelu(w), self.w2) + self.b2  # Eq. 4
        a = torch.softmax(w, dim=2)  # Eq. 5: over the tokens
        return (fg * a).sum(dim=2)  # Eq. 6: (B, M, D)


def max_over_groups(semantics: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Label scores: max over the M semantic vectors of <e_c, S^m>; (B, M, d), (C, d) -> (B, C).

    Always in float32, autocast or not (bf16 scores tie over large test sets)."""
    with torch.autocast(semantics.device.type, enabled=False):
        return torch.einsum("bmd,cd->bmc", semantics.float(), labels.float()).amax(dim=1)


def ranknet_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 9-10 per image: alpha * sum_{j,k} log(1 + exp(s_{n_j} - s_{p_k})), alpha =
    1/(|T||T_bar|) over annotated seen positives p and negatives n; 0 without a pair. (B,)"""
    scores, targets = compact_annotated(scores, targets)
    pos = (targets > 0).to(scores.dtype)
    neg = (targets < 0).to(scores.dtype)
    tau = scores.unsqueeze(1) - scores.unsqueeze(2)  # [b, k, j] = s_j - s_k (Eq. 9)
    pair = pos.unsqueeze(2) * neg.unsqueeze(1)
    return (F.softplus(tau) * pair).sum(dim=(1, 2)) / pair.sum(dim=(1, 2)).clamp(min=1)


def diversity_weight(targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 11: w = 1 + sum over dimensions of the (population) variance of the image's
    positive label embeddings (SDL's label-diversity weight); 1 with fewer than 2 positives. (B,)"""
    pos = (targets > 0).to(labels.dtype)  # (B, C)
    count = pos.sum(dim=1, keepdim=True).clamp(min=1)
    mean = pos @ labels / count  # (B, d)
    sq = pos @ (labels * labels) / count
    var = (sq - mean * mean).clamp(min=0).sum(dim=1)
    return 1 + var


def variance_regulariser(semantics: torch.Tensor) -> torch.Tensor:
    """Eq. 12: || sum var(S^M) ||_1, read as the (population) variance across the M semantic
    vectors of each of the d_w dimensions, L1-summed over the dimensions: it pulls the M
    vectors of an image together ("correlations between semantic vectors") without
    penalising their magnitude, which the ranking loss needs. (B,)

    (The other reading, the variance of each vector's own entries, acts like an L2 penalty
    on the vectors and, at lambda = 0.3, stalls the RankNet loss at ~log 2 on toyworld.)"""
    return semantics.var(dim=1, unbiased=False).abs().sum(dim=-1)


def epsilon_loss(
    semantics: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, lam: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 13: mean over the batch of w (1 - lambda) L_r + lambda L_reg (seen labels only)."""
    scores = max_over_groups(semantics, labels)
    lr = ranknet_loss(scores, targets)
    w = diversity_weight(targets, labels)
    reg = variance_regulariser(semantics)
    total = (w * (1 - lam) * lr + lam * reg).mean()
    return total, {
        "rank_loss": lr.mean().detach(),
        "reg_loss": reg.mean().detach(),
        "diversity_weight": w.mean(),
    }


class EpsilonModule(TrainModule):
    def __init__(self, cfg: Config, ctx: CellContext, label_emb: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.n_seen = ctx.n_seen
        bb = ctx.backbone
        images = cfg.train.input_mode == "images"
        self.input_mode = "images" if images else "features"
        self.tower = ImageTower(bb, trainable=False) if images else None
        d = bb.embed_dim
        cfg.check_backbone(d)
        self.gpa = (
            GroupPromptsAggregation(d, cfg.n_groups, cfg.gpa_layers, cfg.heads, cfg.dropout)
            if cfg.gpa
            else None
        )
        self.gfp = (
            GlobalForwardPropagation(d, cfg.n_groups, cfg.gfp_hidden or d) if cfg.gfp else None
        )
        width = d * (int(cfg.gpa) + int(cfg.gfp))
        self.fuser = nn.Linear(width, label_emb.shape[1])  # Eq. 8: Semantic Fuser
        self.register_buffer("label_emb", label_emb.float(), persistent=False)

    def forward(self, batch: Batch, *, seen_only: bool = True) -> dict[str, torch.Tensor]:
        g, f = features_or_tower(batch, self.tower)
        if self.cfg.tokens == "all":
            f = torch.cat([g.unsqueeze(1).to(f.dtype), f], dim=1)  # [class token; patches]
        f = f.float()
        parts = [mod(f) for mod in (self.gfp, self.gpa) if mod is not None]  # Eq. 7: [GoS; GrS]
        with torch.autocast(f.device.type, enabled=False):  # the scores' input stays fp32
            semantics = self.fuser(torch.cat(parts, dim=-1).float())  # Eq. 8: (B, M, d_w)
        labels = self.label_emb[: self.n_seen] if seen_only else self.label_emb
        return {"semantics": semantics, "labels": labels}

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return max_over_groups(
            outputs["semantics"], outputs["labels"].to(outputs["semantics"].dtype)
        )

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor):
        if self.cfg.objective == "classification":
            scores = max_over_groups(outputs["semantics"].float(), outputs["labels"].float())
            return classification_loss(scores, targets)
        return epsilon_loss(
            outputs["semantics"].float(), outputs["labels"].float(), targets, self.cfg.lambda_reg
        )


class Epsilon(Method):
    Config = Config

    def __init__(self, config: Config):
        super().__init__(config)
        self.module: EpsilonModule | None = None
        self.trainer: Trainer | None = None

    def label_embeddings(self, ctx: CellContext) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg: Config = self.config
        if cfg.label_embeddings == "clip":
            return ctx.label_embeddings(cfg.prompts).float().cpu(), {
                "source": "clip",
                "prompts": cfg.prompts,
            }
        return word_vector_embeddings(
            ctx.label_space.names(), resolve_path(cfg.word_vectors), cfg.oov
        )

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg: Config = self.config
        emb, emb_info = self.label_embeddings(ctx)
        if cfg.center_labels:
            emb = F.normalize(emb - emb[: ctx.n_seen].mean(dim=0, keepdim=True), dim=-1)
            emb_info = {**emb_info, "centered_on_seen_mean": True}
        self.module = EpsilonModule(cfg, ctx, emb)
        self.trainer = Trainer(
            cfg.train,
            ctx,
            fingerprint={**method_fingerprint(self.module, cfg), "label_embeddings": emb_info},
        )
        result = self.trainer.fit(self.module)
        return {
            **result.summary(),
            "backbone": ctx.backbone_name,
            "label_embeddings": emb_info,
            "modules": {"gpa": cfg.gpa, "gfp": cfg.gfp},
            "n_groups": cfg.n_groups,
        }

    def predict(self, ctx: CellContext) -> np.ndarray:
        if self.module is None or self.trainer is None:
            raise RuntimeError("Epsilon.predict before fit")
        return self.trainer.predict(self.module, "test")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.module) if self.module is not None else {}


METHOD = Epsilon
