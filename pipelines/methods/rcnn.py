"""RCNn (Wang et al., ICCV 2025): reconstructed class names learnt from LLM class
descriptions, scored with ClearCLIP local tokens and multi-snippet aggregation.

RCNn trains no image model. Every class, seen and unseen alike, is novel to it (§3.1):
it learns N_c* token vectors v_c* per class on text only, the ``class-descriptions``
corpus (pipelines/text), and scores test images with frozen CLIP features.

- **Scoring (Eq. 2-5)**: global score p_global = x_cls . z_c (Eq. 3); local score
  p_local = sum_i softmax(s_i / tau_s) s_i over the ClearCLIP local-token score map s
  (Eq. 4); p_c = (p_local + p_global) / 2 (Eq. 5). The tokens come from
  pipelines/vlp/clearclip.py (ViT: q-q attention, no residual, no FFN in the last block;
  ResNet: the attention pool's value path per cell) and are cached once per (dataset,
  backbone, split, tower) under ``features/<dataset>/<backbone>@clearclip/``.
- **CNR (Eq. 6)**: the prompt t(c*) = "a photo of a" + v_c* + "." goes through the frozen
  text tower (token embeddings in, eot pooling, projection); only v_c* learn, by the MSE
  between E_t(t(c*)) and E_t(t_i) of the class's descriptions (both l2-normalised, summed
  over the batch, as the reference trainer's ``F.mse_loss(..., reduction='sum')``).
- **PBL (Eq. 7-8)**: L_D = sum_{c != c'} (1 + cos(z_c, z_c')) over all classes, added with
  weight lambda. Eq. 7 also sums the c = c' terms, each the constant 2 (no gradient);
  the reference code masks them out, and so do we.
- **MSSA (Eq. 9-10)**: a sqrt(K) x sqrt(K) grid of snippets, each resized to the input size
  and encoded (a second feature cache, ``@clearclip-snippets-g2``); p^_global =
  (max_j p_global^j + p_global) / 2; the snippet score maps are tiled into a sqrt(K)H x
  sqrt(K)W map, max-pooled back to H x W, averaged with the whole image's map and
  softmax-weighted (Eq. 9); p^_c = (p^_global + p^_local) / 2 (Eq. 10). Several grids
  (the reference's COCO ``count_list: [2, 3]``) average each grid's pooled map / snippet
  maximum with the whole image's, as the reference ``aggregatorplus`` does; with one grid
  that is Eq. 9 exactly.

Settings (the paper's supplementary is not in rcnn.md; sources of each default)
-----------------------------------------------------------------------------
Read in the public reference code ``wangshouwen/RCNn`` (commit f257645, "Code release"):

- ``n_name_tokens`` N_c* = 3: ``configs/nuswide_text.yaml`` TRAINER.TEXT.N_CLSN (COCO: 4).
- ``lambda_pbl`` = 1e-4: nuswide ``no_sim_weights`` (COCO: 0.2); ``no_sim: True`` in both.
- ``tau_s`` = 0.05: ``model/text_model.py`` multiplies the score map by ``logit_scale = 20``
  before the softmax, i.e. tau_s = 1/20.
- ``snippet_grids`` = [2] (K = 4): nuswide ``count_list: [2]`` (COCO: [2, 3]).
- ``context`` = "a photo of a": ``utils/build_cfg.py`` TRAINER.TEXT.CTX_INIT (also §3.4).
- optimiser: SGD, lr 1e-4, momentum 0.9, weight decay 5e-4, 30 epochs, cosine schedule
  after 1 warm-up epoch at the constant lr 1e-5, batch 512 (``configs/*_text.yaml`` and
  the OPTIM defaults of ``utils/build_cfg.py``).
- ``templates`` = True: the reference's caption dataset (``datasets/caption.py``,
  ``extra_template=True``) adds CLIP's 80 ImageNet templates filled with the class name
  to each class's descriptions; we take the same 80 from ``open_clip``. With the authors'
  released COCO corpus (152 sentences per class, corpora ``released:``) they are 34.5% of
  the MSE samples (65 x 80 of 15,064).
- ``init: random`` (default): v_c* drawn from N(0, 0.02) (``model/text_model.py``
  ``ClsnameLearner``: ``nn.init.normal_(clsn_vectors, std=0.02)``), seeded by the cell.
- Model selection: the reference evaluates on the *test* set after every epoch
  (``TRAIN.EVAL_PERIOD = 1``) and keeps the checkpoint of the best F1@3, one for ZSL and
  one for GZSL (``train_text.py``; images without a positive in the block dropped). The
  honest number is the last epoch's (``select: last``, default); ``select:
  best-test-zsl`` / ``best-test-gzsl`` are the reference's selections, each a variant
  whose scores are those of its task's best epoch (read a best-test-zsl cell's ZSL
  columns, a best-test-gzsl cell's GZSL columns), with the per-epoch F1 curve and the
  chosen epoch in the cell's fit summary. ``select_k`` is the K of F1@K (3 as the
  reference; Open Images would be read at 10).

Our choices (not the paper's):

- ``init: name`` (a declared variant): v_c* start from the class name's own token
  embeddings. N_c* is one length for all classes: a name of fewer BPE tokens is padded by
  repeating its last token ("fox" -> "fox fox fox"); a longer name keeps its last N_c*
  tokens (English heads come last: "golden retriever" keeps "retriever" if N_c* = 1).
  ``fit`` reports how many were padded or truncated.
- ``template_share``: the reference's template proportion (~34%) follows from its corpus
  size (~152 descriptions per class). A smaller corpus (the offline provider answers
  from iconworld's knowledge: ~15 per class, so the 80 templates would be 84%) can keep
  the reference's proportion by repeating each class's descriptions (whole copies,
  ``round((1 - s) / s * 80 / n_c)`` times, at least once) until the templates are about
  the share ``s`` of its samples; None (default) uses each description once, as the
  reference. The fit summary reports the share reached (``template_share``).
- ``missing_descriptions``: a class without a description is an error naming it, or with
  ``name`` its plain-name prompt stands in (counted in the cell's meta as
  ``fallback_classes``, listed by label id, since names repeat: Open Images has 108
  repeated seen names).
- The baseline row (Table 3 row 1) encodes "a photo of a {name}." with the frozen text
  tower and scores by Eq. 5, without snippets.

Figure 5 (:func:`figure5`): hierarchical pairs from the dataset's knowledge.json (the
procedural worlds), or, on NUS-WIDE, the paper's eight groups of unseen classes
(:data:`NUS_WIDE_GROUPS`), on the images with a positive in the evaluated block
(published/rcnn.yaml: ``keep_images: with_positive``).

On a timm CNN tower (``icon-lit``'s EfficientNet-Lite0, average pooling + a linear
projection) ClearCLIP's change (no residual, no FFN, q-q attention in the last block) has
nothing to act on: no attention mixes the cells and the pooling is a plain mean. The local
tokens of Eq. 4 are then each cell of the last feature map through the pooled feature's
own projection (what each cell contributes to the global embedding, which is their mean;
4 x 4 cells at 128 px), and the global score of Eq. 3 uses the pooled embedding.
CNR runs on either text tower (pipelines/vlp/text_embeds.py): with MiniLM the context and
the learnt name vectors are WordPiece embeddings, mean-pooled instead of eot-pooled.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from pipelines.methods.base import CellContext, Method, MethodConfig
from pipelines.metrics import hierarchical_pair_metrics
from pipelines.vlp.backbone import Backbone
from pipelines.vlp.text_embeds import (  # CLIP or HF text tower
    check_text_tower,
    encode_token_embeddings,
    subword_ids,
    token_embedding,
)

CODE_DEPS = ("pipelines/vlp/clearclip.py", "pipelines/vlp/text_embeds.py")
N_TEMPLATES = 80  # CLIP's ImageNet templates (open_clip OPENAI_IMAGENET_TEMPLATES)


class Config(MethodConfig):
    corpus: str = (
        "class-descriptions"  # corpus name in params.yaml `corpora:` (offline / an endpoint)
    )
    cnr: bool = True  # class-name reconstruction (Eq. 6); False = the plain names (baseline)
    n_name_tokens: int = Field(3, ge=1, le=16)  # N_c*
    init: Literal["name", "random"] = "random"  # random: N(0, 0.02), the reference's
    context: str = "a photo of a"
    templates: bool = True  # the reference's 80 ImageNet templates as extra samples
    template_share: float | None = Field(None, gt=0, lt=1)  # None: descriptions once each
    select: Literal["last", "best-test-zsl", "best-test-gzsl"] = "last"
    select_k: int = Field(3, ge=1)  # F1@K of the reference's selection
    lambda_pbl: float = Field(1e-4, ge=0)  # lambda of Eq. 8; 0 = no PBL
    missing_descriptions: Literal["error", "name"] = "error"
    tau_s: float = Field(0.05, gt=0)
    mssa: bool = True
    snippet_grids: list[int] = [2]
    epochs: int = Field(30, ge=0)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-4, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, gt=0)
    feature_batch_size: int = Field(64, ge=1)
    score_batch_size: int = Field(256, ge=1)
    threads: int = Field(0, ge=0)  # torch threads for this cell (0 = leave as is)

    @model_validator(mode="after")
    def _grids(self) -> Config:
        if self.mssa and not self.snippet_grids:
            raise ValueError("mssa needs at least one snippet grid (e.g. snippet_grids: [2])")
        if any(g < 2 for g in self.snippet_grids):
            raise ValueError("snippet_grids: each grid side must be >= 2")
        if self.template_share is not None and not self.templates:
            raise ValueError("template_share: needs templates: true")
        if self.select != "last" and not self.cnr:
            raise ValueError("select: the baseline (cnr: false) trains nothing to select")
        return self


# ---------------------------------------------------------------------------- text tower
def _clip_text(backbone: Backbone):
    check_text_tower(backbone.model, f"{backbone.name}: CNR")
    return backbone.model


def _bpe(backbone: Backbone, text: str) -> list[int]:
    return subword_ids(backbone.tokenizer, text)


class NameLearner(torch.nn.Module):
    """v_c* (C, N_c*, W) spliced into "<sot> context X..X . <eot>" (§3.4)."""

    def __init__(self, backbone: Backbone, names: list[str], cfg: Config, seed: int):
        super().__init__()
        model = _clip_text(backbone)
        n = cfg.n_name_tokens
        prompt = cfg.context + " " + " ".join(["X"] * n) + "."
        tokens = backbone.tokenize([prompt])
        self.start = 1 + len(_bpe(backbone, cfg.context))
        emb = token_embedding(model).weight.detach()
        with torch.no_grad():
            base = token_embedding(model)(tokens)  # (1, L, W)
        self.register_buffer("tokens", tokens.expand(len(names), -1).clone())
        self.register_buffer("base", base.expand(len(names), -1, -1).clone())
        self.padded = self.truncated = 0
        if cfg.init == "random":
            g = torch.Generator().manual_seed(seed)
            init = torch.randn(len(names), n, emb.shape[1], generator=g) * 0.02
        else:
            rows = []
            for name in names:
                ids = _bpe(backbone, name) or _bpe(backbone, "thing")
                if len(ids) > n:
                    ids, self.truncated = ids[-n:], self.truncated + 1
                elif len(ids) < n:
                    ids, self.padded = ids + [ids[-1]] * (n - len(ids)), self.padded + 1
                rows.append(emb[torch.tensor(ids, device=emb.device)])
            init = torch.stack(rows)
        self.names = torch.nn.Parameter(init.to(base.device, base.dtype).clone())

    def forward(self, model) -> torch.Tensor:
        """(C, D) l2-normalised class embeddings z_c* = E_t(t(c*))."""
        n = self.names.shape[1]
        x = torch.cat(
            [self.base[:, : self.start], self.names, self.base[:, self.start + n :]], dim=1
        )
        return F.normalize(encode_token_embeddings(model, x, self.tokens), dim=-1)


# ------------------------------------------------------------------------------- losses
def mse_loss(z: torch.Tensor, targets: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
    """Eq. 6: sum over the batch of ||E_t(t(c_i*)) - E_t(t_i)||^2."""
    return (z[label_ids] - targets).pow(2).sum()


def pair_loss(z: torch.Tensor) -> torch.Tensor:
    """Eq. 7 without its constant c = c' terms: sum_{c != c'} (1 + cos(z_c, z_c'))."""
    zn = F.normalize(z, dim=-1)
    sim = 1.0 + zn @ zn.T
    return sim.sum() - sim.diagonal().sum()


# ------------------------------------------------------------------------------ scoring
def local_score(s: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 4: sum_i softmax(s_i / tau) s_i over the token axis (dim -1)."""
    return (torch.softmax(s / tau, dim=-1) * s).sum(-1)


def eq5_scores(g: torch.Tensor, loc: torch.Tensor, z: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 3-5 for a batch: g (B, D), loc (B, N, D), z (C, D) -> (B, C)."""
    p_global = g @ z.T
    s = torch.einsum("bnd,cd->bcn", loc, z)
    return (local_score(s, tau) + p_global) / 2


def mssa_scores(
    g: torch.Tensor,
    loc: torch.Tensor,
    sg: torch.Tensor,
    sloc: torch.Tensor,
    z: torch.Tensor,
    tau: float,
    grids: tuple[int, ...],
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    """Eq. 9-10 for a batch. g (B, D), loc (B, N, D) whole image; sg (B, K, D), sloc
    (B, K, N, D) snippets of every grid in order (row-major tiles); z (C, D) -> (B, C)."""
    h, w = grid_hw
    b, c = g.shape[0], z.shape[0]
    p_global = g @ z.T
    s = torch.einsum("bnd,cd->bcn", loc, z)
    maps, globs, k0 = [], [], 0
    for grid in grids:
        k = grid * grid
        sj = torch.einsum("bknd,cd->bkcn", sloc[:, k0 : k0 + k], z).reshape(b, grid, grid, c, h, w)
        tiled = sj.permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * h, grid * w)
        maps.append(F.max_pool2d(tiled, grid, grid).reshape(b, c, h * w))
        globs.append((sg[:, k0 : k0 + k] @ z.T).amax(1))
        k0 += k
    s_hat = torch.stack([*maps, s]).mean(0)
    p_hat_global = torch.stack([*globs, p_global]).mean(0)
    return (p_hat_global + local_score(s_hat, tau)) / 2


# ------------------------------------------------------------------------------- method
class RCNn(Method):
    Config = Config
    CORPORA = ("class-descriptions",)

    def __init__(self, config: Config):
        super().__init__(config)
        self.class_embeddings: torch.Tensor | None = None
        self.name_vectors: torch.Tensor | None = None  # v_c* of the kept checkpoint
        self.learner: NameLearner | None = None

    def corpora(self) -> dict[str, str]:
        return {"class-descriptions": self.config.corpus} if self.config.cnr else {}

    # ---------------------------------------------------------------- features
    def _dense(self, ctx: CellContext, split: str, grids: tuple[int, ...]):
        from pipelines.vlp import clearclip as cc

        if ctx.feature_dir is None:
            raise RuntimeError(f"{ctx.variant}: the cell gave no feature folder for RCNn's caches")
        base = Path(ctx.feature_dir)
        stamp = base / ".ovml-stage.json"
        source = ""
        if stamp.exists():
            from pipelines.io import read_json

            source = str(read_json(stamp).get("fingerprint", ""))
        out = base.parent / f"{base.name}@{cc.tower_name(grids)}" / split
        src = ctx.open_images(split)
        if hasattr(src, "available"):  # downloaded shards: as the plain feature cache
            src = src.subset(src.available())
        if ctx.feature_mode == "online":  # no dense cache: the tower runs when rows are read
            return cc.OnlineDense(ctx.backbone, src, grids), "online"
        built = False
        if not cc.cache_is_valid(out, source, grids, [str(x) for x in src.image_ids]):
            cc.extract_dense(
                ctx.backbone,
                src,
                out,
                grids=grids,
                source_fingerprint=source,
                batch_size=self.config.feature_batch_size,
                progress=ctx.progress,
                desc=f"{cc.tower_name(grids)} {ctx.dataset}/{split}",
            )
            built = True
        return cc.load_dense(out), "built" if built else "reused"

    # --------------------------------------------------------------------- fit
    def _training_texts(self, ctx: CellContext) -> tuple[list[str], list[int], dict[str, Any]]:
        """The MSE samples (Eq. 6): each class's descriptions, the plain-name fallback
        where it has none (``missing_descriptions: name``), and the 80 templates; plus
        their counts. Classes are label columns throughout (names repeat)."""
        cfg = self.config
        space = ctx.label_space
        names = space.names()
        per_class: list[list[str]] = [[] for _ in names]
        df = ctx.corpus("class-descriptions")
        for label_id, text in zip(df["label_id"].to_list(), df["text"].to_list(), strict=True):
            if not 0 <= int(label_id) < len(names):
                raise ValueError(f"{cfg.corpus}: label_id {label_id} outside the label space")
            per_class[int(label_id)].append(str(text))
        missing = [j for j, texts in enumerate(per_class) if not texts]
        if missing and cfg.missing_descriptions == "error":
            raise ValueError(
                f"{cfg.corpus}: no description for {len(missing)} class(es), e.g. "
                f"{[names[j] for j in missing[:5]]}; rebuild the corpus, or set "
                "missing_descriptions: name to fall back to the plain class name"
            )
        for j in missing:
            per_class[j].append(f"{cfg.context} {names[j]}.")
        n_corpus = sum(len(t) for t in per_class) - len(missing)
        repeats = [1] * len(names)
        if cfg.template_share is not None:
            ratio = (1 - cfg.template_share) / cfg.template_share * N_TEMPLATES
            repeats = [max(1, round(ratio / len(t))) for t in per_class]
        texts: list[str] = []
        ids: list[int] = []
        for j, class_texts in enumerate(per_class):
            for _ in range(repeats[j]):
                texts += class_texts
                ids += [j] * len(class_texts)
        n_descriptions = len(texts)
        if cfg.templates:
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

            for j, name in enumerate(names):
                for tpl in OPENAI_IMAGENET_TEMPLATES:
                    texts.append(tpl(name))
                    ids.append(j)
        counts = {
            "n_texts": len(texts),
            "n_corpus_texts": n_corpus,
            "n_templates": len(texts) - n_descriptions,
            "template_share": round((len(texts) - n_descriptions) / max(1, len(texts)), 4),
            "description_repeats_mean": round(float(np.mean(repeats)), 3),
            "fallback_classes": len(missing),
            "fallback_labels": [f"{space.all[j].id} ({names[j]})" for j in missing[:20]],
        }
        return texts, ids, counts

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        summary: dict[str, Any] = {"feature_cache": {}}
        t0 = time.time()
        for grids in [(), *([tuple(cfg.snippet_grids)] if cfg.mssa else [])]:
            _, how = self._dense(ctx, "test", grids)
            from pipelines.vlp.clearclip import tower_name

            summary["feature_cache"][tower_name(grids)] = how
        summary["seconds_features"] = round(time.time() - t0, 2)
        bb = ctx.backbone
        names = ctx.label_space.names()
        if not cfg.cnr:
            prompts = [f"{cfg.context} {n}." for n in names]
            self.class_embeddings = bb.encode_text(prompts).float().cpu()
            return summary
        t1 = time.time()
        texts, ids, counts = self._training_texts(ctx)
        model = _clip_text(bb)
        targets = bb.encode_text(texts).float()
        labels = torch.tensor(ids, device=targets.device)
        learner = NameLearner(bb, names, cfg, ctx.seed).to(bb.device)
        for p in model.parameters():
            p.requires_grad_(False)
        opt = torch.optim.SGD(
            [learner.names], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        gen = torch.Generator().manual_seed(ctx.seed)
        n = len(texts)
        steps = math.ceil(n / cfg.batch_size)
        history = []
        selection = _Selection(self, ctx) if cfg.select != "last" else None
        bar = tqdm(range(cfg.epochs), desc=f"rcnn {ctx.dataset}", disable=not ctx.progress)
        for epoch in bar:
            lr = _lr(cfg, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            order = torch.randperm(n, generator=gen)
            total = mse_sum = pbl_sum = 0.0
            for i in range(steps):
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size].to(targets.device)
                z = learner(model)
                l_mse = mse_loss(z, targets[idx], labels[idx])
                loss = l_mse
                if cfg.lambda_pbl > 0:
                    l_d = pair_loss(z)
                    loss = loss + cfg.lambda_pbl * l_d
                    pbl_sum += float(l_d.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                mse_sum += float(l_mse.detach())
            history.append(round(total / steps, 4))
            logged = {"loss": total / steps, "mse": mse_sum / steps, "pbl": pbl_sum / steps}
            if selection is not None:
                with torch.no_grad():
                    logged[selection.metric] = selection.update(
                        epoch, learner(model), learner.names
                    )
            ctx.log_metrics(logged, epoch)
            bar.set_postfix(loss=f"{total / steps:.3f}")
        learner.eval()
        with torch.no_grad():
            self.class_embeddings = learner(model).float().cpu()
        self.learner = learner
        self.name_vectors = learner.names.detach().cpu().clone()
        if selection is not None and selection.best is not None:
            self.class_embeddings = selection.best  # the reference's checkpoint
            self.name_vectors = selection.best_names
        summary.update(
            {
                **counts,
                "names_padded": learner.padded,
                "names_truncated": learner.truncated,
                "loss_history": history,
                **(selection.summary() if selection is not None else {}),
                "seconds_train": round(time.time() - t1, 2),
            }
        )
        return summary

    # ----------------------------------------------------------------- predict
    def predict(self, ctx: CellContext) -> np.ndarray:
        if self.class_embeddings is None:
            self.fit(ctx)
        assert self.class_embeddings is not None
        return self.scores(ctx, self.class_embeddings).numpy().astype(np.float32)

    def scores(self, ctx: CellContext, z: torch.Tensor) -> torch.Tensor:
        """Test scores (N_test, C) of class embeddings ``z``: Eq. 5, or Eq. 9-10 with MSSA."""
        cfg = self.config
        z = z.detach().float().cpu()
        whole, _ = self._dense(ctx, "test", ())
        snip = self._dense(ctx, "test", tuple(cfg.snippet_grids))[0] if cfg.mssa else None
        out = []
        bs = cfg.score_batch_size
        with torch.no_grad():
            for i in range(0, len(whole), bs):
                g = whole.global_[i : i + bs].float()
                loc = whole.local[i : i + bs].float()
                if snip is None:
                    out.append(eq5_scores(g, loc, z, cfg.tau_s))
                else:
                    out.append(
                        mssa_scores(
                            g,
                            loc,
                            snip.global_[i : i + bs].float(),
                            snip.local[i : i + bs].float(),
                            z,
                            cfg.tau_s,
                            tuple(cfg.snippet_grids),
                            whole.grid_hw,
                        )
                    )
        return torch.cat(out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.class_embeddings is not None:
            out["class_embeddings"] = self.class_embeddings
        if self.name_vectors is not None:
            out["name_vectors"] = self.name_vectors
        return out


class _Selection:
    """The reference's model selection: after every epoch, F1@K of the test scores on
    the task's block (ZSL: unseen columns; GZSL: all), over the images with a positive
    there (the reference's masks); the first epoch of the best F1 is kept (``>``)."""

    def __init__(self, method: RCNn, ctx: CellContext):
        cfg = method.config
        self.method, self.ctx, self.k = method, ctx, cfg.select_k
        self.task = "zsl" if cfg.select == "best-test-zsl" else "gzsl"
        self.metric = f"test_{self.task}_F1@{self.k}"
        lo = ctx.label_space.n_seen if self.task == "zsl" else 0
        self.cols = slice(lo, ctx.n_labels)
        self.labels = np.asarray(ctx.test_labels)[:, self.cols]
        if self.k > self.labels.shape[1]:
            raise ValueError(f"select_k = {self.k}: the {self.task} block has fewer columns")
        self.best: torch.Tensor | None = None
        self.best_names: torch.Tensor | None = None
        self.best_f1, self.best_epoch = 0.0, -1
        self.curve: list[float] = []

    def update(self, epoch: int, z: torch.Tensor, names: torch.Tensor) -> float:
        from pipelines.metrics import precision_recall_f1_at_k

        scores = self.method.scores(self.ctx, z).numpy()[:, self.cols]
        _, _, f1 = precision_recall_f1_at_k(
            scores, self.labels, self.k, keep_images="with_positive"
        )
        f1 = float(f1)
        self.curve.append(round(f1, 4))
        if f1 > self.best_f1:
            self.best_f1, self.best_epoch = f1, epoch
            self.best = z.detach().float().cpu().clone()
            self.best_names = names.detach().cpu().clone()
        return f1

    def summary(self) -> dict[str, Any]:
        return {
            "select": {
                "task": self.task,
                "metric": self.metric,
                "curve": self.curve,
                "best_epoch": self.best_epoch,
                "best": round(self.best_f1, 4),
                "last": self.curve[-1] if self.curve else None,
            }
        }


def _lr(cfg: Config, epoch: int) -> float:
    """Constant warm-up for ``warmup_epochs``, then cosine from ``lr`` (reference scheduler)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    span = max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


METHOD = RCNn


# ------------------------------------------------------------------------- Figure 5
# RCNn §4.5: "We select some categories from the 81 unseen classes of NUS-WIDE to create
# eight semantically related groups, namely animal, person, vehicle, buildings, plants,
# sports, water, and sky. These group names are also part of the unseen classes." The
# members are drawn only in Figure 4 (an image); the text names these pairs: leaf-plants,
# sun-sky, dancing-sports, fish between water and animal, swimmers between water and
# sports. The members below are our reading of the 81 unseen names (a class may sit in two
# groups, as fish and swimmers do); every (member, group) is a hierarchical pair.
NUS_WIDE_GROUPS: dict[str, tuple[str, ...]] = {
    "animal": (
        "bear", "birds", "cat", "cow", "dog", "elk", "fish", "fox", "horses", "tiger",
        "whales", "zebra",
    ),
    "person": ("dancing", "military", "police", "protest", "running", "swimmers", "wedding"),
    "vehicle": ("boats", "cars", "plane", "train"),
    "buildings": ("castle", "house", "temple", "tower"),
    "plants": ("flowers", "garden", "grass", "leaf", "tree"),
    "sports": ("dancing", "running", "soccer", "surf", "swimmers"),
    "water": ("beach", "fish", "harbor", "lake", "ocean", "surf", "swimmers", "waterfall", "whales"),
    "sky": ("clouds", "moon", "rainbow", "sun", "sunset"),
}  # fmt: skip


def hierarchy_pairs(knowledge: dict, names: list[str]) -> list[tuple[int, int]]:
    """(child, parent) columns of ``names`` from a dataset's knowledge.json ``parents``
    (the dataset-knowledge contract), both ends inside ``names``."""
    col = {n: j for j, n in enumerate(names)}
    pairs = []
    for name, info in knowledge.get("labels", {}).items():
        for parent in info.get("parents", []):
            if name in col and parent in col and name != parent:
                pairs.append((col[name], col[parent]))
    return sorted(set(pairs))


def group_pairs(groups: dict[str, tuple[str, ...]], names: list[str]) -> list[tuple[int, int]]:
    """(member, group) columns of ``names``; a name missing from ``names`` is an error
    (a label set that is not NUS-WIDE's unseen 81)."""
    col = {n.lower(): j for j, n in enumerate(names)}
    missing = sorted({n for g, ms in groups.items() for n in (g, *ms) if n.lower() not in col})
    if missing:
        raise ValueError(
            f"Figure 5's groups name classes outside this block: {missing[:8]} (they are "
            "NUS-WIDE's unseen labels; evaluate the zsl block of nus-wide)"
        )
    return sorted({(col[m.lower()], col[g.lower()]) for g, ms in groups.items() for m in ms})


def figure5_pairs(params, dataset: str, names: list[str]) -> tuple[list[tuple[int, int]], str]:
    """The hierarchical pairs of Figure 5 on ``dataset``'s block ``names``, and where they
    come from: knowledge.json (the procedural worlds), else the paper's eight NUS-WIDE
    groups; any other dataset has none to offer (an error that says so)."""
    from pipelines.io import read_json

    knowledge_file = params.path("data") / dataset / "knowledge.json"
    if knowledge_file.exists():
        return hierarchy_pairs(read_json(knowledge_file), names), "knowledge.json"
    if params.datasets[dataset].source == "nus-wide":
        return group_pairs(NUS_WIDE_GROUPS, names), "the paper's eight NUS-WIDE groups"
    raise FileNotFoundError(
        f"{knowledge_file}: Figure 5 needs a label hierarchy; {dataset} has no knowledge.json "
        "and is not NUS-WIDE (whose eight groups are encoded in rcnn.NUS_WIDE_GROUPS)"
    )


def figure5(params, dataset: str, variants: list[str], task: str = "zsl") -> list[dict]:
    """RCNn Figure 5 for computed cells: pairwise recall@10 of hierarchical pairs (GT
    completed with missing parents) and label-level P/R@5, per variant, on ``task``'s
    block (zsl = unseen columns, gzsl = all), over the images with a positive in that
    block (published/rcnn.yaml figure5: ``keep_images: with_positive``)."""
    from pipelines.cells import cell_dir
    from pipelines.data.prepared import PreparedDataset
    from pipelines.io import load_npz

    ds = PreparedDataset.load(params.path("data") / dataset)
    names = ds.label_space.names()
    lo = ds.label_space.n_seen if task == "zsl" else 0
    test = ds.splits["test"]
    row_of = {str(i): r for r, i in enumerate(test.image_ids)}
    pairs, source = figure5_pairs(params, dataset, names[lo:])
    rows = []
    for variant in variants:
        stored = load_npz(cell_dir(params, dataset, variant) / "scores.npz")
        ids = [str(i) for i in stored["image_ids"]]  # the images the cell had (dead links out)
        unknown = [i for i in ids if i not in row_of]
        if unknown:
            raise ValueError(f"{dataset}/{variant}: scores of unknown test images {unknown[:3]}")
        labels = np.asarray(test.labels)[[row_of[i] for i in ids]][:, lo:]
        keep = (labels == 1).any(axis=1)
        scores = stored["scores"][:, lo:]
        k = min(10, scores.shape[1])
        m = hierarchical_pair_metrics(scores[keep], labels[keep], pairs, k_pairs=k, k_labels=5)
        rows.append({"variant": variant, "task": task, "pairs_from": source, **m})
    return rows
