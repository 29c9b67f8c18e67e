"""What a stage needs from the outside world before it can run (a release folder, a
weights file, an API key, network), read from params and the disk without running or
importing anything of the stages: ``ovml plan`` (pipelines/plan.py) lists it per stage,
the report (pipelines/report.py) uses :func:`cell_needs` to say why a cell is "not
computed". pipelines/plan.py re-exports these names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.config import GENERATED_SOURCES, Params, split_seed
from pipelines.workspace import download_owner

# option keys of a variant whose value is a file the method reads
_FILE_KEYS = ("word_vectors", "file", "path", "checkpoint", "corpus")


def _abs(params: Params, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else params.root / p


def _open_clip_cache() -> list[Path]:
    homes = [os.environ.get("HF_HOME"), os.environ.get("XDG_CACHE_HOME"), "~/.cache"]
    out = []
    for h in homes:
        if h:
            out += [Path(h).expanduser() / "huggingface", Path(h).expanduser() / "clip"]
    return out


def weights_needs(params: Params, backbone: str) -> tuple[list[str], list[str]]:
    """(unmet, met) requirements of a backbone's weights."""
    cfg = params.backbones[backbone]
    if cfg.weights in ("none", "pretrain"):
        return [], [f"weights: {cfg.weights}"]
    if cfg.weights.startswith("file:"):
        path = _abs(params, cfg.weights.removeprefix("file:"))
        if path.is_file():
            return [], [f"weights file {path}"]
        return [f"weights file {path} (backbones.{backbone}.weights)"], []
    tag = cfg.weights.removeprefix("open_clip:")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not any(p.exists() for p in _open_clip_cache()):
        return [f"open_clip weights {cfg.model}/{tag}: offline and no local cache"], []
    return [], [f"open_clip weights {cfg.model}/{tag} (downloaded by open_clip or its cache)"]


def dataset_needs(params: Params, dataset: str) -> tuple[list[str], list[str]]:
    cfg = params.datasets[dataset]
    if cfg.source in GENERATED_SOURCES:
        return [], [f"generated ({cfg.source})"]
    if cfg.release_dir is None:
        return [f"release folder of {cfg.source} (datasets.{dataset}.release_dir)"], []
    path = _abs(params, cfg.release_dir)
    if not path.is_dir():
        return [f"release folder {path} (datasets.{dataset}.release_dir)"], []
    return [], [f"release folder {path}"]


def images_needs(params: Params, dataset: str) -> tuple[list[str], list[str]]:
    cfg = params.datasets[dataset]
    if cfg.download is not None:
        return [], ["network access to the image URLs of the prepared manifest"]
    if (owner := download_owner(params, dataset)) is not None:
        return [], [f"images downloaded by images@{owner}"]
    if cfg.images:
        path = _abs(params, cfg.images)
        if path.exists():
            return [], [f"images in {path}"]
        return [f"image folder {path} (datasets.{dataset}.images)"], []
    if cfg.source == "toyworld":
        return [], []
    return [f"images of {dataset}: set datasets.{dataset}.images or download:"], []


def variant_needs(params: Params, variant: str) -> tuple[list[str], list[str]]:
    """Files and API keys a variant's options name (e.g. ``word_vectors: glove.txt``,
    ``api_key_env: OPENAI_API_KEY``). ``variant`` may be a seeded cell name
    (``qks@s1``, a table with ``seeds``): its variant's options are read."""
    variant, _ = split_seed(variant)
    need: list[str] = []
    has: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{where}.{k}"
                if isinstance(v, str) and k.endswith("api_key_env"):
                    (has if os.environ.get(v) else need).append(f"API key in ${v} ({key})")
                elif k == "corpus" and v in params.corpora:
                    has.append(f"corpus {v} (its own stage: corpus@<dataset>@{v})")
                elif isinstance(v, str) and any(k == f or k.endswith(f"_{f}") for f in _FILE_KEYS):
                    path = _abs(params, v)
                    (has if path.exists() else need).append(f"file {path} ({key})")
                else:
                    walk(v, key)

    walk(params.variants[variant].options, f"variants.{variant}")
    return need, has


def cell_needs(params: Params, dataset: str, variant: str) -> list[str]:
    """Unmet outside requirements of a cell and of everything upstream of it."""
    need: list[str] = []
    for fn, arg in (
        (dataset_needs, dataset),
        (images_needs, dataset),
        (weights_needs, params.backbone_for(dataset, variant)),
        (variant_needs, variant),
    ):
        need += fn(params, arg)[0]
    from pipelines.text.config import cell_corpora

    for name in cell_corpora(params, split_seed(variant)[0]).values():
        need += corpus_needs(params, name)[0]
    return need


def corpus_needs(params: Params, name: str) -> tuple[list[str], list[str]]:
    """An LLM corpus written through an endpoint needs its API key (and its server); a
    released corpus needs its file."""
    released = getattr(params.corpora[name], "released", None)
    if released is not None:
        path = Path(released) if Path(released).is_absolute() else params.root / released
        if path.is_file():
            return [], [f"released corpus {released}"]
        return [f"the released corpus {released} (corpora.{name}.released)"], []
    provider = params.corpora[name].provider
    if provider.kind == "offline":
        return [], [f"offline answers ({provider.model})"]
    where = provider.base_url or "api.openai.com"
    has = [f"LLM {provider.model} at {where} (corpora.{name}.provider)"]
    if os.environ.get(provider.api_key_env):
        return [], [*has, f"API key in ${provider.api_key_env}"]
    return [f"API key in ${provider.api_key_env} (corpora.{name}.provider.api_key_env)"], has
