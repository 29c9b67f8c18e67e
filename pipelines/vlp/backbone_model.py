"""The loaded backbone (:class:`Backbone`) and the open_clip model configs: what every
way of building one (pipelines/vlp/backbone.py for open_clip weights, towers.py for the
packaged towers, torchvision_backbone.py for ImageNet CNNs) returns and reads.

A leaf of pipelines/vlp (it imports nothing of the project), so that those builders
import it, and :func:`pipelines.vlp.backbone.create_backbone` imports them, without a
circle. :mod:`pipelines.vlp.backbone` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # open_clip is imported where it is used: its ~5 s import (timm,
    # transformers, torchvision ops) is paid only by a process that builds or reads a tower,
    # not by a cell that needs none (`random`) or by code that only names a Backbone
    import open_clip

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def register_model_configs() -> None:
    """Make our JSON architectures (e.g. ``ovml-tiny-vit``) known to open_clip."""
    import open_clip

    if "ovml-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Backbone:
    """A loaded open_clip model with its tokenizer and preprocessing."""

    name: str
    model: open_clip.CLIP
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    preprocess: object  # torchvision transform for PIL images
    device: torch.device

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def embed_dim(self) -> int:
        return (
            int(self.model.text_projection.shape[1])
            if hasattr(self.model, "text_projection") and self.model.text_projection is not None
            else int(self.model.visual.output_dim)
        )

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = self.model.visual.preprocess_cfg
        return tuple(cfg["mean"]), tuple(cfg["std"])

    # ----------------------------------------------------------------- images
    def uint8_to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> normalised float (B, 3, S, S) at the model's input size."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bicubic",
                align_corners=False,
                antialias=True,
            ).clamp_(0, 1)
        mean, std = self.mean_std
        mean_t = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        return (x - mean_t) / std_t

    def image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised (global (B, D), patches (B, P, D)) in the joint space; differentiable."""
        import open_clip

        visual = self.model.visual
        if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
            return resnet_tokens(visual, pixels)
        if isinstance(visual, open_clip.timm_model.TimmModel):
            return timm_cnn_tokens(visual, pixels)
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise TypeError(
                f"{self.name}: patch tokens need a ViT, ModifiedResNet or timm CNN image tower, "
                f"got {type(visual).__name__}"
            )
        was = visual.output_tokens
        visual.output_tokens = True
        try:
            pooled, tokens = visual(pixels)
        finally:
            visual.output_tokens = was
        if visual.final_ln_after_pool:  # tokens have not been through ln_post yet
            tokens = visual.ln_post(tokens)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return pooled, tokens

    def n_local_tokens(self) -> int:
        """How many local tokens :meth:`image_tokens` returns: a ViT's patches, a CLIP
        ResNet's attention-pool cells, or (any other tower, e.g. the timm CNN) the cells of
        one blank image's forward in eval mode."""
        import open_clip

        visual = self.model.visual
        grid = getattr(visual, "grid_size", None)
        if grid is not None:
            return int(np.prod(grid))
        if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
            return int(visual.attnpool.positional_embedding.shape[0] - 1)
        was_training = visual.training
        visual.eval()
        try:
            with torch.no_grad():
                dtype = next(visual.parameters()).dtype
                blank = torch.zeros(1, 3, self.image_size, self.image_size, dtype=dtype)
                _, tokens = self.image_tokens(blank.to(self.device))
        finally:
            visual.train(was_training)
        return int(tokens.shape[1])

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.image_tokens(pixels)
        return F.normalize(pooled, dim=-1), tokens

    # ------------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text embeddings; differentiable (used when the text tower trains)."""
        return self.model.encode_text(self.tokenize(texts))

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
        """Normalised embeddings (N, D). A HuggingFace tower (icon-lit's MiniLM) reads texts
        in order of length, each batch cut to its longest text: the tokenizer pads to the
        context length, and pad tokens are masked out of attention and of the mean pool,
        so the cut changes nothing but the cost (``bench/bench_towers.py``)."""
        pad = hf_pad_token_id(self.model)
        if pad is None or not texts:
            out = [
                F.normalize(self.text_features(texts[i : i + batch_size]), dim=-1)
                for i in range(0, len(texts), batch_size)
            ]
            return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=self.device)
        tokens = self.tokenize(texts)
        lengths = (tokens != pad).sum(1)
        order = torch.argsort(lengths, stable=True)
        result = torch.empty(len(texts), self.embed_dim, device=self.device)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            batch = tokens[idx, : int(lengths[idx].max())]
            result[idx] = F.normalize(self.model.encode_text(batch), dim=-1).to(result.dtype)
        return result


def hf_pad_token_id(model) -> int | None:
    """The pad id of an open_clip ``HFTextEncoder`` tower (right-padded ids), else None."""
    from pipelines.vlp.text_embeds import is_hf_text

    return model.text.config.pad_token_id if is_hf_text(model) else None


def resnet_tokens(visual, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled (B, D), dense (B, h*w, D)) of an open_clip ModifiedResNet (CLIP's RN towers).

    The pooled embedding is the attention pool's output; the dense tokens are each cell of
    the last feature map (plus its position embedding) through the pool's value and output
    projections, i.e. what the pool would return if a cell attended only to itself: the
    usual way to read CLIP-aligned spatial features off a ResNet (MaskCLIP, Zhou et al. 2022).
    """
    x = visual.stem(pixels)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    pool = visual.attnpool
    pooled = pool(x)
    cells = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
    cells = cells + pool.positional_embedding[1:].to(cells.dtype)
    return pooled, pool.c_proj(pool.v_proj(cells))


def timm_cnn_tokens(visual, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled (B, D), local (B, h*w, D)) of an open_clip TimmModel CNN tower with average
    pooling and a linear projection (the packaged EfficientNet-Lite0, pipelines/vlp/towers.py).

    The local tokens are the cells of the trunk's last feature map, each through the same
    head (projection) as the pooled feature; the head is linear, so their mean is the global
    embedding before normalisation (tests/test_towers.py checks it).
    """
    head = visual.head
    if set(dict(head.named_children())) - {"drop", "proj"}:
        raise TypeError("local tokens need a timm tower with avg pooling and a linear projection")
    fmap = visual.trunk.forward_features(pixels)  # (B, C, h, w)
    if fmap.dim() != 4:
        raise TypeError(f"timm trunk returned a {fmap.dim()}-d feature map, not (B, C, h, w)")
    pooled = head(visual.trunk.forward_head(fmap))
    cells = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
    return pooled, head(cells)
