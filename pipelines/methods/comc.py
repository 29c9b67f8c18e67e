"""CoMC: a language-driven cross-modal classifier (Liu et al., ICML 2024).

Training uses text only (§3.2): a linear classifier ``f_θ`` on l2-normalised CLIP text
embeddings of LLM-written sentences (Eq. 1-2), each labelled with the labels its prompt
asked for (the ``comc-sentences`` corpus, §3.1), trained with the ranking loss at margin
m = 1 (Eq. 3). Paper settings are the defaults: Adam, cosine decay from lr 1e-4,
batch 256, 30 epochs.

Inference (§3.3, Algorithm 2), from the frozen-backbone feature cache:
- global embedding v^g and local embeddings v^l_j (ViT: projected patch tokens; ResNet:
  each cell of the map before attention pooling through the pool's value and output
  projections, pipelines/vlp/backbone.py:resnet_tokens), all l2-normalised;
- image-to-text mapping (Eq. 4-5): m = Σ_i softmax_i(s_iᵀ v / τ) s_i over the label
  embeddings s_i of "a photo of a/an [c].", τ = 1/100;
- fusion (Eq. 6-7): u = α v + (1 - α) m (α: 0.7 COCO, 0.4 VOC, 0.5 NUS-WIDE);
- scores (Eq. 8-12): P^final = ½ (σ(f_θ(u^g)) + max_j σ(f_θ(u^l_j))), Eq. 12's average of
  *probabilities* (``fusion: probability``, the default; stored as its logit, the same
  order, see :func:`fuse_probabilities`). Averaging sigmoids is not a monotone map of
  averaging logits: a class whose global and local logits disagree ranks its images
  differently. ``fusion: logit`` averages the logits instead (the first implementation,
  and what TaI-DPT's evaluator does with its global and local logits); the iconworld
  table ``iconworld-comc-fusion`` measures both.

Training choices the paper leaves open, checked against TaI-DPT's public code
(guozix/TaI-DPT), whose ranking loss Eq. 3 says it follows:
- *what Eq. 3 ranks* (``loss_on``): Eq. 2 calls f_θ's outputs probabilities, but the hinge
  max(0, m - (p_j - p_k)) with m = 1 can never reach 0 on probabilities (p_j - p_k < 1), and
  TaI-DPT's ``ranking_loss`` ranks logits; ``logit`` (default) ranks f_θ's logits,
  ``probability`` their sigmoid.
- *scale* (``rank_scale``): TaI-DPT's ``ranking_loss(y_pred, y_true, scale_=2.0,
  margin_=1)`` multiplies its inputs by ``scale_`` before the margin; its training loop
  uses that default only for ``LOSSFUNC: ranking`` and passes ``scale_=1.0`` for
  ``double_ranking``, which its three released configs (COCO, VOC2007, NUS-WIDE) select,
  on logits that already carry a fixed 4.0 logit scale. CoMC's f_θ is a free linear layer
  (its scale is learned), so a constant multiplier is the margin m / scale at a larger
  step; Eq. 3 prints m = 1 and no scale: ``rank_scale: 1`` (default). The variant
  ``comc-icon-scale-2`` runs TaI-DPT's default 2.0.

Ablations (Table 4): ``local: false`` scores with f_θ(u^g) only; ``mapping: false``
feeds v itself (α = 1). Few-shot (Table 3): ``few_shot: k`` fine-tunes f_θ afterwards
on k labelled train images per class (global fused embeddings, ranking loss over the
annotated columns). Figure 2: ``corpus_fraction`` trains on the corpus's first sentences.

On ``icon-lit``'s timm EfficientNet-Lite0 (average pooling, then a linear projection)
the local embeddings v^l_j are the last feature map's cells through that same
projection (pipelines/vlp/backbone.py:timm_cnn_tokens): their mean is v^g before
normalisation, as the attention pool's value path is for CLIP's RN50.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from pipelines.methods.base import CellContext, Method, MethodConfig

log = logging.getLogger(__name__)
CODE_DEPS: tuple[str, ...] = ()


class Config(MethodConfig):
    corpus: str = "comc-sentences"  # a comc-sentences corpus of params.yaml `corpora:`
    corpus_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0  # Figure 2
    local: bool = True  # Table 4 "Local-emb"
    mapping: bool = True  # Table 4 "Mapping"
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.7  # Eq. 6-7
    tau: Annotated[float, Field(gt=0)] = 0.01  # Eq. 4-5
    margin: Annotated[float, Field(gt=0)] = 1.0  # Eq. 3
    rank_scale: Annotated[float, Field(gt=0)] = 1.0  # scores x this before the margin (TaI-DPT)
    loss_on: Literal["logit", "probability"] = "logit"  # Eq. 3's p: f_theta's logit, or sigmoid
    fusion: Literal["probability", "logit"] = "probability"  # Eq. 12: average sigmoids, or logits
    epochs: Annotated[int, Field(ge=1)] = 30
    batch_size: Annotated[int, Field(ge=1)] = 256
    lr: Annotated[float, Field(gt=0)] = 1e-4
    few_shot: Annotated[int, Field(ge=0)] = 0  # Table 3: k labelled images per class
    few_shot_epochs: Annotated[int, Field(ge=1)] = 20
    few_shot_lr: Annotated[float, Field(gt=0)] = 1e-4
    threads: Annotated[int, Field(ge=0)] = 0  # torch threads for training (0 = as set)


def photo_prompt(name: str) -> str:
    """CoMC's label-specific text template, "a photo of a/an [c]."."""
    return f"a photo of {'an' if name[:1].lower() in 'aeiou' else 'a'} {name}."


def fuse_probabilities(glob: torch.Tensor, agg: torch.Tensor) -> torch.Tensor:
    """Eq. 12 on probabilities, P = ½(σ(glob) + σ(agg)), returned as its logit
    log(P / (1 - P)): the same order as P (every metric here is a ranking), without the
    float32 saturation of σ at large logits that would tie images at P = 1.
    ``agg`` = max_j f_θ(u^l_j); σ is monotone, so σ(max_j z_j) = max_j σ(z_j) (Eq. 10)."""
    pos = torch.logaddexp(F.logsigmoid(glob), F.logsigmoid(agg))  # log(2P)
    neg = torch.logaddexp(F.logsigmoid(-glob), F.logsigmoid(-agg))  # log(2(1 - P))
    return pos - neg


def ranking_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 3: Σ_{j∈c+} Σ_{k∈c-} max(0, m - (p_j - p_k)), averaged over the batch.
    ``targets``: +1 positive, -1 negative, 0 unknown (ignored)."""
    pos = targets > 0
    n_pos = int(pos.sum(dim=1).max()) if len(targets) else 0
    if n_pos == 0:
        return scores.sum() * 0.0
    # the positives of each row, padded to the row with most (few: 1-5 labels a sentence),
    # so the pair tensor is [B, P, C] rather than [B, C, C]
    idx = torch.argsort(pos.to(torch.int8), dim=1, descending=True, stable=True)[:, :n_pos]
    valid = pos.gather(1, idx).float()  # [B, P]
    s_pos = scores.gather(1, idx)  # [B, P]
    diff = margin - (s_pos.unsqueeze(2) - scores.unsqueeze(1))  # [B, P, C]
    pair = valid.unsqueeze(2) * (targets < 0).float().unsqueeze(1)
    return (F.relu(diff) * pair).sum(dim=(1, 2)).mean()


def labelled_sentences(
    ctx: CellContext, fraction: float = 1.0, kind: str = "comc-sentences"
) -> tuple[list[str], torch.Tensor, dict[str, Any]]:
    """The corpus's first ``fraction`` of sentences (by ``index``) and their targets
    [M, C]: +1 for the labels each sentence was written for, -1 for every other label
    (§3.1; TaI-DPT reads the same labelled sentences, pipelines/methods/tai_dpt.py)."""
    df = ctx.corpus(kind)
    n = max(1, int(round(df.height * fraction)))
    df = df.sort("index").head(n)
    texts = df["text"].to_list()
    y = torch.full((len(texts), ctx.n_labels), -1.0)
    for i, ids in enumerate(df["label_ids"].to_list()):
        y[i, ids] = 1.0
    covered = int((y > 0).any(dim=0).sum())
    return texts, y, {"sentences": len(texts), "labels_with_sentences": covered}


def map_to_text(v: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 4-5: the softmax(sᵀv/τ)-weighted sum of the label embeddings s (C, D)."""
    return torch.softmax(v @ s.T / tau, dim=-1) @ s


class CoMC(Method):
    Config = Config
    CORPORA = ("comc-sentences",)

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier: nn.Linear | None = None

    def corpora(self) -> dict[str, str]:
        return {"comc-sentences": self.config.corpus}

    # ---------------------------------------------------------------- text side
    def _text_data(self, ctx: CellContext) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(embeddings [M, D] unit-norm, targets [M, C] ±1) of the corpus sentences; the
        embeddings are cached once per (corpus content, text tower)."""
        texts, y, info = labelled_sentences(ctx, self.config.corpus_fraction)
        return self._embed(ctx, texts), y, info

    def _embed(self, ctx: CellContext, texts: list[str]) -> torch.Tensor:
        bb = ctx.backbone
        h = hashlib.sha256()
        for t in texts:
            h.update(t.encode() + b"\0")
        h.update(bb.name.encode())  # and the tower itself, by its answer to a probe
        h.update(
            bb.encode_text(["a photo of a dog on a red sofa."]).float().cpu().numpy().tobytes()
        )
        cache = ctx.workdir.parent.parent / ".text-embeddings" / f"{h.hexdigest()[:24]}.safetensors"
        if cache.exists():
            return load_file(str(cache))["emb"].float()
        out = []
        bs = 512
        for i in tqdm(
            range(0, len(texts), bs),
            desc="CoMC text embeddings",
            disable=not ctx.progress,
            leave=False,
        ):
            out.append(bb.encode_text(texts[i : i + bs]).float().cpu())
        emb = torch.cat(out) if out else torch.empty(0, bb.embed_dim)
        from pipelines.io import atomic_path

        with atomic_path(cache) as tmp:
            save_file({"emb": emb.half().contiguous()}, str(tmp))
        return emb.half().float()  # the same precision whether cached or not

    # ---------------------------------------------------------------- training
    def _train(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: int,
        lr: float,
        seed: int,
        log_metrics,
        prefix: str,
    ) -> list[float]:
        cfg = self.config
        assert self.classifier is not None
        opt = torch.optim.Adam(self.classifier.parameters(), lr=lr)
        steps = epochs * max(1, -(-len(x) // cfg.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            total, count = 0.0, 0
            for i in range(0, len(x), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                loss = ranking_loss(self._train_scores(x[idx]), y[idx], cfg.margin)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            losses.append(total / max(1, count))
            log_metrics({f"{prefix}loss": losses[-1]}, epoch)
        return losses

    def _train_scores(self, x: torch.Tensor) -> torch.Tensor:
        """What Eq. 3 ranks: f_θ's logits (default: TaI-DPT's ranking loss, which Eq. 3
        follows, ranks logits) or their sigmoid, times ``rank_scale``."""
        assert self.classifier is not None
        z = self.classifier(x)
        return self.config.rank_scale * (
            torch.sigmoid(z) if self.config.loss_on == "probability" else z
        )

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg = self.config
        threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            x, y, info = self._text_data(ctx)
            torch.manual_seed(ctx.seed)
            self.classifier = nn.Linear(x.shape[1], ctx.n_labels)
            losses = self._train(x, y, cfg.epochs, cfg.lr, ctx.seed, ctx.log_metrics, "")
            summary: dict[str, Any] = {**info, "epoch_losses": [round(v, 4) for v in losses]}
            if cfg.few_shot:
                summary["few_shot"] = self._few_shot(ctx)
        finally:
            torch.set_num_threads(threads)
        return summary

    def _few_shot(self, ctx: CellContext) -> dict[str, Any]:
        """Table 3: k train images per class, fused global embeddings, ranking loss over
        the columns the train split annotates (every column on COCO/VOC; the seen ones
        on a seen/unseen split)."""
        cfg = self.config
        labels = np.asarray(ctx.train_labels)
        rng = np.random.default_rng(ctx.seed)
        chosen: set[int] = set()
        for c in range(labels.shape[1]):
            pos = np.flatnonzero(labels[:, c] == 1)
            if len(pos):
                chosen.update(
                    int(i) for i in rng.choice(pos, min(cfg.few_shot, len(pos)), replace=False)
                )
        idx = np.array(sorted(chosen))
        if not len(idx):
            return {"images": 0}
        feats = ctx.features("train")
        v = F.normalize(feats.global_[idx].float(), dim=-1)
        u = self._fuse(v, self._label_text(ctx))
        y = torch.from_numpy(labels[idx].astype(np.float32))
        losses = self._train(
            u, y, cfg.few_shot_epochs, cfg.few_shot_lr, ctx.seed + 1, ctx.log_metrics, "few_shot_"
        )
        return {
            "images": len(idx),
            "classes": int((labels[idx] == 1).any(axis=0).sum()),
            "epoch_losses": [round(v, 4) for v in losses],
        }

    # --------------------------------------------------------------- inference
    def _label_text(self, ctx: CellContext) -> torch.Tensor:
        key = "comc:photo-prompts"
        if key not in ctx._cache:
            names = ctx.label_space.names()
            ctx._cache[key] = (
                ctx.backbone.encode_text([photo_prompt(n) for n in names]).float().cpu()
            )
        return ctx._cache[key]

    def _fuse(self, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Eq. 4-7 (or v itself when mapping is off)."""
        if not self.config.mapping:
            return v
        a = self.config.alpha
        return a * v + (1 - a) * map_to_text(v, s, self.config.tau)

    @torch.no_grad()
    def predict(self, ctx: CellContext) -> np.ndarray:
        assert self.classifier is not None, "fit first"
        feats = ctx.features("test")
        s = self._label_text(ctx)
        f = self.classifier.eval()
        out = []
        for i in range(0, len(feats), 256):
            v = F.normalize(feats.global_[i : i + 256].float(), dim=-1)
            p = f(self._fuse(v, s))  # Eq. 8 (logits; σ(p) is P^glob)
            if self.config.local:
                loc = F.normalize(feats.patches[i : i + 256].float(), dim=-1)  # [B, K, D]
                q = f(self._fuse(loc, s)).amax(dim=1)  # Eq. 9-11
                if self.config.fusion == "probability":  # Eq. 12, as the logit of P^final
                    p = fuse_probabilities(p.double(), q.double()).float()
                else:
                    p = 0.5 * (p + q)
            out.append(p)
        return torch.cat(out).numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.classifier is None:
            return {}
        return {f"classifier.{k}": v for k, v in self.classifier.state_dict().items()}


METHOD = CoMC
