"""TaI-DPT: Texts as Images in prompt tuning, with double-grained prompts (Guo et al.,
"Texts as Images in Prompt Tuning for Multi-Label Image Recognition", CVPR 2023;
reference code guozix/TaI-DPT, trainer ``Caption_distill_double``).

The paper is not in ../shared/papers; its parts are cited by section, as CoMC (§2,
Tables 1, 2, 6: its CLIP-DPT rows) and RCNn (§2) describe it and the reference code
implements it.

- *Texts as images* (Sec. 3.2): training never sees an image. A labelled sentence goes
  through the frozen text tower; its end-of-text embedding plays the global image feature
  and its per-token features (every position after ln_final, through the same text
  projection) play the local region features (:func:`caption_features`; padding tokens
  are masked). Its labels are the labels the sentence names. The reference parses them
  from MS-COCO captions by noun matching; here the labelled-sentence corpus CoMC also reads
  (``comc-sentences``, :func:`pipelines.methods.comc.labelled_sentences`) stands in, as no
  caption set of the real datasets is available offline.
- *Double-grained prompts* (Sec. 3.3): two CoOp contexts of N = 16 learnt vectors shared
  by every label, [SOT, ctx, name, ".", EOT] through the frozen text tower
  (:class:`pipelines.methods.dualcoop.LearnedContext`): a global prompt t^g_c, scored
  against the global feature, s^g_c = λ cos(v, t^g_c), and a local prompt t^l_c, scored
  against every local feature and aggregated per class with DualCoOp's softmax over
  regions, s^l_c = λ Σ_j softmax_j(T cos(v_j, t^l_c)) cos(v_j, t^l_c)
  (:func:`pipelines.methods.dualcoop.region_aggregation`). λ = 4 (the reference's fixed
  logit scale, ``IF_LEARN_SCALE: False``); T = 50 on text tokens, 4 on NUS-WIDE image
  regions (40 on COCO / VOC).
- *Loss*: the ranking loss on both branches (``double_ranking``):
  Σ_{p∈c+} Σ_{n∈c-} max(0, m - r (s_p - s_n)) per sentence, mean over the batch, m = 1,
  r = ``rank_scale``. The reference's ``ranking_loss`` has default scale 2.0 but its
  ``double_ranking`` loss passes 1.0 (as CoMC's comc.py notes); 1.0 is the default here
  and ``rank_scale: 2`` the variant. CoMC's :func:`pipelines.methods.comc.ranking_loss` is
  the same sum.
- *Inference* (Sec. 3.4): the frozen image tower's global embedding and local tokens (the
  feature cache; CLIP-ResNet: the attention pool's value / output projections per cell)
  replace the sentence's; the two branches are merged, s = ρ s^g + (1 - ρ) s^l with
  ρ = 0.5 (reference evaluator ``default_merge_aux``, ``GL_merge_rate``).

Settings (reference ``configs/trainers/Caption_distill_double/rn50_nuswide.yaml``):
SGD lr 1e-3 (COCO / VOC 1e-4) with cosine decay, 20 epochs, batch 512; Dassl's SGD
defaults momentum 0.9, weight decay 5e-4. No warm-up epoch here (the reference's first
epoch runs at a constant 1e-5). The sentence features are computed once per fit (the
towers are frozen, so this equals the reference's per-step forward).

``text_labels: seen`` trains on the seen labels' targets only (unseen columns unknown),
for a transfer check; the default ``all`` follows the reference, which trains on every
class name, as CoMC does (language-driven methods use no image of any class).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from pipelines.methods.base import CellContext, Method, MethodConfig
from pipelines.methods.comc import labelled_sentences, ranking_loss
from pipelines.methods.dualcoop import LearnedContext, region_aggregation
from pipelines.methods.qks import TextTower

CODE_DEPS = (
    "pipelines/methods/comc.py",
    "pipelines/methods/dualcoop.py",
    "pipelines/methods/qks.py",
)


class Config(MethodConfig):
    """Defaults are the reference's NUS-WIDE settings (RN50, N = 16, λ = 4, T = 50 / 4,
    ρ = 0.5, double ranking at scale 1, SGD lr 1e-3, 20 epochs, batch 512)."""

    corpus: str = "comc-sentences"  # a comc-sentences corpus of params.yaml `corpora:`
    corpus_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    text_labels: Literal["all", "seen"] = "all"
    n_ctx: Annotated[int, Field(ge=1)] = 16
    logit_scale: Annotated[float, Field(gt=0)] = 4.0  # λ
    spatial_scale_text: Annotated[float, Field(gt=0)] = 50.0  # T on caption tokens
    spatial_scale_image: Annotated[float, Field(gt=0)] = 4.0  # T on image regions (NUS-WIDE)
    merge_rate: Annotated[float, Field(ge=0, le=1)] = 0.5  # ρ (GL_merge_rate)
    local: bool = True  # the local (second-grained) prompt; false: global prompt only
    margin: Annotated[float, Field(gt=0)] = 1.0
    rank_scale: Annotated[float, Field(gt=0)] = 1.0
    epochs: Annotated[int, Field(ge=1)] = 20
    batch_size: Annotated[int, Field(ge=1)] = 512
    lr: Annotated[float, Field(gt=0)] = 1e-3
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    threads: Annotated[int, Field(ge=0)] = 0  # torch threads for training (0 = as set)


# -------------------------------------------------------------------- texts as images
@torch.no_grad()
def caption_features(
    tower: TextTower, tokens: torch.Tensor, batch_size: int = 256, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sentences as images: (global (M, D), local (M, L, D), mask (M, L)) from the frozen
    text tower, both unit-norm. Local = every position's output after ln_final through
    the text projection (reference ``TextEncoder(..., if_sequence=True)``); global = the
    pooled (end-of-text) position of the same sequence, i.e. the tower's text embedding;
    mask = the non-padding positions (token id != 0). L is cut to the longest sentence
    (exact under the causal mask: later positions never change earlier ones)."""
    n_used = int((tokens != 0).sum(dim=1).max()) if len(tokens) else 1
    if tower.attn_mask is None:  # bidirectional: padding changes nothing only if masked
        n_used = tokens.shape[1]
    tokens = tokens[:, :n_used]
    glob, loc = [], []
    starts = range(0, len(tokens), batch_size)
    for i in tqdm(
        starts, desc="TaI-DPT sentences", unit="batch", disable=not progress, leave=False
    ):
        t = tokens[i : i + batch_size].to(tower.token_embedding.weight.device)
        x = tower.token_embedding(t) + tower.positional_embedding[:n_used]
        mask = tower.attn_mask[:n_used, :n_used] if tower.attn_mask is not None else None
        x = tower.ln_final(tower.transformer(x, attn_mask=mask))
        pooled = text_global_pool(x, t, tower.pool_type, eos_token_id=tower.eos_id)
        glob.append(F.normalize(_project(tower, pooled).float(), dim=-1).cpu())
        loc.append(F.normalize(_project(tower, x).float(), dim=-1).half().cpu())
    d = glob[0].shape[-1] if glob else tower.token_embedding.embedding_dim
    return (
        torch.cat(glob) if glob else torch.empty(0, d),
        torch.cat(loc) if loc else torch.empty(0, n_used, d).half(),
        tokens != 0,
    )


def _project(tower: TextTower, x: torch.Tensor) -> torch.Tensor:
    proj = tower.text_projection
    if isinstance(proj, nn.Linear):
        return proj(x)
    return x @ proj if proj is not None else x


def double_grained_scores(
    glob: torch.Tensor,
    local: torch.Tensor | None,
    t_global: torch.Tensor,
    t_local: torch.Tensor,
    logit_scale: float,
    spatial_scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, D) global and (B, J, D) local features (unit-norm), (C, D) prompts ->
    (s^g, s^l) each (B, C): λ cos(v, t^g) and λ Σ_j softmax_j(T cos_j) cos_j over t^l."""
    s_g = logit_scale * glob.float() @ t_global.float().T
    if local is None:
        return s_g, None
    sim = torch.einsum("bjd,cd->bjc", local.float(), t_local.float())
    s_l = logit_scale * region_aggregation(spatial_scale * sim, sim, mask)
    return s_g, s_l


# ----------------------------------------------------------------------------- method
class Prompts(nn.Module):
    """TaI-DPT's two prompt learners over one frozen text tower."""

    def __init__(self, ctx: CellContext, n_ctx: int, seed: int):
        super().__init__()
        bb = ctx.backbone
        if not hasattr(bb.model, "token_embedding") or bb.tokenizer is None:
            raise TypeError(
                f"{bb.name}: TaI-DPT learns prompt contexts and reads token features: it "
                "needs an open_clip text tower with token embeddings"
            )
        self.tower = TextTower(bb.model, trainable=False)
        names = ctx.label_space.names()
        gen = torch.Generator().manual_seed(seed)
        self.global_ = LearnedContext(self.tower, bb.tokenize, names, n_ctx, generator=gen)
        self.local = LearnedContext(self.tower, bb.tokenize, names, n_ctx, generator=gen)


class TaIDPT(Method):
    Config = Config
    CORPORA = ("comc-sentences",)

    def __init__(self, config: Config):
        super().__init__(config)
        self.prompts: Prompts | None = None

    def corpora(self) -> dict[str, str]:
        return {"comc-sentences": self.config.corpus}

    def text_batches(self, ctx: CellContext):
        """The training set: the corpus's sentences as images (:func:`caption_features`)
        and their ±1 targets (unseen columns 0 = unknown with ``text_labels: seen``)."""
        assert self.prompts is not None
        texts, y, info = labelled_sentences(ctx, self.config.corpus_fraction)
        tokens = ctx.backbone.tokenize(texts).cpu()
        glob, loc, mask = caption_features(self.prompts.tower, tokens, progress=ctx.progress)
        if self.config.text_labels == "seen":
            y[:, ctx.n_seen :] = 0.0
        return glob, loc, mask, y, info

    def _losses(self, g, loc, mask, y, n_labels: int) -> torch.Tensor:
        cfg = self.config
        assert self.prompts is not None
        t_g = self.prompts.global_(n_labels)
        t_l = self.prompts.local(n_labels) if cfg.local else t_g
        s_g, s_l = double_grained_scores(
            g,
            loc.float() if cfg.local else None,
            t_g,
            t_l,
            cfg.logit_scale,
            cfg.spatial_scale_text,
            mask,
        )
        loss = ranking_loss(cfg.rank_scale * s_g, y, cfg.margin)
        if s_l is not None:
            loss = loss + ranking_loss(cfg.rank_scale * s_l, y, cfg.margin)
        return loss

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg = self.config
        threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            torch.manual_seed(ctx.seed)
            self.prompts = Prompts(ctx, cfg.n_ctx, ctx.seed)
            glob, loc, mask, y, info = self.text_batches(ctx)
            n_labels = ctx.n_labels if cfg.text_labels == "all" else ctx.n_seen
            y = y[:, :n_labels]
            params = [self.prompts.global_.context]
            if cfg.local:
                params.append(self.prompts.local.context)
            if cfg.optimizer == "sgd":
                opt = torch.optim.SGD(
                    params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
                )
            else:
                opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
            gen = torch.Generator().manual_seed(ctx.seed)
            self.prompts.train()
            losses = []
            steps = -(-len(y) // cfg.batch_size)
            bar = tqdm(
                total=cfg.epochs * steps,
                desc="TaI-DPT prompts",
                unit="batch",
                disable=not ctx.progress,
                leave=False,
            )
            for epoch in range(cfg.epochs):
                order = torch.randperm(len(y), generator=gen)
                total, count = 0.0, 0
                for i in range(0, len(y), cfg.batch_size):
                    bar.update()
                    idx = order[i : i + cfg.batch_size]
                    loss = self._losses(glob[idx], loc[idx], mask[idx], y[idx], n_labels)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                sched.step()
                losses.append(total / max(1, count))
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
                ctx.log_metrics({"loss": losses[-1]}, epoch)
            bar.close()
            self.prompts.eval()
        finally:
            torch.set_num_threads(threads)
        return {
            **info,
            "backbone": ctx.backbone_name,
            "n_ctx": cfg.n_ctx,
            "local": cfg.local,
            "text_labels": cfg.text_labels,
            "epoch_losses": [round(v, 4) for v in losses],
        }

    @torch.no_grad()
    def predict(self, ctx: CellContext) -> np.ndarray:
        cfg = self.config
        if self.prompts is None:
            raise RuntimeError("TaI-DPT.predict before fit")
        n = ctx.n_labels
        t_g = self.prompts.global_(n)
        t_l = self.prompts.local(n) if cfg.local else t_g
        feats = ctx.features("test")
        out = []
        for i in range(0, len(feats), 256):
            v = F.normalize(feats.global_[i : i + 256].float(), dim=-1)
            loc = F.normalize(feats.patches[i : i + 256].float(), dim=-1) if cfg.local else None
            s_g, s_l = double_grained_scores(
                v, loc, t_g, t_l, cfg.logit_scale, cfg.spatial_scale_image
            )
            out.append(s_g if s_l is None else cfg.merge_rate * s_g + (1 - cfg.merge_rate) * s_l)
        return torch.cat(out).numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.prompts is None:
            return {}
        out = {"global.context": self.prompts.global_.context.detach().cpu().contiguous()}
        if self.config.local:
            out["local.context"] = self.prompts.local.context.detach().cpu().contiguous()
        return out


METHOD = TaIDPT
