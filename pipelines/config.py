"""Typed parameters, loaded from params.yaml: the single grid of datasets, backbones,
variants and tables that Dagster partitions, dvc.yaml stages and the CLI all derive from.

Every model forbids unknown keys. Errors are raised as :class:`ConfigError`, whose
message names the file and the dotted key, so the CLI can print one line, no traceback.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipelines.config_core import (  # noqa: F401 (re-exported: the params layer's names)
    REPO_ROOT,
    SEED_SEP,
    ConfigError,
    _module_ast,
    available_methods,
    method_code_deps,
    method_corpora,
    module_constants,
    seeded,
    split_seed,
)
from pipelines.execution import ExecutionConfig
from pipelines.text.config import CorpusConfig


def default_params_path() -> Path:
    """$OVML_PARAMS, else ./params.yaml (DVC runs stages in dvc.yaml's folder), else the repo's."""
    if env := os.environ.get("OVML_PARAMS"):
        return Path(env)
    local = Path.cwd() / "params.yaml"
    return local if local.exists() else REPO_ROOT / "params.yaml"


DEFAULT_PARAMS = default_params_path()


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
    allow_private_hosts: bool = False  # SSRF guard off (a mirror on the local network)


GENERATED_SOURCES = ("toyworld", "iconworld")  # procedural worlds with captions


class TransformConfig(StrictModel):
    """How a photo becomes the backbone's square input (pipelines/data/images.py
    ``ImageTransform``): ``squash`` (whole image to size x size) or ``center_crop`` (short
    side to size / crop_pct, then the centre). ``size`` None = the backbone's input size.
    The feature stage reads it: a change rebuilds the dataset's feature caches."""

    mode: Literal["squash", "center_crop"]
    size: Annotated[int, Field(ge=16)] | None = None
    crop_pct: Annotated[float, Field(gt=0, le=1)] = 1.0
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    @model_validator(mode="after")
    def _crop_pct_needs_crop(self) -> TransformConfig:
        if self.mode == "squash" and self.crop_pct != 1:
            raise ValueError("crop_pct applies to center_crop only")
        return self


DEFAULT_TRANSFORMS: dict[str, dict[str, Any]] = {
    # What each source's papers and their reference code do (README "Image transform"):
    # every paper on these datasets says "resized into 224 x 224" (QKS, C2SRT, CoMC Sec.
    # 4.1), and RCNn's code (datasets/__init__.py: Resize((224, 224)), torchvision's
    # default bilinear) and BiAM's feature extraction (feature_extraction/dataset_nus.py:
    # Resize((224, 224)), CenterCrop commented out) squash. CoMC publishes no code: squash
    # per its text, bicubic as CLIP's own preprocessing.
    "nus-wide": {"mode": "squash", "interpolation": "bilinear"},
    "open-images-v4": {"mode": "squash", "interpolation": "bilinear"},
    "coco-zsl": {"mode": "squash", "interpolation": "bilinear"},
    "coco": {"mode": "squash"},
    "voc2007": {"mode": "squash"},
    # the generated worlds are square already: the backbone's resize is the whole transform
    "toyworld": {"mode": "squash"},
    "iconworld": {"mode": "squash"},
}


class FeaturesConfig(StrictModel):
    """How a dataset's frozen-backbone features are kept (pipelines/vlp/features.py).

    ``mode``: ``cached`` (cells stream the feature cache) or ``online`` (the frozen
    backbone runs on the images inside each cell's loop: for caches that cannot fit a
    node); a variant's own ``features:`` overrides it. ``patches: false`` caches the global
    embeddings only; cells that read patch tokens must then run online.
    """

    mode: Literal["cached", "online"] = "cached"
    patches: bool = True


class DatasetConfig(StrictModel):
    """One dataset: where it comes from, which backbone its cells use by default, eval.

    Images of a real dataset come from ``images`` (a folder of files, or a downloader
    output folder) or, with ``download:``, from the pipeline's own download stage.
    """

    source: Literal[
        "toyworld", "iconworld", "nus-wide", "open-images-v4", "coco-zsl", "coco", "voc2007"
    ]
    backbone: str
    options: dict[str, Any] = {}
    release_dir: str | None = None  # real datasets: the official release, as shipped
    images: str | None = None  # real datasets: an image folder or a downloader output folder
    download: DownloadParams | None = None
    eval: EvalConfig = EvalConfig()
    transform: TransformConfig  # default: DEFAULT_TRANSFORMS[source]

    @model_validator(mode="before")
    @classmethod
    def _default_transform(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and "transform" not in data
            and data.get("source") in DEFAULT_TRANSFORMS
        ):
            data = {**data, "transform": DEFAULT_TRANSFORMS[data["source"]]}
        return data

    features: FeaturesConfig = FeaturesConfig()

    @model_validator(mode="after")
    def _one_image_source(self) -> DatasetConfig:
        if self.images and self.download:
            raise ValueError("set either `images:` (already on disk) or `download:`, not both")
        if self.source in GENERATED_SOURCES and (self.images or self.download or self.release_dir):
            raise ValueError(
                f"{self.source} is generated: release_dir, images and download do not apply"
            )
        return self


# ---------------------------------------------------------------------------- backbones
class PretrainConfig(StrictModel):
    """How the pipeline makes a backbone's weights from a dataset's captions.

    ``recipe: clip`` trains a tiny CLIP from scratch (pipelines/vlp/pretrain.py);
    ``recipe: lit`` aligns two pretrained towers as LiT does (pipelines/vlp/lit.py): both
    frozen but the last ``unlocked_image_groups`` image layer groups, the projections
    (``embed_dim`` wide; default: the model config's) and the temperature (initialised at
    ``init_temperature``) trained with InfoNCE.
    """

    recipe: Literal["clip", "lit"] = "clip"
    dataset: str = "toyworld"
    epochs: Annotated[int, Field(gt=0)] = 10
    batch_size: Annotated[int, Field(gt=1)] = 256
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 50
    unlocked_image_groups: Annotated[int, Field(ge=0)] = 0
    init_temperature: Annotated[float, Field(gt=0, le=1)] = 0.07
    embed_dim: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _lit_only(self) -> PretrainConfig:
        if self.recipe != "lit":
            for key in ("unlocked_image_groups", "embed_dim"):
                if key in self.model_fields_set and getattr(self, key) not in (0, None):
                    raise ValueError(f"{key}: only for `recipe: lit`")
        return self


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
    quick_gelu: bool | None = None
    """The activation the weights were trained with (OpenAI's CLIPs: QuickGELU). Derived
    from open_clip's pretrained config for ``open_clip:<tag>`` weights (a declared value
    must agree); required for a ``file:`` checkpoint of an architecture whose open_clip
    weights were trained both ways (pipelines/vlp/backbone.py ``resolve_quick_gelu``)."""

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
        if self.quick_gelu is not None and self.model.startswith("torchvision:"):
            raise ValueError("quick_gelu: a torchvision CNN has no GELU: remove the key")
        return self


# ----------------------------------------------------------------------------- variants
class VariantConfig(BaseModel):
    """A named method config: ``method`` plus that method's own (validated) options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    backbone: str | None = None  # overrides the dataset's default backbone
    description: str = ""
    transform: TransformConfig | None = None
    """The image transform this variant's paper uses (the fields it states). Features are
    cached once per (dataset, backbone), so those fields must match the transform of every
    dataset the variant runs on (a params error otherwise): declare another dataset entry
    with that transform (as nus-wide-81 re-reads nus-wide's release) to run it both ways."""
    # overrides datasets.<ds>.features.mode; left out of dumps when unset, so the
    # fingerprints of variants that do not set it are what they were before it existed
    features: Literal["cached", "online"] | None = Field(None, exclude_if=lambda v: v is None)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# ------------------------------------------------------------------------------- tables
class TableConfig(StrictModel):
    title: str
    datasets: list[str]
    rows: list[str]  # variant names
    # all: see EvalConfig.all_labels; standard: every label seen (pipelines/evaluate.py)
    tasks: list[Literal["zsl", "gzsl", "all", "standard"]] = ["zsl", "gzsl"]
    metrics: list[str] | None = None  # default: mAP + P/R/F1 at the dataset's K
    published: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    """published[variant][dataset][task][metric] = number printed in the paper."""
    source: str = ""  # which paper / table this reproduces
    paper: str | None = None  # "qks/table1": the transcribed table (pipelines/published/)
    match: dict[str, str] = {}  # variant -> the published row it stands for (analogues)
    x: dict[str, float] = {}  # variant -> its position on an ablation figure's x axis
    seeds: list[Annotated[int, Field(ge=0)]] | None = None
    """Training seeds: each row becomes one cell per seed (``<variant>@s<seed>``) and the
    table prints mean ± std over them. Without it, a row is the single cell ``<variant>``
    trained with the top-level ``seed``."""
    published_dataset: str | None = None
    """Where the published numbers come from when not from the table's own dataset (the
    embedded worlds print the papers' NUS-WIDE numbers beside theirs, as a reference)."""

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v


class PublishedPair(StrictModel):
    """A paper's numbers for a method and its reference row: [task][metric] -> value."""

    method: dict[Literal["zsl", "gzsl", "all"], dict[str, float]]
    reference: dict[Literal["zsl", "gzsl", "all"], dict[str, float]]


class AgreementPair(StrictModel):
    method: str  # variant
    reference: str  # variant of the paper's own reference row
    source: str = ""  # paper and table
    published: PublishedPair


class AgreementConfig(StrictModel):
    """``ovml agreement``: each pair's sign of (method − reference) against its paper's,
    counted beyond ``sigmas`` std over ``seeds`` (pipelines/agreement.py)."""

    title: str
    dataset: str
    seeds: list[Annotated[int, Field(ge=0)]]
    sigmas: Annotated[float, Field(gt=0)] = 2.0
    baseline: str = "clip_zeroshot"  # every method against it too, for information
    published_dataset: str = "nus-wide"
    pairs: dict[str, AgreementPair]

    def variants(self) -> list[str]:
        names = [self.baseline]
        for p in self.pairs.values():
            names += [p.method, p.reference]
        return list(dict.fromkeys(names))


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"  # relative paths are under the repo root


class PathsConfig(StrictModel):
    data: str = "data"
    models: str = "models"
    features: str = "features"
    results: str = "results"


def parse_bytes(value: int | float | str) -> int:
    """``80GB``, ``256GiB``, ``2TB`` or a number of bytes."""
    if isinstance(value, int | float):
        return int(value)
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    text = value.strip().upper().replace(" ", "")
    num = text.rstrip("KMGTIB")
    unit = text[len(num) :]
    try:
        return int(float(num) * units[unit])
    except (KeyError, ValueError):
        raise ValueError(
            f"{value!r}: a size is a number of bytes or e.g. 80GB, 256GiB, 2TB"
        ) from None


class NodeConfig(StrictModel):
    """One machine the stages run on (pipelines/capacity.py checks every stage against it).
    Sizes: a number of bytes or e.g. ``80GB``, ``256GiB``, ``2TB``. Default: one H100 80 GB
    with 256 GiB of RAM and 2 TB of disk."""

    gpus: Annotated[int, Field(ge=0)] = 1
    gpu_memory: int | str = "80GB"
    memory: int | str = "256GiB"
    disk: int | str = "2TB"

    @field_validator("gpu_memory", "memory", "disk")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        parse_bytes(v)
        return v

    @property
    def gpu_memory_bytes(self) -> int:
        return parse_bytes(self.gpu_memory) if self.gpus else 0

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_bytes(self.disk)


class ClusterConfig(StrictModel):
    node: NodeConfig = NodeConfig()


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
    agreement: dict[str, AgreementConfig] = {}
    demo_agreement: list[str] = []
    corpora: dict[str, CorpusConfig] = {}  # LLM text corpora (pipelines/text/config.py)
    cluster: ClusterConfig = ClusterConfig()  # the node every stage must fit (capacity.py)
    execution: ExecutionConfig = ExecutionConfig()  # executor + per-stage-kind resources

    # where relative paths resolve (the params file's folder) and the keys as written
    root: Path = Field(default=REPO_ROOT, exclude=True)
    raw: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> Params:
        check_methods = (info.context or {}).get("check_methods", True)
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
            if "@" in name:
                raise ValueError(f"variants.{name}: '@' is reserved for seeds (<variant>@s<seed>)")
            if var.method not in known_methods:
                raise ValueError(
                    f"variants.{name}.method: unknown method {var.method!r} "
                    f"(known: {sorted(known_methods)})"
                )
            if var.backbone is not None and var.backbone not in self.backbones:
                raise ValueError(f"variants.{name}.backbone: unknown backbone {var.backbone!r}")
            if check_methods:
                self.check_variant(name, error=ValueError)
        if check_methods:
            for ds, var in self.cells:
                if ds in self.datasets and var in self.variants:
                    self._check_cell_backbone(ds, var)
        for ds, cell in self.cells:
            base = split_seed(cell)[0]
            if ds in self.datasets and base in self.variants:
                self._check_cell_transform(ds, base)
        for name, tab in self.tables.items():
            for ds in tab.datasets:
                if ds not in self.datasets:
                    raise ValueError(f"tables.{name}.datasets: unknown dataset {ds!r}")
            for row in tab.rows:
                if row not in self.variants:
                    raise ValueError(f"tables.{name}.rows: unknown variant {row!r}")
            _check_paper_ref(name, tab)
        for name in self.demo_tables:
            if name not in self.tables:
                raise ValueError(f"demo_tables: unknown table {name!r}")
        for name, agr in self.agreement.items():
            if agr.dataset not in self.datasets:
                raise ValueError(f"agreement.{name}.dataset: unknown dataset {agr.dataset!r}")
            for v in agr.variants():
                if v not in self.variants:
                    raise ValueError(f"agreement.{name}: unknown variant {v!r}")
        for name in self.demo_agreement:
            if name not in self.agreement:
                raise ValueError(f"demo_agreement: unknown agreement {name!r}")
        return self

    def _check_cell_backbone(self, dataset: str, variant: str) -> None:
        """A method config that cannot run on its cell's backbone (``heads`` that do not
        divide the embedding width) is a params error, not a bare assert mid-training."""
        bb = self.backbone_for(dataset, variant)
        if bb not in self.backbones:
            return
        pre = self.backbones[bb].pretrain
        dim = (pre.embed_dim if pre is not None else None) or backbone_embed_dim(
            self.backbones[bb].model
        )
        if dim is None:
            return
        var = self.variants[variant]
        try:
            method_config_class(var.method).model_validate(var.options).check_backbone(dim)
        except ValueError as err:
            raise ValueError(
                f"variants.{variant}.{err} (backbone {bb!r}, model {self.backbones[bb].model}, "
                f"dataset {dataset!r})"
            ) from None

    def _check_cell_transform(self, dataset: str, variant: str) -> None:
        wanted = self.variants[variant].transform
        have = self.datasets[dataset].transform
        if wanted is None:
            return
        declared = wanted.model_fields_set  # a paper states the mode, rarely the rest
        if wanted.model_dump(include=declared) != have.model_dump(include=declared):
            raise ValueError(
                f"variants.{variant}.transform: {_describe(wanted, declared)}, but its cells on "
                f"{dataset!r} read features made with datasets.{dataset}.transform "
                f"({_describe(have)}): features are cached once per (dataset, backbone); "
                f"set datasets.{dataset}.transform, or declare a dataset entry of its own "
                f"with this transform (as nus-wide-81 re-reads nus-wide) for the variant"
            )

    # ------------------------------------------------------------------ derived views
    def path(self, kind: Literal["data", "models", "features", "results"]) -> Path:
        p = Path(getattr(self.paths, kind))
        return p if p.is_absolute() else self.root / p

    @property
    def cells(self) -> list[tuple[str, str]]:
        """Every (dataset, cell variant) named by a table, in table order, without repeats.
        A table with ``seeds`` names one cell per seed: ``<variant>@s<seed>``."""
        seen: dict[tuple[str, str], None] = {}
        for name in self.tables:
            for cell in self.table_cells(name):
                seen[cell] = None
        for agr in self.agreement.values():
            for row in agr.variants():
                for s in agr.seeds:
                    seen[(agr.dataset, seeded(row, s))] = None
        return list(seen)

    def table_cells(self, name: str) -> list[tuple[str, str]]:
        """A table's cells: its rows on its datasets, plus every variant a row of its
        published table names (``paper:``) that this file declares, on the datasets both
        list. A method's variant attaches to its published row just by being declared.
        A table with ``seeds`` names one cell per seed: ``<variant>@s<seed>``."""
        tab = self.tables[name]
        rows: dict[tuple[str, str], None] = {
            (ds, row): None for ds in tab.datasets for row in tab.rows
        }
        if tab.paper is not None:
            from pipelines.published import published_table

            for ds, variant in published_table(tab.paper).variants():
                if ds in tab.datasets and variant in self.variants:
                    rows[(ds, variant)] = None
        seen: dict[tuple[str, str], None] = {}
        for ds, row in rows:
            for cell in row_cells(tab, row):
                seen[(ds, cell)] = None
        return list(seen)

    def backbone_for(self, dataset: str, variant: str) -> str:
        base, _ = split_seed(variant)
        return self.variants[base].backbone or self.datasets[dataset].backbone

    def feature_mode(self, dataset: str, variant: str) -> Literal["cached", "online"]:
        """Whether a cell streams the feature cache or runs the backbone online: the
        variant's ``features:``, else the dataset's ``features.mode``."""
        own = self.variants[split_seed(variant)[0]].features
        return own or self.datasets[dataset].features.mode

    def seed_for(self, variant: str) -> int:
        """The training seed of a cell: its ``@s<seed>`` suffix, else the top-level seed."""
        _, seed = split_seed(variant)
        return self.seed if seed is None else seed

    def method_config(self, variant: str) -> BaseModel:
        var = self.variants[split_seed(variant)[0]]
        return method_config_class(var.method).model_validate(var.options)

    def check_variant(self, name: str, error: type[Exception] = ConfigError) -> None:
        """Validate one variant's options against its method's ``Config`` (imports the
        method module, hence torch). ``load_params(..., check_methods=False)`` defers
        this to the variant's own cell, so the Dagster definitions load without torch."""
        try:
            self.method_config(name)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise error(f"variants.{name}.{loc}: {first['msg']}") from None

    def check_cell(self, dataset: str, cell: str) -> None:
        """What ``load_params(check_methods=True)`` checks of one cell, and no more: its
        variant's options against its method's ``Config`` and against its backbone. A
        cell's own process (``ovml stage cell``) checks this instead of every variant,
        so it imports only its own method module (a `random` cell imports no open_clip)."""
        base = split_seed(cell)[0]
        if dataset not in self.datasets or base not in self.variants:
            return  # the graph names what is unknown
        self.check_variant(base)
        try:
            self._check_cell_backbone(dataset, base)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def has_key(self, dotted: str) -> bool:
        """Whether params.yaml itself spells out this key (DVC only tracks written keys)."""
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def tracking_uri(self) -> str:
        """``$MLFLOW_TRACKING_URI`` when set (MLflow's own convention), else ``tracking.uri``;
        a relative SQLite path resolves under the params file's folder."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.tracking.uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return f"sqlite:///{self.root / uri.removeprefix('sqlite:///')}"
        return uri


def _describe(t: TransformConfig, fields: set[str] | None = None) -> str:
    return ", ".join(f"{k} {v}" for k, v in t.model_dump(include=fields).items() if v is not None)


# ---------------------------------------------------------------------------- backbones
def backbone_embed_dim(model: str) -> int | None:
    """The joint embedding width of an open_clip architecture, read from its JSON config
    (ours in pipelines/vlp/model_configs, else open_clip's) without importing open_clip."""
    import importlib.util
    import json

    dirs = [REPO_ROOT / "pipelines" / "vlp" / "model_configs"]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) / "model_configs" for p in spec.submodule_search_locations]
    for d in dirs:
        path = d / f"{model}.json"
        if path.is_file():
            try:
                return int(json.loads(path.read_text())["embed_dim"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def _check_paper_ref(name: str, tab: TableConfig) -> None:
    if tab.paper is None:
        if tab.match:
            raise ValueError(f"tables.{name}.match: needs `paper:` (the table its rows match)")
        return
    from pipelines.published import PublishedError, published_table

    try:
        pub = published_table(tab.paper)
    except PublishedError as err:
        raise ValueError(f"tables.{name}.paper: {err}") from None
    labels = {r.row for r in pub.rows}
    for variant, row in tab.match.items():
        if variant not in tab.rows:
            raise ValueError(f"tables.{name}.match: {variant!r} is not one of the table's rows")
        if row not in labels:
            raise ValueError(
                f"tables.{name}.match.{variant}: {tab.paper} has no row {row!r} "
                f"(rows: {', '.join(sorted(labels))})"
            )


# -------------------------------------------------------------------------------- seeds


def row_cells(tab: TableConfig, row: str) -> list[str]:
    """The cells behind one row of a table: one per seed, or the variant's single cell."""
    return [row] if tab.seeds is None else [seeded(row, s) for s in tab.seeds]


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
class DuplicateKeyError(yaml.YAMLError):
    """A mapping spells the same key twice (YAML would silently keep the last one)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys in a mapping, naming both lines.

    Checked on the composed node, before merge keys are applied, so ``<<: *anchor``
    followed by an override of one of the anchor's keys stays legal."""

    def compose_mapping_node(self, anchor):  # type: ignore[no-untyped-def]
        node = super().compose_mapping_node(anchor)
        first: dict[str, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                raise DuplicateKeyError(
                    f"{line}: duplicate key {key.value!r} (also on line {first[key.value]}); "
                    "the later one would silently win: keep one"
                )
            first[key.value] = line
        return node


def load_params(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    check_methods: bool = True,
) -> Params:
    """Load and validate params.yaml. Raises ConfigError naming the file and key.

    ``check_methods=False`` skips validating variant options against the method configs
    (which imports every method module, hence torch): Dagster's definitions load that
    way and each cell checks its own variant (:meth:`Params.check_variant`) when it runs."""
    path = Path(path) if path is not None else default_params_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}:{err}") from None
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
        return Params.model_validate(
            {**raw, "root": path.resolve().parent, "raw": raw},
            context={"check_methods": check_methods},
        )
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
