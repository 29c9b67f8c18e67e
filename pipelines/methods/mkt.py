"""MKT: Multi-modal Knowledge Transfer (He et al., "Open-Vocabulary Multi-Label
Classification via Multi-modal Knowledge Transfer", AAAI 2023; reference code sunanhe/MKT).

The paper is not in ../shared/papers, so its parts are cited by section name, as the
citing papers (QKS Sec. 2 and Figure 1(a), C2SRT Sec. 2) and the reference code describe
them, not by equation number. Two stages, as the reference code trains them
(``train_nus_first_stage.py``, ``train_nus_second_stage.py``):

1. **Image side, fixed prompts** (Sec. "Knowledge distillation" and "Two-stream module").
   The VLP image tower (a student initialised from the VLP) is fine-tuned end to end from
   images against frozen label embeddings of a fixed prompt (the reference's template
   "There is a {label} in the scene", through the frozen text tower). Only the last
   ``finetune_layers`` layer groups train (the reference: ``fix_layer 10`` of ViT-B/16, i.e.
   blocks 11-12 and ln_post / proj), with layer-wise lr decay ``layer_decay`` (0.65: group
   g trains at lr * 0.65^(G - g)) and no weight decay on 1-D parameters (BEiT's recipe,
   reference ``utils/lr_decay.py``). Loss: the ranking loss + lambda * L_dist.

   - *Two-stream scores*: global head s^G_c = <f_G, t_c> with the tower's global embedding;
     local head s^L_c = mean of the top-k of <f_j, t_c> over the patch tokens f_j in the
     joint space (ViT: after ln_post and the same proj as the class token; a CNN: its cells,
     pipelines/vlp/backbone.py ``image_tokens``; k = ``topk``, 16 of ViT-B/16's 196 patches).
     Each score vector is L2-normalised over the scored labels, then s = (s^G + s^L) / 2
     (reference ``models/clip_vit.py``). The normalisation makes the scores invariant to the
     embeddings' norms. ``streams: global | local`` keeps one head (the paper's ablation).
   - *Knowledge distillation*: L_dist = L1 between the student's global image embedding and
     the frozen VLP's (reference ``F.l1_loss``: mean absolute difference over the batch and
     the dimensions). The teacher never runs: its embedding is the cell's cached frozen
     feature of the same train image (``ctx.features("train").global_[batch.index]``, as
     C2SRT does), which the cache holds unit-normalised. The target is that unit vector
     times the student's own (detached) embedding norm: it equals the reference's target
     whenever the student keeps the teacher's norm (exactly so at the start, where student
     = teacher), so the term has the reference's weight against the ranking loss; it only
     no longer pulls the norm, which no score depends on.
2. **Prompt context, fixed image side** (Sec. "Prompt tuning"). The stage-1 image tower is
   frozen and the prompt's context is learnt with the ranking loss alone, as the reference
   code does: every token of the template except the label name (start of text, "there is
   a", "in the scene", end of text) is a learnable vector shared by all labels, initialised
   from its token embedding; the name's token embeddings stay fixed (reference
   ``models/prompt_model.py``: the name positions are overwritten with frozen copies, the
   rest of the token-embedding table trains). Unseen labels use the learnt context with
   their own names. ``prompt_tuning: false`` stops after stage 1.

Ranking loss (reference ``models/rank_loss.py``, from BiAM): per image, the sum over its
annotated (positive p, negative n) seen pairs of max(0, margin + s_n - s_p), divided by the
number of violating pairs, averaged over the images with at least one seen positive
(images without one are dropped from the batch, as the reference does).

Deviations, made explicit:
- The reference's schedule is a per-step half-cosine with 2 warm-up epochs (stage 1) and
  none (stage 2); the shared trainer steps its cosine once per epoch, without warm-up.
- Label embeddings are unit-normalised (the reference leaves the tuned prompts' output
  unnormalised, so a label's norm scales its score).
- One score matrix per cell: the ZSL scores are the GZSL scores' unseen columns, normalised
  over every label. The reference normalises its ZSL block over the unseen labels alone;
  per-image top-K (P/R/F1) is the same either way, per-label mAP can differ.
- The reference ships NUS-WIDE scripts only; Open Images runs with the same settings.
- Prompt tuning needs an open_clip text tower (token embeddings + causal transformer);
  another text tower can run ``prompt_tuning: false``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pipelines.methods.base import CellContext, Method, MethodConfig
from pipelines.methods.qks import TextTower
from pipelines.train import (
    CHECKPOINT_PREFIX,
    LATEST,
    Batch,
    ImageTower,
    TrainConfig,
    Trainer,
    TrainModule,
    compact_annotated,
    method_fingerprint,
    trainable_state,
)

CODE_DEPS = ("pipelines/train.py", "pipelines/methods/qks.py")

MKT_TEMPLATE = "there is a {} in the scene"  # reference: f"There is a {name} in the scene"
PROMPT_DIR = "prompt-tuning"  # stage 2's checkpoints, under the cell's workdir

# Reference first stage: AdamW lr 1e-3, weight decay 0.05, batch 64, 20 epochs, 224 px.
STAGE1_TRAIN = TrainConfig(
    epochs=20,
    batch_size=64,
    lr=1e-3,
    weight_decay=0.05,
    optimizer="adamw",
    schedule="cosine",
    input_mode="images",
)
# Reference second stage: AdamW lr 1e-3, weight decay 0.05, batch 64, 4 epochs.
STAGE2_TRAIN = TrainConfig(
    epochs=4,
    batch_size=64,
    lr=1e-3,
    weight_decay=0.05,
    optimizer="adamw",
    schedule="cosine",
    input_mode="images",
)


class Config(MethodConfig):
    """Defaults are the reference code's NUS-WIDE settings (ViT-B/16, k = 16, fix_layer 10
    = the last 3 layer groups, layer decay 0.65, lambda = 1, margin 1)."""

    topk: Annotated[int, Field(ge=1)] = 16  # local head: mean of the k best patches
    streams: Literal["both", "global", "local"] = "both"
    distill: bool = True
    lambda_dist: Annotated[float, Field(ge=0)] = 1.0
    finetune_layers: Annotated[int, Field(ge=1)] | None = 3  # None: every layer group trains
    layer_decay: Annotated[float, Field(gt=0, le=1)] = 0.65
    stage1_prompts: Literal["template", "single", "pool"] = "template"
    template: str = MKT_TEMPLATE
    prompt_tuning: bool = True
    margin: Annotated[float, Field(gt=0)] = 1.0
    train: TrainConfig = STAGE1_TRAIN  # stage 1: the image tower
    prompt_train: TrainConfig = STAGE2_TRAIN  # stage 2: the prompt context

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.template.count("{}") != 1:
            raise ValueError(
                f"template: needs exactly one '{{}}' for the label name: {self.template!r}"
            )
        for name, tc in (("train", self.train), ("prompt_train", self.prompt_train)):
            if tc.input_mode == "features":
                raise ValueError(
                    f"{name}.input_mode: MKT runs its (fine-tuned) image tower on images: "
                    "use 'auto' or 'images'"
                )
        return self


# ------------------------------------------------------------------------------ scoring
def two_stream_scores(
    global_: torch.Tensor,
    patches: torch.Tensor,
    text: torch.Tensor,
    topk: int,
    streams: str = "both",
) -> torch.Tensor:
    """(B, D) global, (B, P, D) patch tokens, (C, D) labels -> (B, C) MKT scores.

    s^G = f_G t^T and s^L = mean of the top-k over patches of f_j t^T, each L2-normalised
    over the C labels, then averaged (reference ``CLIPVIT.forward``). Always float32."""
    with torch.autocast(global_.device.type, enabled=False):
        text = text.float()
        parts = []
        if streams in ("both", "global"):
            parts.append(F.normalize(global_.float() @ text.T, dim=-1))
        if streams in ("both", "local"):
            if topk > patches.shape[1]:
                raise ValueError(
                    f"topk = {topk} but the backbone gives {patches.shape[1]} local tokens"
                )
            sim = torch.einsum("bpd,cd->bpc", patches.float(), text)
            parts.append(F.normalize(sim.topk(topk, dim=1).values.mean(dim=1), dim=-1))
        return parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2


def ranking_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """MKT's / BiAM's ranking loss (reference ``ranking_lossT``): per image, the summed hinge
    max(0, margin + s_n - s_p) over annotated (positive, negative) pairs divided by the
    number of violating pairs; mean over the images with at least one positive."""
    has_pos = (targets > 0).any(dim=1)
    if not bool(has_pos.any()):
        return scores.sum() * 0.0
    scores, targets = compact_annotated(scores[has_pos], targets[has_pos])
    pos = (targets > 0).to(scores.dtype)
    neg = (targets < 0).to(scores.dtype)
    hinge = (margin - scores.unsqueeze(2) + scores.unsqueeze(1)).clamp(min=0)  # [b, p, n]
    hinge = hinge * (pos.unsqueeze(2) * neg.unsqueeze(1))
    violations = (hinge > 0).to(scores.dtype).sum(dim=(1, 2))
    return (hinge.sum(dim=(1, 2)) / (violations + 1e-8)).mean()


def distillation_target(student: torch.Tensor, teacher_unit: torch.Tensor) -> torch.Tensor:
    """The frozen VLP's embedding direction (re-normalised: the cache is fp16) at the
    student's current, detached norm."""
    direction = F.normalize(teacher_unit.float(), dim=-1)
    return direction * student.detach().float().norm(dim=-1, keepdim=True)


def distillation_loss(student: torch.Tensor, teacher_unit: torch.Tensor) -> torch.Tensor:
    """L_dist: mean absolute difference to :func:`distillation_target` (``F.l1_loss``)."""
    return F.l1_loss(student.float(), distillation_target(student, teacher_unit))


# ------------------------------------------------------------------- the image tower
class RawImageTower(ImageTower):
    """An :class:`ImageTower` that returns the global embedding unnormalised (the
    distillation compares raw embeddings) with the patch tokens in the joint space."""

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pipelines.vlp.backbone import Backbone

        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            shim = Backbone("tower", SimpleNamespace(visual=self.visual), None, None, pixels.device)
            return shim.image_tokens(pixels)


def layer_groups(visual: nn.Module) -> list[list[str]]:
    """Parameter names of an image tower in layer groups, input to output.

    open_clip ViT: [patch embedding, class / position embeddings, ln_pre], one group per
    residual block, [ln_post, proj, the rest] (the reference's layer ids for layer decay).
    open_clip ModifiedResNet: [stem], layer1..layer4, [attnpool]. Any other tower: its
    top-level children in order (a Sequential or ModuleList child counts each element)."""
    names = [n for n, _ in visual.named_parameters()]
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None:  # ViT
        n_blocks = len(blocks)

        def vit_id(n: str) -> int:
            if n.split(".")[0] in ("conv1", "class_embedding", "positional_embedding", "ln_pre"):
                return 0
            m = re.match(r"transformer\.resblocks\.(\d+)\.", n)
            return int(m.group(1)) + 1 if m else n_blocks + 1

        return _grouped(names, vit_id, n_blocks + 2)
    if hasattr(visual, "attnpool") and hasattr(visual, "layer4"):  # ModifiedResNet

        def rn_id(n: str) -> int:
            head = n.split(".")[0]
            if head.startswith("layer"):
                return int(head.removeprefix("layer"))
            return 5 if head == "attnpool" else 0

        return _grouped(names, rn_id, 6)
    order: list[str] = []
    for child, mod in visual.named_children():
        if isinstance(mod, nn.Sequential | nn.ModuleList):
            order += [f"{child}.{k}" for k, _ in mod.named_children()]
        else:
            order.append(child)

    def generic_id(n: str) -> int:
        for i, prefix in enumerate(order):
            if n.startswith(prefix + "."):
                return i
        return len(order)  # parameters of the tower itself: with the output

    return _grouped(names, generic_id, len(order) + 1)


def _grouped(names: list[str], group_of, n_groups: int) -> list[list[str]]:
    groups: list[list[str]] = [[] for _ in range(n_groups)]
    for n in names:
        groups[group_of(n)].append(n)
    return [g for g in groups if g]


# ----------------------------------------------------------------------- prompt tuning
class TemplatePrompts(nn.Module):
    """Label embeddings from the template with a learnt, label-shared context (stage 2).

    Each label's token sequence is [SOT, template words before the name, name tokens,
    template words after it, EOT]; every position but the name reads a learnable vector
    (initialised from its token embedding), the name reads its fixed token embeddings, and
    the sequence goes through the frozen text tower (:class:`pipelines.methods.qks.TextTower`).
    Before training the output is exactly the frozen text tower's embedding of the filled
    template."""

    def __init__(self, backbone, names: list[str], template: str = MKT_TEMPLATE):
        super().__init__()
        clip = backbone.model
        if not hasattr(clip, "token_embedding") or backbone.tokenizer is None:
            raise TypeError(
                f"{backbone.name}: MKT's prompt tuning needs an open_clip text tower with "
                "token embeddings; set prompt_tuning: false for this backbone"
            )
        self.tower = TextTower(clip, trainable=False)
        before, after = (s.strip() for s in template.split("{}"))
        pre = list(backbone.tokenizer.encode(before)) if before else []
        suf = list(backbone.tokenizer.encode(after)) if after else []
        tokens = backbone.tokenize([template.format(n) for n in names]).cpu()
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest of the vocabulary
        index = torch.full(tokens.shape, -1, dtype=torch.long)
        n_pre, n_suf = len(pre), len(suf)
        for i, name in enumerate(names):
            e = int(eot[i])
            if (
                e - 1 - n_pre - n_suf < 1
                or tokens[i, 1 : 1 + n_pre].tolist() != pre
                or tokens[i, e - n_suf : e].tolist() != suf
            ):
                raise ValueError(
                    f"label {name!r}: the template {template!r} does not tokenize around the "
                    f"name (is the prompt longer than the text tower's "
                    f"{tokens.shape[1]} tokens?)"
                )
            index[i, 0] = 0  # SOT
            index[i, 1 : 1 + n_pre] = torch.arange(1, 1 + n_pre)
            index[i, e - n_suf : e] = torch.arange(1 + n_pre, 1 + n_pre + n_suf)
            index[i, e] = 1 + n_pre + n_suf  # EOT
        with torch.no_grad():
            base = self.tower.token_embedding(tokens.to(self.tower.token_embedding.weight.device))
            first = index[0]
            init = torch.stack(
                [base[0, int((first == j).nonzero()[0])] for j in range(n_pre + n_suf + 2)]
            )
        self.context = nn.Parameter(init.detach().float().clone())
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("base", base.detach().float().clone(), persistent=False)
        self._eval_cache: torch.Tensor | None = None

    def train(self, mode: bool = True) -> TemplatePrompts:
        self._eval_cache = None
        return super().train(mode)

    def encode(self, n_labels: int) -> torch.Tensor:
        """(n_labels, D) unit-norm embeddings of the first ``n_labels`` labels."""
        idx = self.index[:n_labels]
        ctx = self.context.to(self.base.dtype)[idx.clamp(min=0)]
        embeds = torch.where((idx >= 0).unsqueeze(-1), ctx, self.base[:n_labels])
        dtype = self.tower.token_embedding.weight.dtype
        out = self.tower(self.tokens[:n_labels], embeds.to(dtype))
        return F.normalize(out.float(), dim=-1)

    def forward(self, n_labels: int) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.encode(n_labels)
        if self._eval_cache is None or self._eval_cache.shape[0] != n_labels:
            self._eval_cache = self.encode(n_labels)
        return self._eval_cache


@torch.no_grad()
def template_embeddings(backbone, names: list[str], template: str = MKT_TEMPLATE) -> torch.Tensor:
    """(C, D) unit-norm frozen embeddings of the filled template (stage 1's classifier)."""
    return backbone.encode_text([template.format(n) for n in names]).float().cpu()


# ----------------------------------------------------------------------------- modules
class MKTImageModule(TrainModule):
    """Stage 1: the partly unfrozen image tower, frozen label embeddings, rank + dist."""

    input_mode = "images"

    def __init__(self, cfg: Config, ctx: CellContext, text: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.n_seen = ctx.n_seen
        self.tower = RawImageTower(ctx.backbone, trainable=True)
        self.groups = layer_groups(self.tower.visual)
        n_train = len(self.groups) if cfg.finetune_layers is None else cfg.finetune_layers
        self.first_trained = max(0, len(self.groups) - n_train)
        params = dict(self.tower.visual.named_parameters())
        for g, names in enumerate(self.groups):
            for n in names:
                params[n].requires_grad_(g >= self.first_trained)
        self.register_buffer("text", F.normalize(text.float(), dim=-1).cpu().clone())
        self._ctx = ctx
        self._teacher: torch.Tensor | None = None

    def train(self, mode: bool = True) -> MKTImageModule:
        """Normalisation layers of the frozen groups keep their statistics (eval mode)."""
        super().train(mode)
        for m in self.tower.visual.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters(recurse=False)
            ):
                m.eval()
        return self

    def teacher(self, index: torch.Tensor) -> torch.Tensor:
        """The frozen VLP's unit global embedding of the batch's train images (the cache)."""
        if self._teacher is None:
            if self._ctx.feature_dir is not None:  # streamed: global rows read as indexed
                from pipelines.vlp.features import load_features

                feats = load_features(Path(self._ctx.feature_dir) / "train")
            else:
                feats = self._ctx.features("train")
            self._teacher = feats.global_
        return self._teacher[index.cpu()].float()

    def forward(self, batch: Batch, *, seen_only: bool = True) -> dict[str, torch.Tensor]:
        if batch.pixels is None:
            raise ValueError("MKT fine-tunes the image tower: it needs images-mode batches")
        g, patches = self.tower(batch.pixels)
        text = self.text[: self.n_seen] if seen_only else self.text
        out = {"global": g, "patches": patches, "text": text}
        if self.training and self.cfg.distill:
            out["teacher"] = self.teacher(batch.index).to(g.device)
        return out

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return two_stream_scores(
            outputs["global"], outputs["patches"], outputs["text"], self.cfg.topk, self.cfg.streams
        )

    def loss(self, outputs, targets):
        rank = ranking_loss(self.scores(outputs), targets, self.cfg.margin)
        if "teacher" not in outputs:
            return rank, {"rank": rank.detach()}
        dist = distillation_loss(outputs["global"], outputs["teacher"])
        return rank + self.cfg.lambda_dist * dist, {"rank": rank.detach(), "dist": dist.detach()}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Layer-wise lr decay over the trained groups; no weight decay on 1-D parameters
        (reference ``param_groups_lrd``)."""
        params = dict(self.tower.visual.named_parameters())
        last = len(self.groups) - 1
        out = []
        for g in range(self.first_trained, len(self.groups)):
            scale = self.cfg.layer_decay ** (last - g)
            ps = [params[n] for n in self.groups[g] if params[n].requires_grad]
            decay = [p for p in ps if p.ndim > 1]
            flat = [p for p in ps if p.ndim <= 1]
            out.append({"params": decay, "lr": lr * scale})
            out.append({"params": flat, "lr": lr * scale, "weight_decay": 0.0})
        return out


class MKTPromptModule(TrainModule):
    """Stage 2: the stage-1 tower frozen, the template's context learnt (ranking loss)."""

    input_mode = "images"

    def __init__(self, cfg: Config, ctx: CellContext, image: MKTImageModule):
        super().__init__()
        self.cfg = cfg
        self.n_seen, self.n_labels = ctx.n_seen, ctx.n_labels
        self.tower = RawImageTower(ctx.backbone, trainable=False)
        self.tower.visual.load_state_dict(image.tower.visual.state_dict())
        self.prompts = TemplatePrompts(ctx.backbone, ctx.label_space.names(), cfg.template)

    def forward(self, batch: Batch, *, seen_only: bool = True) -> dict[str, torch.Tensor]:
        if batch.pixels is None:
            raise ValueError("MKT's prompt tuning runs the stage-1 tower: images-mode batches")
        g, patches = self.tower(batch.pixels)
        text = self.prompts(self.n_seen if seen_only else self.n_labels)
        return {"global": g, "patches": patches, "text": text}

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return two_stream_scores(
            outputs["global"], outputs["patches"], outputs["text"], self.cfg.topk, self.cfg.streams
        )

    def loss(self, outputs, targets):
        return ranking_loss(self.scores(outputs), targets, self.cfg.margin)


# ------------------------------------------------------------------------------ method
class MKT(Method):
    Config = Config

    def __init__(self, config: Config):
        super().__init__(config)
        self.image: MKTImageModule | None = None
        self.prompt: MKTPromptModule | None = None
        self.trainers: dict[str, Trainer] = {}

    def stage1_text(self, ctx: CellContext) -> torch.Tensor:
        cfg: Config = self.config
        if cfg.stage1_prompts == "template":
            return template_embeddings(ctx.backbone, ctx.label_space.names(), cfg.template)
        return ctx.label_embeddings(cfg.stage1_prompts).float().cpu()

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        cfg: Config = self.config
        self.image = MKTImageModule(cfg, ctx, self.stage1_text(ctx))
        fp1 = {**method_fingerprint(self.image, cfg), "stage": "image"}
        t1 = self.trainers["image"] = Trainer(cfg.train, ctx, fingerprint=fp1)
        r1 = t1.fit(self.image)
        summary: dict[str, Any] = {
            **r1.summary(),
            "backbone": ctx.backbone_name,
            "layer_groups": len(self.image.groups),
            "trained_layer_groups": len(self.image.groups) - self.image.first_trained,
            "streams": cfg.streams,
            "distill": cfg.distill,
        }
        if not cfg.prompt_tuning:
            return summary
        work = Path(ctx.workdir) / PROMPT_DIR
        if r1.epochs_run:  # a retrained image side never meets an old prompt checkpoint
            _clear_checkpoints(work)
        offset = len(r1.history)
        ctx2 = dataclasses.replace(
            ctx,
            workdir=work,
            log_metrics=lambda m, step: ctx.log_metrics(
                {f"prompt_{k}": v for k, v in m.items()}, offset + step
            ),
        )
        self.prompt = MKTPromptModule(cfg, ctx2, self.image)
        fp2 = {
            **method_fingerprint(self.prompt, cfg),
            "stage": "prompt",
            "image_tower": _digest(trainable_state(self.image)),
        }
        t2 = self.trainers["prompt"] = Trainer(cfg.prompt_train, ctx2, fingerprint=fp2)
        r2 = t2.fit(self.prompt)
        summary["prompt_tuning"] = r2.summary()
        summary["train_seconds"] = round(r1.seconds + r2.seconds, 2)
        return summary

    def predict(self, ctx: CellContext) -> np.ndarray:
        if self.prompt is not None:
            return self.trainers["prompt"].predict(self.prompt, "test")
        if self.image is None:
            raise RuntimeError("MKT.predict before fit")
        return self.trainers["image"].predict(self.image, "test")

    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.image is not None:
            out.update({f"image.{k}": v for k, v in trainable_state(self.image).items()})
        if self.prompt is not None:
            out["prompt.context"] = self.prompt.prompts.context.detach().cpu().contiguous()
        return out


def _clear_checkpoints(work: Path) -> None:
    """Remove the trainer's checkpoints (only what the trainer writes) of stage 2's folder."""
    (work / LATEST).unlink(missing_ok=True)
    for ckpt in work.glob(f"{CHECKPOINT_PREFIX}*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt)


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


METHOD = MKT
