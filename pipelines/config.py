"""Typed parameters, loaded from params.yaml: the single grid of datasets, backbones,
variants and tables that Dagster partitions, dvc.yaml stages and the CLI all derive from.

Every model forbids unknown keys. Errors are raised as :class:`ConfigError`, whose
message names the file and the dotted key, so the CLI can print one line, no traceback.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.text.config import CorpusConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_params_path() -> Path:
    """$OVML_PARAMS, else ./params.yaml (DVC runs stages in dvc.yaml's folder), else the repo's."""
    if env := os.environ.get("OVML_PARAMS"):
        return Path(env)
    local = Path.cwd() / "params.yaml"
    return local if local.exists() else REPO_ROOT / "params.yaml"


DEFAULT_PARAMS = default_params_path()


class ConfigError(ValueError):
    """A bad params file: the message says which file, which key and what to do."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- datasets
class EvalConfig(StrictModel):
    """How a cell's test scores become metrics (see pipelines/metrics.py)."""

    top_k: list[Annotated[int, Field(gt=0)]] = [3, 5]
    map_variant: Literal["per_class", "biam_pooled"] = "per_class"
    extra_map_variants: list[Literal["per_class", "biam_pooled"]] = []
    zero_positive: Literal["zero", "nan", "skip"] = "zero"
    keep_images: Literal["all", "with_positive"] = "all"
    # the "all" task (all labels, no image training: CoMC Tables 1-2): which columns form
    # the dataset's full label set: every column (COCO 80, VOC 20, toyworld) or the unseen
    # ones (NUS-WIDE's 81 human-verified concepts, the unseen block of its 925/81 split)
    all_labels: Literal["all", "unseen"] = "all"


class DownloadParams(StrictModel):
    """Fetch the prepared manifest's images (pipelines/data/download.py) in ``chunks``
    (Dagster partitions; DVC runs them one after another)."""

    chunks: int = Field(1, ge=1, le=4096)
    workers: int = Field(16, ge=1)
    resize_short_side: int | None = Field(None, ge=16)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)


class DatasetConfig(StrictModel):
    """One dataset: where it comes from, which backbone its cells use by default, eval.

    Images of a real dataset come from ``images`` (a folder of files, or a downloader
    output folder) or, with ``download:``, from the pipeline's own download stage.
    """

    source: Literal["toyworld", "nus-wide", "open-images-v4", "coco-zsl", "voc2007"]
    backbone: str
    options: dict[str, Any] = {}
    release_dir: str | None = None  # real datasets: the official release, as shipped
    images: str | None = None  # real datasets: an image folder or a downloader output folder
    download: DownloadParams | None = None
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _one_image_source(self) -> DatasetConfig:
        if self.images and self.download:
            raise ValueError("set either `images:` (already on disk) or `download:`, not both")
        if self.source == "toyworld" and (self.images or self.download or self.release_dir):
            raise ValueError("toyworld is generated: release_dir, images and download do not apply")
        return self


# ---------------------------------------------------------------------------- backbones
class PretrainConfig(StrictModel):
    """Contrastive pre-training of a tiny CLIP on a dataset's captions (toyworld)."""

    dataset: str = "toyworld"
    epochs: Annotated[int, Field(gt=0)] = 10
    batch_size: Annotated[int, Field(gt=1)] = 256
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 50


class BackboneConfig(StrictModel):
    """An open_clip architecture plus where its weights come from.

    weights: ``open_clip:<tag>`` (e.g. ``open_clip:openai``; needs a hub or local cache),
    ``file:<path>`` (a local .safetensors / open_clip checkpoint), ``pretrain`` (trained
    by this pipeline, see ``pretrain``) or ``none`` (random init, for tests).
    """

    model: str
    weights: str = "none"
    pretrain: PretrainConfig | None = None
    batch_size: Annotated[int, Field(gt=0)] = 256
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, v: str) -> str:
        if v in ("none", "pretrain") or v.startswith(("open_clip:", "file:")):
            return v
        raise ValueError("must be 'none', 'pretrain', 'open_clip:<tag>' or 'file:<path>'")

    @model_validator(mode="after")
    def _pretrain_needs_config(self) -> BackboneConfig:
        if self.weights == "pretrain" and self.pretrain is None:
            raise ValueError("weights: pretrain needs a 'pretrain:' block")
        return self


# ----------------------------------------------------------------------------- variants
class VariantConfig(BaseModel):
    """A named method config: ``method`` plus that method's own (validated) options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    backbone: str | None = None  # overrides the dataset's default backbone
    description: str = ""

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# ------------------------------------------------------------------------------- tables
class TableConfig(StrictModel):
    title: str
    datasets: list[str]
    rows: list[str]  # variant names
    tasks: list[Literal["zsl", "gzsl", "all"]] = ["zsl", "gzsl"]  # all: see EvalConfig.all_labels
    metrics: list[str] | None = None  # default: mAP + P/R/F1 at the dataset's K
    published: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    """published[variant][dataset][task][metric] = number printed in the paper."""
    source: str = ""  # which paper / table this reproduces


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"  # relative paths are under the repo root


class PathsConfig(StrictModel):
    data: str = "data"
    models: str = "models"
    features: str = "features"
    results: str = "results"


class Params(StrictModel):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # 0 = torch default
    paths: PathsConfig = PathsConfig()
    tracking: TrackingConfig = TrackingConfig()
    datasets: dict[str, DatasetConfig]
    backbones: dict[str, BackboneConfig]
    variants: dict[str, VariantConfig]
    tables: dict[str, TableConfig]
    demo_tables: list[str] = []
    corpora: dict[str, CorpusConfig] = {}  # LLM text corpora (pipelines/text/config.py)

    # where relative paths resolve (the params file's folder) and the keys as written
    root: Path = Field(default=REPO_ROOT, exclude=True)
    raw: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)

    @model_validator(mode="after")
    def _cross_references(self) -> Params:
        for name, ds in self.datasets.items():
            if ds.backbone not in self.backbones:
                raise ValueError(
                    f"datasets.{name}.backbone: unknown backbone {ds.backbone!r} "
                    f"(known: {sorted(self.backbones)})"
                )
        for name, bb in self.backbones.items():
            if bb.pretrain is not None and bb.pretrain.dataset not in self.datasets:
                raise ValueError(
                    f"backbones.{name}.pretrain.dataset: unknown dataset {bb.pretrain.dataset!r}"
                )
        known_methods = available_methods()
        for name, var in self.variants.items():
            if var.method not in known_methods:
                raise ValueError(
                    f"variants.{name}.method: unknown method {var.method!r} "
                    f"(known: {sorted(known_methods)})"
                )
            if var.backbone is not None and var.backbone not in self.backbones:
                raise ValueError(f"variants.{name}.backbone: unknown backbone {var.backbone!r}")
            try:
                method_config_class(var.method).model_validate(var.options)
            except ValidationError as err:
                first = err.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"variants.{name}.{loc}: {first['msg']}") from None
        for name, tab in self.tables.items():
            for ds in tab.datasets:
                if ds not in self.datasets:
                    raise ValueError(f"tables.{name}.datasets: unknown dataset {ds!r}")
            for row in tab.rows:
                if row not in self.variants:
                    raise ValueError(f"tables.{name}.rows: unknown variant {row!r}")
        for name in self.demo_tables:
            if name not in self.tables:
                raise ValueError(f"demo_tables: unknown table {name!r}")
        return self

    # ------------------------------------------------------------------ derived views
    def path(self, kind: Literal["data", "models", "features", "results"]) -> Path:
        p = Path(getattr(self.paths, kind))
        return p if p.is_absolute() else self.root / p

    @property
    def cells(self) -> list[tuple[str, str]]:
        """Every (dataset, variant) named by a table, in table order, without repeats."""
        seen: dict[tuple[str, str], None] = {}
        for tab in self.tables.values():
            for ds in tab.datasets:
                for row in tab.rows:
                    seen[(ds, row)] = None
        return list(seen)

    def backbone_for(self, dataset: str, variant: str) -> str:
        return self.variants[variant].backbone or self.datasets[dataset].backbone

    def method_config(self, variant: str) -> BaseModel:
        var = self.variants[variant]
        return method_config_class(var.method).model_validate(var.options)

    def has_key(self, dotted: str) -> bool:
        """Whether params.yaml itself spells out this key (DVC only tracks written keys)."""
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def tracking_uri(self) -> str:
        uri = self.tracking.uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return f"sqlite:///{self.root / uri.removeprefix('sqlite:///')}"
        return uri


# ------------------------------------------------------------------------------ methods
def available_methods() -> list[str]:
    """Method names = the modules of pipelines/methods (no registry to fill by import)."""
    import pipelines.methods as pkg

    return sorted(
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.name.startswith("_") and m.name != "base"
    )


def method_module(name: str):
    if name not in available_methods():
        raise ConfigError(f"unknown method {name!r} (known: {available_methods()})")
    return importlib.import_module(f"pipelines.methods.{name}")


def method_class(name: str):
    """The Method class of a method module (its ``METHOD`` attribute)."""
    return method_module(name).METHOD


def method_config_class(name: str) -> type[BaseModel]:
    return method_class(name).Config


# ------------------------------------------------------------------------------ loading
def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate params.yaml. Raises ConfigError naming the file and key."""
    path = Path(path) if path is not None else default_params_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    if overrides:
        raw = _deep_merge(raw, overrides)
    try:
        return Params.model_validate({**raw, "root": path.resolve().parent, "raw": raw})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(path, err)) from None


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (remove it or check its spelling)"
        lines.append(f"{path}: {loc + ': ' if loc else ''}{msg}")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out
