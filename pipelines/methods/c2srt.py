"""C2SRT: Category-Adaptive Cross-Modal Semantic Refinement and Transfer (Liu et al.),
Section 3 and supplementary B of ../shared/papers/c2srt.md.

- **Vision encoder with distillation (Eq. 1-2).** A student image tower Phi_1, initialised
  from the VLP image tower, is fine-tuned end to end (images mode). Its unit-norm global
  feature f_G is pulled towards the frozen VLP's global feature f_G^CLIP by an L1 loss
  (Eq. 2: a sum over the dimensions). ``teacher: cache`` (default): the teacher never runs
  during training; f_G^CLIP is the cell's cached frozen feature of the same train image,
  read per batch (``ctx.features("train").global_[batch.index]``: never the whole array,
  never the patch tokens, so a memory-mapped or streamed feature store serves it).
  ``teacher: online``: the frozen tower runs on the batch's pixels instead (a dataset whose
  train cache does not fit a node, e.g. Open Images' ~1.8 TB with patches; the same
  features up to the cache's fp16 rounding). Scale: a fine-tuned row (images mode) reads
  no cached patch tokens at all (the student tower makes its own, at test too); only the
  frozen rows (``finetune: false``) read the cache's patches, and only with ISR on
  (``feature_parts``: a streamed store then serves just the global rows). What is left is
  outside this module: on a store that loads a split whole (pipelines/vlp/features.py
  ``load_features`` on main), ``ctx.features("train")`` still reads the train patches into
  memory the first time the teacher indexes it; with the streamed stores of the
  feature-streaming work it reads only the batch's global rows, and ``teacher: online``
  avoids the train cache on either.
- **ISR, Algorithm 1 (Eq. 4-5).** Patch-to-text similarity s_i^(c) between every patch and
  every label's ensemble text feature (Eq. 24), softmax over the P patches, descending sort,
  and the smallest prefix whose mass reaches alpha, capped at N patches (line 6 of the
  algorithm: stop at the first i with cumsum_i >= alpha or i >= N). Vectorised over images
  and labels (a rank mask, no Python loop over classes). Choices the paper leaves open:

  * *temperature*: the softmax runs on ``isr_temperature * cos`` (default 100, CLIP's logit
    scale). Over 196 patches raw cosines (|s| <= 1) give a near-uniform softmax that never
    reaches alpha = 0.5 before the cap, which would make alpha meaningless.
  * *projection*: patch tokens go through the VLP's own visual projection (ln_post + proj,
    as MKT does; pipelines/vlp/backbone.py ``image_tokens``), so they live in the text space.
  * *pooling*: mean of the L2-normalised selected patch features (f_L^(c)); f_G is unit norm
    too, and f_img^(c) = (f_L^(c) + f_G) / 2 (Eq. 6).
  * alpha = 0 means "no local features" (Figure 5): f_img^(c) = f_G. alpha = 1 means "all
    local features" (Figure 5's text) within Algorithm 1's cap: every patch up to N (set
    ``max_patches`` to P for literally all of them).
  * float32 always: under bf16 autocast the similarities would be rounded before the sort
    in training but not at test (``isr_select``).
- **IST (Eq. 6-10, 17-23).** Node features h_0^(c) = FFN_in([f_img^(c) || f_txt^(c)]) per image
  and label; ``gat_layers`` layers of multi-head GATv2 (torch_geometric ``GATv2Conv``) over a
  sparse, directed, unweighted graph in which each label receives from its top-n related
  *seen* labels (supp. B.3); every image is its own copy of the label graph (a PyG batch of
  disjoint graphs). Differences from the paper's multi-head equations, made explicit:

  * Eq. 21 (FFN_head splitting h into M heads) followed by per-head W^(m) is a composition
    of linear maps: ``GATv2Conv``'s ``lin_l`` / ``lin_r`` (in -> M x D_h) are exactly that
    product, so no separate FFN_head layer is added.
  * Eq. 23's per-head output matrix W_out^(m) is added as a grouped linear map after the
    aggregation (sum_j alpha_ij W_out h_j = W_out sum_j alpha_ij h_j, so this is exact),
    followed by sigma (ELU) and the concatenation of the heads. The last layer has no sigma
    (its output is compared to f_txt by cosine, Eq. 10).
  * GAT [39] counts node i among its own neighbours; the LLM graph does not list a label as
    related to itself. ``self_loops: true`` (default) adds i -> i, as GAT does; the graph's
    in-degree from *other* labels is exactly n (``n_related``).
  Scores: cosine(h_l^(c), f_txt^(c)) (Eq. 10); without IST, cosine(f_img^(c), f_txt^(c)).

  *Initialisation* (the paper gives none; ``ist_init``). ``vlp`` (default): IST starts as
  the VLP's own matching and training refines it. FFN_in is a two-layer MLP plus a linear
  path; the linear path starts as [I | 0] (f_img passes through), the MLP's output layer at
  zero, GATv2's W_left / W_right at the identity and its biases at zero; W_out^(m) is the
  identity already. Before training, with f_img^(c) = f_G for every label, h_l^(c) =
  ELU(f_G) and the score is (almost) zero-shot CLIP's; with ISR, each label's output starts
  as the attention-weighted mean of its own and its related labels' f_img. Needs the GAT
  width = the embedding width (``hidden: null``). ``random``: PyTorch's default
  initialisation of every layer (what the first implementation did). Measured on iconworld
  (seed 0, frozen tower, ISR + IST, 2x2 patches): with ``random`` IST relearns the image-text
  matching from scratch in a few hundred steps and does not: half of the variance of its
  unseen-label scores is a per-label constant (0.51, against 0.22 for zero-shot CLIP), which
  raises F1@K (a per-image ranking) and lowers the per-label mAP (ZSL mAP 7.4 vs zero-shot
  12.1); with ``vlp`` (1 epoch) the constant share is 0.26 and ZSL mAP 11.2, F1@3 29.4.
- **Relation sources** (Table 4; ``relations``): ``llm`` (the ``category-relations``
  corpus: mean High/Medium/Low = 3/2/1 over queries, unlisted 0; each label keeps its top-n
  seen labels, ties, zeros included, broken by text-embedding similarity so the in-degree
  is exactly n; the padded edges are counted in the graph's summary, see
  pipelines/relations.py; every query shows the LLM every seen label, on pages of at most
  ``max_seen_in_prompt`` where the list is longer, e.g. Open Images' 7,186: never only the
  first 1,000, see pipelines/text/config.py ``CategoryRelationsConfig``), ``random`` (n seen labels uniformly, seeded), ``similarity`` (text
  embedding cosine), ``cooccurrence`` (extra, no published number: P(j | i) from the train
  labels, seen only; unseen labels have no train annotations, so an unseen label's row
  falls back to text similarity). A label never relates to itself.
- **Loss (Eq. 11-12).** Ranking loss with margin 1 on the cosine scores over the annotated
  seen labels, plus lambda * L_dist. Eq. 11 as printed reads max(y_p - y_n + 1, 0), which
  is minimised by ranking negatives *above* positives; its own sentence ("scores of
  positive labels ranked higher than those of negative labels by a minimum margin of 1")
  and the BiAM / MKT loss it comes from are max(0, 1 - y_p + y_n): that is what runs here.
  ``loss_reduction: sum`` (default) follows Eq. 11-12 as printed: L_cls sums the hinge over
  the batch's images and their positive x negative pairs, and L_dist sums Eq. 2 over the
  same images, so an image weighs by its number of pairs and the balance between the two
  terms is the paper's. ``mean`` is the earlier normalisation (mean over an image's pairs,
  then over images; L_dist averaged over images): under AdamW it is not a rescaling of lr
  and lambda, because it re-weights images by 1 / (pairs) and multiplies the weight of
  L_dist relative to L_cls by the number of pairs (~1,000 on iconworld and NUS-WIDE).
  lambda is not printed (Figure 9 sweeps it; its values are only in the image): lambda = 1,
  chosen before any run, because Eq. 12 with lambda = 1 is the printed L = L_cls + L_dist
  of the method section and MKT (whose distilled ViT-B/16 and ranking loss C2SRT extends)
  uses 1; under the sum it puts L_dist at 1 / (pairs) of L_cls per image, within a few
  times of MKT's released normalisation (hinge mean over violating pairs, L1 mean over the
  512 dimensions, lambda = 1). The iconworld table ``iconworld-c2srt-loss`` measures both.
- **Table 3 row 1** ("the baseline, evaluated solely using the VLP model") has two
  readings, both declared: the frozen VLP (``finetune: false``, no Dist / ISR / IST:
  nothing trains, the scores are cos(f_G, f_txt) with the ensemble prompts, i.e. zero-shot
  CLIP), the more natural one and the agreement pair's reference; and the tower fine-tuned
  with L_cls alone (no distillation), the row above the "+ Dist" row.

The graph is an artefact of its own: the stage ``relations@<dataset>@<backbone>@<source>-n<n>``
(pipelines/relations.py: ``graph.npz`` + ``summary.json`` with degree histograms and a few
neighbourhoods, shown in Dagster), built once and read by every cell with the same
(dataset, backbone, source, n_related) through ``ctx.relations()``; its summary is also in
the cell's metrics.json meta. The ``random`` graph is one fixed draw (seed 0) shared by all
training seeds.

On a CNN tower the "patches" of ISR (Algorithm 1) are the cells of the last feature map,
each through the tower's projection into the joint space (pipelines/vlp/backbone.py
``image_tokens``; for ``icon-lit``'s EfficientNet-Lite0, the pooled feature's linear
projection: 4 x 4 = 16 cells at 128 px, which average to f_G before normalisation). The
cap N follows the paper's ratio of patches kept, 32 of 196: round(32 / 196 x 16) = 3.
The student tower is the whole timm tower (trunk and projection), fine-tuned end to end.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pipelines.methods.base import CellContext, Method, MethodConfig
from pipelines.methods.qks import LabelEncoder, ranking_loss
from pipelines.relations import (  # noqa: F401  (re-exported: the graph's science)
    RELATIONS_KIND,
    build_relation_graph,
    cooccurrence_scores,
    graph_summary,
    llm_scores,
    text_similarity,
    top_related,
)
from pipelines.train import (
    Batch,
    ImageTower,
    TrainConfig,
    Trainer,
    TrainModule,
    features_or_tower,
    method_fingerprint,
    trainable_state,
)

CODE_DEPS = ("pipelines/train.py", "pipelines/methods/qks.py", "pipelines/relations.py")

PAPER_TRAIN = TrainConfig(
    epochs=20, batch_size=64, lr=1e-3, weight_decay=5e-3, optimizer="adamw", schedule="constant"
)

Relations = Literal["llm", "random", "similarity", "cooccurrence"]


class Config(MethodConfig):
    """Defaults are the paper's NUS-WIDE settings (Section 4.1): AdamW lr 1e-3, weight decay
    5e-3, batch 64, 20 epochs, 224 px (196 patches: the backbone's), N = 32, alpha = 0.5,
    16 related categories mined by an LLM (GPT-4o), a 2-layer GAT. Open Images: 8 epochs and
    4 related categories. lambda is not printed in the text (Figure 9 sweeps it): 1.0 here."""

    distill: bool = True  # Table 3 "Dist"
    lambda_dist: Annotated[float, Field(ge=0)] = 1.0  # Eq. 12 (Figure 9); see "Loss" above
    loss_reduction: Literal["sum", "mean"] = "sum"  # Eq. 11-12 as printed, or per-pair means
    teacher: Literal["cache", "online"] = "cache"  # f_G^CLIP: the feature cache, or run live
    finetune: bool = True  # the student tower trains (Eq. 1); false = frozen VLP features
    encoder_lr_scale: Annotated[float, Field(gt=0)] = 1.0  # lr multiplier for the student tower
    isr: bool = True  # Table 3 "ISR"
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.5  # Figure 5; 0 = none, 1 = all (up to N)
    max_patches: Annotated[int, Field(ge=1)] = 32  # N
    isr_temperature: Annotated[float, Field(gt=0)] = 100.0  # softmax scale (CLIP's logit scale)
    ist: bool = True  # Table 3 "IST"
    relations: Relations = "llm"  # Table 4
    corpus: str = "category-relations"  # relations llm: a category-relations corpus (corpora:)
    n_related: Annotated[int, Field(ge=1)] = 16  # Figure 4
    gat_layers: Annotated[int, Field(ge=1)] = 2
    heads: Annotated[int, Field(ge=1)] = 4  # M (not given in the paper)
    hidden: Annotated[int, Field(ge=8)] | None = None  # D_in of the GAT; None = embed dim
    self_loops: bool = True
    ist_init: Literal["vlp", "random"] = "vlp"  # IST starts at the VLP's matching (see above)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    prompts: Literal["single", "pool", "tuning"] = "pool"  # Table 5 (ensemble = pool, Eq. 24)
    n_ctx: Annotated[int, Field(ge=1)] = 4  # prompt tuning: CoOp context vectors
    margin: Annotated[float, Field(gt=0)] = 1.0  # Eq. 11
    train: TrainConfig = PAPER_TRAIN

    def check_backbone(self, embed_dim: int) -> None:
        if self.ist and self.ist_init == "vlp" and self.hidden not in (None, embed_dim):
            raise ValueError(
                f"hidden: ist_init 'vlp' starts IST as the identity, so the GAT width must be "
                f"the embedding width {embed_dim} (hidden: null), not {self.hidden}; or set "
                "ist_init: random"
            )

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.distill and not self.finetune:
            raise ValueError("distill needs finetune: a frozen tower is the teacher already")
        if self.teacher == "online" and not self.distill:
            raise ValueError(
                "teacher 'online' runs the frozen VLP for distillation: distill is off"
            )
        if self.finetune and self.train.input_mode == "features":
            raise ValueError(
                "finetune trains the image encoder: input_mode must be 'auto' or 'images'"
            )
        return self

    @property
    def uses_local(self) -> bool:
        return self.isr and self.alpha > 0

    @property
    def trains(self) -> bool:
        """False for Table 3 row 1 read as the frozen VLP: no tower, no ISR/IST weights."""
        return self.finetune or self.ist or self.prompts == "tuning"


# ---------------------------------------------------------------------------- ISR (Alg. 1)
def isr_select(
    patches: torch.Tensor,
    text: torch.Tensor,
    alpha: float,
    max_patches: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1, lines 1-10, for every image and label at once.

    patches (B, P, D), text (C, D) -> (mask (B, C, P) float with 1 on the selected patches,
    counts (B, C) long = the prefix length n). Similarity is the cosine (Eq. 4) times
    ``temperature``; softmax over patches; descending sort; n = the first i (1-based) with
    cumsum_i >= alpha, or N (line 6), whichever comes first. ``alpha >= 1`` keeps every
    patch up to the cap (Figure 5's "alpha = 1: all local features"): a float cumulative sum
    can reach 1.0 before the last patch, so that case does not go through the threshold.

    Always in float32, autocast or not: under bf16 autocast (training on CUDA) the einsum
    would round the similarities to ~3 significant digits, and the sort and the prefix would
    then pick other patches in training than at test, which runs in float32.
    """
    with torch.autocast(patches.device.type, enabled=False):
        p = F.normalize(patches.float(), dim=-1)
        t = F.normalize(text.float(), dim=-1)
        s = torch.softmax(temperature * torch.einsum("bpd,cd->bcp", p, t), dim=-1)  # lines 1-3
        sorted_s, order = s.sort(dim=-1, descending=True, stable=True)  # line 4
        n_all = torch.full_like(order[..., 0], s.shape[-1])
        if alpha >= 1:
            n_alpha = n_all
        else:
            reached = sorted_s.cumsum(dim=-1) >= alpha  # (B, C, P)
            n_alpha = torch.where(reached.any(dim=-1), reached.float().argmax(dim=-1) + 1, n_all)
        n = n_alpha.clamp(max=max_patches)  # line 6: ... or i >= N
        ranks = torch.arange(s.shape[-1], device=s.device)
        keep_sorted = (ranks < n.unsqueeze(-1)).float()
        mask = torch.zeros_like(s).scatter(-1, order, keep_sorted)
    return mask, n


def isr_pool(patches: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Eq. 5 / line 12: f_L^(c) = mean of the selected L2-normalised patch features, (B, C, D),
    in float32 as :func:`isr_select`."""
    with torch.autocast(patches.device.type, enabled=False):
        p = F.normalize(patches.float(), dim=-1)
        return torch.einsum("bcp,bpd->bcd", mask.float(), p) / counts.unsqueeze(-1).to(p.dtype)


# -------------------------------------------------------------------------------- IST
class GATv2Layer(nn.Module):
    """One multi-head GATv2 layer (supp. Eq. 19-23) on torch_geometric's ``GATv2Conv`` plus
    the per-head output matrix W_out^(m) of Eq. 23 as a grouped linear map."""

    def __init__(
        self,
        d: int,
        heads: int,
        self_loops: bool,
        dropout: float,
        last: bool,
        init: str = "random",
    ):
        super().__init__()
        from torch_geometric.nn import GATv2Conv

        if d % heads:
            raise ValueError(f"GAT width {d} is not divisible by heads = {heads}")
        dh = d // heads
        self.heads, self.dh, self.last = heads, dh, last
        self.conv = GATv2Conv(
            d, dh, heads=heads, concat=True, add_self_loops=self_loops, dropout=dropout
        )
        self.w_out = nn.Parameter(torch.stack([torch.eye(dh) for _ in range(heads)]))
        if init == "vlp":  # W_left = W_right = I: head m carries slice m of the feature
            with torch.no_grad():
                for lin in (self.conv.lin_l, self.conv.lin_r):
                    lin.weight.copy_(torch.eye(d))
                    if lin.bias is not None:
                        lin.bias.zero_()
                if self.conv.bias is not None:
                    self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.conv(x, edge_index).view(-1, self.heads, self.dh)
        h = torch.einsum("nmi,mji->nmj", h, self.w_out).reshape(-1, self.heads * self.dh)
        return h if self.last else F.elu(h)


class FFNIn(nn.Module):
    """FFN_in of Eq. 6 on [f_img || f_txt]: a two-layer MLP plus a linear path. With
    ``init="vlp"`` the linear path starts as [I | 0] (f_img passes through) and the MLP's
    output layer at zero, so h_0^(c) = f_img^(c) before training."""

    def __init__(self, d: int, hidden: int, init: str):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * d, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.lin = nn.Linear(2 * d, hidden)
        if init == "vlp":
            if hidden != d:
                raise ValueError(f"ist_init 'vlp' needs hidden = the embedding width {d}")
            with torch.no_grad():
                self.lin.weight.copy_(torch.cat([torch.eye(d), torch.zeros(d, d)], dim=1))
                self.lin.bias.zero_()
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.mlp(x)


class IST(nn.Module):
    """Eq. 6-10: FFN_in over [f_img || f_txt], stacked GATv2 layers, back to the text width."""

    def __init__(
        self,
        d: int,
        hidden: int,
        layers: int,
        heads: int,
        self_loops: bool,
        dropout: float,
        init: str = "random",
    ):
        super().__init__()
        self.ffn_in = FFNIn(d, hidden, init)
        self.layers = nn.ModuleList(
            GATv2Layer(hidden, heads, self_loops, dropout, last=i == layers - 1, init=init)
            for i in range(layers)
        )
        self.out = nn.Identity() if hidden == d else nn.Linear(hidden, d)

    def forward(
        self, f_img: torch.Tensor, f_txt: torch.Tensor, edges: torch.Tensor
    ) -> torch.Tensor:
        """f_img (B, C, D), f_txt (C, D), edges (2, E) within the C labels -> (B, C, D)."""
        b, c, d = f_img.shape
        x = self.ffn_in(torch.cat([f_img, f_txt.unsqueeze(0).expand(b, -1, -1)], dim=-1))
        offsets = (torch.arange(b, device=edges.device) * c).view(b, 1, 1)
        ei = (edges.unsqueeze(0) + offsets).permute(1, 0, 2).reshape(2, -1)  # B disjoint copies
        h = x.reshape(b * c, -1)
        for layer in self.layers:
            h = layer(h, ei)
        return self.out(h).view(b, c, d)


# ----------------------------------------------------------------------------- module
class C2SRTModule(TrainModule):
    def __init__(self, cfg: Config, ctx: CellContext, graph: dict[str, np.ndarray] | None):
        super().__init__()
        self.cfg = cfg
        bb = ctx.backbone
        self.n_seen = ctx.n_seen
        self.input_mode = (
            "images" if cfg.finetune or cfg.train.input_mode == "images" else "features"
        )
        self.tower = ImageTower(bb, trainable=cfg.finetune) if self.input_mode == "images" else None
        # features mode: the cached tensors the batches need (a streamed feature store reads
        # only these); the patch tokens only for ISR
        self.feature_parts = ("global", "patches") if cfg.uses_local else ("global",)
        self._ctx = ctx
        # teacher "online": a frozen copy of the VLP tower; not a submodule, so it is never
        # optimised nor checkpointed (it is the backbone's own weights)
        self._online_teacher = (
            [ImageTower(bb, trainable=False)] if cfg.distill and cfg.teacher == "online" else []
        )
        lab_cfg = SimpleNamespace(prompts=cfg.prompts, n_ctx=cfg.n_ctx, unfreeze_text=False)
        self.labels = LabelEncoder(lab_cfg, ctx)
        d = bb.embed_dim
        self.ist = (
            IST(
                d,
                cfg.hidden or d,
                cfg.gat_layers,
                cfg.heads,
                cfg.self_loops,
                cfg.dropout,
                init=cfg.ist_init,
            )
            if cfg.ist
            else None
        )
        if graph is not None:
            e = torch.as_tensor(graph["edges"].T.copy(), dtype=torch.long)  # (2, E): source, target
            self.register_buffer("edges_all", e, persistent=False)
            seen = (e[0] < self.n_seen) & (e[1] < self.n_seen)
            self.register_buffer("edges_seen", e[:, seen], persistent=False)

    def teacher(self, batch: Batch) -> torch.Tensor:
        """f_G^CLIP of the batch's train images (Eq. 2), unit norm, float32.

        ``cache``: the batch's rows of the frozen feature cache's global embeddings, indexed
        per batch (``global_[index]``: a memory-mapped or streamed ``Features`` serves just
        those rows; the patch tokens are never read). ``online``: the frozen VLP tower run on
        the batch's pixels, for a dataset whose cache does not fit (same features, up to the
        cache's fp16 rounding)."""
        if self._online_teacher:
            tower = self._online_teacher[0].to(batch.pixels.device)
            with torch.no_grad():
                g, _ = tower(batch.pixels)  # unit norm (ImageTower)
            return g.float()
        return torch.as_tensor(self._ctx.features("train").global_[batch.index.cpu()]).float()

    def forward(self, batch: Batch, *, seen_only: bool = True) -> dict[str, torch.Tensor]:
        f_g, patches = features_or_tower(batch, self.tower)
        f_g = F.normalize(f_g.float(), dim=-1)
        text = self.labels(seen_only).float()
        c = text.shape[0]
        if self.cfg.uses_local:
            mask, counts = isr_select(
                patches, text, self.cfg.alpha, self.cfg.max_patches, self.cfg.isr_temperature
            )
            f_img = (isr_pool(patches, mask, counts) + f_g.unsqueeze(1)) / 2  # Eq. 6
        else:
            f_img = f_g.unsqueeze(1).expand(-1, c, -1)
        h = f_img
        if self.ist is not None:
            h = self.ist(f_img, text, self.edges_seen if seen_only else self.edges_all)
        out = {"h": h, "text": text, "f_g": f_g}
        if self.training and self.cfg.distill and batch.pixels is not None:
            out["teacher"] = self.teacher(batch).to(f_g.device)
        return out

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 10: cosine between each label's output feature and its text feature."""
        return F.cosine_similarity(outputs["h"], outputs["text"].unsqueeze(0), dim=-1)

    def loss(self, outputs, targets):
        reduction = "sum" if self.cfg.loss_reduction == "sum" else "pair_mean"
        rank = ranking_loss(self.scores(outputs).float(), targets, self.cfg.margin, reduction)
        if "teacher" not in outputs:  # Eq. 11
            return rank, {"rank": rank.detach()}
        dist = distillation_loss(outputs["f_g"], outputs["teacher"], self.cfg.loss_reduction)
        return rank + self.cfg.lambda_dist * dist, {"rank": rank.detach(), "dist": dist.detach()}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        enc = [p for p in (self.tower.parameters() if self.tower else []) if p.requires_grad]
        ids = {id(p) for p in enc}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": enc, "lr": lr * self.cfg.encoder_lr_scale}]


def distillation_loss(
    f_g: torch.Tensor, teacher: torch.Tensor, reduction: Literal["sum", "mean"] = "sum"
) -> torch.Tensor:
    """Eq. 2: ||f_G - f_G^CLIP||_1 per image (both unit norm: a sum over the dimensions),
    summed over the batch's images as Eq. 11 sums L_cls (``sum``), or averaged (``mean``)."""
    per_image = (f_g.float() - teacher.float()).abs().sum(dim=-1)
    return per_image.sum() if reduction == "sum" else per_image.mean()


class C2SRT(Method):
    """The relation graph is its own stage (pipelines/relations.py, ``relations@...``), built
    once and shared by every cell with the same (dataset, backbone, source, n_related); the
    cell reads it through ``ctx.relations()``. The ``llm`` graph's corpus is that stage's
    input, not the cell's, so no corpus is declared here (``CORPORA``)."""

    Config = Config

    def __init__(self, config: Config):
        super().__init__(config)
        self.module: C2SRTModule | None = None
        self.trainer: Trainer | None = None
        self.graph: dict[str, Any] | None = None

    def relation_graph(self, ctx: CellContext) -> dict[str, Any]:
        """The graph stage's arrays; a context without stages (tests, direct use) builds the
        same graph in memory from the context's text embeddings, labels or corpus."""
        cfg: Config = self.config
        staged = ctx.relations()
        if staged is not None:
            return staged
        graph = build_relation_graph(
            cfg.relations,
            n_related=cfg.n_related,
            n_seen=ctx.n_seen,
            n_labels=ctx.n_labels,
            text=ctx.label_embeddings("pool"),
            train_labels=ctx.train_labels if cfg.relations == "cooccurrence" else None,
            corpus=ctx.corpus(RELATIONS_KIND) if cfg.relations == "llm" else None,
        )
        return {**graph, "summary": graph_summary(graph, ctx.label_space.names(), ctx.n_seen)}

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg: Config = self.config
        summary: dict[str, Any] | None = None
        if cfg.ist:
            self.graph = self.relation_graph(ctx)
            if self.graph["neighbours"].shape[1] != cfg.n_related:
                raise ValueError(
                    f"relation graph has in-degree {self.graph['neighbours'].shape[1]}, "
                    f"the variant asks for n_related = {cfg.n_related}; rebuild the graph stage"
                )
            summary = self.graph["summary"]
        self.module = C2SRTModule(cfg, ctx, self.graph)
        fp = method_fingerprint(self.module, cfg)
        if self.graph is not None:
            fp["graph"] = _digest(self.graph["edges"])
        self.trainer = Trainer(cfg.train, ctx, fingerprint=fp)
        if cfg.trains:
            fitted = self.trainer.fit(self.module).summary()
        else:  # Table 3 row 1, frozen reading: nothing to train, cos(f_G, f_txt) as it is
            self.module.eval()
            fitted = {"epochs": 0, "trainable_params": 0, "input_mode": self.module.input_mode}
        return {
            **fitted,
            "backbone": ctx.backbone_name,
            "modules": {"dist": cfg.distill, "isr": cfg.uses_local, "ist": cfg.ist},
            "relations": cfg.relations if cfg.ist else None,
            "relation_graph": summary,
        }

    def predict(self, ctx: CellContext) -> np.ndarray:
        if self.module is None or self.trainer is None:
            raise RuntimeError("C2SRT.predict before fit")
        return self.trainer.predict(self.module, "test")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.module) if self.module is not None else {}


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


METHOD = C2SRT
