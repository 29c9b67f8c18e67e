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
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from pipelines.io import atomic_path
from pipelines.vlp.backbone_model import (  # noqa: F401 (re-exported)
    CONFIG_FILE,
    MODEL_CONFIG_DIR,
    WEIGHTS_FILE,
    Backbone,
    register_model_configs,
    resnet_tokens,
    resolve_device,
    timm_cnn_tokens,
)

if TYPE_CHECKING:  # imported where used, as in backbone_model.py (a ~5 s import)
    import open_clip


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
    import open_clip
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
    import open_clip

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
    import open_clip

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
    import open_clip

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
