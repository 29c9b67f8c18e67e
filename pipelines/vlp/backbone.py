"""Load open_clip models and expose what the methods need.

A backbone is an open_clip architecture (``ViT-B-16``, or one of ours in
``model_configs/``) plus weights from an open_clip pretrained tag, a local checkpoint
file, a directory written by :func:`save_open_clip_dir` (``local-dir:`` in open_clip's
terms, what the toy pre-training produces) or nothing (random init).

Outputs, all in the joint image-text space:
- ``encode_images`` -> normalised global embedding (B, D) and patch tokens (B, P, D),
  the patch tokens taken after ``ln_post`` and projected with the same ``proj`` as the
  global token (the MKT / QKS convention for dense CLIP features);
- ``encode_text`` -> normalised text embeddings (N, D).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipelines.io import atomic_path

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def register_model_configs() -> None:
    """Make our JSON architectures (e.g. ``ovml-tiny-vit``) known to open_clip."""
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
        out = [
            F.normalize(self.text_features(texts[i : i + batch_size]), dim=-1)
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=self.device)


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


def resolve_quick_gelu(model: str, weights: str, declared: bool | None, *, name: str) -> bool:
    """Whether the towers must use QuickGELU: the activation the weights were trained with.

    open_clip 3.3 builds ``ViT-B-16``, ``ViT-B-32``, ``RN50`` and ``RN101`` with nn.GELU and
    only warns when a QuickGELU-trained tag (``openai``) is loaded into them (factory.py's
    QuickGELU mismatch check); its ``-quickgelu`` model names exist only to flip that flag.
    So the activation is taken from where the weights come from, never from a list:

    - ``open_clip:<tag>``: the tag's pretrained config (its ``quick_gelu`` field,
      pretrained.py); an unknown tag is an error; a declared value must agree with it;
    - ``file:<checkpoint>``: the declared ``quick_gelu`` of the backbone's params; required
      when it is ambiguous, i.e. when open_clip's tags for this architecture were trained
      both ways or otherwise than its config builds (ViT-B-16: GELU config, QuickGELU
      ``openai``); else the architecture's config value;
    - ``none``: the declared value, else the architecture's config value.
    """
    from open_clip import pretrained as tags

    default = bool(open_clip.get_model_config(model).get("quick_gelu", False))
    if weights.startswith("open_clip:"):
        tag = weights.removeprefix("open_clip:")
        cfg = tags.get_pretrained_cfg(model, tag)
        if not cfg:
            known = ", ".join(tags.list_pretrained_tags_by_model(model)) or "none"
            raise ValueError(
                f"open_clip {open_clip.__version__} has no pretrained tag {tag!r} for {model} "
                f"(its tags: {known}); set backbones.{name}.weights to open_clip:<one of "
                f"them>, or to file:<checkpoint> with backbones.{name}.quick_gelu declared"
            )
        trained = bool(cfg.get("quick_gelu", False))
        if declared is not None and declared != trained:
            raise ValueError(
                f"backbones.{name}.quick_gelu: {str(declared).lower()} contradicts the tag "
                f"{tag!r} of {model}, trained with quick_gelu={str(trained).lower()} "
                f"(open_clip pretrained.py): remove backbones.{name}.quick_gelu"
            )
        return trained
    if declared is not None:
        return declared
    if weights.startswith("file:"):
        trained = {
            bool(tags.get_pretrained_cfg(model, t).get("quick_gelu", False))
            for t in tags.list_pretrained_tags_by_model(model)
        }
        if trained - {default}:
            raise ValueError(
                f"{weights.removeprefix('file:')}: which activation was this {model} "
                f"checkpoint trained with? open_clip's {model} weights differ (e.g. 'openai' "
                f"used QuickGELU) and its config builds {'QuickGELU' if default else 'nn.GELU'}:"
                f" declare backbones.{name}.quick_gelu (true for OpenAI's weights, false "
                "otherwise)"
            )
    return default


def tower_activations(model: torch.nn.Module) -> set[str]:
    """Names of the GELU-family activation classes a model's towers use (for checks)."""
    gelus = (open_clip.transformer.QuickGELU, torch.nn.GELU)
    return {type(m).__name__ for m in model.modules() if isinstance(m, gelus)}


def _load_error(model: str, err: Exception) -> str:
    """torch's strict-load error in one line: key counts and a few examples, and the fix."""
    text = str(err)
    if "Failed to download" in text:
        return (
            f"{text}. No model hub here? Put the checkpoint in open_clip's cache "
            "(~/.cache/huggingface) or give it as file:<checkpoint>"
        )
    if "Error(s) in loading state_dict" not in text:
        return text
    found = {
        kind: re.findall(r'"([^"]+)"', m.group(1))
        if (m := re.search(rf"{kind} key\(s\) in state_dict: (.*?)(?:\.\s|$)", text, re.S))
        else []
        for kind in ("Missing", "Unexpected")
    }
    shapes = len(re.findall(r"size mismatch for", text))
    parts = [
        f"{len(keys)} {kind.lower()} keys (e.g. {', '.join(keys[:3])})"
        for kind, keys in found.items()
        if keys
    ]
    if shapes:
        parts.append(f"{shapes} tensors of the wrong shape")
    return (
        f"its keys do not fit the {model} architecture: {'; '.join(parts) or text[:300]}. "
        f"Check the backbone's `model:` (is this a checkpoint of another architecture?) or "
        "convert the file to open_clip's state-dict layout"
    )


def create_backbone(
    model: str,
    weights: str = "none",
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    name: str | None = None,
    quick_gelu: bool | None = None,
) -> Backbone:
    """Build an open_clip model by name and load its weights.

    ``weights``: ``none`` | ``open_clip:<tag>`` | ``file:<checkpoint>`` | ``dir:<path>``
    (a folder holding open_clip_config.json + open_clip_model.safetensors).
    ``quick_gelu``: the activation the weights were trained with (see
    :func:`resolve_quick_gelu`; None = derive it where it can be derived).
    """
    register_model_configs()
    device = torch.device(device)
    from pipelines.vlp.towers import create_tower_backbone, is_tower_model

    if is_tower_model(model):  # the packaged pretrained towers (LiT): pipelines/vlp/towers.py
        return create_tower_backbone(model, weights, device=device, precision=precision, name=name)
    if model.startswith("torchvision:"):  # ImageNet CNNs (Epsilon Table 6's VGG19)
        from pipelines.vlp.torchvision_backbone import create_torchvision_backbone

        return create_torchvision_backbone(model, weights, device=device, name=name)
    if weights.startswith("dir:"):
        path = Path(weights.removeprefix("dir:"))
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; was the backbone trained/saved?")
        if not (path / WEIGHTS_FILE).is_file():  # open_clip would warn and init randomly
            raise FileNotFoundError(f"{path / WEIGHTS_FILE}: backbone weights missing")
        model_id, pretrained = f"local-dir:{path}", None
    elif weights.startswith("open_clip:"):
        model_id, pretrained = model, weights.removeprefix("open_clip:")
    elif weights.startswith("file:"):
        ckpt = Path(weights.removeprefix("file:"))
        if not ckpt.exists():
            raise FileNotFoundError(f"backbone checkpoint {ckpt} does not exist")
        model_id, pretrained = model, str(ckpt)
    elif weights == "none":
        model_id, pretrained = model, None
    else:
        raise ValueError(f"unknown weights spec {weights!r}")
    if model_id == model and model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model!r}; see open_clip.list_models()")
    activation = {}
    if model_id == model:  # (a dir: folder's own config says which activation it uses)
        qg = resolve_quick_gelu(model, weights, quick_gelu, name=name or model)
        default = bool(open_clip.get_model_config(model).get("quick_gelu", False))
        activation = {"force_quick_gelu": qg} if qg else {"quick_gelu": False} if default else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="QuickGELU mismatch")
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model_id,
                pretrained=pretrained,
                device=device,
                precision=precision,
                weights_only=True,
                **activation,
            )
    except Exception as err:  # safetensors / torch.load errors on a truncated or foreign file
        if isinstance(err, FileNotFoundError | ValueError):
            raise
        where = path / WEIGHTS_FILE if weights.startswith("dir:") else pretrained or model_id
        raise RuntimeError(
            f"{where}: cannot load backbone weights ({_load_error(model, err)})"
        ) from err
    clip.eval()
    tokenizer = open_clip.get_tokenizer(model_id)
    return Backbone(name or model, clip, tokenizer, preprocess, device)


def save_open_clip_dir(
    model: open_clip.CLIP, model_name: str, out_dir: Path, extra: dict | None = None
) -> None:
    """Save as a folder open_clip loads with ``local-dir:`` (config JSON + safetensors)."""
    register_model_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"no open_clip config for {model_name!r}")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        pre = {
            "mean": list(model.visual.preprocess_cfg["mean"]),
            "std": list(model.visual.preprocess_cfg["std"]),
        }
        (tmp / CONFIG_FILE).write_text(
            json.dumps({"model_cfg": cfg, "preprocess_cfg": pre, **(extra or {})}, indent=2)
        )
