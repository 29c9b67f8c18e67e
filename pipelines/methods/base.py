"""The Method protocol and the context a cell hands to a method.

A method sees a :class:`CellContext`: the label space (seen columns first), train labels
(seen columns only; unseen columns are 0 = unknown), lazily loaded frozen-backbone
features for each split, the backbone itself (for text embeddings, prompt tuning or
end-to-end training), the image source (end-to-end mode), a device, a seed, a work
directory for checkpoints and a ``log_metrics`` callback (MLflow when enabled).

It returns test scores (N_test, S+U) float32. Metrics are computed from the scores by
pipelines/evaluate.py, so a metric change never retrains a method.

A method module defines ``Config``, ``METHOD`` and, if its cells also depend on other
source files, ``CODE_DEPS = ("pipelines/train.py", ...)``: a literal tuple, read with
``ast`` so building the stage graph (and Dagster's definitions) never imports a method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from pipelines.data.images import ImageSource
from pipelines.data.prepared import LabelSpace
from pipelines.vlp.backbone import Backbone
from pipelines.vlp.features import FeatureMode, OnlineFeatures, RowReader
from pipelines.vlp.prompts import PromptKind, label_embeddings


class MethodConfig(BaseModel):
    """Base for every method's typed config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check_backbone(self, embed_dim: int) -> None:
        """Raise ValueError when this config cannot run on a backbone of ``embed_dim``
        (params validation calls it for every cell; methods call it before building)."""


def check_heads(heads: int, embed_dim: int) -> None:
    """Multi-head attention splits the embedding into ``heads`` equal parts."""
    if embed_dim % heads:
        divisors = [h for h in range(1, min(embed_dim, 64) + 1) if embed_dim % h == 0]
        raise ValueError(
            f"heads: {heads} does not divide the backbone's embedding width {embed_dim}; "
            f"use one of {divisors}"
        )


@dataclass
class CellContext:
    dataset: str
    variant: str
    label_space: LabelSpace
    train_labels: np.ndarray  # (N, S+U) int8, or SparseLabels (rows made dense on access)
    test_labels: np.ndarray
    backbone_name: str
    device: torch.device
    seed: int
    workdir: Path
    load_backbone: Callable[[], Backbone]
    load_features: Callable[[str], RowReader]  # split -> the cached store (streamed)
    open_images: Callable[[str], ImageSource]
    log_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    progress: bool = True
    load_corpus: Callable[[str], Any] | None = None  # kind -> polars DataFrame (pipelines/text)
    feature_dir: Path | None = None  # the plain feature cache <features>/<dataset>/<backbone>/
    load_relations: Callable[[], Any] | None = None  # the cell's relation-graph stage (C2SRT)
    # cached: features(split) streams the feature cache; online: the frozen backbone runs
    # on the split's images as rows are read (params ``features: online``)
    feature_mode: FeatureMode = "cached"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ lazy views
    @property
    def backbone(self) -> Backbone:
        if "backbone" not in self._cache:
            self._cache["backbone"] = self.load_backbone()
        return self._cache["backbone"]

    def features(self, split: str) -> RowReader:
        """The split's frozen-backbone features: ``.global_`` (N, D) and ``.patches``
        (N, P, D) read row by row when indexed, never loaded whole (pipelines/vlp/features.py)."""
        key = f"features:{split}"
        if key not in self._cache:
            if self.feature_mode == "online":
                self._cache[key] = OnlineFeatures(self.backbone, self.open_images(split))
            else:
                self._cache[key] = self.load_features(split)
        return self._cache[key]

    def label_embeddings(self, prompts: PromptKind = "pool") -> torch.Tensor:
        """(S+U, D) frozen text embeddings of every label, seen first (QKS Eq. 2)."""
        key = f"labels:{prompts}"
        if key not in self._cache:
            self._cache[key] = label_embeddings(self.backbone, self.label_space.names(), prompts)
        return self._cache[key]

    def corpus(self, kind: str):
        """The corpus of ``kind`` this cell's method reads, as a polars DataFrame (schemas
        in pipelines/text/__init__.py). Only kinds in the method's ``CORPORA``."""
        key = f"corpus:{kind}"
        if key not in self._cache:
            if self.load_corpus is None:
                raise RuntimeError(f"{self.variant}: this cell was given no corpora")
            self._cache[key] = self.load_corpus(kind)
        return self._cache[key]

    def relations(self) -> dict[str, Any] | None:
        """The relation graph stage this cell reads (pipelines/relations.py ``load_graph``),
        or None when the cell was given none (tests, direct use)."""
        if self.load_relations is None:
            return None
        if "relations" not in self._cache:
            self._cache["relations"] = self.load_relations()
        return self._cache["relations"]

    @property
    def n_seen(self) -> int:
        return self.label_space.n_seen

    @property
    def n_labels(self) -> int:
        return self.label_space.n_seen + self.label_space.n_unseen


class Method(ABC):
    """A zero-shot / open-vocabulary multi-label method.

    Subclasses set ``Config``; trained methods override :meth:`fit` and
    :meth:`state_dict` (saved as safetensors in the cell folder).
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    CORPORA: ClassVar[tuple[str, ...]] = ()  # corpus kinds read through ctx.corpus(kind)

    def __init__(self, config: MethodConfig):
        self.config = config

    def corpora(self) -> dict[str, str]:
        """{kind: corpus name in params.yaml ``corpora:``} this method reads; by default
        the corpus named like the kind. The graph does not call this (it would import
        torch): it reads ``CORPORA`` and ``Config.corpus`` with ``ast``
        (:func:`pipelines.config.method_corpora`), so keep both literal; a variant's
        ``corpus:`` option picks another corpus of a single-kind method."""
        return {kind: kind for kind in self.CORPORA}

    def fit(self, ctx: CellContext) -> dict[str, Any]:
        """Train on ``ctx`` (seen labels only). Returns a summary for metrics.json meta."""
        return {}

    @abstractmethod
    def predict(self, ctx: CellContext) -> np.ndarray:
        """Scores for every test image and every label, (N_test, S+U) float32."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}
