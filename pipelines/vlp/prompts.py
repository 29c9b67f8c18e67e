"""Prompt sets and label embeddings.

- ``single``: one template ("a photo of a {}.") — CLIP's default, QKS Table 4 "Single".
- ``pool``: a pool of K templates whose text embeddings are averaged per label
  (QKS Eq. 2, C2SRT Eq. 24; CLIP's prompt ensembling). Each template's embedding is
  L2-normalised before averaging and the mean is normalised again, as in CLIP's
  ensembling code. QKS Eq. 2 writes the plain mean of the templates' embeddings; that
  points the same way as ours only when every template's embedding has the same norm,
  so where norms differ the two differ slightly: we follow CLIP's code.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from pipelines.vlp.backbone import Backbone

SINGLE_TEMPLATE = "a photo of a {}."

POOL_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image containing a {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "this is a photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "an image showing a {}.",
)

PromptKind = Literal["single", "pool"]


def templates(kind: PromptKind) -> tuple[str, ...]:
    if kind == "single":
        return (SINGLE_TEMPLATE,)
    if kind == "pool":
        return POOL_TEMPLATES
    raise ValueError(f"unknown prompt set {kind!r} (use 'single' or 'pool')")


def fill(template: str, label: str) -> str:
    return template.format(label)


@torch.no_grad()
def label_embeddings(
    backbone: Backbone, names: list[str], kind: PromptKind = "pool"
) -> torch.Tensor:
    """(C, D) unit-norm label embeddings, averaged over the prompt set (QKS Eq. 2)."""
    temps = templates(kind)
    texts = [fill(t, n) for n in names for t in temps]
    emb = backbone.encode_text(texts).view(len(names), len(temps), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)
